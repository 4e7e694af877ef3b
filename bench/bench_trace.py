"""Seconds for `mlops-nb trace` with 200 model versions in the registry (vs. 1), and for `mlops-nb reproduce`.

Run: .venv/bin/python bench/bench_trace.py   (about two minutes; everything in temporary folders)
"""
from __future__ import annotations
import contextlib, io, json, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def best_of(n, f):
    "The fastest of `n` timed calls of `f`, in seconds."
    ts = []
    for _ in range(n):
        t0 = time.perf_counter(); f(); ts.append(time.perf_counter() - t0)
    return min(ts)


def main():
    tmp = Path(tempfile.mkdtemp(prefix="bench-trace-"))
    try:
        src = tmp/"src"
        subprocess.run(["git", "clone", "-q", str(REPO), str(src)], check=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_NB_", "MLFLOW_", "DBR_", "DATABRICKS_"))}
        env.update(MLOPS_NB_HOME=str(tmp/"home"), PYTHONPATH=str(src), MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
                   SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable)
        run = lambda *a: subprocess.run([str(BIN/"mlops-nb"), *a], env=env, cwd=src, capture_output=True, text=True)
        assert run("demo-data", "--rows", "5000").returncode == 0
        r = run("run", "--steps", "train", "--param", "model_type=hgb", "--json")
        assert r.returncode == 0, r.stderr[-2000:]
        job = json.loads(r.stdout)
        run_id, name = job["model"]["mlflow_run_id"], job["model"]["name"]
        os.environ.update(MLOPS_NB_HOME=env["MLOPS_NB_HOME"])
        import mlflow, logging
        logging.getLogger("mlflow").setLevel(logging.ERROR)
        from mlops_nb.lineage import trace
        from mlops_nb.config import load_config
        from mlops_nb.mlflow_store import configure_mlflow
        configure_mlflow(load_config("dev"))
        one = best_of(3, lambda: trace(f"models:/{name}/1"))
        source = mlflow.MlflowClient().get_model_version(name, "1").source
        t0 = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):
            for _ in range(199): mlflow.register_model(source, name)
        reg = time.perf_counter() - t0
        versions = len(mlflow.MlflowClient().search_model_versions(f"name='{name}'"))
        many = best_of(3, lambda: trace(f"models:/{name}/1"))
        last = best_of(3, lambda: trace(f"models:/{name}/200"))
        by_run = best_of(3, lambda: trace(run_id))
        t0 = time.perf_counter(); c = run("trace", f"models:/{name}/1", "--json"); cli_s = time.perf_counter() - t0
        assert c.returncode == 0, c.stderr[-2000:]
        t0 = time.perf_counter(); rep = run("reproduce", run_id, "--json"); rep_s = time.perf_counter() - t0
        out = json.loads(rep.stdout)
        print(f"registry: {versions} versions of {name} (199 registered in {reg:.1f}s)")
        print(f"trace models:/{name}/1, in-process:  {one:.3f}s with 1 version, {many:.3f}s with {versions} (ratio {many / one:.2f})")
        print(f"trace models:/{name}/200, in-process: {last:.3f}s; trace of the train run id: {by_run:.3f}s")
        print(f"mlops-nb trace (CLI process, imports included): {cli_s:.2f}s")
        print(f"mlops-nb reproduce (hgb, 5000 rows; worktree + papermill + comparison): {rep_s:.1f}s wall, "
              f"{out['seconds']}s reported; match={out['matches']} max abs prediction diff={out['max_abs_prediction_diff']}")
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
