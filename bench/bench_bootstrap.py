"""Benchmark: mlops_nb.bootstrap.bootstrap_auc against the reference bootstrap (roc_auc_score on a
fancy-indexed copy per resample), n = 1,000,000 rows, 1,000 resamples, side by side in one run.

Prints the per-resample times and their ratio (target: ours at least 30x faster), the largest difference
between our AUCs and roc_auc_score on the very same resamples (target: <= 1e-9), and peak memory.
Reference resamples are slow (~0.3-1 s each), so the reference is timed on a subset (REF_RESAMPLES) and
compared per resample; agreement is checked on the same subset, spread over the 1,000 resamples.
Run: .venv/bin/python bench/bench_bootstrap.py  (or make bench)
"""
import os, sys, time, tracemalloc, resource
import numpy as np
from sklearn.metrics import roc_auc_score
from mlops_nb.bootstrap import bootstrap_auc, bootstrap_resamples

N, N_BOOT, SEED = int(os.environ.get("BENCH_N", 1_000_000)), int(os.environ.get("BENCH_N_BOOT", 1000)), 0
REF_RESAMPLES = int(os.environ.get("BENCH_REF_RESAMPLES", 20))

def data(n:int, ties:bool):
    "Labels and probability-like scores; with `ties`, scores rounded to 3 decimals (many ties)."
    rng = np.random.default_rng(7)
    y = (rng.random(n) < 0.3).astype(np.int64)
    s = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + 1.2*y)))
    return y, (np.round(s, 3) if ties else s)

def run(ties:bool) -> dict:
    y, s = data(N, ties)
    t = time.perf_counter()
    ours = bootstrap_auc(y, s, n_boot=N_BOOT, seed=SEED)
    t_ours = (time.perf_counter() - t) / N_BOOT
    pick = set(np.linspace(0, N_BOOT - 1, REF_RESAMPLES).round().astype(int).tolist())
    t_ref, ref, diffs = 0.0, [], []
    for k, rows in enumerate(bootstrap_resamples(y, s, n_boot=N_BOOT, seed=SEED)):
        if k not in pick: continue
        t = time.perf_counter()
        a = roc_auc_score(y[rows], s[rows])  # the reference: a fancy-indexed copy and roc_auc_score per resample
        t_ref += time.perf_counter() - t
        diffs.append(abs(a - ours[k]))
    t_ref /= len(pick)
    return {"ties": ties, "ours_ms": 1e3*t_ours, "ref_ms": 1e3*t_ref, "ratio": t_ref/t_ours, "max_diff": max(diffs),
            "checked": len(pick), "redrawn": ours.redrawn}

def peak_memory() -> float:
    "Peak traced Python/NumPy memory (MiB) of one bootstrap_auc call, 100 resamples."
    y, s = data(N, False)
    tracemalloc.start()
    bootstrap_auc(y, s, n_boot=100, seed=SEED)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20

if __name__ == "__main__":
    print(f"bootstrap_auc vs roc_auc_score on a fancy-indexed copy: n={N:,}, {N_BOOT} resamples, "
          f"reference timed on {REF_RESAMPLES} of them")
    ok = True
    for ties in (False, True):
        r = run(ties)
        good = r["ratio"] >= 30 and r["max_diff"] <= 1e-9
        ok &= good
        print(f"  {'with ties   ' if ties else 'no ties     '} ours {r['ours_ms']:7.2f} ms/resample | reference {r['ref_ms']:8.1f} "
              f"ms/resample | ratio {r['ratio']:6.1f}x (target >= 30x) | max |diff| {r['max_diff']:.2e} over "
              f"{r['checked']} resamples (target <= 1e-9) | redrawn {r['redrawn']} | {'OK' if good else 'MISSED'}")
    print(f"  peak memory of bootstrap_auc (tracemalloc, n={N:,}): {peak_memory():.0f} MiB; "
          f"process max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024:.0f} MiB")
    sys.exit(0 if ok else 1)
