"""The defaults a user gets: no MLOPS_NB_HOME, no MLFLOW_TRACKING_URI, in a fresh copy of the repository.

Every other test pins its own MLOPS_NB_HOME; these do not. They run the CLI from the repository's root and from
`nbs/`, and a pipeline notebook by `papermill` directly, in a temporary clone of this work tree (its own `mlops_nb`
first on PYTHONPATH, as a clone with its own install would have), and check that all of them share one store,
`<root>/.mlops`, and that reading commands outside any repository create nothing.
"""
from __future__ import annotations
import json, os, shutil, subprocess, sys
from pathlib import Path
import pytest
from conftest import REPO, VENV_BIN, CLI, MODEL, PREDICTIONS, clean_environ

GIT = ["git", "-c", "user.email=tests@mlops-nb.invalid", "-c", "user.name=mlops-nb tests"]


def copy_of_repo(dest: Path) -> Path:
    "A clone of this repository holding its current work tree (tracked and untracked, not ignored), committed."
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(dest)], check=True)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = REPO/f
        if src.is_file():
            (dest/f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest/f)
    subprocess.run([*GIT, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*GIT, "commit", "--quiet", "--allow-empty", "-m", "work tree under test"], cwd=dest, check=True)
    return dest


def user_environ(root: Path, tmp: Path) -> dict:
    "A user's environment: nothing of ours set, the copy's package first on the path."
    env = clean_environ(tmp, MLOPS_NB_HOME=None, IPYTHONDIR=tmp/".ipython", PYTHONPATH=root)
    assert not any(k.startswith(("MLOPS_NB_", "MLFLOW_TRACKING", "MLFLOW_REGISTRY")) for k in env)
    return env


def run(args, cwd: Path, env: dict, timeout: float = 900):
    p = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return p


def ok(p):
    assert p.returncode == 0, f"{p.args} -> {p.returncode}\n--- stdout\n{p.stdout[-3000:]}\n--- stderr\n{p.stderr[-4000:]}"
    return p


@pytest.fixture(scope="module")
def user_repo(tmp_path_factory):
    "A fresh copy of the repository, demo data and a champion made from its root as `make demo` does; the job run."
    tmp = tmp_path_factory.mktemp("user")
    root = copy_of_repo(tmp/"mlops-nb")
    env = user_environ(root, tmp)
    ok(run([CLI, "demo-data", "--rows", 3000, "--seed", 0], root, env))
    p = ok(run([CLI, "run", "--steps", "train,evaluate", "--param", "model_type=logreg", "--json"], root, env))
    return root, env, json.loads(p.stdout)


def store(root: Path):
    import mlflow
    db = root/".mlops"/"mlflow.db"
    assert db.is_file(), f"no store at {db}"
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}", registry_uri=f"sqlite:///{db}")


def stray_homes(root: Path) -> list:
    "Every `.mlops` folder below the root but the root's own."
    return sorted(str(p.relative_to(root)) for p in root.rglob(".mlops") if p != root/".mlops")


def test_the_pipeline_from_the_root_uses_the_repository_store(user_repo):
    root, env, job = user_repo
    assert job["status"] == "SUCCEEDED" and job["champion"]["version"] == "1", job
    assert (root/".mlops"/"runs"/job["job_run_id"]/"train.ipynb").is_file()
    assert str(store(root).get_model_version_by_alias(MODEL, "champion").version) == "1"
    assert stray_homes(root) == []


def test_the_pipeline_from_a_subfolder_uses_the_same_store(user_repo):
    root, env, _ = user_repo
    env_json = json.loads(ok(run([CLI, "env", "--json"], root/"nbs", env)).stdout)
    assert env_json["mlops_home"] == str(root/".mlops")
    p = ok(run([CLI, "run", "--steps", "score", "--json"], root/"nbs"/"pipelines", env))
    job = json.loads(p.stdout)
    assert job["status"] == "SUCCEEDED" and job["predictions"]["rows"] > 0, job
    assert job["predictions"]["path"] == str(root/".mlops"/"tables"/Path(*PREDICTIONS.split(".")))
    t = ok(run([CLI, "trace", f"models:/{MODEL}@champion", "--json"], root/"nbs", env))
    assert json.loads(t.stdout)["model"]["version"] == "1"
    assert stray_homes(root) == []


def test_papermill_run_directly_uses_the_repository_store(user_repo, tmp_path):
    "As a scheduler, or Jupyter (whose kernel starts in the notebook's folder), runs it: from `nbs/pipelines`."
    root, env, _ = user_repo
    from deltalake import DeltaTable
    path = root/".mlops"/"tables"/Path(*PREDICTIONS.split("."))
    before = DeltaTable(str(path)).version() if DeltaTable.is_deltatable(str(path)) else -1
    out = tmp_path/"score.ipynb"
    ok(run([VENV_BIN/"papermill", "--no-progress-bar", "score.ipynb", out], root/"nbs"/"pipelines", env))
    assert DeltaTable(str(path)).version() == before + 1
    assert stray_homes(root) == [] and not (tmp_path/".mlops").exists()


def test_reading_commands_outside_a_repository_name_the_store_and_create_nothing(user_repo, tmp_path):
    _, env, _ = user_repo
    outside = tmp_path/"elsewhere"
    outside.mkdir()
    for args in (["trace", f"models:/{MODEL}@champion"], ["rollback"], ["promote"], ["compare-online"], ["rollout"],
                 ["deploy", "--env", "dev", "--serving", "--dry-run"]):
        p = run([CLI, *args], outside, env)
        assert p.returncode == 1, (args, p.returncode, p.stderr)
        lines = [l for l in p.stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and f"no MLflow store at {outside.resolve()}/.mlops/mlflow.db" in lines[0], p.stderr
        assert "outside any git repository" in lines[0], lines[0]
    assert list(outside.iterdir()) == [], "a reading command created files"


def test_the_online_commands_use_the_repository_store(user_repo, tmp_path):
    "compare-online, rollout and deploy --serving, from the root and from `nbs/`, read the champion of the repository's store."
    root, env, _ = user_repo
    from databricks_standin import DatabricksStandin
    p = run([CLI, "compare-online"], root, env)
    assert p.returncode == 1 and "no inference log table dev.mlops_nb.inference_log" in p.stderr, p.stderr
    p = run([CLI, "rollout", "--min-hours", "0"], root/"nbs", env)
    assert p.returncode == 2 and f"expected a champion and a challenger of model {MODEL}, found no challenger" in p.stderr, p.stderr
    with DatabricksStandin("dapi-default-home-token") as s:
        denv = dict(env, DATABRICKS_HOST=s.url, DATABRICKS_TOKEN=s.token, DATABRICKS_CONFIG_FILE=str(tmp_path/"none"))
        p = ok(run([CLI, "deploy", "--env", "dev", "--serving", "--dry-run"], root/"nbs", denv))
        assert "would create serving endpoint mlops-nb-dev: demo_model-1 (v1, champion) 100%" in p.stdout, p.stdout
        assert s.mutating_calls() == [] and s.token not in p.stdout + p.stderr
    assert stray_homes(root) == []
