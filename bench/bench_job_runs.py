"""Benchmark: one job run that trains two model types against two job runs of one type each, on the same demo table.

`mlops-nb run --steps train,evaluate --param model_types=logreg,hgb` (one job run: train_logreg, train_hgb, then one
evaluate that compares both) against `mlops-nb run --steps train,evaluate --param model_type=logreg` followed by the
same with `model_type=hgb` (two job runs, two evaluates), each in a fresh temporary home holding the same demo tables
(`mlops-nb demo-data`: 100,000 rows, seed 0). Pairs alternate which side runs first; prints each side's median wall
time, the ratio, and what each side's evaluate judged (the two-type run must have compared both candidates).
BENCH_PAIRS (default 2). Run: .venv/bin/python bench/bench_job_runs.py  (or make bench)
"""
from __future__ import annotations
import json, os, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

BIN = Path(sys.executable).parent
PAIRS = int(os.environ.get("BENCH_PAIRS", 2))


def environ(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_NB_", "MLFLOW_"))}
    return {**env, "MLOPS_NB_HOME": str(home), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def run(home: Path, *params: str) -> dict:
    "One `mlops-nb run --steps train,evaluate --json` with `params`; its JSON summary."
    args = [str(BIN/"mlops-nb"), "run", "--steps", "train,evaluate", "--json"] + [a for p in params for a in ("--param", p)]
    r = subprocess.run(args, env=environ(home), capture_output=True, text=True)
    if r.returncode: sys.exit(f"{' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return json.loads(r.stdout)


def timed(tables: Path, runs: list) -> tuple[float, list]:
    "Seconds for `runs` (lists of params) one after another in a fresh home holding `tables`; their summaries."
    home = Path(tempfile.mkdtemp(prefix="bench-job-runs-"))
    try:
        shutil.copytree(tables/"tables", home/"tables")
        t0 = time.perf_counter()
        out = [run(home, *params) for params in runs]
        return time.perf_counter() - t0, out
    finally: shutil.rmtree(home, ignore_errors=True)


def main():
    tables = Path(tempfile.mkdtemp(prefix="bench-job-runs-tables-"))
    try:
        r = subprocess.run([str(BIN/"mlops-nb"), "demo-data", "--env", "dev"], env=environ(tables), capture_output=True, text=True)
        if r.returncode: sys.exit(r.stderr)
        sides = {"one job run, two model types": [["model_types=logreg,hgb"]],
                 "two job runs, one model type each": [["model_type=logreg"], ["model_type=hgb"]]}
        times, last = {k: [] for k in sides}, {}
        for i in range(PAIRS):
            for name in (list(sides) if i % 2 == 0 else list(sides)[::-1]):
                secs, last[name] = timed(tables, sides[name])
                times[name].append(secs)
                print(f"  pair {i + 1}: {name}: {secs:.1f} s", file=sys.stderr, flush=True)
        a, b = (statistics.median(times[k]) for k in sides)
        two = last["one job run, two model types"][0]
        judged = [(c["version"], c["model_type"], round(c["auc"], 4), c["verdict"].split(":")[0]) for c in two["decision"]["candidates"]]
        print(f"one job run, two model types (train_logreg, train_hgb, one evaluate): median {a:.1f} s of {PAIRS}")
        print(f"two job runs, one model type each (two trains, two evaluates):     median {b:.1f} s of {PAIRS}")
        print(f"ratio: {a / b:.2f} (one two-type job run / two one-type job runs)")
        print(f"the two-type job run's evaluate judged {len(judged)} candidates: {judged}")
        if len(judged) != 2: sys.exit("FAIL: the two-type job run's evaluate did not judge both candidates")
    finally: shutil.rmtree(tables, ignore_errors=True)


if __name__ == "__main__":
    main()
