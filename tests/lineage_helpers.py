"""Test tooling for the lineage, reproduce and MLflow CLI tests: clones, clean environments, one shared pipeline run.

Reproduce needs commits, so these tests work in a temporary `git clone` of the repository (committed state only)
and import the clone's `mlops_nb` through PYTHONPATH; the kernels use this venv's python.
"""
from __future__ import annotations
import json, os, subprocess, sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MODEL = "dev.mlops_nb.demo_model"
_LEAKY = ("MLOPS_NB_", "MLFLOW_", "DATABRICKS_", "DBR_")


def clean_env(home: Path, clone: Path = None, **extra) -> dict:
    "os.environ without the caller's MLflow/mlops-nb settings, pointed at `home` (and the clone's mlops_nb)."
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_LEAKY) and k not in ("GIT_SHA", "GIT_DIRTY", "JUPYTER_PATH", "IPYTHONDIR", "PYTHONPATH")}
    env.update(MLOPS_NB_HOME=str(home), PYSPARK_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1",
               MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false", IPYTHONDIR=str(Path(home)/".ipython"))
    if clone is not None: env["PYTHONPATH"] = str(clone)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def cli(env: dict, *args, cwd=None, timeout=900) -> subprocess.CompletedProcess:
    "Run `mlops-nb *args` with `env`."
    return subprocess.run([str(BIN/"mlops-nb"), *map(str, args)], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def clone(dest: Path) -> Path:
    "A fresh clone of the repository's committed state at `dest`."
    subprocess.run(["git", "clone", "-q", str(REPO), str(dest)], check=True, timeout=120)
    return dest


def head(repo: Path) -> str:
    "The HEAD commit of `repo`."
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()


def run_pipeline(env: dict, cwd: Path, steps: str, rows: int = 1500) -> dict:
    "Write demo data and run `steps` with logreg; return the job run's JSON."
    r = cli(env, "demo-data", "--rows", rows, cwd=cwd)
    assert r.returncode == 0, r.stderr
    r = cli(env, "run", "--steps", steps, "--param", "model_type=logreg", "--json", cwd=cwd)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return json.loads(r.stdout)


def shared_pipeline(shared_dir: Path):
    """One clone, home and train,evaluate,score run per test run (built once by whichever pytest-xdist worker asks
    first, see conftest's `build_once`), shared read-only by the trace, reproduce and MLflow CLI tests: copy the
    home before changing anything in it."""
    from conftest import build_once
    def build(d: Path) -> dict:
        src = clone(d/"src")
        return run_pipeline(clean_env(d/"home", src), src, "train,evaluate,score")
    job = build_once(shared_dir, "lineage-pipeline", build)
    d = shared_dir/"lineage-pipeline"
    return d/"src", d/"home", clean_env(d/"home", d/"src"), job


def mlflow_client(home: Path):
    "An MLflow client on `home`'s SQLite store."
    import mlflow
    uri = f"sqlite:///{Path(home)/'mlflow.db'}"
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
