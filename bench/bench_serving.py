"""Benchmark of online serving: single-record requests at a fixed concurrency against the real `mlops-nb serve`.

Starts every server once (uvicorn, one process each, on free loopback ports) with an `hgb` champion, then, after a
warm-up round that is not counted (each server's first inference log commits, which create its table, and lazy
imports), round after round, a second process sends each server in turn the same requests over keep-alive HTTP
connections, one thread per connection, and reports p50 and p99 latency, requests/s and errors, and each round's
ratios. A ratio is a pair's: the no-op endpoint, the split and shadow mode each run right after a load of the champion
only, and are compared with that load, so that what else the shared machine does at the time weighs on both alike;
each round starts one pair further along, so that no pair always runs right after the same load (e.g. the 2-minute
one of `mlflow models serve`). The summary is the median of the rounds. Then it stops the
servers (SIGTERM) and checks that each inference log holds every answer. The servers: the champion only, a 90/10
split with an `hgb` challenger, and shadow mode (the challenger scores every record off the request path; its rows
counted apart), and, on the same champion and load,
what a user would run instead: `mlflow models serve -m models:/<name>@champion --env-manager local` (`/invocations`),
and the limit of the stack itself: a no-op endpoint (FastAPI on uvicorn, one process, the same uvicorn settings) that
reads the body and answers a constant, under the same load.

    .venv/bin/python bench/bench_serving.py                       # 2 rounds of 5,000 requests at concurrency 16
    .venv/bin/python bench/bench_serving.py --requests 2000 --rounds 3
    .venv/bin/python bench/bench_serving.py --sustained 30000     # then the champion only and shadow mode under 30,000 requests in a row

Shadow mode scores the shadow when the server is quiet, so a round's shadow scores mostly wait until it ends (each
round says how many waited); `--sustained N` measures the load that lasts longer than the 20,000 records that may
wait, where the shadow's work is done during the load.
Environment: MLOPS_NB_BENCH_REQUESTS, MLOPS_NB_BENCH_CONCURRENCY, MLOPS_NB_BENCH_ROUNDS (same as the flags).
"""
from __future__ import annotations
import argparse, http.client, json, os, signal, socket, statistics, subprocess, sys, tempfile, threading, time
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
            except Exception:
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
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("MLOPS_NB_BENCH_ROUNDS", 2)))
    ap.add_argument("--sustained", type=int, default=0, metavar="N", help="then N requests in a row, champion only and shadow mode")
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
    second = make_champion(rows=20_000, model_type="hgb")   # the champion; the first version is the challenger
    assert first.version != second.version, (first.version, second.version)
    mlflow.MlflowClient().set_registered_model_alias("dev.mlops_nb.demo_model", "challenger", first.version)
    print(f"champion v{second.version}, challenger v{first.version} (both hgb on 20,000 rows)", flush=True)
    modes = {"champion only": "", "90/10 split": "serve_routes = {champion = 90, challenger = 10}\n",
             "shadow": 'serve_routes = {champion = 100, challenger = 0}\nserve_mode = "shadow"\n'}
    servers = {}
    try:
        for k, (mode, routes) in enumerate(modes.items()):
            (home/f"c{k}.toml").write_text(f'[dev]\ninference_log_table = "log{k}"\n{routes}')
            servers[mode] = start_ours(dict(env, MLOPS_NB_CONFIG=str(home/f"c{k}.toml")), f"dev.mlops_nb.log{k}")
        servers["mlflow models serve"] = start_mlflow_serve(env)
        servers["no-op endpoint"] = start_noop(env)
        units = [["champion only", n] for n in PAIRED] + [["mlflow models serve"]]   # each of PAIRED right after the champion only
        order = list(dict.fromkeys(n for u in units for n in u))
        warm = {name: load(a, servers[name]["port"], servers[name]["path"])["ok"] for name in order}   # not counted: first commits, lazy imports
        print("warm-up round done (not counted)", flush=True)
        rounds = []
        for r in range(a.rounds):
            res, waiting = {}, None
            for unit in units[r % len(units):] + units[:r % len(units)]:
                for name in unit:
                    out = load(a, servers[name]["port"], servers[name]["path"])
                    res[name if len(unit) == 1 or name != "champion only" else f"champion only, before {unit[1]}"] = out
                    if name == "shadow": waiting = shadow_waiting(servers[name]["port"])   # right after its load, before it is quiet
            rounds.append(res)
            report_round(r + 1, res)
            print(f"round {r + 1}, shadow: {waiting:,} shadow score(s) waiting at the end of its load", flush=True)
        if a.sustained: sustained(a, servers)
    finally:
        for srv in servers.values(): stop(srv)
    for mode in modes:
        log = log_rows(servers[mode]["log"])
        mine = [r for res in rounds for k, r in res.items() if k.split(",")[0] == mode]   # the champion only: a load before each of PAIRED
        ok = sum(r["ok"] for r in mine) + 50 * (len(mine) + 1) + warm[mode]   # each load's 50 warm-up requests too
        ok += (a.sustained + 50) if a.sustained and mode in ("champion only", "shadow") else 0
        print(f"{mode}: inference log rows: {log['answer_rows']:,} answers (expected {ok:,}), {log['shadow_rows']:,} shadow scores")
    summary = {k: statistics.median(rd[k] for rd in map(ratios, rounds)) for k in ratios(rounds[0])}
    print(f"median of {a.rounds} round(s): " + "; ".join(f"{k} {v:.2f}" for k, v in summary.items()))
    print(json.dumps({"rounds": rounds, "median_ratios": summary}))


def ratios(res: dict) -> dict:
    "One round's ratios: ours against mlflow models serve, the modes and the no-op endpoint each against the champion only's load just before it."
    m, before = res["mlflow models serve"], lambda mode: res[f"champion only, before {mode}"]
    out = {}
    for mode in ("champion only", "90/10 split", "shadow"):
        r = before("no-op endpoint") if mode == "champion only" else res[mode]
        out[f"{mode} req/s over mlflow's"] = r["req_per_s"] / m["req_per_s"]
        out[f"{mode} p99 over mlflow's"] = r["p99_ms"] / m["p99_ms"]
    for mode in ("90/10 split", "shadow"): out[f"{mode} p99 over champion only's"] = res[mode]["p99_ms"] / before(mode)["p99_ms"]
    out["champion only req/s over the no-op endpoint's"] = before("no-op endpoint")["req_per_s"] / res["no-op endpoint"]["req_per_s"]
    return out


def report_round(n: int, res: dict):
    for name, r in res.items():
        print(f"round {n}, {name}: {r['requests']:,} single-record requests at concurrency {r['concurrency']}: p50 {r['p50_ms']:.1f} ms, "
              f"p99 {r['p99_ms']:.1f} ms, {r['req_per_s']:,.0f} req/s, {r['errors']} errors", flush=True)
    print(f"round {n} ratios: " + "; ".join(f"{k} {v:.2f}" for k, v in ratios(res).items()), flush=True)


def shadow_waiting(port: int) -> int:
    "The shadow scores waiting in the server on `port` (its `/health`)."
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10); c.request("GET", "/health")
    return json.loads(c.getresponse().read())["shadow"]["waiting"]


def sustained(a, servers: dict):
    "`a.sustained` requests in a row to the champion only, then to shadow mode: past the records that may wait for a quiet moment."
    deadline = time.monotonic() + 120
    while shadow_waiting(servers["shadow"]["port"]) and time.monotonic() < deadline: time.sleep(0.2)   # the rounds' shadow scores done first
    b = argparse.Namespace(requests=a.sustained, concurrency=a.concurrency)
    res = {name: load(b, servers[name]["port"], "/predict") for name in ("champion only", "shadow")}
    c, s = res["champion only"], res["shadow"]
    for name, r in res.items():
        print(f"sustained, {name}: {r['requests']:,} requests in a row: p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
              f"{r['req_per_s']:,.0f} req/s, {r['errors']} errors", flush=True)
    print(f"sustained: shadow req/s over champion only's {s['req_per_s'] / c['req_per_s']:.2f}; shadow p99 over champion only's "
          f"{s['p99_ms'] / c['p99_ms']:.2f}; {shadow_waiting(servers['shadow']['port']):,} shadow score(s) waiting at its end", flush=True)


PAIRED = ("no-op endpoint", "90/10 split", "shadow")   # each measured right after a load of the champion only, its ratio that pair's


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


def started(cmd: list, env: dict, path: str, ready: str, what: str, log: str = None) -> dict:
    "Start a server process on a free port (`cmd` ends with the port) and wait until GET `ready` answers."
    port = free_port()
    proc = subprocess.Popen([*cmd, str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    srv = {"port": port, "proc": proc, "path": path, "log": log}
    try: wait_ready(port, ready, what)
    except BaseException: stop(srv); raise
    return srv


def stop(srv: dict):
    "SIGTERM to the server's process group (it flushes its inference log), and wait."
    if srv["proc"].poll() is None: os.killpg(srv["proc"].pid, signal.SIGTERM)
    srv["proc"].wait(120)


def start_ours(env: dict, log_table: str) -> dict:
    "`mlops-nb serve` with `env`."
    return started([str(Path(sys.executable).parent/"mlops-nb"), "serve", "--env", "dev", "--port"], env, "/predict", "/health",
                   "mlops-nb serve", log_table)


def start_mlflow_serve(env: dict) -> dict:
    "`mlflow models serve` of the champion on the same store, loaded like ours."
    from mlops_nb.config import load_config
    from mlops_nb.mlflow_store import configure_mlflow, tracking_uri
    cfg = load_config("dev"); configure_mlflow(cfg)
    menv = dict(env, MLFLOW_TRACKING_URI=tracking_uri(), MLFLOW_REGISTRY_URI=tracking_uri(),
                PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")  # it starts `uvicorn` from PATH
    return started([str(Path(sys.executable).parent/"mlflow"), "models", "serve", "-m", f"models:/{cfg.registered_model}@champion",
                    "--env-manager", "local", "--host", "127.0.0.1", "-p"], menv, "/invocations", "/ping", "mlflow models serve")


def start_noop(env: dict) -> dict:
    "The no-op endpoint (bench/noop_endpoint.py)."
    return started([sys.executable, str(Path(__file__).parent/"noop_endpoint.py")], env, "/predict", "/health", "the no-op endpoint")


def log_rows(log_table: str) -> dict:
    "The answers and the shadow scores an inference log holds."
    from mlops_nb.lakehouse import read_table
    log = read_table(log_table).data
    ok = (log.path == "/predict") & (log.status == 200)
    return {"answer_rows": int((ok & log.shadow_of.isna()).sum()), "shadow_rows": int((ok & log.shadow_of.notna()).sum())}


if __name__ == "__main__":
    main()
