"""Batch scoring on Spark: input checks, lineage columns, one transaction, idempotent reruns (real MLflow, Spark, Delta)."""
from __future__ import annotations
import numpy as np, pandas as pd, pytest
from scoring_helpers import CONTEXT, home_environ, make_champion


@pytest.fixture(scope="module")
def champ(tmp_path_factory, spark):
    "A home with demo data and a logreg champion; the test process's one Spark session (conftest's `spark`)."
    home = tmp_path_factory.mktemp("scoring-home")
    with home_environ(home):
        res = make_champion(rows=3000)
        yield home, res


def _ctx(run_id):
    from mlops_nb.context import resolve_context
    return resolve_context(run_id=run_id, **CONTEXT)


def test_score_appends_rows_with_lineage_and_a_rerun_adds_none(champ):
    import mlflow
    from mlops_nb.config import load_config
    from mlops_nb.lakehouse import read_table, table_version
    from mlops_nb.scoring import score_table, prediction_id
    from mlops_nb.training import positive_proba
    home, model = champ
    cfg = load_config("dev")
    batch = read_table(cfg.qualify(cfg.scoring_table))
    run_id = "local-20260101T000000-aaaaaa"
    r = score_table(_ctx(run_id), cfg)
    assert (r.rows, r.skipped, r.model_version, r.input_version) == (len(batch.data), 0, model.version, batch.version)
    out = read_table(r.predictions_table).data
    assert len(out) == len(batch.data) and out.prediction_id.is_unique
    assert set(out.columns) >= {"prediction_id", "id", "probability", "prediction", "model_name", "model_version",
                                "model_run_id", "git_sha", "job_run_id", "scored_at", "input_table", "input_version"}
    row = out.iloc[7]
    assert row.prediction_id == prediction_id(run_id, model.version, int(row.id))
    assert (row.model_run_id, row.git_sha, row.job_run_id, row.input_version) == (model.mlflow_run_id, "c" * 40, run_id, batch.version)
    # the same probabilities as the model in pandas (class 1, not class 0), and labels at the threshold
    pyfunc = mlflow.pyfunc.load_model(f"models:/{cfg.registered_model}/{model.version}")
    want = pd.Series(positive_proba(pyfunc.predict(batch.data.drop(columns=["id"]))), index=batch.data.id)
    got = out.set_index("id").probability.loc[want.index]
    assert np.abs(got.to_numpy() - want.to_numpy()).max() < 1e-9
    assert (out.prediction == (out.probability >= cfg.decision_threshold).astype(int)).all()
    # the input table's version is a tag of the step's run
    run = mlflow.MlflowClient().search_runs([mlflow.get_experiment_by_name(cfg.experiment_name).experiment_id],
                                            f"tags.DBR_RUN_ID = '{run_id}' and tags.task_key = 'score'")[0]
    assert (run.data.tags["input_version"], run.data.tags["output.rows"]) == (str(batch.version), str(len(batch.data)))
    # a rerun of the same job run id writes nothing (no new commit); another job run appends again
    again = score_table(_ctx(run_id), cfg)
    assert (again.rows, again.skipped, again.predictions_version) == (0, len(batch.data), r.predictions_version)
    assert table_version(r.predictions_table) == r.predictions_version
    other = score_table(_ctx("local-20260101T000000-bbbbbb"), cfg)
    assert (other.rows, other.predictions_version) == (len(batch.data), r.predictions_version + 1)
    assert len(read_table(r.predictions_table).data) == 2 * len(batch.data)


def test_bad_input_lists_every_problem_and_writes_nothing(champ):
    from mlops_nb.config import load_config
    from mlops_nb.core import DataError
    from mlops_nb.lakehouse import read_table, write_table, table_exists
    from mlops_nb.scoring import score_table
    from mlops_nb.model_input import model_inputs
    home, model = champ
    cfg = load_config("dev")
    inputs = model_inputs(f"models:/{cfg.registered_model}/{model.version}")
    required = [c.name for c in inputs if c.required]
    assert {"age", "plan", "balance"} <= set(required), inputs
    df = read_table(cfg.qualify(cfg.scoring_table)).data.head(200).copy()
    df = df.drop(columns=["age"]).assign(plan=1.5, extra="passes through")
    df.loc[3:7, "balance"] = np.nan
    write_table(df, "dev.mlops_nb.bad_batch", mode="overwrite")
    out_table = "dev.mlops_nb.bad_predictions"
    with pytest.raises(DataError) as e:
        score_table(_ctx("local-20260101T000000-cccccc"), cfg, table="dev.mlops_nb.bad_batch", predictions_table=out_table)
    msg = str(e.value)
    for part in ("column age (double, required) is missing", "column plan: expected string, found double",
                 "column balance has 5 null value(s)", "nothing was written"):
        assert part in msg, msg
    assert "extra" not in msg
    assert not table_exists(out_table)


def test_optional_columns_may_be_missing(champ):
    from mlops_nb.config import load_config
    from mlops_nb.lakehouse import read_table, write_table
    from mlops_nb.scoring import score_table
    from mlops_nb.model_input import model_inputs
    home, model = champ
    cfg = load_config("dev")
    optional = [c.name for c in model_inputs(f"models:/{cfg.registered_model}/{model.version}") if not c.required]
    if not optional: pytest.skip("this champion's signature has no optional column")
    df = read_table(cfg.qualify(cfg.scoring_table)).data.head(300).drop(columns=optional)
    write_table(df, "dev.mlops_nb.slim_batch", mode="overwrite")
    r = score_table(_ctx("local-20260101T000000-dddddd"), cfg, table="dev.mlops_nb.slim_batch", predictions_table="dev.mlops_nb.slim_predictions")
    out = read_table("dev.mlops_nb.slim_predictions").data
    assert r.rows == 300 and out.probability.between(0, 1).all()


def test_a_version_logged_with_predict_proba_still_scores_class_1(champ):
    "Versions logged before `PositiveClassModel` (sklearn flavor, pyfunc predict = predict_proba) score as before."
    import mlflow
    from mlflow.models import infer_signature
    from mlops_nb.config import load_config
    from mlops_nb.lakehouse import read_table, write_table
    from mlops_nb.pyfunc_model import sklearn_estimator
    from mlops_nb.scoring import score_table
    from mlops_nb.training import SKOPS_TRUSTED_TYPES, pip_requirements
    home, model = champ
    cfg = load_config("dev")
    est = sklearn_estimator(mlflow.pyfunc.load_model(f"models:/{cfg.registered_model}/{model.version}"))
    df = read_table(cfg.qualify(cfg.scoring_table)).data.head(400)
    x = df.drop(columns=["id"])
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(est, name="model", signature=infer_signature(x, est.predict_proba(x)),
                                        pyfunc_predict_fn="predict_proba", pip_requirements=pip_requirements(),
                                        skops_trusted_types=SKOPS_TRUSTED_TYPES)
    old = mlflow.register_model(info.model_uri, cfg.registered_model)
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(cfg.registered_model, "champion", old.version)
    try:
        write_table(df, "dev.mlops_nb.old_model_batch", mode="overwrite")
        r = score_table(_ctx("local-20260101T000000-eeeeee"), cfg, table="dev.mlops_nb.old_model_batch",
                        predictions_table="dev.mlops_nb.old_model_predictions")
    finally:
        client.set_registered_model_alias(cfg.registered_model, "champion", model.version)
    out = read_table("dev.mlops_nb.old_model_predictions").data.set_index("id").loc[df.id]
    assert (r.rows, r.model_version) == (400, str(old.version))
    assert np.abs(out.probability.to_numpy() - est.predict_proba(x)[:, 1]).max() < 1e-12  # class 1, not class 0


def test_null_counts_agree_between_spark_and_the_arrow_snapshot(champ):
    "Locally `check_input` counts nulls and NaN in the Delta snapshot with pyarrow: the same lines as the Spark job."
    import pyarrow as pa
    from mlops_nb.lakehouse import open_delta, write_table
    from mlops_nb.model_input import InputColumn, null_problems
    from mlops_nb.scoring import get_spark, read_spark_table
    t = pa.table({"a": pa.array([1.0, float("nan"), None, 4.0]), "b": pa.array(["x", None, "y", None]),
                  "c": pa.array([1, 2, 3, None], pa.int64()), "d": pa.array([1.0, 2.0, 3.0, 4.0]), "e": pa.array([None] * 4, pa.float64())})
    write_table(t, "dev.mlops_nb.nulls_batch", mode="overwrite")
    inputs = [InputColumn("a", "double", True), InputColumn("b", "string", True), InputColumn("c", "long", True),
              InputColumn("d", "double", True), InputColumn("e", "double", False), InputColumn("f", "double", True)]
    sdf, v = read_spark_table("dev.mlops_nb.nulls_batch")
    on_spark = null_problems(sdf, inputs)
    on_arrow = null_problems(sdf, inputs, open_delta("dev.mlops_nb.nulls_batch", v).to_pyarrow_dataset())
    assert on_spark == on_arrow
    assert [line.split(" value(s)")[0] for line in on_arrow] == ["column a has 2 null", "column b has 2 null", "column c has 1 null"]


def test_arrow_null_counts_take_a_column_an_older_file_lacks_as_nulls(champ):
    "After a schema change, an older file has no column `b`: its rows count as nulls, as any reader sees them."
    import pyarrow as pa
    from deltalake import write_deltalake
    from mlops_nb.lakehouse import open_delta, table_path, write_table
    from mlops_nb.model_input import _arrow_null_counts
    write_table(pa.table({"a": pa.array([1.0, 2.0, 3.0])}), "dev.mlops_nb.evolved", mode="overwrite")
    write_deltalake(str(table_path("dev.mlops_nb.evolved")), pa.table({"a": pa.array([float("nan"), 5.0]), "b": pa.array(["x", None])}),
                    mode="append", schema_mode="merge")
    data = open_delta("dev.mlops_nb.evolved").to_pyarrow_dataset()
    assert _arrow_null_counts(data, ["a", "b"]) == {"a": 1, "b": 4}


def test_spark_arrow_batches_streams_every_partition_once(champ):
    "The JVM streams each partition's Arrow batches as it finishes: every row comes back exactly once."
    import pyarrow as pa
    from pyspark.sql import functions as F
    from mlops_nb.scoring import get_spark, spark_arrow_batches
    sdf = get_spark().range(0, 20_000, numPartitions=8).withColumn("half", F.col("id") * 0.5)
    t = pa.Table.from_batches(list(spark_arrow_batches(sdf)))
    assert t.num_rows == 20_000 and sorted(t.column("id").to_pylist()) == list(range(20_000))
    assert all(h == i * 0.5 for i, h in zip(t.column("id").to_pylist(), t.column("half").to_pylist()))


def test_a_task_failing_mid_stream_ends_it_with_its_error_and_commits_nothing(champ):
    "Batches from finished partitions already reached the writer when a later task fails: no commit, the UDF's error."
    import pyarrow as pa
    from pyspark.sql import functions as F
    from mlops_nb.lakehouse import read_table, table_version, write_table
    from mlops_nb.scoring import batch_reader, get_spark, spark_arrow_batches
    schema = pa.schema([("id", pa.int64()), ("y", pa.int64())])
    v0 = write_table(pa.table({"id": [-1], "y": [0]}, schema=schema), "dev.mlops_nb.stream_out", mode="overwrite")
    spark = get_spark()
    boom = F.udf(lambda i: 1 // 0 if i == 19_999 else i, "long")  # the last of 8 partitions fails
    sdf = spark.range(0, 20_000, numPartitions=8).withColumn("y", boom("id"))
    seen = []
    def counted(batches):
        for b in batches: seen.append(b.num_rows); yield b
    with pytest.raises(Exception, match="ZeroDivisionError"):
        write_table(batch_reader(counted(spark_arrow_batches(sdf)), schema), "dev.mlops_nb.stream_out", mode="append")
    assert sum(seen) > 0  # the failure came mid-stream, after some rows were handed to the writer
    assert table_version("dev.mlops_nb.stream_out") == v0 and read_table("dev.mlops_nb.stream_out").data.id.tolist() == [-1]


def test_a_consumer_that_stops_early_leaves_spark_usable(champ):
    "Closing the stream after one batch fails the job quietly; the session runs the next job."
    from mlops_nb.scoring import get_spark, spark_arrow_batches
    spark = get_spark()
    g = spark_arrow_batches(spark.range(0, 200_000, numPartitions=8))
    assert next(g).num_rows > 0
    g.close()
    assert spark.range(0, 1000, numPartitions=4).count() == 1000
