"""Benchmark of online serving: single-record requests at a fixed concurrency against the real `mlops-nb serve`.

Starts the server (uvicorn, one process) on a free loopback port with an `hgb` champion, then a second process
sends the requests over keep-alive HTTP connections, one thread per connection, and reports p50 and p99 latency,
requests/s and errors; then stops the server (SIGTERM) and checks that the inference log holds every answer. The
same in one run for three servers: the champion only, a 90/10 split with an `hgb` challenger, and shadow mode (the
challenger scores every record off the request path; its rows counted apart), and, on the same champion and load,
what a user would run instead: `mlflow models serve -m models:/<name>@champion --env-manager local` (`/invocations`).

    .venv/bin/python bench/bench_serving.py                       # 5,000 requests at concurrency 16
    .venv/bin/python bench/bench_serving.py --requests 20000 --concurrency 32
Environment: MLOPS_NB_BENCH_REQUESTS, MLOPS_NB_BENCH_CONCURRENCY (same as the flags).
"""
from __future__ import annotations
import argparse, http.client, json, os, signal, socket, subprocess, sys, tempfile, threading, time
from pathlib import Path

RECORD = {"age": 40.0, "income": 52000.0, "tenure_years": 3.5, "visits": 2.0, "balance": 0.3, "engagement": 0.6,
          "region": "west", "plan": "basic"}


def client(port: int, n: int, concurrency: int, path: str = "/predict") -> dict:
    "Send `n` single-record POST requests to `path` (/predict, or MLflow's /invocations) over `concurrency` connections; latencies and errors."
    body = json.dumps([RECORD] if path == "/predict" else {"dataframe_records": [RECORD]}).encode()
    lat, errors, lock, left = [], [], threading.Lock(), [n]
    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            with lock:
                if left[0] == 0: break
                left[0] -= 1
            t = time.perf_counter()
            try:
                conn.request("POST", path, body, {"Content-Type": "application/json"})
                r = conn.getresponse(); r.read()
                ok = r.status == 200
            except Exception as e:
                ok = False; conn.close(); conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            d = time.perf_counter() - t
            with lock: (lat if ok else errors).append(d)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads: t.start()
    for t in threads: t.join()
    wall = time.perf_counter() - t0
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")
    return {"requests": n, "concurrency": concurrency, "ok": len(lat), "errors": len(errors), "seconds": round(wall, 2),
            "req_per_s": round(n / wall, 1), "p50_ms": round(q(0.50), 2), "p99_ms": round(q(0.99), 2)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=int(os.environ.get("MLOPS_NB_BENCH_REQUESTS", 5000)))
    ap.add_argument("--concurrency", type=int, default=int(os.environ.get("MLOPS_NB_BENCH_CONCURRENCY", 16)))
    ap.add_argument("--client", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--path", default="/predict", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.client:
        print(json.dumps(client(a.client, a.requests, a.concurrency, a.path))); return
    home = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_NB_", "MLFLOW_"))}
    env.update(MLOPS_NB_HOME=str(home), MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    os.environ.update(env)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent/"tests"))
    import mlflow
    from scoring_helpers import make_champion
    first = make_champion(rows=20_000, model_type="hgb")
    make_champion(rows=20_000, model_type="hgb")   # the champion; the first version is the challenger
    mlflow.MlflowClient().set_registered_model_alias("dev.mlops_nb.demo_model", "challenger", first.version)
    modes = {"champion only": "", "90/10 split": "serve_routes = {champion = 90, challenger = 10}\n",
             "shadow": 'serve_routes = {champion = 100, challenger = 0}\nserve_mode = "shadow"\n'}
    results = {}
    for k, (mode, routes) in enumerate(modes.items()):
        (home/f"c{k}.toml").write_text(f'[dev]\ninference_log_table = "log{k}"\n{routes}')
        results[mode] = run_mode(a, dict(env, MLOPS_NB_CONFIG=str(home/f"c{k}.toml")), f"dev.mlops_nb.log{k}")
    mlflow_res = run_mlflow_serve(a, env)
    base = results["champion only"]
    for mode, res in results.items():
        print(f"{mode}: {res['requests']:,} single-record requests at concurrency {res['concurrency']} from a second process on loopback: "
              f"p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms ({res['p99_ms'] / base['p99_ms'] - 1:+.0%} against champion only), "
              f"{res['req_per_s']:,.0f} req/s, {res['errors']} errors; inference log rows: {res['answer_rows']:,} answers "
              f"(expected {res['ok'] + 50:,}), {res['shadow_rows']:,} shadow scores")
    m = mlflow_res
    print(f"mlflow models serve (same champion, same load, /invocations): p50 {m['p50_ms']:.1f} ms, p99 {m['p99_ms']:.1f} ms, "
          f"{m['req_per_s']:,.0f} req/s, {m['errors']} errors")
    for mode, res in results.items():
        print(f"  {mode}: {res['req_per_s'] / m['req_per_s']:.1f}x its requests/s, p99 {res['p99_ms'] / m['p99_ms']:.2f} of its")
    print(json.dumps({**results, "mlflow models serve": m}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def wait_ready(port: int, path: str, what: str):
    "Wait (up to 2 minutes) until GET `path` on `port` answers 200."
    for _ in range(240):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2); c.request("GET", path)
            if c.getresponse().status == 200: return
        except OSError: time.sleep(0.5)
    raise SystemExit(f"{what} did not start")


def load(a, port: int, path: str) -> dict:
    "A warm-up (first predictions import and compile lazily), then the measured requests, from a second process."
    subprocess.run([sys.executable, __file__, "--client", str(port), "--requests", "50", "--concurrency", "1", "--path", path],
                   check=True, stdout=subprocess.DEVNULL)
    out = subprocess.run([sys.executable, __file__, "--client", str(port), "--requests", str(a.requests),
                          "--concurrency", str(a.concurrency), "--path", path], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_mlflow_serve(a, env: dict) -> dict:
    "`mlflow models serve` of the champion on the same store, loaded like ours."
    from mlops_nb.config import load_config
    from mlops_nb.mlflow_store import configure_mlflow, tracking_uri
    cfg = load_config("dev"); configure_mlflow(cfg)
    port = free_port()
    menv = dict(env, MLFLOW_TRACKING_URI=tracking_uri(), MLFLOW_REGISTRY_URI=tracking_uri(),
                PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")  # it starts `uvicorn` from PATH
    server = subprocess.Popen([str(Path(sys.executable).parent/"mlflow"), "models", "serve", "-m", f"models:/{cfg.registered_model}@champion",
                               "--env-manager", "local", "--host", "127.0.0.1", "-p", str(port)], env=menv,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_ready(port, "/ping", "mlflow models serve")
        return load(a, port, "/invocations")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(120)


def run_mode(a, env: dict, log_table: str) -> dict:
    "Start `mlops-nb serve` with `env`, warm it up, send the requests from a second process, stop it, count its log rows."
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent/"mlops-nb"), "serve", "--env", "dev", "--port", str(port)], env=env)
    try:
        wait_ready(port, "/health", "mlops-nb serve")
        res = load(a, port, "/predict")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(120)
    from mlops_nb.lakehouse import read_table
    log = read_table(log_table).data
    ok = (log.path == "/predict") & (log.status == 200)
    res["answer_rows"], res["shadow_rows"] = int((ok & log.shadow_of.isna()).sum()), int((ok & log.shadow_of.notna()).sum())
    return res


if __name__ == "__main__":
    main()
