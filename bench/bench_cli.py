"""Seconds for `mlops-nb --help` and `mlops-nb env` as whole processes (target: --help under 0.5 s).

Run: .venv/bin/python bench/bench_cli.py [--runs N]   (a few seconds; the command line imports a command's module
only when it runs, so neither loads MLflow's model code, Spark, FastAPI nor numba)
"""
from __future__ import annotations
import argparse, json, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path

BIN = Path(sys.executable).parent


def timed(args, env) -> float:
    "Wall seconds of one run of `mlops-nb *args`; it must exit 0."
    t0 = time.perf_counter()
    p = subprocess.run([str(BIN/"mlops-nb"), *args], env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    assert p.returncode == 0, p.stderr
    return dt


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "MLOPS_NB_HOME": home}
        out = {}
        for name, args in (("help", ["--help"]), ("env", ["env", "--json"])):
            timed(args, env)  # warm the file cache
            ts = [timed(args, env) for _ in range(a.runs)]
            out[name] = {"median_s": round(statistics.median(ts), 3), "min_s": round(min(ts), 3), "max_s": round(max(ts), 3)}
    out["help_target_s"], out["help_met"] = 0.5, out["help"]["median_s"] < 0.5
    for k in ("help", "env"):
        print(f"mlops-nb {'--help' if k == 'help' else 'env --json'}: median {out[k]['median_s']:.3f} s "
              f"(min {out[k]['min_s']:.3f}, max {out[k]['max_s']:.3f}, {a.runs} runs)")
    print(json.dumps(out))
    if not out["help_met"]: sys.exit("mlops-nb --help took 0.5 s or more (median)")


if __name__ == "__main__":
    main()
