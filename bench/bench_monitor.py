"""Benchmark: the monitor step's `monitoring.monitor_predictions` at scale (issue 15, "Measures": Scale), one table.

For each size, a child process builds, seeded, in a fresh home: an input table and a predictions table of N rows
each, written as 20 appends (the score step's, one a day: input table version d holds day d's rows, which day d's
predictions scored), two model versions (days 0-9 version 1, days 10-19 version 2) whose train runs hold the
baseline profile artifact the monitor loads (`training.BASELINE_PROFILE`, from a seeded 200,000-row frame; each
version registered in the home's MLflow registry), and a labels table with half the keys' labels arrived. A second
child, started from this small parent, runs the real `monitor_predictions` on it (daily windows, slice column
`plan`, the default batch of `monitor_sources.BATCH_ROWS` rows) and reports its wall time and the whole process's
peak RSS: `getrusage(RUSAGE_SELF).ru_maxrss` (which also counts the parent's RSS at the fork; the parent holds no
data) and `/proc/self/status` VmHWM (the child's own image alone). Target: under 2 GB at 20,000,000 rows. The
build's memory is in the build child, never in the measured one.

    .venv/bin/python bench/bench_monitor.py                      # 1,000,000 and 20,000,000 rows (make bench)
    .venv/bin/python bench/bench_monitor.py --rows 2000000       # one size
    .venv/bin/python bench/bench_monitor.py --spark-rows 0       # without the Spark engine's run
The Spark engine (`monitor_engine = "spark"`, the Databricks one, here on the local Spark) monitors the same home
too, at the sizes of --spark-rows (default 1,000,000), into tables of its own; its rows, windows and labelled rows
must equal the Arrow engine's.
Environment: BENCH_MONITOR_ROWS (comma-separated sizes, as --rows), BENCH_MONITOR_BATCH (rows per batch; default
the module's). The build takes about a minute per 10,000,000 rows and about 1 GB of disk per 10,000,000.
"""
from __future__ import annotations
import argparse, json, os, resource, shutil, subprocess, sys, tempfile, time

DAYS, NUMERIC, PLANS, REGIONS = 20, ["age", "income", "tenure_years", "visits", "balance", "engagement"], ["basic", "plus", "pro"], ["north", "south", "east", "west"]
MODEL = "dev.mlops_nb.demo_model"


def features(n: int, rng, first_id: int = 0, shift: float = 0.0):
    "A pyarrow table of `n` rows: id, six numeric features (some null) and two categorical ones."
    import numpy as np, pyarrow as pa
    age = rng.normal(45 + shift, 12, n)
    cols = {"id": pa.array(np.arange(first_id, first_id + n, dtype="int64")), "age": age,
            "income": rng.lognormal(10.5, 0.6, n), "tenure_years": rng.exponential(4, n), "visits": rng.poisson(3, n).astype("float64"),
            "balance": rng.normal(0, 1, n), "engagement": rng.random(n)}
    cols["income"][rng.random(n) < 0.02] = np.nan
    cols = {k: pa.array(v, from_pandas=True) if k != "id" else v for k, v in cols.items()}
    cols["plan"] = pa.array(np.asarray(PLANS, dtype=object)[rng.choice(3, n, p=[.6, .3, .1])])
    cols["region"] = pa.array(np.asarray(REGIONS, dtype=object)[rng.integers(0, 4, n)])
    return pa.table(cols)

def score(t, rng):
    "Probabilities as a model would give them: a logistic of a few features."
    import numpy as np
    z = 0.04 * (np.asarray(t["age"]) - 45) + 0.8 * np.asarray(t["balance"]) + 1.5 * (np.asarray(t["engagement"]) - .5)
    return 1 / (1 + np.exp(-z + rng.normal(0, .3, len(z))))

def register_baselines(cfg):
    "Two model versions of MODEL, each a train run holding the baseline profile of a seeded frame."
    import mlflow, numpy as np
    from mlops_nb.mlflow_store import configure_mlflow
    from mlops_nb.profiles import profile_frame, profile_to_json
    from mlops_nb.training import BASELINE_PROFILE
    client = configure_mlflow(cfg)
    client.create_registered_model(MODEL)
    for v in (1, 2):
        rng = np.random.default_rng(100 + v)
        t = features(200_000, rng).to_pandas()
        base = profile_frame(t, NUMERIC, ["plan", "region"], score=__import__("pandas").Series(score(features(200_000, rng), rng), name="probability"))
        with mlflow.start_run(run_name=f"bench-train-v{v}") as run:
            mlflow.log_text(profile_to_json(base), BASELINE_PROFILE)
        client.create_model_version(MODEL, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)

def build(rows: int):
    "In a child: the tables and model versions of `rows` rows in $MLOPS_NB_HOME."
    import numpy as np, pyarrow as pa
    from mlops_nb.config import load_config
    from mlops_nb.lakehouse import write_table
    cfg = load_config("dev")
    register_baselines(cfg)
    inp, preds, labels = (cfg.qualify(t) for t in (cfg.scoring_table, cfg.predictions_table, cfg.labels_table))
    per, ts = rows // DAYS, pa.timestamp("us", tz="UTC")
    day0 = np.datetime64("2026-11-01T00:00:00", "us")
    for d in range(DAYS):
        rng = np.random.default_rng(d)
        n = per if d < DAYS - 1 else rows - per * (DAYS - 1)
        t = features(n, rng, first_id=d * per, shift=0.05 * d)
        write_table(t, inp)   # version d
        p = score(t, rng)
        at = day0 + np.timedelta64(d, "D") + (rng.uniform(0, 86_400, n) * 1e6).astype("timedelta64[us]")
        rep = lambda v, n=n: pa.repeat(pa.scalar(v), n)
        write_table(pa.table({"prediction_id": pa.compute.cast(t["id"], pa.string()), "id": t["id"], "probability": p,
                              "prediction": pa.array((p >= 0.5).astype("int32")), "model_name": rep(MODEL), "model_version": rep("1" if d < 10 else "2"),
                              "model_run_id": rep("r" * 32), "git_sha": rep("a" * 40), "job_run_id": rep(f"local-job-{d}"),
                              "scored_at": pa.array(at, ts), "input_table": rep(inp), "input_version": pa.repeat(pa.scalar(d, pa.int64()), n)}), preds)
        half = rng.random(n) < 0.5
        y = (rng.random(n) < p).astype("int64")
        write_table(pa.table({"id": t["id"].filter(pa.array(half)), "label": y[half],
                              "labeled_at": pa.array(at[half] + np.timedelta64(3600, "s").astype("timedelta64[us]"), ts)}), labels)

def run(engine: str = "arrow"):
    "In a child: the real monitor step's table work on the home, on `engine`; its figures as JSON."
    t0 = time.perf_counter()
    from mlops_nb.config import load_config
    from mlops_nb.context import RunContext
    from mlops_nb.monitoring import monitor_predictions
    from mlops_nb.spark_monitoring import spark_prediction_reader
    spark = engine == "spark"
    cfg = load_config("dev", slice_columns=["plan"], monitor_engine=engine,
                      **({"profile_metrics_table": "spark_profile_metrics", "drift_metrics_table": "spark_drift_metrics"} if spark else {}))
    ctx = RunContext("dev", "bench", "local-20261202T000000-bench0", "monitor", "0" * 40, "false")
    batch = int(os.environ["BENCH_MONITOR_BATCH"]) if os.environ.get("BENCH_MONITOR_BATCH") else None
    t = time.perf_counter()
    res = monitor_predictions(ctx, cfg, "bench-monitor-run", batch_rows=batch, read=spark_prediction_reader if spark else None)
    took = time.perf_counter() - t
    hwm = [int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM")] or [float("nan")]
    print(json.dumps({"rows": res.rows, "batches": res.batches, "windows": res.windows, "seconds": took, "with_imports": time.perf_counter() - t0,
                      "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "hwm_mib": hwm[0],
                      "profile_rows": len(res.profile_rows), "drift_rows": len(res.drift_rows), "drifted": res.drifted,
                      "labeled": sum(r.get("labeled_rows") or 0 for r in res.profile_rows if r["column_name"] == ":table" and r["slice_key"] == ":all")}))

def child(what: str, home: str, *args) -> str:
    env = dict(os.environ, MLOPS_NB_HOME=home, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    r = subprocess.run([sys.executable, __file__, what, *args], env=env, capture_output=True, text=True)
    if r.returncode: sys.exit(f"the {what} child failed:\n{r.stderr[-4000:]}")
    return r.stdout

def measure(rows: int, spark: bool) -> dict:
    home = tempfile.mkdtemp(prefix="bench-monitor-")
    try:
        t = time.perf_counter(); child("--build", home, str(rows)); built = time.perf_counter() - t
        out = json.loads(child("--run", home).strip().splitlines()[-1])
        on_spark = json.loads(child("--run", home, "spark").strip().splitlines()[-1]) if spark else None
        return {**out, "build_seconds": built, "spark": on_spark}
    finally: shutil.rmtree(home, ignore_errors=True)

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default=os.environ.get("BENCH_MONITOR_ROWS", "1000000,20000000"), help="comma-separated sizes")
    ap.add_argument("--spark-rows", default=os.environ.get("BENCH_MONITOR_SPARK_ROWS", "1000000"),
                    help="comma-separated sizes also monitored on the Spark engine (0: none)")
    args = ap.parse_args()
    sizes, spark_sizes = [int(s) for s in args.rows.split(",") if s], {int(s) for s in args.spark_rows.split(",") if s}
    t0, rows, ok = time.perf_counter(), [], True
    for n in sizes:
        m = measure(n, n in spark_sizes)
        good = m["rows"] == n and (m["rss_mib"] < 2048 if n >= 20_000_000 else True)
        ok &= good
        rows.append((f"monitor_predictions: {n:,} predictions", f"{m['seconds']:.0f} s, peak RSS {m['rss_mib']:.0f} MiB (VmHWM {m['hwm_mib']:.0f})",
                     "< 2048 MiB" if n >= 20_000_000 else "for the record", "OK" if good else "MISSED"))
        rows.append((f"  {m['batches']} batches, {m['windows']} (window, version) pairs", f"{m['profile_rows']} profile, {m['drift_rows']} drift rows",
                     f"{m['labeled']:,} labelled", f"build {m['build_seconds']:.0f} s"))
        if m["spark"]:
            sp = m["spark"]
            same = all(sp[k] == m[k] for k in ("rows", "windows", "profile_rows", "drift_rows", "labeled"))
            ok &= same
            rows.append((f"  the Spark engine, the same {n:,} predictions", f"{sp['seconds']:.0f} s ({sp['seconds'] / m['seconds']:.1f}x), driver RSS {sp['hwm_mib']:.0f} MiB",
                         "the same rows", "OK" if same else "MISSED"))
    print("monitor at scale: daily windows over 20 appends, 2 model versions, slices :all and plan (3 values), half the labels arrived")
    w = max(len(r[0]) for r in rows)
    for m, fig, target, verdict in rows: print(f"  {m:<{w}} | {fig:<44} | {target:<16} | {verdict}")
    print(f"  bench time {time.perf_counter() - t0:.0f} s; this process's max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024:.0f} MiB"
          f"; command: .venv/bin/python bench/bench_monitor.py --rows {','.join(map(str, sizes))}")
    sys.exit(0 if ok else 1)

if __name__ == "__main__":
    if sys.argv[1:2] == ["--build"]: build(int(sys.argv[2]))
    elif sys.argv[1:2] == ["--run"]: run(*sys.argv[2:3])
    else: main()
