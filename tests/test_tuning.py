"""`mlops-nb tune` in a temporary clone: a seeded search logged as one MLflow run with a nested run per trial and its
figures, the best parameters written to the clone's conf/params.toml, which `mlops-nb run --steps train` then uses
(its params and the params file's hash and tuning run on the train run); bad input exits 2 and writes nothing."""
from __future__ import annotations
import hashlib, json, shutil, tomllib
from pathlib import Path
import pytest
from conftest import copy_tables
from lineage_helpers import clone, clean_env, cli, mlflow_client


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, demo_tables):
    "A clone and a seeded home (5000 demo rows) in which `mlops-nb tune --model-type hgb --trials 3` ran."
    d = tmp_path_factory.mktemp("tuning")
    src, home = clone(d/"src"), d/"home"
    shutil.copytree(Path(demo_tables)/"tables", home/"tables")
    env = clean_env(home, src)
    r = cli(env, "tune", "--env", "dev", "--model-type", "hgb", "--trials", "3", "--json", cwd=src)
    return src, home, env, r


def test_tune_logs_trials_as_nested_runs_and_writes_the_params_file(tuned):
    src, home, env, r = tuned
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    out = json.loads(r.stdout)
    progress = [l for l in r.stderr.splitlines() if l.startswith("trial ")]
    assert [l.split(":")[0] for l in progress] == ["trial 1/3", "trial 2/3", "trial 3/3"], r.stderr[-3000:]
    assert out["trials"] == 3 and out["model_type"] == "hgb" and Path(out["params_file"]) == src/"conf"/"params.toml"
    client = mlflow_client(home)
    parent = client.get_run(out["mlflow_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["task_key"] == "tune"
    assert parent.data.tags["data_table"] == "dev.mlops_nb.training" and parent.data.tags["GIT_SHA"]
    kids = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(kids) == 3 and all(k.info.status == "FINISHED" for k in kids)
    best = max(kids, key=lambda k: k.data.metrics["cv_auc"])
    assert best.data.metrics["cv_auc"] == pytest.approx(out["cv_auc"]) == pytest.approx(parent.data.metrics["best_cv_auc"])
    assert 0.6 < out["cv_auc"] < 1
    assert {k: best.data.params[k] for k in out["best_params"]} == {k: str(v) for k, v in out["best_params"].items()}
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "tuning")} == {"tuning/history.png", "tuning/param_importances.png"}
    written = tomllib.loads((src/"conf"/"params.toml").read_text())
    assert {k: v for k, v in written["hgb"].items() if k != "_tuning"} == out["best_params"]
    assert written["hgb"]["_tuning"]["mlflow_run_id"] == parent.info.run_id and written["hgb"]["_tuning"]["trials"] == 3
    assert set(out["best_params"]) == {"learning_rate", "max_iter", "max_leaf_nodes", "min_samples_leaf", "l2_regularization"}


def test_train_uses_the_tuned_parameters(tuned):
    src, home, env, _ = tuned
    path = src/"conf"/"params.toml"
    params = {k: v for k, v in tomllib.loads(path.read_text())["hgb"].items() if k != "_tuning"}
    r = cli(env, "run", "--env", "dev", "--steps", "train", "--param", "model_type=hgb", "--json", cwd=src)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    run = mlflow_client(home).get_run(json.loads(r.stdout)["model"]["mlflow_run_id"])
    assert {k: run.data.params[f"clf.{k}"] for k in params} == {k: str(v) for k, v in params.items()}
    tags = run.data.tags
    assert tags["params_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert tags["params_file"] == "conf/params.toml"
    assert tags["params_tuning_run"] == tomllib.loads(path.read_text())["hgb"]["_tuning"]["mlflow_run_id"]
    t = cli(env, "trace", run.info.run_id, cwd=src)
    assert f"conf/params.toml sha256 {tags['params_sha256']}, chosen by tuning run {tags['params_tuning_run']}" in t.stdout, t.stdout


def _refused(env, src, home, *args, expect: str):
    "Run `mlops-nb tune *args`: exit 2, one error line containing `expect`, no MLflow store and no params file written."
    r = cli(env, "tune", *args, cwd=src)
    assert r.returncode == 2, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlops-nb tune: error: ") and expect in lines[0], r.stderr
    assert not (home/"mlflow.db").exists() and not (src/"conf"/"params.toml").exists()
    return lines[0]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, demo_tables):
    "A clone without a params file and a seeded home without an MLflow store."
    d = tmp_path_factory.mktemp("tuning-bad")
    src, home = clone(d/"src"), d/"home"
    shutil.copytree(Path(demo_tables)/"tables", home/"tables")
    return src, home, clean_env(home, src)


def test_bad_input_exits_2_and_writes_nothing(fresh):
    src, home, env = fresh
    _refused(env, src, home, "--trials", "0", expect="trials: expected 1 or more, found 0")
    _refused(env, src, home, "--timeout", "0", expect="timeout: expected a number of seconds above 0, found 0.0")
    _refused(env, src, home, "--model-type", "xgb", expect="model_type: expected one of logreg, hgb, dummy, found 'xgb'")
    _refused(env, src, home, "--model-type", "dummy", expect="model_type dummy has no search space")
    _refused(env, src, home, "--env", "staging", expect="tuning is for dev; staging and prod train with the committed parameters in conf/params.toml")
    _refused(env, src, home, "--env", "prod", expect="tuning is for dev")


def test_a_bad_search_space_exits_2_naming_it(fresh, tmp_path):
    src, home, env = fresh
    conf = tmp_path/"conf.toml"
    conf.write_text('[all.search_spaces.hgb]\nlearning_rat = {low = 0.01, high = 0.3}\n')
    _refused(clean_env(home, src, MLOPS_NB_CONFIG=conf), src, home, "--trials", "2",
             expect="search_spaces.hgb: learning_rat is not a parameter of HistGradientBoostingClassifier")
    conf.write_text('[all.search_spaces.hgb]\nmax_iter = {low = 50, high = 50}\n')
    _refused(clean_env(home, src, MLOPS_NB_CONFIG=conf), src, home, "--trials", "2", expect="search_spaces")


def test_a_params_file_with_an_unknown_parameter(fresh, tmp_path):
    "tune refuses to keep a broken table of the file; run refuses it before any step (exit 2), naming the parameter and the file."
    src, home, env = fresh
    bad = tmp_path/"params.toml"
    bad.write_text('[logreg]\nCC = 0.5\n')
    before = bad.read_bytes()
    r = cli(env, "tune", "--trials", "2", "--params-file", bad, cwd=src)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()], r.stderr
    assert f"{bad} [logreg]: CC is not a parameter of LogisticRegression" in r.stderr, r.stderr
    assert bad.read_bytes() == before and not (home/"mlflow.db").exists()
    conf = tmp_path/"conf.toml"
    conf.write_text(f'[all]\nparams_file = "{bad}"\n')
    r = cli(clean_env(home, src, MLOPS_NB_CONFIG=conf), "run", "--steps", "train", "--param", "model_type=logreg", cwd=src)
    assert r.returncode == 2 and f"{bad} [logreg]: CC is not a parameter of LogisticRegression" in r.stderr, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and not (home/"runs").exists()     # refused before anything ran
    assert mlflow_client(home).search_registered_models() == []
