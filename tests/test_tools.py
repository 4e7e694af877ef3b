"""The maintenance tools in tools/: `make reset-demo` (tools/reset_demo.py), in process on a throwaway home."""
from __future__ import annotations
import os, sys
from pathlib import Path
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent/"tools"))
import reset_demo  # noqa: E402
from mlops_nb.core import MlopsNbError, env_vars  # noqa: E402


def test_reset_demo_removes_only_what_mlops_nb_wrote(tmp_path):
    (tmp_path/"runs"/"job").mkdir(parents=True); (tmp_path/"tables").mkdir(); (tmp_path/"mlflow.db").write_text("x")
    (tmp_path/"notes.txt").write_text("mine")
    with env_vars(MLOPS_NB_HOME=str(tmp_path), MLFLOW_TRACKING_URI=None):
        with pytest.raises(MlopsNbError, match="holds notes.txt, which mlops-nb did not write"): reset_demo.reset_home()
        assert (tmp_path/"mlflow.db").exists() and (tmp_path/"runs"/"job").exists()   # refused: nothing removed
        (tmp_path/"notes.txt").unlink()
        lines = reset_demo.reset_home()
        assert lines == [f"removed {tmp_path.resolve()/'mlflow.db'} (the MLflow tracking and registry store)",
                         f"removed {tmp_path.resolve()/'tables'} (the Delta tables)",
                         f"removed {tmp_path.resolve()/'runs'} (the executed notebooks of every job run)"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["locks"]
    with env_vars(MLOPS_NB_HOME=str(tmp_path), MLFLOW_TRACKING_URI="http://127.0.0.1:5000"):
        with pytest.raises(MlopsNbError, match="resets only the local store"): reset_demo.reset_home()


def test_reset_demo_refuses_while_a_command_holds_the_lock(tmp_path):
    from mlops_nb.env_lock import env_lock
    (tmp_path/"mlflow.db").write_text("x")
    with env_vars(MLOPS_NB_HOME=str(tmp_path), MLFLOW_TRACKING_URI=None), env_lock("staging"):
        with pytest.raises(MlopsNbError, match="env staging is locked by"): reset_demo.reset_home()
    assert (tmp_path/"mlflow.db").exists()


def test_mlproject_entry_points_run_the_pipeline_steps():
    "The top-level MLproject loads with MLflow's own parser; each entry point runs its steps through mlops_nb.mlproject."
    from mlflow.projects._project_spec import load_project
    from mlops_nb.runner import STEPS, PIPELINE_STEPS
    root = Path(__file__).resolve().parent.parent
    project = load_project(str(root))
    want = {"main": ",".join(PIPELINE_STEPS), **{s: s for s in STEPS}}
    assert sorted(project._entry_points) == sorted(want)
    for name, steps in want.items():
        cmd = project.get_entry_point(name).compute_command({}, storage_dir=None)
        assert cmd.startswith("python -c 'from mlops_nb.mlproject import console; console()' --env dev") and f"--steps {steps}" in cmd, cmd
