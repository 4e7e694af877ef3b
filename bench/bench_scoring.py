"""Benchmark of batch scoring (`score_table` on Spark local) against the in-process limit, and its peak memory.

Table to table, with an `hgb` champion on 20 features: (1) the in-process limit: one Python process reads the table
with pyarrow, runs `predict_proba`, writes the result with pyarrow; (2) the `score` step (`score_table`): Spark
reads the snapshot, `spark_udf` predicts, the rows stream into one Delta commit. Both run as child processes
whose whole process tree (driver, JVM, Python workers) is sampled with psutil for peak RSS. (3) Optionally a
bigger table for the peak memory of the whole job alone.

    .venv/bin/python bench/bench_scoring.py                              # defaults: 300,000 rows, memory run 600,000
    .venv/bin/python bench/bench_scoring.py --rows 5000000 --memory-rows 20000000   # the full sizes
    .venv/bin/python bench/bench_scoring.py --rows 5000000 --memory-rows 0 --pairs 3  # the ratio, three pairs
Environment: MLOPS_NB_BENCH_ROWS, MLOPS_NB_BENCH_MEMORY_ROWS, MLOPS_NB_BENCH_PAIRS (same as the flags). On a shared
machine the in-process limit (both cores through OpenMP) suffers more from other load than the Spark job does:
run pairs and read the median.
The job's Spark settings come from the environment as in production: MLOPS_NB_SPARK_DRIVER_MEMORY (default 1g;
the local JVM's heap, the largest part of the job's memory), MLOPS_NB_SPARK_ARROW_BATCH, MLOPS_NB_SPARK_MASTER.
"""
from __future__ import annotations
import argparse, json, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path

N_NUM, N_CAT = 18, 2  # 20 features


def make_rows(n: int, seed: int, first_id: int = 0, label: bool = True):
    "A pandas frame of `n` rows: id, 18 numeric and 2 categorical features (some missing), and a label."
    import numpy as np, pandas as pd
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_NUM))
    df = pd.DataFrame(x, columns=[f"x{i:02d}" for i in range(N_NUM)])
    df.insert(0, "id", np.arange(first_id, first_id + n, dtype="int64"))
    df["c0"] = rng.choice(np.array(["a", "b", "c", "d"], dtype=object), n)
    df["c1"] = rng.choice(np.array(["p", "q", "r"], dtype=object), n)
    if label:
        logit = x[:, :6] @ np.array([0.8, -0.5, 0.3, 0.6, -0.4, 0.2]) + 0.7 * x[:, 6] * x[:, 7] + (df.c0 == "a") * 0.5
        df["label"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype("int64")
    df.loc[rng.random(n) < 0.02, "x00"] = np.nan  # x00 and c1 optional: missing values in training
    df.loc[rng.random(n) < 0.02, "c1"] = None
    return df


def setup(home: Path, rows: int, chunk: int = 500_000) -> str:
    "Train an hgb champion on 50,000 rows and write a scoring table of `rows` rows (one commit, written in chunks)."
    import mlflow, pyarrow as pa
    from mlops_nb.config import load_config
    from mlops_nb.context import resolve_context
    from mlops_nb.lakehouse import write_table
    from mlops_nb.training import train_candidate
    cfg = load_config("dev")
    write_table(make_rows(50_000, 0), cfg.qualify(cfg.training_table), mode="overwrite")
    ctx = resolve_context("dev", "bench", "local-20260101T000000-bench0", "train", "b" * 40, "false")
    res = train_candidate(ctx, cfg, model_type="hgb")
    mlflow.MlflowClient().set_registered_model_alias(cfg.registered_model, "champion", res.version)
    return write_scoring_table(cfg, rows, chunk)


def write_scoring_table(cfg, rows: int, chunk: int = 500_000) -> str:
    "Write a scoring table of `rows` rows in one commit, generated chunk by chunk."
    import pyarrow as pa
    from mlops_nb.lakehouse import write_table
    name = cfg.qualify(f"bench_batch_{rows}")
    first = pa.Table.from_pandas(make_rows(min(chunk, rows), 1, 0, label=False), preserve_index=False)
    def batches():
        yield from first.to_batches()
        for i, start in enumerate(range(chunk, rows, chunk)):
            t = pa.Table.from_pandas(make_rows(min(chunk, rows - start), 2 + i, start, label=False), preserve_index=False)
            yield from t.cast(first.schema).to_batches()
    write_table(pa.RecordBatchReader.from_batches(first.schema, batches()), name, mode="overwrite")
    return name


def in_process(table: str, out: str) -> dict:
    "The limit: pyarrow read, predict_proba, pyarrow write, in this one process."
    import mlflow, numpy as np, pyarrow as pa, pyarrow.parquet as pq
    from mlops_nb.config import load_config
    from mlops_nb.mlflow_store import configure_mlflow
    from mlops_nb.lakehouse import open_delta
    cfg = load_config("dev"); configure_mlflow(cfg)
    from mlops_nb.pyfunc_model import sklearn_estimator
    model = sklearn_estimator(mlflow.pyfunc.load_model(f"models:/{cfg.registered_model}@champion"))  # the bare estimator
    t0 = time.perf_counter()
    data = open_delta(table).to_pyarrow_dataset().to_table()
    proba = model.predict_proba(data.drop_columns(["id"]).to_pandas())[:, 1]
    pq.write_table(pa.table({"id": data.column("id"), "probability": proba, "prediction": (proba >= 0.5).astype("int32")}), out)
    return {"seconds": time.perf_counter() - t0, "rows": data.num_rows}


def spark_job(table: str) -> dict:
    "The score step: `score_table` on Spark local, table to table."
    from mlops_nb.config import load_config
    from mlops_nb.context import resolve_context
    from mlops_nb.scoring import score_table, get_spark
    cfg = load_config("dev")
    get_spark()  # start the JVM outside the timing: a job on a cluster finds it running
    ctx = resolve_context("dev", "bench", f"local-20260101T000000-{os.getpid():06x}"[:31], "score", "b" * 40, "false")
    t0 = time.perf_counter()
    r = score_table(ctx, cfg, table=table, predictions_table=f"{table}_predictions")
    return {"seconds": time.perf_counter() - t0, "rows": r.rows, "predictions_version": r.predictions_version}


def run_measured(args: list, env: dict) -> dict:
    "Run this script as a child with `args`; sample the RSS of its process tree; its JSON result plus peak_rss_mb."
    import psutil
    p = subprocess.Popen([sys.executable, __file__, *args], env=env, stdout=subprocess.PIPE, text=True)
    proc, peak = psutil.Process(p.pid), 0
    while p.poll() is None:
        try:
            rss = sum(q.memory_info().rss for q in [proc, *proc.children(recursive=True)] if q.is_running())
            peak = max(peak, rss)
        except psutil.Error: pass
        time.sleep(0.2)
    out = p.stdout.read()
    if p.returncode != 0: raise SystemExit(f"{args} failed with exit {p.returncode}")
    return {**json.loads(out.strip().splitlines()[-1]), "peak_rss_mb": round(peak / 2**20)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=int(os.environ.get("MLOPS_NB_BENCH_ROWS", 300_000)))
    ap.add_argument("--memory-rows", type=int, default=int(os.environ.get("MLOPS_NB_BENCH_MEMORY_ROWS", 600_000)), help="0: skip")
    ap.add_argument("--pairs", type=int, default=int(os.environ.get("MLOPS_NB_BENCH_PAIRS", 1)),
                    help="limit/job pairs to run alternately; the reported ratio is their median (default 1)")
    ap.add_argument("--child", nargs=2, metavar=("KIND", "TABLE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.pairs < 1: ap.error(f"--pairs: expected 1 or more, found {a.pairs}")
    if a.child:
        kind, table = a.child
        res = in_process(table, os.path.join(os.environ["MLOPS_NB_HOME"], "limit.parquet")) if kind == "limit" else spark_job(table)
        print(json.dumps(res)); return
    home = Path(tempfile.mkdtemp(prefix="bench-scoring-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_NB_HOME", "MLFLOW_"))}
    env.update(MLOPS_NB_HOME=str(home), PYSPARK_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1", MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    os.environ.update(env)
    t0 = time.perf_counter()
    table = setup(home, a.rows)
    print(f"set-up (train hgb on 50,000 rows, write {a.rows:,} rows x 20 features): {time.perf_counter() - t0:.0f}s", flush=True)
    pairs = []
    for i in range(a.pairs):  # limit and job alternate: on a shared machine each ratio compares neighbours in time
        lim = run_measured(["--child", "limit", table], env)
        job = run_measured(["--child", "spark", table], env)
        assert job["rows"] == lim["rows"] == a.rows, (job, lim)
        pairs.append((lim, job))
        lim_rate, job_rate = a.rows / lim["seconds"], a.rows / job["seconds"]
        tag = f"[{i + 1}/{a.pairs}] " if a.pairs > 1 else ""
        print(f"{tag}in-process limit (pyarrow read, predict_proba, pyarrow write): {lim['seconds']:.1f}s, {lim_rate:,.0f} rows/s, peak {lim['peak_rss_mb']:,} MB")
        print(f"{tag}score step (Spark local[*], spark_udf, one Delta commit):        {job['seconds']:.1f}s, {job_rate:,.0f} rows/s, peak {job['peak_rss_mb']:,} MB")
        print(f"{tag}ratio to the limit: {job_rate / lim_rate:.2f} (target >= 0.5)", flush=True)
    ratios = sorted(l["seconds"] / j["seconds"] for l, j in pairs)
    median = statistics.median(ratios)
    if a.pairs > 1: print(f"ratio over {a.pairs} pairs: median {median:.2f}, min {ratios[0]:.2f}, max {ratios[-1]:.2f} (target >= 0.5)")
    result = {"rows": a.rows,  # rates: medians over the pairs, as the ratio
              "limit_rows_per_s": round(statistics.median(a.rows / l["seconds"] for l, _ in pairs)),
              "job_rows_per_s": round(statistics.median(a.rows / j["seconds"] for _, j in pairs)),
              "ratio": round(median, 3), "ratios": [round(r, 3) for r in ratios],
              "job_peak_rss_mb": max(j["peak_rss_mb"] for _, j in pairs), "limit_peak_rss_mb": max(l["peak_rss_mb"] for l, _ in pairs)}
    if a.memory_rows:
        from mlops_nb.config import load_config
        t0 = time.perf_counter()
        big = write_scoring_table(load_config("dev"), a.memory_rows)
        print(f"wrote {a.memory_rows:,} rows in {time.perf_counter() - t0:.0f}s", flush=True)
        mem = run_measured(["--child", "spark", big], env)
        assert mem["rows"] == a.memory_rows, mem
        print(f"score step on {a.memory_rows:,} rows: {mem['seconds']:.1f}s, {a.memory_rows / mem['seconds']:,.0f} rows/s, "
              f"peak RSS of the whole job (driver + JVM + Python workers) {mem['peak_rss_mb']:,} MB (target < 4,096 MB)")
        result.update(memory_rows=a.memory_rows, memory_job_peak_rss_mb=mem["peak_rss_mb"], memory_job_seconds=round(mem["seconds"], 1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
