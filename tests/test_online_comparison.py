"""`mlops-nb compare-online` on the real CLI, against what a real `mlops-nb serve` logged: shadow pairs (paired), A/B arms (unpaired), --promote, a window with no labels."""
from __future__ import annotations
import json, os
import pandas as pd, pytest
from scoring_helpers import home_environ, make_champion
from test_serving_routes import start, stop_and_read_log
from conftest import run_cli

MODEL, LABELS, LOG = "dev.mlops_nb.demo_model", "dev.mlops_nb.labels", "dev.mlops_nb.inference_log"
EXPERIMENT = "/Shared/mlops-nb/dev"


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    "A home whose model has `champion` v1 (a constant dummy) and `challenger` v2 (logreg, PASSED validation as evaluate tags it)."
    import mlflow
    home = tmp_path_factory.mktemp("online-home")
    with home_environ(home):
        weak = make_champion(rows=5000, model_type="dummy")
        strong = make_champion(rows=5000, model_type="logreg")
        c = mlflow.MlflowClient()
        c.set_registered_model_alias(MODEL, "champion", weak.version)
        c.set_registered_model_alias(MODEL, "challenger", strong.version)
        c.set_model_version_tag(MODEL, strong.version, "model_validation_status", "PASSED")
        env = {k: v for k, v in os.environ.items() if k != "MLOPS_NB_SERVE_TOKEN"}
        from mlops_nb.lakehouse import read_table
        batch = read_table("dev.mlops_nb.scoring_batch").data
    records = json.loads(batch.dropna().to_json(orient="records"))   # complete rows: every one is answered
    return dict(home=home, env=env, champion=weak.version, challenger=strong.version, records=records, state={})


def send(srv, records):
    "POST `records` in requests of 50; the prediction ids of the answers."
    ids = []
    for k in range(0, len(records), 50):
        r = srv["client"].post("/predict", json=records[k:k + 50])
        assert r.status_code == 200, r.text
        ids += r.json()["prediction_ids"]
    return ids


def arrive(versions, ids):
    "Make the labels of records `ids` (the demo labels, due in 1 to 48 hours) arrive a minute ago."
    with home_environ(versions["home"]):
        from mlops_nb.lakehouse import read_table, write_table
        lab = read_table(LABELS).data
        now = pd.Timestamp.now(tz="UTC") - pd.Timedelta(minutes=1)
        lab["labeled_at"] = lab.labeled_at.where(~lab.id.isin(ids), now)
        write_table(lab, LABELS, mode="overwrite")
        return dict(zip(lab.id, lab.label))


def runs(versions) -> list:
    import mlflow
    with home_environ(versions["home"]):
        c = mlflow.MlflowClient()
        exp = c.get_experiment_by_name(EXPERIMENT)
        return [] if exp is None else [r.info.run_id for r in c.search_runs([exp.experiment_id])]


def history(versions) -> list:
    with home_environ(versions["home"]):
        from mlops_nb.config import load_config
        from mlops_nb.registry import champion_history
        return champion_history(load_config("dev"))


def records_of(log):
    "Each answered record of the log: (prediction id, id, version, probability, shadow_of)."
    ok = log[(log.path == "/predict") & (log.status == 200)]
    return pd.DataFrame([(ids[0], json.loads(i)[0]["id"], v, json.loads(o)[0]["probability"], s)
                         for ids, i, o, v, s in zip(ok.prediction_ids, ok.inputs, ok.outputs, ok.model_version, ok.shadow_of)],
                        columns=["pid", "id", "version", "p", "shadow_of"])


@pytest.fixture(scope="module")
def shadow(versions):
    "Shadow mode: 300 records answered by the champion, each scored by the challenger too; the log once the server stopped."
    srv = start(versions, "shadow", '[dev]\nserve_routes = {champion = 100, challenger = 0}\nserve_mode = "shadow"\n')
    try: ids = send(srv, versions["records"][:300])
    finally: log = stop_and_read_log(versions, srv)
    return dict(ids=ids, log=records_of(log))


def test_a_window_with_no_labels_decides_nothing(versions, shadow):
    "The demo labels are due hours from now: none has arrived, so nothing is decided, no run written, nothing moved."
    before = runs(versions)
    for extra in ([], ["--promote"]):
        r = run_cli(versions["home"], "compare-online", "--json", *extra)
        assert r.returncode == 1 and r.stdout == "", str(r)
        assert r.error_lines() == [r.stderr.strip()] and "Traceback" not in r.stderr, str(r)
        assert "no labels in dev.mlops_nb.labels for the 300 record(s) versions" in r.stderr and "nothing decided" in r.stderr, r.stderr
    assert runs(versions) == before and history(versions) == []
    r = run_cli(versions["home"], "compare-online", "--since", "yesterday")
    assert r.returncode == 2 and "--since: expected an ISO date/time" in r.stderr and len(r.stderr.strip().splitlines()) == 1, str(r)


def test_shadow_pairs_are_compared_paired_with_the_defaults(versions, shadow):
    "No MLOPS_NB_CONFIG: the env's defaults (n_boot, seed, promote_win_rate, the default log); 250 of the 300 records labelled."
    from sklearn.metrics import roc_auc_score
    log, answered = shadow["log"], [r["id"] for r in versions["records"][:300]]
    labels = arrive(versions, answered[:250])
    r = run_cli(versions["home"], "compare-online", "--json")
    assert r.returncode == 0, str(r)
    rec = r.json()
    ans, sh = log[log.shadow_of.isna()], log[log.shadow_of.notna()]
    pairs = ans.merge(sh, left_on="pid", right_on="shadow_of", suffixes=("", "_s"))
    pairs = pairs[pairs.id.isin(answered[:250])]
    assert (rec["comparison"], rec["compared"]["comparison"], rec["champion_before"], rec["challenger"]) == \
        ("paired", "paired", versions["champion"], versions["challenger"])
    assert rec["rows"] == {"answered": 300, "labelled": 250, "pairs": 300, "champion": 250, "challenger": 250} and len(pairs) == 250
    y = pairs.id.map(labels).to_numpy()
    assert abs(rec["compared"]["champion_auc"] - roc_auc_score(y, pairs.p)) < 1e-12
    assert abs(rec["compared"]["challenger_auc"] - roc_auc_score(y, pairs.p_s)) < 1e-12
    assert (rec["compared"]["n_boot"], rec["compared"]["seed"], rec["compared"]["rows"]) == (1000, 42, 250)
    assert rec["outcome"] == "promote" and rec["promoted"] is False and rec["champion_after"] == versions["champion"], rec   # the dummy loses
    assert rec["window"]["start"] == f"the first record version {versions['challenger']} scored"
    assert "paired resamples" in rec["reason"] and rec["mlflow_run_id"] in runs(versions) and history(versions) == []
    with home_environ(versions["home"]):
        import mlflow
        from mlops_nb.decisions import read_decision
        from mlops_nb.config import load_config
        from mlops_nb.mlflow_store import configure_mlflow
        configure_mlflow(load_config("dev"))
        assert read_decision(rec["mlflow_run_id"]) == rec
        run = mlflow.MlflowClient().get_run(rec["mlflow_run_id"])
        arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "evaluation")}
    assert run.data.tags["task_key"] == "compare-online" and run.data.metrics["win_rate"] == rec["compared"]["win_rate"]
    assert arts == {"evaluation/bootstrap_auc.png", "evaluation/decision.json"}
    text = run_cli(versions["home"], "compare-online")
    assert text.returncode == 0 and "(paired: shadow pairs, the same records)" in text.stdout and "MLflow run " in text.stdout, str(text)


def test_promote_moves_the_champion_with_trigger_online(versions, shadow):
    r = run_cli(versions["home"], "compare-online", "--promote", "--json")
    assert r.returncode == 0, str(r)
    rec = r.json()
    assert (rec["outcome"], rec["promoted"], rec["champion_after"]) == ("promote", True, versions["challenger"]), rec
    h = history(versions)
    assert len(h) == 1 and (h[-1]["trigger"], h[-1]["to_version"], h[-1]["from_version"], h[-1]["mlflow_run_id"]) == \
        ("online", versions["challenger"], versions["champion"], rec["mlflow_run_id"])
    with home_environ(versions["home"]):
        import mlflow
        c = mlflow.MlflowClient()
        assert str(c.get_model_version_by_alias(MODEL, "champion").version) == versions["challenger"]
        assert "challenger" not in c.get_registered_model(MODEL).aliases   # gone, as after evaluate's promotion
    versions["state"]["split_since"] = pd.Timestamp.now(tz="UTC").isoformat()


def test_ab_arms_are_compared_unpaired_and_a_loser_is_not_promoted(versions, shadow):
    "A 50/50 split with the dummy as challenger, windowed by --since to the split's records: unpaired, rejected, nothing moved."
    from sklearn.metrics import roc_auc_score
    import mlflow
    with home_environ(versions["home"]):
        mlflow.MlflowClient().set_registered_model_alias(MODEL, "challenger", versions["champion"])   # the dummy, now challenger
    srv = start(versions, "split", "[dev]\nserve_routes = {champion = 50, challenger = 50}\n")
    sent = versions["records"][300:700]
    try: send(srv, sent)
    finally: log = records_of(stop_and_read_log(versions, srv))
    split = log[log.pid.isin(set(log.pid) - set(shadow["log"].pid))]
    labels = arrive(versions, [r["id"] for r in sent[:350]] + [r["id"] for r in versions["records"][:250]])
    before = history(versions)
    r = run_cli(versions["home"], "compare-online", "--since", versions["state"]["split_since"], "--promote", "--json")
    assert r.returncode == 0, str(r)
    rec = r.json()
    lab = split[split.id.isin([x["id"] for x in sent[:350]])]
    assert split.shadow_of.isna().all() and len(split) == 400 and set(split.version) == {versions["champion"], versions["challenger"]}
    by = {v: lab[lab.version == v] for v in (versions["champion"], versions["challenger"])}
    assert rec["comparison"] == "unpaired" and rec["window"]["start"] == "--since", rec
    assert (rec["champion_before"], rec["challenger"]) == (versions["challenger"], versions["champion"])   # the roles swapped
    assert rec["rows"] == {"answered": 400, "labelled": 350, "pairs": 0, "champion": len(by[versions["challenger"]]),
                           "challenger": len(by[versions["champion"]])}, rec["rows"]
    for role, v in (("champion", versions["challenger"]), ("challenger", versions["champion"])):
        assert abs(rec["compared"][f"{role}_auc"] - roc_auc_score(by[v].id.map(labels), by[v].p)) < 1e-12
    assert rec["outcome"] == "reject" and rec["promoted"] is False and rec["not_promoted"].startswith(f"version {versions['champion']} did not win")
    assert "unpaired resamples" in rec["reason"] and "unpaired" in rec["rule"] and history(versions) == before
    paired = run_cli(versions["home"], "compare-online", "--json")   # the default window: the shadow pairs are back in it
    assert paired.returncode == 0 and paired.json()["comparison"] == "paired", str(paired)
