"""The monitor's two engines through the CLI: `mlops-nb monitor` on the Spark engine (`monitor_engine = "spark"`, as on
Databricks, here on the local Spark) writes the profile and drift rows the Arrow engine (the local default) writes for
the same predictions, and its MLflow run says which engine ran."""
from __future__ import annotations
import numpy as np
import pandas as pd
import pytest

ARROW = """[dev]
slice_columns = ["plan", "region"]
"""
SPARK = ARROW + """monitor_engine = "spark"
profile_metrics_table = "spark_profile_metrics"
drift_metrics_table = "spark_drift_metrics"
alerts_table = "spark_alerts"
"""
LINEAGE = ["job_run_id", "mlflow_run_id", "monitored_at", "git_sha"]
KEY = ["window_start", "model_version", "slice_key", "slice_value", "column_name"]


@pytest.fixture(scope="module")
def both(seeded_home):
    "A champion's predictions of the demo batch, monitored by the Arrow engine, then by the Spark engine into tables of its own."
    home = seeded_home
    r = home.cli("run", "--json", "--steps", "train,evaluate,score", "--param", "model_type=logreg")
    assert r.returncode == 0, str(r)
    (home.path/"arrow.toml").write_text(ARROW)
    arrow = home.cli("monitor", "--json", env={"MLOPS_NB_CONFIG": home.path/"arrow.toml"})
    assert arrow.returncode == 0, str(arrow)
    (home.path/"spark.toml").write_text(SPARK)
    spark = home.cli("monitor", "--json", env={"MLOPS_NB_CONFIG": home.path/"spark.toml"})
    assert spark.returncode == 0, str(spark)
    return home, arrow.json()["steps"][0], spark.json()["steps"][0]


def _sorted(df: pd.DataFrame, key: list) -> pd.DataFrame:
    return df.drop(columns=LINEAGE).sort_values(key, kind="stable").reset_index(drop=True)


def test_the_run_names_its_engine(both):
    home, arrow, spark = both
    engines = [home.client().get_run(s["mlflow_run_id"]).data.params["engine"] for s in (arrow, spark)]
    assert engines == ["arrow", "spark"], engines
    assert arrow["outputs"]["rows"] == spark["outputs"]["rows"] == "1000", (arrow["outputs"], spark["outputs"])
    assert arrow["outputs"]["drifted"] == spark["outputs"]["drifted"] and arrow["outputs"]["alerts"] == spark["outputs"]["alerts"]


def test_spark_writes_the_arrow_rows(both):
    home = both[0]
    for kind, key in (("profile", KEY), ("drift", KEY + ["drift_type"])):
        a = _sorted(home.read_table(f"dev.mlops_nb.predictions_{kind}_metrics").data, key)
        s = _sorted(home.read_table(f"dev.mlops_nb.spark_{kind}_metrics").data, key)
        assert list(a.columns) == list(s.columns) and len(a) == len(s) >= 80, (kind, len(a), len(s))
        for c in a.columns:
            x, y = a[c], s[c]
            if pd.api.types.is_float_dtype(x):
                assert np.allclose(x, y, rtol=1e-9, atol=1e-12, equal_nan=True), (kind, c)
            elif c in ("ks_test", "chi_squared_test", "quantiles"):
                assert x.map(repr).tolist() == y.map(repr).tolist() or all(
                    (u is None and v is None) or np.allclose(pd.Series(u).astype(float), pd.Series(v).astype(float), rtol=1e-9, equal_nan=True)
                    for u, v in zip(x, y)), (kind, c)
            else:
                assert x.astype(str).tolist() == y.astype(str).tolist(), (kind, c)
