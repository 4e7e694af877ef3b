"""`mlops-nb trace` from each target kind (model URI, run id, prediction id) and its bad inputs, on a real pipeline run."""
from __future__ import annotations
import json
import pytest
from deltalake import DeltaTable
from lineage_helpers import shared_pipeline, cli, head, mlflow_client, clean_env, MODEL

SECTIONS = {"code", "infrastructure", "environment", "model", "data", "job", "notebooks"}


@pytest.fixture(scope="module")
def shared(shared_dir):
    return shared_pipeline(shared_dir)


def trace(shared, target, *more):
    src, home, env, job = shared
    return cli(env, "trace", target, "--json", *more, cwd=src)


def check_training_lineage(t, shared):
    "The five sources of the trained model, each resolved."
    src, home, env, job = shared
    assert SECTIONS <= set(t), t.keys()
    assert t["missing"] == [], t["missing"]
    assert (t["code"]["git_sha"], t["code"]["git_dirty"], t["code"]["commit_in_repo"]) == (head(src), False, True)
    assert {"host", "os", "cpu_count", "memory_gb"} <= set(t["infrastructure"])
    assert t["environment"]["python"] and len(t["environment"]["packages_hash"]) == 64
    assert t["environment"]["packages"] == f"runs:/{job['model']['mlflow_run_id']}/environment/requirements.txt"
    assert (t["model"]["name"], t["model"]["version"], t["model"]["mlflow_run_id"]) == (MODEL, job["model"]["version"], job["model"]["mlflow_run_id"])
    assert t["model"]["artifact_uri"].startswith("file://")
    assert (t["data"]["table"], t["data"]["version"], t["data"]["rows"]) == ("dev.mlops_nb.training", "0", "1500")
    assert len(t["data"]["fingerprint"]) == 64
    assert t["job"] == {"job_id": "local", "run_id": job["job_run_id"]}
    assert [n["step"] for n in t["notebooks"]] == ["train", "evaluate", "score"]


def test_trace_model_uri_version_and_alias(shared):
    src, home, env, job = shared
    by_version = trace(shared, f"models:/{MODEL}/{job['model']['version']}")
    assert by_version.returncode == 0, by_version.stderr
    t = json.loads(by_version.stdout)
    check_training_lineage(t, shared)
    by_alias = json.loads(trace(shared, f"models:/{MODEL}@champion").stdout)
    assert by_alias["model"] == t["model"] and "champion" in t["model"]["aliases"]
    # the package list the trace points at is the one whose hash is recorded
    import hashlib, mlflow
    mlflow.set_tracking_uri(f"sqlite:///{home/'mlflow.db'}")
    text = mlflow.artifacts.load_text(t["environment"]["packages"])
    assert hashlib.sha256(text.encode()).hexdigest() == t["environment"]["packages_hash"]
    # the registered version itself carries the lineage, not only its run: the anchors as tags, the rest grouped
    from mlops_nb.registry import version_lineage
    mv = mlflow_client(home).get_model_version(MODEL, job["model"]["version"])
    tags = version_lineage(mv.tags)
    for k in ("GIT_SHA", "GIT_DIRTY", "MLFLOW_RUN_ID", "DBR_JOB_ID", "DBR_RUN_ID", "env", "python",
              "environment_hash", "infra.host", "infra.cpu_count", "data_table", "data_version", "data_fingerprint"):
        assert tags.get(k), k
    assert tags["environment_hash"] == t["environment"]["packages_hash"] and mv.tags["MLFLOW_RUN_ID"] == t["model"]["mlflow_run_id"]


def test_trace_train_and_score_run_ids(shared):
    src, home, env, job = shared
    runs = {s["name"]: s["mlflow_run_id"] for s in job["steps"]}
    t = json.loads(trace(shared, runs["train"]).stdout)
    check_training_lineage(t, shared)
    r = trace(shared, runs["score"])
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["model"]["version"] == job["champion"]["version"] and s["scoring"]["mlflow_run_id"] == runs["score"]
    assert s["scoring"]["input_table"] == "dev.mlops_nb.scoring_batch"
    assert s["scoring"]["infrastructure"]["spark_master"].startswith("local")  # serving infrastructure: the Spark session


def test_trace_prediction_id(shared):
    src, home, env, job = shared
    rows = DeltaTable(job["predictions"]["path"]).to_pandas()
    pid = rows.prediction_id.iloc[len(rows) // 2]
    r = cli(env, "trace", pid, cwd=src)  # the text form
    assert r.returncode == 0, r.stderr
    assert f"prediction        {pid}" in r.stdout and "missing links     none" in r.stdout
    t = json.loads(trace(shared, pid).stdout)
    check_training_lineage(t, shared)
    assert (t["kind"], t["prediction"]["prediction_id"], t["prediction"]["model_version"]) == ("prediction", pid, job["champion"]["version"])
    assert t["scoring"]["job_run_id"] == job["job_run_id"] and t["scoring"]["notebooks"]
    # the scoring notebooks are the score run's own, never the job run's train step (which may have trained another version)
    score = next(s["mlflow_run_id"] for s in job["steps"] if s["name"] == "score")
    assert [(n["step"], n["mlflow_run_id"]) for n in t["scoring"]["notebooks"]] == [("score", score)]
    assert t["model"]["mlflow_run_id"] == t["prediction"]["model_run_id"]  # the train run of the version that made it


@pytest.mark.parametrize("target, message", [
    ("models:/dev.mlops_nb.demo_model/99", "model dev.mlops_nb.demo_model has no version 99: deleted, never registered"),
    ("models:/dev.mlops_nb.demo_model@nobody", "has no alias 'nobody'"),
    ("models:/dev.mlops_nb.other/1", "no model dev.mlops_nb.other is registered there"),
    ("0123456789abcdef0123456789abcdef", "found no such model URI, MLflow run or prediction id in dev.mlops_nb.predictions"),
    ("my-model", "target 'my-model': expected models:/<name>/<version>, models:/<name>@<alias>"),
])
def test_trace_bad_targets(shared, target, message):
    r = trace(shared, target)
    assert r.returncode == 1 and r.stdout == "", r
    assert r.stderr.strip().splitlines() == [l for l in r.stderr.strip().splitlines() if l.startswith("mlops-nb trace: error:")]
    assert message in r.stderr and "Traceback" not in r.stderr
    if target.startswith("models:/"): assert target not in r.stderr  # the hint never suggests the URI that just failed


def test_trace_step_that_trained_nothing(shared):
    "An evaluate run (it trained no model, scored with none) is traced by its own lineage, with its decision."
    src, home, env, job = shared
    evaluate = next(s["mlflow_run_id"] for s in job["steps"] if s["name"] == "evaluate")
    r = trace(shared, evaluate)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    t = json.loads(r.stdout)
    assert (t["kind"], t["env"], t["step"]["task_key"], t["step"]["mlflow_run_id"], t["step"]["status"]) == ("run", "dev", "evaluate", evaluate, "FINISHED")
    assert t["step"]["decision"].startswith(f"promoted version {job['model']['version']} to champion: it won ")
    assert t["model"]["name"] is None and t["missing"] == []
    assert (t["code"]["git_sha"], t["job"]["run_id"]) == (head(src), job["job_run_id"])
    text = cli(env, "trace", evaluate, cwd=src).stdout.splitlines()
    assert text[0] == f"trace of {evaluate} (env dev, run)" and text[1].startswith(f"step              evaluate, MLflow run {evaluate} (FINISHED); evaluate promoted version")
    assert not any(l.startswith("model ") for l in text)


def test_trace_deleted_version_and_missing_link(shared, tmp_path):
    "A deleted version is a clear error; a prediction whose version was deleted names that missing link."
    import shutil
    src, home, env, job = shared
    copy = tmp_path/"home"
    shutil.copytree(home, copy, ignore=shutil.ignore_patterns("runs", "jupyter", ".ipython"))
    v = job["champion"]["version"]
    mlflow_client(copy).delete_model_version(MODEL, v)
    env2 = clean_env(copy, src)
    r = cli(env2, "trace", f"models:/{MODEL}/{v}", cwd=src)
    assert r.returncode == 1 and f"has no version {v}: deleted" in r.stderr and "Traceback" not in r.stderr
    pid = DeltaTable(str(copy/"tables"/"dev"/"mlops_nb"/"predictions")).to_pandas().prediction_id.iloc[0]
    r = cli(env2, "trace", pid, "--json", cwd=src)
    assert r.returncode == 1, r.stderr
    t = json.loads(r.stdout)
    assert any(m.startswith(f"model: model {MODEL} has no version {v}") for m in t["missing"]), t["missing"]
    assert t["code"]["git_sha"] == head(src) and t["data"]["rows"] == "1500"  # still traced through the run on the row
