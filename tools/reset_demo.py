"""`make reset-demo`: a fresh local store. Removes the home's MLflow store, artifacts, Delta tables and executed
notebooks (the home `mlops-nb env` names), then writes the demo tables again. Asks nothing; refuses, removing
nothing, when MLFLOW_TRACKING_URI points elsewhere, when the home holds anything mlops-nb did not write there, or when
a command holds an env's lock.

    python tools/reset_demo.py [--rows N] [--no-data]
"""
from __future__ import annotations
import argparse, contextlib, os, shutil, sys
from mlops_nb.core import MlopsNbError
from mlops_nb.config import ENVS, home_source, load_config
from mlops_nb.env_lock import env_lock

# what mlops-nb writes in a home (the locks stay: a lock file is empty when nobody holds it)
REMOVED = {"mlflow.db": "the MLflow tracking and registry store", "artifacts": "the MLflow artifacts",
           "tables": "the Delta tables", "runs": "the executed notebooks of every job run",
           "jupyter": "the runner's kernel specs", "mlflow.db-journal": "SQLite's journal"}
KEPT = {"locks"}


def reset_home() -> list[str]:
    "Remove what mlops-nb wrote in the home (holding every env's lock); return one line per removed entry."
    home, how = home_source()
    if os.environ.get("MLFLOW_TRACKING_URI"):
        raise MlopsNbError(f"MLFLOW_TRACKING_URI is set ({os.environ['MLFLOW_TRACKING_URI'].split('@')[-1]}): make reset-demo "
                           "resets only the local store; unset it to reset that, and clean a tracking server by its own means")
    if not home.exists(): return []
    strange = sorted(p.name for p in home.iterdir() if p.name not in REMOVED and p.name not in KEPT)
    if strange:
        raise MlopsNbError(f"{home} (chosen by {how}) holds {', '.join(strange)}, which mlops-nb did not write: "
                           "it may not be an mlops-nb home, so nothing was removed; set MLOPS_NB_HOME to the home to reset, "
                           "or move those away first")
    removed = []
    with contextlib.ExitStack() as locks:
        for env in ENVS: locks.enter_context(env_lock(env))   # no run, promote or rollback is going on
        for name, what in REMOVED.items():
            p = home/name
            if not p.exists(): continue
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            removed.append(f"removed {p} ({what})")
    return removed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="make reset-demo", description="a fresh local store with the demo tables")
    p.add_argument("--rows", type=int, default=100_000, help="training rows of the demo table (default 100000)")
    p.add_argument("--no-data", action="store_true", help="only remove; write no demo tables")
    a = p.parse_args(argv)
    try: lines = reset_home()
    except MlopsNbError as e:
        print(f"make reset-demo: error: {e}", file=sys.stderr); return 2
    home, how = home_source()
    print("\n".join(lines) if lines else f"{home} (chosen by {how}) held no store: nothing to remove")
    if not a.no_data:
        from mlops_nb.demo_data import write_demo_tables
        from mlops_nb.lakehouse import table_path
        for name, v in write_demo_tables(load_config("dev"), rows=a.rows).items(): print(f"wrote {name} version {v} ({table_path(name)})")
    print(f"fresh local store at {home}: `make demo` or `mlops-nb run` fills it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
