"""The monitoring loop end to end through the CLI: a drifted batch is scored, `mlops-nb monitor` raises alerts by the
env's rules, tells a local webhook (whose URL holds a secret never printed), and the retraining its alert asks for runs
as a new job run tagged with the alert, which `mlops-nb trace` names."""
from __future__ import annotations
import json
import pytest
from conftest import MODEL, webhook_receiver

SECRET = "hooks/T0KEN-5ecret-abc123"
ALERTS = "dev.mlops_nb.alerts"
RULES = """[dev]
[[dev.alert_rules]]
name = "features_drift"
metric = "drifted_share"
bound = 0.2
direction = "above"
action = "retrain"
severity = "critical"

[[dev.alert_rules]]
name = "score_psi"
metric = "population_stability_index"
column = "probability"
bound = 0.1
direction = "above"
"""


@pytest.fixture(scope="module")
def receiver():
    "A local HTTP receiver of the alert webhook: it keeps every JSON body POSTed to it."
    with webhook_receiver(SECRET) as r: yield r


@pytest.fixture(scope="module")
def loop(seeded_home, receiver):
    "A champion, a batch whose features and label relation drifted (its labelled rows the new training table), scored and monitored."
    home, (url, got) = seeded_home, receiver
    r = home.cli("run", "--json", "--steps", "train,evaluate,score", "--param", "model_type=logreg")
    assert r.returncode == 0, str(r)
    d = home.cli("demo-data", "--rows", 5000, "--seed", 1, "--drift", 2, "--drift-training")
    assert d.returncode == 0, str(d)
    assert (s := home.cli("run", "--steps", "score")).returncode == 0, str(s)
    (home.path/"rules.toml").write_text(RULES)
    env = {"MLOPS_NB_CONFIG": home.path/"rules.toml", "MLOPS_NB_ALERT_WEBHOOK_URL": url}
    m = home.cli("monitor", "--json", env=env)
    assert m.returncode == 0, str(m)
    return home, m, got


def test_alerts_are_recorded_and_posted(loop):
    home, m, got = loop
    out = m.json()
    (step,) = out["steps"]
    assert step["outputs"]["retrain"] == "true" and int(step["outputs"]["alerts"]) == 2, step["outputs"]
    alerts = home.read_table(ALERTS).data.set_index("rule")
    assert set(alerts.index) == {"features_drift", "score_psi"}
    share, psi = alerts.loc["features_drift"], alerts.loc["score_psi"]
    assert share.value > 0.2 and share.bound == 0.2 and share.column_name == ":features" and share.job_run_id == out["job_run_id"]
    assert psi.column_name == "probability" and psi.value > 0.1 and psi.action == "notify" and psi.action_status == "notified"
    assert step["outputs"]["alert_id"] == share.alert_id
    assert sorted(b["rule"] for _, b in got) == ["features_drift", "score_psi"] and {p for p, _ in got} == {f"/{SECRET}"}
    body = next(b for _, b in got if b["rule"] == "score_psi")
    assert body["env"] == "dev" and body["model_version"] == psi.model_version and body["text"].startswith("warning: score_psi:")
    assert (alerts.webhook == "delivered (HTTP 204)").all()
    arts = {a.path for a in home.client().list_artifacts(step["mlflow_run_id"], "monitoring")}
    assert {"monitoring/drift_by_column.png", "monitoring/rule_score_psi.png"} <= arts and any("distributions_v" in a for a in arts), arts


def test_the_webhook_url_is_never_written(loop):
    home, m, _ = loop
    assert SECRET not in m.stdout + m.stderr
    c = home.client()
    run = c.get_run(m.json()["steps"][0]["mlflow_run_id"])
    assert SECRET not in json.dumps({**run.data.params, **run.data.tags})
    assert SECRET not in home.read_table(ALERTS).data.to_json()
    executed = home.path/"runs"/m.json()["job_run_id"]/"monitor.ipynb"
    assert executed.is_file() and SECRET not in executed.read_text()


def test_the_alert_retrains_and_trace_says_why(loop):
    home, m, _ = loop
    out = m.json()
    re = out["retraining"]
    assert re["status"] == "SUCCEEDED" and [s["name"] for s in re["steps"]] == ["train", "evaluate", "score"], re
    alert = home.read_table(ALERTS).data.set_index("rule").loc["features_drift"]
    assert alert.action_status.startswith(f"retrained: job run {re['job_run_id']} SUCCEEDED, trained version {re['model']['version']}")
    for run in home.runs_of_job(re["job_run_id"]):
        t = run.data.tags
        assert (t["trigger"], t["trigger.alert_id"], t["trigger.monitor_job_run_id"]) == ("monitor", alert.alert_id, out["job_run_id"]), t
    tr = home.cli("trace", f"models:/{MODEL}/{re['model']['version']}")
    assert tr.returncode == 0, str(tr)
    assert f"started by alert {alert.alert_id} of monitor job run {out['job_run_id']}" in tr.stdout, tr.stdout
    # trained on the drifted rows, the new version beats the champion that never saw them
    assert re["decision"]["summary"].startswith("promoted"), re["decision"]


def test_a_malformed_rule_stops_the_monitor_before_any_work(loop):
    home = loop[0]
    (home.path/"bad.toml").write_text('[dev]\n[[dev.alert_rules]]\nname = "x"\nmetric = "auc"\nbound = 0.6\nk = 3\nn = 2\n')
    before = home.read_table("dev.mlops_nb.predictions_profile_metrics").version
    r = home.cli("monitor", env={"MLOPS_NB_CONFIG": home.path/"bad.toml"})
    assert r.returncode == 2 or r.returncode == 1, str(r)
    assert "bad alert rule(s): rule 1 (x): direction: expected above or below" in r.stderr and "k of n: expected k <= n" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and home.read_table("dev.mlops_nb.predictions_profile_metrics").version == before


def test_late_labels_are_joined_by_a_later_monitor_run(loop):
    "The demo's labels arrive hours after scoring: once they are in, the next monitor run writes the windows' quality again."
    import pandas as pd
    home, m, _ = loop
    labels = home.read_table("dev.mlops_nb.labels").data
    assert (pd.to_datetime(labels.labeled_at, utc=True) > pd.Timestamp.now(tz="UTC")).all()   # none arrived yet
    home.write_table(labels.assign(labeled_at=pd.Timestamp.now(tz="UTC") - pd.Timedelta(minutes=1)), "dev.mlops_nb.labels")
    before = home.read_table("dev.mlops_nb.predictions_profile_metrics").version
    r = home.cli("monitor", "--json", env={"MLOPS_NB_CONFIG": home.path/"rules.toml"})
    assert r.returncode == 0, str(r)
    assert home.read_table("dev.mlops_nb.predictions_profile_metrics").version == before + 1   # one commit per monitor run
    assert "written again (labels or rows arrived since)" in r.json()["steps"][0]["outputs"]["note"], r.json()["steps"][0]["outputs"]
    prof = home.read_table("dev.mlops_nb.predictions_profile_metrics").data
    q = prof[(prof.column_name == ":table") & (prof.slice_key == ":all")].sort_values("monitored_at")
    latest = q.drop_duplicates(["window_start", "model_name", "model_version"], keep="last")
    scored = home.read_table("dev.mlops_nb.predictions").data
    labelled = scored.merge(labels[["id"]], on="id")
    assert latest.labeled_rows.sum() == len(labelled) and latest["count"].sum() == len(scored), latest
    assert latest.auc.notna().all() and (latest.job_run_id == r.json()["job_run_id"]).all()
