"""A real data set: scikit-learn's breast-cancer data (569 rows, label `target`) through train, evaluate, score."""
from __future__ import annotations
import pytest
from conftest import MODEL, PREDICTIONS

TABLE = "dev.mlops_nb.breast_cancer"


@pytest.fixture(scope="module")
def run(make_home):
    home = make_home("breast_cancer")
    with home.active():
        from mlops_nb.demo_data import write_breast_cancer
        assert write_breast_cancer(TABLE) == 0
    r = home.cli("run", "--json", "--steps", "train,evaluate,score", "--param", f"training_table={TABLE}",
                 "--param", "label=target", "--param", f"scoring_table={TABLE}")
    assert r.returncode == 0, str(r)
    return home, r.json()


def test_table_written(run):
    home, j = run
    snap = home.read_table(TABLE)
    assert snap.version == 0 and len(snap.data) == 569
    assert {"id", "target", "mean_radius"} <= set(snap.data.columns)
    assert snap.data.id.is_unique and set(snap.data.target) == {0, 1}


def test_runs_and_promotes(run):
    home, j = run
    assert j["status"] == "SUCCEEDED"
    assert [(s["name"], s["status"]) for s in j["steps"]] == [("train", "SUCCEEDED"), ("evaluate", "SUCCEEDED"), ("score", "SUCCEEDED")]
    assert j["model"]["version"] == "1"
    assert j["champion"] == {"name": MODEL, "version": "1"}
    assert str(home.client().get_model_version_by_alias(MODEL, "champion").version) == "1"


def test_holdout_auc_and_no_leakage(run):
    home, j = run
    c = home.client()
    train = c.get_run(j["model"]["mlflow_run_id"])
    assert train.data.metrics["holdout_auc"] > 0.9
    assert 0 < train.data.metrics["holdout_rows"] < 569
    assert train.data.metrics["training_rows"] + train.data.metrics["holdout_rows"] == 569
    p = train.data.params
    assert p["training_table"] == TABLE and p["label"] == "target" and p["keys"] == "id"
    features = p["features"].split(",")
    assert len(features) == 30 and "target" not in features and "id" not in features
    from mlops_nb.registry import version_lineage
    t = version_lineage(c.get_model_version(MODEL, "1").tags)
    assert t["data_table"] == TABLE and t["data_rows"] == "569"


def test_predictions(run):
    home, j = run
    assert j["predictions"]["rows"] == 569
    assert j["predictions"]["table"] == PREDICTIONS and j["predictions"]["version"] == 0
    df = home.read_table(PREDICTIONS, 0).data
    assert len(df) == 569 and df.prediction_id.is_unique
    assert sorted(df.id) == list(range(569))
    assert set(df.job_run_id) == {j["job_run_id"]} and set(df.model_version) == {"1"}
    # the model is good on this data: the predicted labels agree with the true ones for most rows
    truth = home.read_table(TABLE).data.set_index("id").target
    assert (df.set_index("id").prediction == truth.loc[df.id].values).mean() > 0.9
