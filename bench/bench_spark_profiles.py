"""Benchmark: the profiles of mlops_nb.spark_profiles on a local Spark (issue 15, "Measures", scale on Databricks).

2,000,000 rows x 20 features (16 numeric of six shapes, some null; 4 categorical) and the probability, in two daily
windows of one model version, as parquet files, profiled on a 200,000-row baseline's 1,000 bins per numeric column:
- spark_profile_on's one aggregation of the stacked (column, bin) entries, twice (the first run warms the JVM), and
  the other way, one aggregation per column (21 jobs), for comparison;
- the rows reaching the driver (the aggregate's) and the driver's memory: this Python's peak RSS (getrusage), the
  JVM's (VmHWM; local mode runs the executors in it, its heap capped by MLOPS_NB_SPARK_DRIVER_MEMORY);
- exactness at this size: every profile against profile_on on the same rows read by pandas (after the memory figures):
  counts equal, the largest relative difference of any float.
Measured here (2 cores, local Spark 4.0.5, JVM defaults): 15.3 s cold, 10.7 s warm in 2 Spark jobs; one aggregation
per column 18.6 s in 42 jobs; 30,212 aggregated rows collected; peak RSS 367 MB in Python (all of it before Spark
started: the data generation), 1,220 MB the JVM; every profile within 9.6e-11 relative of profile_on's, counts equal.
Run: .venv/bin/python bench/bench_spark_profiles.py  (or make bench). BENCH_SPARK_ROWS changes the 2,000,000.
"""
import os, resource, shutil, sys, tempfile, time
from pathlib import Path
import numpy as np, pandas as pd
sys.path.insert(0, str(Path(__file__).parent))
from bench_drift import NUMERIC, CATEGORICAL, numeric_column, shares
from mlops_nb.profiles import profile_frame, profile_on
from mlops_nb.spark_profiles import profiled_columns, column_entries, aggregate_bins, spark_profile_on

ROWS, FILES = int(os.environ.get("BENCH_SPARK_ROWS", 2_000_000)), 8
GROUPS = ["window_start", "model_version"]

def frame(n, rng, day0=0):
    d = {name: numeric_column(i, n, rng) for i, name in enumerate(NUMERIC)}
    for name in CATEGORICAL:
        values, p = shares(name)
        d[name] = np.asarray(values, dtype=object)[rng.choice(len(values), n, p=p)]
    d["probability"] = rng.beta(2, 5, n)
    d["window_start"] = pd.Timestamp("2026-12-01", tz="UTC") + pd.to_timedelta(day0 + rng.integers(0, 2, n), "D")
    d["window_start"] = d["window_start"].astype("datetime64[us, UTC]")  # Spark reads microseconds
    d["model_version"] = "1"
    return pd.DataFrame(d)

def peak_mb(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def vm_hwm_mb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"): return int(line.split()[1]) / 1024

def timed(spark, group, f):
    spark.sparkContext.setJobGroup(group, group)
    t = time.perf_counter(); out = f(); dt = time.perf_counter() - t
    return out, dt, len(spark.sparkContext.statusTracker().getJobIdsForGroup(group))

def per_column(baseline, sdf):
    "The same aggregate, one Spark job per column: the rows of each column's aggregation."
    cols = profiled_columns(baseline, score="probability")
    binned, entries = column_entries(baseline, sdf, cols)
    return sum(len(aggregate_bins(binned, [e], GROUPS).toPandas()) for e in entries)

def max_rel_diff(a, b, worst):
    "Fold into `worst` ([largest relative float difference, unequal others]) the differences of `b` from `a`."
    if isinstance(a, dict):
        if list(a) != list(b): worst[1] += 1
        else: [max_rel_diff(a[k], b[k], worst) for k in a]
    elif isinstance(a, list):
        if len(a) != len(b): worst[1] += 1
        else: [max_rel_diff(x, y, worst) for x, y in zip(a, b)]
    elif isinstance(a, float) and isinstance(b, float):
        worst[0] = max(worst[0], abs(a - b) / max(abs(a), abs(b), 1e-300) if a != b else 0.0)
    elif a != b or type(a) != type(b): worst[1] += 1
    return worst

def main():
    from mlops_nb.lakehouse import get_spark
    d = Path(tempfile.mkdtemp(prefix="bench-spark-profiles-"))
    rng = np.random.default_rng(0)
    base = profile_frame(frame(200_000, rng), NUMERIC, CATEGORICAL, score="probability")
    for i in range(FILES): frame(ROWS // FILES, rng).to_parquet(d/f"part-{i}.parquet", index=False)
    before = peak_mb()
    spark = get_spark()
    sdf = spark.read.parquet(str(d))
    cold, t_cold, jobs = timed(spark, "cold", lambda: spark_profile_on(base, sdf, GROUPS, score="probability"))
    got, t_warm, _ = timed(spark, "warm", lambda: spark_profile_on(base, sdf, GROUPS, score="probability"))
    cols = profiled_columns(base, score="probability")
    agg_rows = len(aggregate_bins(*column_entries(base, sdf, cols), GROUPS).toPandas())
    n_rows, t_cols, jobs_cols = timed(spark, "cols", lambda: per_column(base, sdf))
    py_peak, jvm_peak = peak_mb(), vm_hwm_mb(spark.sparkContext._gateway.proc.pid)
    print(f"rows {ROWS:,} x {len(NUMERIC)} numeric + {len(CATEGORICAL)} categorical + probability, {len(got)} groups, "
          f"{os.cpu_count()} cores, local Spark {spark.version}")
    print(f"spark_profile_on (one aggregation): {t_cold:.1f} s cold, {t_warm:.1f} s warm, {jobs} Spark job(s)")
    print(f"one aggregation per column: {t_cols:.1f} s, {jobs_cols} Spark job(s)")
    print(f"rows collected to the driver: {agg_rows:,} (aggregated; {n_rows:,} per column), none of the {ROWS:,} rows")
    print(f"peak RSS: this Python {py_peak:.0f} MB ({before:.0f} MB before Spark, data generation included); "
          f"the JVM {jvm_peak:.0f} MB")
    spark.stop()
    cur = pd.read_parquet(d)
    shutil.rmtree(d)
    worst = [0.0, 0]
    for key, rows in cur.groupby(GROUPS):
        max_rel_diff(profile_on(base, rows, score="probability"), got[key], worst)
    ok = worst[1] == 0 and worst[0] < 1e-9 and sorted(got) == sorted(cur.groupby(GROUPS).groups)
    print(f"against profile_on on the same rows: {worst[1]} unequal counts or keys, largest relative float "
          f"difference {worst[0]:.1e} (target < 1e-9): {'ok' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)

if __name__ == "__main__":
    main()
