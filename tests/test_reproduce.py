"""`mlops-nb reproduce` in a temporary clone: a clean commit matches, time travel keeps a rewritten table
reproducible, a vacuumed version and a changed fingerprint are reported, dirty runs are refused, the registry is untouched."""
from __future__ import annotations
import json, shutil, subprocess
import pandas as pd
import pytest
from deltalake import DeltaTable, write_deltalake
from lineage_helpers import shared_pipeline, clean_env, cli, mlflow_client, MODEL

TABLE = "dev.mlops_nb.training"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_dir):
    "A copy of the shared pipeline's home (its train run, from the clean HEAD of a clone, is the original to reproduce)."
    src, home, env, job = shared_pipeline(shared_dir)
    copy = tmp_path_factory.mktemp("reproduce")/"home"
    shutil.copytree(home, copy, ignore=shutil.ignore_patterns("runs", "jupyter", ".ipython"))
    return src, copy, clean_env(copy, src), job["model"]["mlflow_run_id"]


def table_dir(home):
    return str(home/"tables"/"dev"/"mlops_nb"/"training")


def reproduce(env, src, run_id):
    r = cli(env, "reproduce", run_id, "--json", cwd=src)
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    return r


def check_match(r, run_id, client):
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    rep = json.loads(r.stdout)
    assert rep["matches"] is True and rep["max_abs_prediction_diff"] == 0.0 and rep["holdout_rows"] > 100
    assert all(m["abs_diff"] == 0.0 for m in rep["metrics"].values()) and "holdout_auc" in rep["metrics"]
    assert rep["differences"] == {"code": [], "data": [], "environment": [], "results": []} and rep["run_id"] == run_id
    new = client.get_run(rep["reproduced_run_id"])
    assert new.data.tags["reproduces"] == run_id and new.data.tags["registered"] == "false"
    assert new.data.tags["mlops_nb_path"].startswith("/") and "mlops-nb-reproduce-" in new.data.tags["mlops_nb_path"]
    assert [a.path for a in client.list_artifacts(new.info.run_id, "notebooks")] == ["notebooks/train.ipynb"]
    return rep


def test_clean_commit_reproduces_through_time_travel(trained):
    """A run from a clean commit, whose table has been overwritten since: the recorded version is read by time
    travel and the re-run gives identical metrics and predictions; the registry is unchanged."""
    src, home, env, run_id = trained
    client = mlflow_client(home)
    versions = [v.version for v in client.search_model_versions(f"name='{MODEL}'")]
    df = DeltaTable(table_dir(home)).to_pandas()
    write_deltalake(table_dir(home), df.sample(frac=0.5, random_state=1).reset_index(drop=True), mode="overwrite")
    assert DeltaTable(table_dir(home)).version() == 1
    check_match(reproduce(env, src, f"models:/{MODEL}@champion"), run_id, client)  # a model URI: the run that trained it
    assert [v.version for v in client.search_model_versions(f"name='{MODEL}'")] == versions  # registry unchanged
    assert "mlops-nb-reproduce-" not in subprocess.run(["git", "-C", str(src), "worktree", "list"], capture_output=True, text=True).stdout


def test_vacuumed_version_is_reported(trained, tmp_path):
    src, home, env, run_id = trained
    copy = tmp_path/"home"
    shutil.copytree(home, copy, ignore=shutil.ignore_patterns("runs", "jupyter", ".ipython"))
    dt = DeltaTable(table_dir(copy))
    if dt.version() == 0: write_deltalake(table_dir(copy), dt.to_pandas().head(100), mode="overwrite")
    DeltaTable(table_dir(copy)).vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    r = reproduce(clean_env(copy, src), src, run_id)
    assert r.returncode == 1
    rep = json.loads(r.stdout)
    assert rep["matches"] is False and rep["reproduced_run_id"] is None
    assert rep["differences"]["data"][0].startswith(f"table {TABLE} version 0 can no longer be read")
    assert "vacuumed or deleted" in rep["differences"]["data"][0]
    text = cli(clean_env(copy, src), "reproduce", run_id, cwd=src)
    assert text.returncode == 1 and "DIFFERS" in text.stdout and "data differs: table" in text.stdout


def test_fingerprint_mismatch_is_reported(trained, tmp_path):
    "The table was re-created: version 0 exists again but holds other rows."
    src, home, env, run_id = trained
    copy = tmp_path/"home"
    shutil.copytree(home, copy, ignore=shutil.ignore_patterns("runs", "jupyter", ".ipython"))
    df = DeltaTable(table_dir(copy), version=0).to_pandas()
    shutil.rmtree(table_dir(copy))
    write_deltalake(table_dir(copy), df.assign(income=df.income * 2), mode="overwrite")
    r = reproduce(clean_env(copy, src), src, run_id)
    assert r.returncode == 1
    rep = json.loads(r.stdout)
    assert "now has fingerprint" in rep["differences"]["data"][0] and "re-created or rewritten" in rep["differences"]["data"][0]
    assert rep["reproduced_run_id"] is None


def test_refusals(trained):
    "A dirty run (naming its uncommitted files), an unknown model version, a commit the repo lacks, a step that is not train, an unknown run: one line, exit 1."
    src, home, env, run_id = trained
    client = mlflow_client(home)
    orig = client.get_run(run_id)
    def copy_run(**tags):
        r = client.create_run(orig.info.experiment_id, tags={**orig.data.tags, **tags})
        for k, v in orig.data.params.items(): client.log_param(r.info.run_id, k, v)
        client.set_terminated(r.info.run_id)
        return r.info.run_id
    cases = [(copy_run(GIT_DIRTY="true"), "trained from a dirty working tree (GIT_DIRTY=true)"),
             (copy_run(GIT_DIRTY="true", GIT_DIRTY_FILES="untracked mlflow.db; modified nbs/07_training.ipynb"),
              "uncommitted: untracked mlflow.db; modified nbs/07_training.ipynb; code that is in no commit"),
             (f"models:/{MODEL}/99", f"model {MODEL} has no version 99"),
             (copy_run(GIT_SHA="f" * 40), f"commit {'f' * 40}, which is not in the git repository at {src}"),
             ("0" * 32, "no MLflow run")]
    explore = client.create_run(orig.info.experiment_id, tags={"task_key": "explore"}).info.run_id
    cases.append((explore, "is the explore step, not a train run"))
    for rid, message in cases:
        r = cli(env, "reproduce", rid, cwd=src)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("mlops-nb reproduce: error:"), r.stderr
        assert message in lines[0], lines[0]
