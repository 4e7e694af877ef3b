"""End to end: two `mlops-nb run --json` job runs in a row on one home, then everything they claim is checked
against MLflow (runs, artifacts, registry, aliases) and the Delta predictions table."""
from __future__ import annotations
import json
import pytest
from conftest import MODEL, PREDICTIONS, SCORING

STEPS1 = ["explore", "train", "evaluate", "score"]
STEPS2 = ["train", "evaluate", "score"]  # the second run skips explore to keep the suite fast


@pytest.fixture(scope="module")
def runs(seeded_home):
    "Two job runs on the same home: all four steps (logreg), then train, evaluate, score (hgb)."
    r1 = seeded_home.cli("run", "--json", "--param", "model_type=logreg")
    assert r1.returncode == 0, str(r1)
    r2 = seeded_home.cli("run", "--json", "--steps", ",".join(STEPS2), "--param", "model_type=hgb")
    assert r2.returncode == 0, str(r2)
    return seeded_home, r1.json(), r2.json()


def test_json_shape_and_ids(runs):
    home, j1, j2 = runs
    for j, steps in ((j1, STEPS1), (j2, STEPS2)):
        assert j["status"] == "SUCCEEDED"
        assert j["env"] == "dev" and j["job_id"] == "local"
        assert len(j["git_sha"]) == 40 and all(ch in "0123456789abcdef" for ch in j["git_sha"])
        assert isinstance(j["git_dirty"], bool)
        assert [s["name"] for s in j["steps"]] == steps
        assert all(s["status"] == "SUCCEEDED" and s["error"] == "" for s in j["steps"]), j["steps"]
        assert all(s["mlflow_run_id"] for s in j["steps"])
        assert j["seconds"] > 0
    assert j1["job_run_id"] != j2["job_run_id"]
    # each step has its own MLflow run, and no MLflow run is shared between job runs
    ids = [s["mlflow_run_id"] for j in (j1, j2) for s in j["steps"]]
    assert len(set(ids)) == len(ids)


def test_model_versions_one_then_two(runs):
    home, j1, j2 = runs
    assert j1["model"]["name"] == j2["model"]["name"] == MODEL
    assert (j1["model"]["version"], j2["model"]["version"]) == ("1", "2")
    assert j1["model"]["mlflow_run_id"] == j1["steps"][1]["mlflow_run_id"]
    assert j2["model"]["mlflow_run_id"] == j2["steps"][0]["mlflow_run_id"]
    versions = home.model_versions(MODEL)
    assert sorted(int(v.version) for v in versions) == [1, 2]
    by_version = {str(v.version): v for v in versions}
    assert by_version["1"].run_id == j1["model"]["mlflow_run_id"]
    assert by_version["2"].run_id == j2["model"]["mlflow_run_id"]


def test_exactly_one_champion(runs):
    home, j1, j2 = runs
    c = home.client()
    assert j1["champion"] == {"name": MODEL, "version": "1"}  # first model ever: promoted
    ev1 = next(s for s in j1["steps"] if s["name"] == "evaluate")
    assert ev1["outputs"] == {"champion_version": "1", "promoted": "true", "validation_failed": "false"}
    ev2 = next(s for s in j2["steps"] if s["name"] == "evaluate")
    expected = "2" if ev2["outputs"]["promoted"] == "true" else "1"
    assert j2["champion"] == {"name": MODEL, "version": expected}
    assert ev2["outputs"]["champion_version"] == expected
    # the registry agrees: one alias `champion`, on a version that exists
    aliases = c.get_registered_model(MODEL).aliases
    assert str(aliases.get("champion")) == expected
    champ = c.get_model_version_by_alias(MODEL, "champion")
    assert str(champ.version) == expected
    assert c.get_model_version(MODEL, expected).tags["model_validation_status"] == "PASSED"
    # (search results carry no aliases: ask for each version)
    holding = [v for v in (c.get_model_version(MODEL, m.version) for m in home.model_versions(MODEL))
               if "champion" in (v.aliases or [])]
    assert [str(v.version) for v in holding] == [expected]
    # the decision evaluate logged says the same
    decision = c.download_artifacts(ev2["mlflow_run_id"], "evaluation/decision.json")
    d = json.loads(open(decision).read())
    assert d["champion_before"] == "1" and d["champion_after"] == expected
    assert [x["version"] for x in d["candidates"]] == ["2"]  # version 1 was no candidate any more
    # the summary says what evaluate decided and why, from that record
    assert j1["decision"]["outcome"] == "promote" and j1["decision"]["champion_after"] == "1"
    assert j1["decision"]["summary"].startswith("promoted version 1 to champion: it won ") and "against the baseline AUC" in j1["decision"]["summary"]
    dec2 = j2["decision"]
    assert (dec2["outcome"], dec2["challenger"], dec2["champion_after"]) == (d["outcome"], "2", expected)
    assert dec2["win_rate"] == d["compared"]["win_rate"] and dec2["refused"] == [] and dec2["promote_command"] is None
    assert dec2["summary"].startswith("promoted version 2" if expected == "2" else "kept champion version 1: challenger version 2 lost")


def test_step_runs_finished_with_lineage_tags(runs):
    home, j1, j2 = runs
    c = home.client()
    for j in (j1, j2):
        for s in j["steps"]:
            run = c.get_run(s["mlflow_run_id"])
            t = run.data.tags
            assert run.info.status == "FINISHED", (s["name"], run.info.status)
            assert t["DBR_RUN_ID"] == j["job_run_id"]
            assert t["DBR_JOB_ID"] == j["job_id"]
            assert t["GIT_SHA"] == j["git_sha"]
            assert t["GIT_DIRTY"] == ("true" if j["git_dirty"] else "false")
            # what made the tree dirty, by `git status` (ignored files never count), recorded only when it was
            assert bool(t.get("GIT_DIRTY_FILES")) == j["git_dirty"], t.get("GIT_DIRTY_FILES")
            assert t["task_key"] == s["name"]
            assert t["env"] == "dev"
            assert t["MLFLOW_RUN_ID"] == s["mlflow_run_id"]
        # one MLflow run per step, nothing else tagged with this job run
        assert sorted(r.info.run_id for r in home.runs_of_job(j["job_run_id"])) == sorted(s["mlflow_run_id"] for s in j["steps"])
    train = c.get_run(j1["model"]["mlflow_run_id"])
    assert train.data.params["model_type"] == "logreg"
    assert train.data.params["training_table"] == "dev.mlops_nb.training"
    assert 0.6 < train.data.metrics["holdout_auc"] <= 1.0
    assert c.get_run(j2["model"]["mlflow_run_id"]).data.params["model_type"] == "hgb"


def test_executed_notebooks_saved_and_logged(runs, tmp_path):
    home, j1, j2 = runs
    c = home.client()
    for j in (j1, j2):
        for s in j["steps"]:
            nb_path = home.path/"runs"/j["job_run_id"]/f"{s['name']}.ipynb"
            assert s["output_notebook"] == str(nb_path)
            assert nb_path.is_file()
            nb = json.loads(nb_path.read_text())
            # papermill injected this job run's context, and no cell failed
            injected = [cell for cell in nb["cells"] if "injected-parameters" in cell.get("metadata", {}).get("tags", [])]
            assert len(injected) == 1
            src = "".join(injected[0]["source"])
            assert f'run_id = "{j["job_run_id"]}"' in src and f'task_key = "{s["name"]}"' in src
            assert not any(o.get("output_type") == "error" for cell in nb["cells"] for o in cell.get("outputs", []))
            # and no noise: no Spark banner or log4j line, no MLflow notice, no kernel message in any cell
            streams = "".join(o.get("text", "") if isinstance(o.get("text", ""), str) else "".join(o["text"])
                              for cell in nb["cells"] for o in cell.get("outputs", []) if o.get("output_type") == "stream")
            for noise in ("log4j", "Setting default log level", "WARN", "INFO", "Successfully registered", "incubator"):
                assert noise not in streams, (s["name"], noise, streams[:2000])
            # and the very same file is an artifact of the step's MLflow run, under notebooks/
            listed = [a.path for a in c.list_artifacts(s["mlflow_run_id"], "notebooks")]
            assert f"notebooks/{s['name']}.ipynb" in listed
            assert f"notebooks/{s['name']}.html" in listed  # what MLflow's UI shows as a page
            html = open(c.download_artifacts(s["mlflow_run_id"], f"notebooks/{s['name']}.html", str(tmp_path))).read()
            assert html.lstrip().startswith("<!DOCTYPE html>") and j["job_run_id"] in html
            got = c.download_artifacts(s["mlflow_run_id"], f"notebooks/{s['name']}.ipynb", str(tmp_path))
            assert open(got, "rb").read() == nb_path.read_bytes()
        assert (home.path/"runs"/j["job_run_id"]/"summary.json").is_file()
        assert json.loads((home.path/"runs"/j["job_run_id"]/"summary.json").read_text()) == j


def test_predictions_match_delta_table(runs):
    home, j1, j2 = runs
    batch = home.read_table(SCORING).data
    for n, (j, expected_version) in enumerate(((j1, 0), (j2, 1)), 1):
        p = j["predictions"]
        assert p["table"] == PREDICTIONS
        assert p["path"] == str(home.table_path(PREDICTIONS))
        assert p["version"] == expected_version  # the first run creates the table, the second appends
        assert p["rows"] == len(batch) == 1000
        snap = home.read_table(PREDICTIONS, p["version"])
        assert snap.version == p["version"]
        df = snap.data
        assert len(df) == n * len(batch)  # append, never overwrite
        mine = df[df.job_run_id == j["job_run_id"]]
        assert len(mine) == p["rows"]
        assert sorted(mine.id) == sorted(batch.id)
    df = home.read_table(PREDICTIONS).data
    assert home.read_table(PREDICTIONS).version == j2["predictions"]["version"]
    for col in ("prediction_id", "model_name", "model_version", "model_run_id", "git_sha", "job_run_id", "scored_at",
                "id", "probability", "prediction"):
        assert col in df.columns, col
    assert df.prediction_id.notna().all() and df.prediction_id.is_unique
    assert set(df.job_run_id) == {j1["job_run_id"], j2["job_run_id"]}
    assert df.scored_at.notna().all()
    assert df.probability.between(0, 1).all()
    assert ((df.probability >= 0.5).astype(int) == df.prediction).all()
    c = home.client()
    for j in (j1, j2):
        mine = df[df.job_run_id == j["job_run_id"]]
        champ = j["champion"]["version"]  # evaluate ran before score in the same job run
        assert set(mine.model_name) == {MODEL}
        assert set(mine.model_version) == {champ}
        assert set(mine.model_run_id) == {c.get_model_version(MODEL, champ).run_id}
        assert set(mine.git_sha) == {j["git_sha"]}
        score = next(s for s in j["steps"] if s["name"] == "score")
        assert score["outputs"]["model_version"] == champ
        assert int(score["outputs"]["predictions_version"]) == j["predictions"]["version"]


def test_model_version_tags(runs):
    home, j1, j2 = runs
    c = home.client()
    for j in (j1, j2):
        from mlops_nb.registry import version_lineage
        v = c.get_model_version(MODEL, j["model"]["version"])
        t = version_lineage(v.tags)   # the anchors are tags of their own, the rest of the lineage one JSON tag
        assert t["candidate"] == "false"  # evaluate has looked at it
        assert t["model_validation_status"] == "PASSED"
        assert t["GIT_SHA"] == j["git_sha"]
        assert t["DBR_RUN_ID"] == j["job_run_id"]
        assert t["DBR_JOB_ID"] == "local"
        assert t["MLFLOW_RUN_ID"] == j["model"]["mlflow_run_id"] == v.run_id
        assert t["GIT_DIRTY"] == ("true" if j["git_dirty"] else "false")
        assert t["env"] == "dev" and "task_key" not in t   # a version's run is its train run: not repeated
        assert t["data_table"] == "dev.mlops_nb.training"
        assert t["data_version"] == "0" and t["data_rows"] == "5000"
        assert len(t["data_fingerprint"]) == 64
    # same table version read twice: same fingerprint
    assert (c.get_model_version(MODEL, "1").tags["data_fingerprint"]
            == c.get_model_version(MODEL, "2").tags["data_fingerprint"])
    explore = c.get_run(j1["steps"][0]["mlflow_run_id"])
    assert j1["steps"][0]["outputs"]["rows"] == "5000"
    assert explore.data.tags["data_table"] == "dev.mlops_nb.training"


def test_summary_table(runs):
    "Without --json the run prints a table with one row per step (here: evaluate alone, no candidates left)."
    home, j1, j2 = runs
    r = home.cli("run", "--steps", "evaluate")
    assert r.returncode == 0, str(r)
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.stdout)
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["step", "status", "seconds"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    step_rows = [l.split() for l in lines[2:] if l.split() and l.split()[0] in STEPS1]
    assert len(step_rows) == 1 and step_rows[0][:2] == ["evaluate", "SUCCEEDED"]
    assert step_rows[0][3] == j2["champion"]["version"]  # the champion column
    assert any(l.startswith("job run local-") and ": SUCCEEDED in " in l for l in lines)
    assert f"champion: {MODEL} version {j2['champion']['version']}" in lines
    assert f"evaluate: no candidates to evaluate; champion stays version {j2['champion']['version']}" in lines
    # the champion did not move: no candidate was left to evaluate
    assert str(home.client().get_model_version_by_alias(MODEL, "champion").version) == j2["champion"]["version"]


def test_step_runs_carry_mlflow_standard_tags(runs):
    "MLflow's own source and note tags, so its UI shows each run's notebook, commit and a one-line summary."
    import subprocess
    from conftest import REPO
    home, j1, j2 = runs
    c = home.client()
    branch = subprocess.run(["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    for j in (j1, j2):
        for s in j["steps"]:
            t = c.get_run(s["mlflow_run_id"]).data.tags
            assert (t["mlflow.source.type"], t["mlflow.source.name"]) == ("NOTEBOOK", f"nbs/pipelines/{s['name']}.ipynb")
            assert t["mlflow.source.git.commit"] == j["git_sha"] == t["GIT_SHA"]
            if branch != "HEAD": assert t["mlflow.source.git.branch"] == branch
            assert t["mlflow.note.content"].startswith(f"{s['name']}: ") and "\n" not in t["mlflow.note.content"]
    train = c.get_run(j2["model"]["mlflow_run_id"]).data.tags["mlflow.note.content"]
    assert train.startswith(f"train: registered version {j2['model']['version']}: hgb trained by job run ") and "AUC" in train
    score = next(s for s in j1["steps"] if s["name"] == "score")
    assert "rows 1000" in c.get_run(score["mlflow_run_id"]).data.tags["mlflow.note.content"]


def test_step_runs_record_their_data_as_mlflow_datasets(runs):
    "Train, evaluate and score log the Delta table they read as an MLflow dataset input, so the UI's Datasets column shows it."
    home, j1, j2 = runs
    c = home.client()
    step = {s["name"]: s for s in j1["steps"]}
    train_tags = c.get_run(step["train"]["mlflow_run_id"]).data.tags
    for name, context, table in (("train", "training", "dev.mlops_nb.training"), ("evaluate", "evaluation", "dev.mlops_nb.training"),
                                 ("score", "scoring", SCORING)):
        inputs = c.get_run(step[name]["mlflow_run_id"]).inputs.dataset_inputs
        assert len(inputs) == 1, (name, inputs)
        ds, tags = inputs[0].dataset, {t.key: t.value for t in inputs[0].tags}
        assert (tags["mlflow.data.context"], tags["table"], ds.source_type) == (context, table, "delta_table"), (name, tags)
        assert ds.name == f"{table}@v{tags['version']}" and json.loads(ds.source)["delta_table_name"] == table
        assert json.loads(ds.schema)["mlflow_colspec"], name
    tr = {t.key: t.value for t in c.get_run(step["train"]["mlflow_run_id"]).inputs.dataset_inputs[0].tags}
    assert (tr["fingerprint"], tr["version"], tr["rows"]) == (train_tags["data_fingerprint"], train_tags["data_version"], train_tags["data_rows"])
    sc = {t.key: t.value for t in c.get_run(step["score"]["mlflow_run_id"]).inputs.dataset_inputs[0].tags}
    assert sc["rows"] == "1000"


def test_train_runs_log_their_own_plots(runs):
    "Each train run logs the figures of its model on its held-out rows, not only evaluate."
    home, j1, j2 = runs
    c = home.client()
    for j in (j1, j2):
        arts = {a.path for a in c.list_artifacts(j["model"]["mlflow_run_id"], "training")}
        assert arts == {f"training/{n}.png" for n in ("roc", "precision_recall", "calibration", "permutation_importance")}, arts


def test_monitor_reads_each_prediction_once(runs):
    """`mlops-nb monitor` after the two job runs: every prediction profiled once against its version's own baseline,
    in tables shaped like Lakehouse Monitoring's; a second monitor run finds nothing new and writes nothing."""
    home, j1, j2 = runs
    first = home.cli("monitor", "--json")
    assert first.returncode == 0, str(first)
    (step,) = first.json()["steps"]
    assert step["name"] == "monitor" and step["status"] == "SUCCEEDED" and int(step["outputs"]["rows"]) == 2 * j1["predictions"]["rows"]
    again = home.cli("monitor", "--json")
    assert again.returncode == 0 and "nothing written" in again.json()["steps"][0]["outputs"]["note"], str(again)
    prof_t, drift_t = "dev.mlops_nb.predictions_profile_metrics", "dev.mlops_nb.predictions_drift_metrics"
    snap = home.read_table(prof_t)
    prof, drift = snap.data, home.read_table(drift_t).data
    assert snap.version == 0   # one commit: the second monitor run wrote none
    whole = prof[(prof.column_name == ":table") & (prof.slice_key == ":all")]
    scored = home.read_table(PREDICTIONS).data
    assert sorted(whole.model_version.unique()) == sorted(scored.model_version.unique())   # each version against its own baseline
    assert whole["count"].sum() == len(scored) and (whole.job_run_id == first.json()["job_run_id"]).all()
    base = drift[(drift.drift_type == "BASELINE") & (drift.slice_key == ":all") & (drift.column_name != "probability")]
    assert len(base) and not base.drifted.any(), base[base.drifted]   # the demo's batch is drawn like its training rows
    assert {"ks_test", "population_stability_index", "js_distance", "chi_squared_test"} <= set(drift.columns)
