"""Benchmark: `tuning.tune` of hgb with 50 trials (seeded TPE, 3-fold CV on the training rows) on the demo table,
in a temporary home with a temporary parameters file (the work tree is never written).

Prints the best trial's CV AUC, then the held-out AUC (the rows split_holdout keeps out, never seen while tuning) of
hgb fitted on the training rows with the best parameters against hgb with its default parameters, same seed and
split, and the wall time of the search. BENCH_ROWS (default 100000: `mlops-nb demo-data`'s table), BENCH_TRIALS
(default 50), BENCH_TIMEOUT (seconds, default none: the search starts no trial after it).
Run: .venv/bin/python bench/bench_tuning.py  (or make bench)
"""
import contextlib, io, os, sys, tempfile, time
from pathlib import Path
from mlops_nb.core import env_vars
from mlops_nb.config import load_config
from mlops_nb.demo_data import write_demo_tables
from mlops_nb.lakehouse import read_table
from mlops_nb.training import build_model, holdout_mask, positive_proba, score_metrics
from mlops_nb.training_data import resolve_columns
from mlops_nb.tuning import tune

ROWS, TRIALS = int(os.environ.get("BENCH_ROWS", 100_000)), int(os.environ.get("BENCH_TRIALS", 50))
TIMEOUT = float(os.environ["BENCH_TIMEOUT"]) if os.environ.get("BENCH_TIMEOUT") else None


def holdout_auc(cfg, df, cols, params) -> float:
    "The held-out AUC of hgb with `params` (None: its defaults) fitted on the training rows, seed and split of `cfg`."
    ho = holdout_mask(df, cfg.keys, cfg.holdout_fraction, cfg.seed)
    m = build_model("hgb", cols, cfg.seed, params).fit(df.loc[~ho, cols.features], df.loc[~ho, cfg.label])
    return score_metrics(df.loc[ho, cfg.label], positive_proba(m.predict_proba(df.loc[ho, cols.features])))["auc"]


def main():
    with tempfile.TemporaryDirectory() as d, env_vars(MLOPS_NB_HOME=d):
        cfg = load_config("dev")
        with contextlib.redirect_stdout(io.StringIO()): write_demo_tables(cfg, rows=ROWS)
        t0 = time.perf_counter()
        def progress(study, trial):
            print(f"  trial {trial.number + 1}/{TRIALS}: CV AUC {trial.value:.4f} (best {study.best_value:.4f}), "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        r = tune(cfg, "hgb", trials=TRIALS, timeout=TIMEOUT, params_file=Path(d)/"params.toml", progress=progress)
        wall = time.perf_counter() - t0
        df = read_table(cfg.qualify(cfg.training_table)).data
        cols = resolve_columns(df, cfg.label, cfg.keys, cfg.features)
        tuned, default = holdout_auc(cfg, df, cols, r.best_params), holdout_auc(cfg, df, cols, None)
    print(f"bench_tuning: hgb on the demo table ({ROWS} rows, seed {cfg.seed}, holdout {cfg.holdout_fraction}), "
          f"{r.trials} trials (asked {TRIALS}{f', timeout {TIMEOUT:.0f} s' if TIMEOUT else ''}), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"  best trial: CV AUC {r.cv_auc:.4f}, parameters {r.best_params}")
    print(f"  held-out AUC: tuned {tuned:.4f}, defaults {default:.4f}, difference {tuned - default:+.4f}")
    print(f"  wall time of the search: {wall:.0f} s ({wall / max(r.trials, 1):.1f} s a trial)")


if __name__ == "__main__":
    main()
