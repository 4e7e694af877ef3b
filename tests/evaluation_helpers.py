"""Helpers of tests/test_evaluation.py: train and evaluate in this process (no kernel start-up) against a home."""
from __future__ import annotations
import contextlib, os
from mlops_nb.config import load_config
from mlops_nb.context import RunContext
from mlops_nb.core import new_job_run_id

WEAK = dict(model_type="logreg", features="age,visits")  # a real but weak model (held-out AUC about 0.62)
STRONG = dict(model_type="hgb")                           # all features (held-out AUC about 0.73)


@contextlib.contextmanager
def pointed_at(path, **env):
    "Point the library in this process at home `path` (and set `env`) for the duration."
    # mlflow.set_tracking_uri/set_registry_uri also export MLFLOW_TRACKING_URI/MLFLOW_REGISTRY_URI, which
    # mlflow_store.tracking_uri() prefers: clear them, or MLflow would stay on the previous home.
    keys = {"MLOPS_NB_HOME": str(path), **env}
    old = {k: os.environ.get(k) for k in [*keys, "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"]}
    os.environ.update(keys)
    for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"): os.environ.pop(k, None)
    try: yield
    finally:
        for k, v in old.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v


def context(env: str, step: str) -> RunContext:
    "A run context such as the runner gives a step."
    return RunContext(env, "test", new_job_run_id("local"), step, "f"*40, "false")


def write_data(env: str, rows: int = 4000):
    "The demo tables of `env`."
    from mlops_nb.demo_data import write_demo_tables
    return write_demo_tables(load_config(env), rows=rows, scoring_rows=300)


def train(env: str, model_type: str, features: str = None) -> str:
    "Train and register one candidate of `env`; its version."
    from mlops_nb.training import train_candidate
    return train_candidate(context(env, "train"), load_config(env), model_type=model_type, features=features).version


def evaluate(env: str, n_boot: int = 200, **overrides):
    "Run the evaluate step's library call for `env` (settings changed by `overrides`); the Decision."
    from mlops_nb.evaluation import evaluate_candidates
    return evaluate_candidates(context(env, "evaluate"), load_config(env, **overrides), n_boot=n_boot)


def client():
    "An MlflowClient on the home in force."
    import mlflow
    from mlops_nb.mlflow_store import tracking_uri
    return mlflow.MlflowClient(tracking_uri=tracking_uri(), registry_uri=tracking_uri())


def alias(name: str, which: str):
    "The version (str) behind alias `which`, or None."
    from mlops_nb.registry import get_alias
    mv = get_alias(client(), name, which)
    return str(mv.version) if mv else None
