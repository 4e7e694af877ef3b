"""One job run, several model types, resumed after a failure, failing and notifying when no candidate passes:
`mlops-nb run` as a user runs it (the real CLI, papermill kernels, MLflow), each test in a home of its own."""
from __future__ import annotations
import json
from pathlib import Path
import pytest
from conftest import MODEL, copy_tables, webhook_receiver

SECRET = "hooks/job-failures-0123456789-SECRET"


@pytest.fixture(scope="module")
def two_types(seeded_home):
    "One job run that trains logreg and hgb, then evaluates both."
    r = seeded_home.cli("run", "--json", "--steps", "train,evaluate", "--param", "model_types=logreg,hgb")
    assert r.returncode == 0, str(r)
    return seeded_home, r.json()


def test_one_train_task_per_model_type(two_types):
    home, job = two_types
    assert [(s["name"], s["step"], s["params"].get("model_type"), s["status"]) for s in job["steps"]] == [
        ("train_logreg", "train", "logreg", "SUCCEEDED"), ("train_hgb", "train", "hgb", "SUCCEEDED"), ("evaluate", "evaluate", None, "SUCCEEDED")]
    assert [m["task_key"] for m in job["models"]] == ["train_logreg", "train_hgb"]
    versions = {str(v.version): v.tags for v in home.model_versions(MODEL)}
    assert sorted(versions) == sorted(m["version"] for m in job["models"])
    assert {t["DBR_RUN_ID"] for t in versions.values()} == {job["job_run_id"]}
    assert {t["model_type"] for t in versions.values()} == {"logreg", "hgb"}


def test_evaluate_saw_both_and_says_why_each_lost_or_won(two_types):
    home, job = two_types
    cands = {c["version"]: c for c in job["decision"]["candidates"]}
    assert {c["model_type"] for c in cands.values()} == {"logreg", "hgb"}
    won = [v for v, c in cands.items() if c["verdict"].startswith("won:")]
    lost = [v for v, c in cands.items() if c["verdict"].startswith("lost to version")]
    assert len(won) == 1 and len(lost) == 1, cands
    best = max(cands.values(), key=lambda c: (c["auc"], int(c["version"])))
    assert won == [best["version"]] and job["decision"]["challenger"] == best["version"]
    assert f"lost to version {best['version']}" in job["decision"]["summary"] and "paired resamples" in cands[lost[0]]["verdict"]
    # the decision record in MLflow holds the same
    c = home.client()
    ev = next(s for s in job["steps"] if s["name"] == "evaluate")
    rec = json.loads(Path(c.download_artifacts(ev["mlflow_run_id"], "evaluation/decision.json")).read_text())
    assert rec["candidates_from"] == "the versions tagged candidate=true"
    assert {r["version"]: r["verdict"] for r in rec["candidates"]} == {v: c["verdict"] for v, c in cands.items()}


def test_resume_runs_what_did_not_succeed_and_registers_nothing_twice(make_home, demo_tables):
    "train is killed after it registered its version; the resumed job run reuses that version, then evaluates and scores."
    home = copy_tables(demo_tables, make_home("resume"))
    r = home.cli("run", "--json", env=home.environ(MLOPS_NB_FAILPOINT="train.after_register"))
    assert r.returncode == 1, str(r)
    job_run_id = r.json()["job_run_id"]
    assert f"mlops-nb run --env dev --resume {job_run_id}" in r.stderr
    assert [v.version for v in home.model_versions(MODEL)] == [1] and "candidate" not in home.model_versions(MODEL)[0].tags
    r = home.cli("run", "--json", "--resume", job_run_id)
    assert r.returncode == 0, str(r)
    job = r.json()
    assert (job["job_run_id"], job["attempts"], job["status"]) == (job_run_id, 2, "SUCCEEDED")
    assert [s["status"] for s in job["steps"]] == ["SUCCEEDED"] * 4
    assert [v.version for v in home.model_versions(MODEL)] == [1]      # no second version for the job run's train task
    assert job["champion"]["version"] == "1" and job["predictions"]["rows"] > 0
    trains = [run for run in home.runs_of_job(job_run_id) if run.data.tags.get("task_key") == "train"]
    assert sorted(run.info.status for run in trains) == ["FAILED", "FINISHED"]
    assert next(run for run in trains if run.info.status == "FINISHED").data.tags["reused_version"] == "1"
    again = home.cli("run", "--resume", job_run_id)
    assert again.returncode == 2 and "every task of it succeeded" in again.stderr, str(again)


@pytest.fixture
def receiver():
    "A local HTTP receiver of the env's webhook: it keeps every JSON body POSTed to it."
    with webhook_receiver(SECRET) as r: yield r


def test_no_passing_candidate_fails_evaluate_and_notifies(make_home, demo_tables, receiver, tmp_path):
    home, (url, got) = copy_tables(demo_tables, make_home("notify")), receiver
    conf = tmp_path / "conf.toml"
    conf.write_text('[dev]\non_validation_failure = "fail"\n')
    r = home.cli("run", "--json", "--steps", "train,evaluate", "--param", "model_type=dummy",
                 env=home.environ(MLOPS_NB_CONFIG=conf, MLOPS_NB_ALERT_WEBHOOK_URL=url))
    assert r.returncode == 1, str(r)
    job = r.json()
    ev = next(s for s in job["steps"] if s["name"] == "evaluate")
    assert ev["status"] == "FAILED" and "on_validation_failure = fail" in ev["error"] and "no candidate passed validation" in ev["error"]
    assert ev["outputs"]["validation_failed"] == "true" and job["decision"]["refused"]
    assert [(p, b["event"], b["task_key"], b["job_run_id"]) for p, b in got] == [(f"/{SECRET}", "job_run_failed", "evaluate", job["job_run_id"])]
    assert SECRET not in r.stdout + r.stderr and "the env's webhook was told (delivered (HTTP 204))" in r.stderr


@pytest.mark.parametrize("args, conf, said", [
    (["--param", "model_types=hgb,xgb"], "", "model_types: expected model types separated by commas, each once, each one of logreg, hgb, dummy, found 'hgb,xgb'"),
    (["--param", "model_types=hgb", "--param", "model_type=logreg"], "", "give one of them"),
    (["--param", "model_types=,"], "", "model_types: expected model types"),
    ([], "model_types = []", "model_types ([dev] of"),
    ([], 'model_types = ["hgb", "xgb"]', "model_type: expected one of logreg, hgb, dummy, found 'xgb'"),
    (["--resume", "local-19990101T000000-000000"], "", "--resume local-19990101T000000-000000: expected a job run of this home, found none"),
    (["--resume", "x", "--steps", "train"], "", "drop --steps and --param"),
])
def test_bad_model_types_and_resume_fail_before_anything_runs(home, tmp_path, args, conf, said):
    env = {}
    if conf:
        (tmp_path / "c.toml").write_text(f"[dev]\n{conf}\n")
        env["MLOPS_NB_CONFIG"] = tmp_path / "c.toml"
    r = home.cli("run", *args, env=home.environ(**env))
    assert r.returncode == 2 and len(r.error_lines()) == 1 and said in r.error_lines()[0], str(r)
    assert "Traceback" not in r.stderr and not (home.path / "runs").exists()
