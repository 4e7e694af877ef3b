"""Bad input and failing steps: one clear line on stderr, the right exit code, nothing registered or written,
no MLflow run left RUNNING, later steps skipped, and the partly executed notebook kept."""
from __future__ import annotations
import json, re, shutil
from pathlib import Path
import pytest
from conftest import PREDICTIONS, TRAINING

ONE_CLASS = "dev.mlops_nb.one_class"


def assert_nothing_written(home):
    "No model version registered, no predictions table."
    assert home.model_versions() == [], [f"{v.name} v{v.version}" for v in home.model_versions()]
    assert not home.table_exists(PREDICTIONS)
    assert not home.table_path(PREDICTIONS).exists()


def assert_one_error_line(r, command="run", only_line=True):
    "Exactly one `mlops-nb <command>: error:` line, no traceback; with only_line, nothing else on stderr."
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, str(r)
    errors = r.error_lines()
    assert len(errors) == 1, str(r)
    assert errors[0].startswith(f"mlops-nb {command}: error: ")
    if only_line: assert r.stderr.strip().splitlines() == errors, str(r)
    return errors[0]


BAD_USAGE = [  # (id, args, words the error line must contain)
    ("unknown-env", ["--env", "qa"], ["--env", "'qa'", "dev", "staging", "prod"]),
    ("unknown-step", ["--steps", "train,deploy"], ["steps", "deploy", "explore,train,evaluate,score"]),
    ("param-without-equals", ["--param", "model_type"], ["--param", "KEY=VALUE", "'model_type'"]),
    ("unknown-param", ["--param", "colour=blue"], ["colour", "not a parameter", "model_type"]),
    ("context-param", ["--param", "run_id=abc"], ["run_id", "set by the runner"]),
    ("unknown-model-type", ["--param", "model_type=xgb"], ["model_type", "'xgb'", "logreg, hgb, dummy"]),
    ("bad-table-version", ["--param", "training_version=latest"], ["version", "'latest'"]),
    ("negative-n-boot", ["--param", "n_boot=-1"], ["n_boot", "a whole number, 1 or more", "'-1'", "--param"]),
    ("word-n-boot", ["--param", "n_boot=abc"], ["n_boot", "a whole number, 1 or more", "'abc'"]),
    ("bad-register", ["--steps", "train", "--param", "register=maybe"], ["register", "true or false", "'maybe'"]),
    ("negative-scoring-version", ["--param", "scoring_version=-2"], ["scoring_version", "0 or more", "'-2'"]),
    ("two-part-table", ["--param", "predictions_table=a.b"], ["predictions_table", "catalog.schema.name", "'a.b'"]),
    ("every-bad-param", ["--param", "n_boot=0", "--param", "register=maybe"], ["n_boot", "'0'", "register", "'maybe'"]),
]


@pytest.mark.parametrize("case, args, words", BAD_USAGE, ids=[c[0] for c in BAD_USAGE])
def test_bad_usage_exits_2(seeded_home, case, args, words):
    runs_before = sorted((seeded_home.path/"runs").glob("*")) if (seeded_home.path/"runs").exists() else []
    mlflow_before = [x.info.run_id for x in mlflow_runs(seeded_home)]
    r = seeded_home.cli("run", "--json", *args)
    assert r.returncode == 2, str(r)
    line = assert_one_error_line(r, only_line=case != "unknown-env")  # argparse also prints its usage
    for w in words: assert w in line, (w, line)
    assert r.stdout == ""  # no job run started, so no JSON
    runs_after = sorted((seeded_home.path/"runs").glob("*")) if (seeded_home.path/"runs").exists() else []
    assert runs_after == runs_before  # no job run folder either
    assert_nothing_written(seeded_home)
    assert [x.info.run_id for x in mlflow_runs(seeded_home)] == mlflow_before  # and no MLflow run


def mlflow_runs(home) -> list:
    "Every MLflow run in the home (none when MLflow was never used)."
    if not home.db.is_file(): return []
    c = home.client()
    return [r for e in c.search_experiments() for r in c.search_runs([e.experiment_id])]


def job_run_folders(home) -> list:
    return sorted((home.path/"runs").glob("*")) if (home.path/"runs").exists() else []


def test_bad_settings_fail_when_the_config_loads(seeded_home, tmp_path):
    "A setting of the wrong type or out of range: exit 2 before any step, every problem in one line naming the file."
    cfg = tmp_path/"bad.toml"
    cfg.write_text('[all]\nn_boot = 0\n[dev]\nmin_auc = "high"\nrequire_approval = "yes"\nholdout_fraction = 0.2\n')
    runs, folders = mlflow_runs(seeded_home), job_run_folders(seeded_home)
    r = seeded_home.cli("run", "--json", "--steps", "train,evaluate", env={"MLOPS_NB_CONFIG": cfg})
    assert r.returncode == 2, str(r)
    line = assert_one_error_line(r)
    assert "3 bad setting(s) for env dev" in line, line
    assert f"n_boot ([all] of {cfg}): expected a whole number, 1 or more, found 0" in line, line
    assert f"min_auc ([dev] of {cfg}): expected a number from 0 to 1, found 'high' (str)" in line, line
    assert f"require_approval ([dev] of {cfg}): expected true or false, found 'yes' (str)" in line, line
    assert r.stdout == ""
    assert_nothing_written(seeded_home)
    assert [x.info.run_id for x in mlflow_runs(seeded_home)] == [x.info.run_id for x in runs]   # no MLflow run
    assert job_run_folders(seeded_home) == folders                                             # no runs/ folder
    r = seeded_home.cli("env", env={"MLOPS_NB_CONFIG": cfg})   # every command that loads the config says the same
    assert r.returncode == 2 and "min_auc ([dev] of" in assert_one_error_line(r, command="env"), str(r)


def test_bad_step_parameter_from_the_environment_is_checked_up_front(seeded_home):
    "MLOPS_NB_N_BOOT reaches the evaluate kernel like --param does: checked before any step, nothing written."
    runs, folders = mlflow_runs(seeded_home), job_run_folders(seeded_home)
    r = seeded_home.cli("run", "--json", "--steps", "train,evaluate", env={"MLOPS_NB_N_BOOT": "abc"})
    assert r.returncode == 2, str(r)
    line = assert_one_error_line(r)
    assert "n_boot: expected a whole number, 1 or more, found 'abc' (from env:MLOPS_NB_N_BOOT)" in line, line
    assert_nothing_written(seeded_home)
    assert [x.info.run_id for x in mlflow_runs(seeded_home)] == [x.info.run_id for x in runs]
    assert job_run_folders(seeded_home) == folders


@pytest.fixture
def dead_tracking_server():
    "Two loopback MLflow tracking URIs where nothing answers: one refuses connections, one accepts them and never answers."
    import socket
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0)); refused = f"http://127.0.0.1:{closed.getsockname()[1]}"
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0)); silent.listen(16)   # the kernel completes the handshake; nobody ever reads
        yield {"refused": refused, "silent": f"http://127.0.0.1:{silent.getsockname()[1]}"}


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_dead_tracking_server_fails_in_seconds_naming_it(seeded_home, dead_tracking_server, kind):
    "MLFLOW_TRACKING_URI at a dead server: run fails before any step within seconds (not MLflow's minutes of retries), naming the URI."
    import time
    uri = dead_tracking_server[kind]
    folders = job_run_folders(seeded_home)
    t = time.monotonic()
    r = seeded_home.cli("run", "--json", "--steps", "train,evaluate", env={"MLFLOW_TRACKING_URI": uri}, timeout=120)
    took = time.monotonic() - t
    assert r.returncode == 1, str(r)
    line = assert_one_error_line(r)
    assert f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) is not answering" in line, line
    assert ("Connection refused" if kind == "refused" else "no answer within 5 s") in line, line
    assert took < 40, took   # the CLI's own start-up plus a 5 s check
    assert job_run_folders(seeded_home) == folders and r.stdout == ""
    assert_nothing_written(seeded_home)
    r = seeded_home.cli("trace", "models:/dev.mlops_nb.demo_model/1", env={"MLFLOW_TRACKING_URI": uri}, timeout=120)  # any command on MLflow
    assert r.returncode == 1 and uri in assert_one_error_line(r, command="trace"), str(r)


def test_missing_table_exits_1(home):
    "A fresh, empty home: the training table does not exist."
    r = home.cli("run", "--json")
    assert r.returncode == 1, str(r)
    line = assert_one_error_line(r)
    assert TRAINING in line and "does not exist" in line and "mlops-nb demo-data" in line
    assert str(home.table_path(TRAINING)) in line
    assert r.stdout == ""
    assert_nothing_written(home)


def test_missing_scoring_table_is_checked_before_any_step(make_home):
    "The scoring table is checked up front, so train does not register a model the run cannot use."
    home = make_home("noscoring")
    home.demo_data(rows=1000)
    shutil.rmtree(home.table_path("dev.mlops_nb.scoring_batch"))
    r = home.cli("run", "--json", "--steps", "train,evaluate,score")
    assert r.returncode == 1, str(r)
    line = assert_one_error_line(r)
    assert "dev.mlops_nb.scoring_batch" in line
    assert_nothing_written(home)


@pytest.fixture(scope="module")
def one_class_run(seeded_home):
    "train, evaluate, score on a table whose label is always 1."
    df = seeded_home.read_table(TRAINING).data
    df["label"] = 1
    seeded_home.write_table(df, ONE_CLASS)
    r = seeded_home.cli("run", "--json", "--steps", "train,evaluate,score", "--param", f"training_table={ONE_CLASS}")
    return seeded_home, r


def test_one_class_label_fails_clearly(one_class_run):
    home, r = one_class_run
    assert r.returncode == 1, str(r)
    line = assert_one_error_line(r, only_line=False)  # progress lines come first
    assert r.stderr.strip().splitlines()[-1] == line
    assert "label 'label'" in line and "two classes" in line and "found 1" in line and ".." not in line
    j = r.json()  # the JSON is printed even though the run failed
    assert j["status"] == "FAILED"
    train = j["steps"][0]
    assert train["name"] == "train" and train["status"] == "FAILED"
    assert train["error"] in line
    # the message names the notebook, the cell and the partly executed notebook, which exists
    assert "notebook train.ipynb" in line and "cell [" in line
    # it names the line of the cell that raised and where in our code, not the cell's first line
    assert re.search(r"cell \[\d+\] line 3 `result = train_candidate\(ctx, cfg, [^`]*` \(at mlops_nb/\w+\.py:\d+\) raised DataError", line), line
    assert "parse_bool" not in line
    assert train["output_notebook"] in line
    nb = Path(train["output_notebook"])
    assert nb.is_file() and nb.parent == home.path/"runs"/j["job_run_id"]
    outputs = [o for c in json.loads(nb.read_text())["cells"] for o in c.get("outputs", [])]
    assert any(o.get("output_type") == "error" and o.get("ename") == "DataError" for o in outputs)
    # later steps never ran
    assert [(s["name"], s["status"]) for s in j["steps"][1:]] == [("evaluate", "SKIPPED"), ("score", "SKIPPED")]
    assert all(s["mlflow_run_id"] == "" and s["output_notebook"] == "" for s in j["steps"][1:])
    assert j["model"] == {} and j["predictions"] == {}
    assert j["champion"]["version"] is None
    assert_nothing_written(home)


def test_one_class_label_failure_is_in_a_failed_mlflow_run(one_class_run):
    "train fails before its notebook starts an MLflow run: the runner starts one, with lineage, error and notebook, FAILED."
    home, r = one_class_run
    j = r.json()
    train = j["steps"][0]
    runs = home.runs_of_job(j["job_run_id"])
    assert [(x.info.run_id, x.info.status) for x in runs] == [(train["mlflow_run_id"], "FAILED")]
    run = runs[0]
    assert run.data.tags["task_key"] == "train" and run.data.tags["error"] == train["error"]
    assert run.data.tags["GIT_SHA"] == j["git_sha"] and "environment_hash" in run.data.tags
    assert run.data.params["training_table"] == ONE_CLASS
    assert [a.path for a in home.client().list_artifacts(run.info.run_id, "notebooks")] == ["notebooks/train.ipynb"]


@pytest.fixture(scope="module")
def failed_evaluate(make_home):
    """A step that fails after its MLflow run started: train a candidate on a table, delete the table,
    then evaluate cannot read the candidate's held-out rows."""
    home = make_home("evalfail")
    home.demo_data(rows=3000)
    doomed = "dev.mlops_nb.doomed"
    home.write_table(home.read_table(TRAINING).data, doomed)
    r1 = home.cli("run", "--json", "--steps", "train", "--param", "model_type=logreg", "--param", f"training_table={doomed}")
    assert r1.returncode == 0, str(r1)
    shutil.rmtree(home.table_path(doomed))
    r2 = home.cli("run", "--json", "--steps", "evaluate,score")
    return home, r1.json(), r2, doomed


def test_failed_step_run_is_marked_failed(failed_evaluate):
    home, trained, r, doomed = failed_evaluate
    assert r.returncode == 1, str(r)
    line = assert_one_error_line(r, only_line=False)
    assert "notebook evaluate.ipynb" in line and "cell [" in line and doomed in line
    j = r.json()
    assert j["status"] == "FAILED"
    ev, score = j["steps"]
    assert ev["status"] == "FAILED" and ev["error"] in line
    assert (score["name"], score["status"], score["mlflow_run_id"]) == ("score", "SKIPPED", "")
    # the step's MLflow run exists and is FAILED, not left RUNNING, and carries the partly executed notebook
    assert ev["mlflow_run_id"]
    c = home.client()
    run = c.get_run(ev["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert run.data.tags["DBR_RUN_ID"] == j["job_run_id"] and run.data.tags["task_key"] == "evaluate"
    assert Path(ev["output_notebook"]).is_file() and ev["output_notebook"] in line
    assert [a.path for a in c.list_artifacts(ev["mlflow_run_id"], "notebooks")] == ["notebooks/evaluate.ipynb"]
    assert [x.info.status for x in home.runs_of_job(j["job_run_id"])] == ["FAILED"]
    # nothing was promoted or scored
    assert j["champion"]["version"] is None
    assert not home.table_exists(PREDICTIONS)
    assert [str(v.version) for v in home.model_versions()] == [trained["model"]["version"]] == ["1"]


def test_failed_run_prints_summary_without_json(failed_evaluate):
    "Without --json a failed run still prints its summary table on stdout, with FAILED and SKIPPED rows."
    home, trained, _, doomed = failed_evaluate
    r = home.cli("run", "--steps", "evaluate,score")
    assert r.returncode == 1, str(r)
    assert_one_error_line(r, only_line=False)
    rows = {l.split()[0]: l.split()[1] for l in r.stdout.splitlines()[2:] if l.split() and l.split()[0] in ("evaluate", "score")}
    assert rows == {"evaluate": "FAILED", "score": "SKIPPED"}
    assert any(l.startswith("job run ") and ": FAILED in " in l for l in r.stdout.splitlines())
