"""Test helpers of tests/test_scoring.py and tests/test_serving.py: a home with demo data and a champion."""
from __future__ import annotations
import contextlib, os, sys
from pathlib import Path

CONTEXT = dict(env="dev", job_id="test", task_key="score", git_sha="c" * 40, git_dirty="false")
_LEAKY = ("MLOPS_NB_", "MLFLOW_", "DATABRICKS_", "DBR_")


@contextlib.contextmanager
def home_environ(home: Path, **extra):
    "os.environ pointed at `home` (and nothing leaking from the caller's shell) for the duration."
    saved = dict(os.environ)
    for k in [k for k in os.environ if k.startswith(_LEAKY) or k in ("GIT_SHA", "GIT_DIRTY")]: del os.environ[k]
    os.environ.update(MLOPS_NB_HOME=str(home), PYSPARK_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1",
                      MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false", **{k: str(v) for k, v in extra.items()})
    try: yield
    finally:
        os.environ.clear(); os.environ.update(saved)


_CALLS = []

def make_champion(rows: int = 3000, model_type: str = "logreg"):
    "Write demo tables in the current home, train one model version and make it champion; return the TrainResult (each call its own job run, so its own version)."
    import mlflow
    from mlops_nb.config import load_config
    from mlops_nb.context import resolve_context
    from mlops_nb.demo_data import write_demo_tables
    from mlops_nb.training import train_candidate
    cfg = load_config("dev")
    write_demo_tables(cfg, rows=rows)
    _CALLS.append(model_type)   # train registers one version per job run and task: a new run id per call
    ctx = resolve_context(run_id=f"local-20260101T000000-{len(_CALLS):06d}", **{**CONTEXT, "task_key": "train"})
    res = train_candidate(ctx, cfg, model_type=model_type)
    mlflow.MlflowClient().set_registered_model_alias(cfg.registered_model, "champion", res.version)
    return res
