"""Serving two versions: a 90/10 split, shadow mode, reloads under steady load and bad routes, on the real `mlops-nb serve`."""
from __future__ import annotations
import os, signal, subprocess, sys, threading, time
from pathlib import Path
import httpx, pytest
from scoring_helpers import home_environ, make_champion
from test_serving import RECORD, free_port


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    "A home whose model has two versions: `champion` (hgb, v2) and `challenger` (logreg, v1)."
    import mlflow
    home = tmp_path_factory.mktemp("routes-home")
    with home_environ(home):
        first = make_champion(rows=2000)
        second = make_champion(rows=2000, model_type="hgb")
        mlflow.MlflowClient().set_registered_model_alias("dev.mlops_nb.demo_model", "challenger", first.version)
        env = {k: v for k, v in os.environ.items() if k != "MLOPS_NB_SERVE_TOKEN"}
    return dict(home=home, env=env, champion=second.version, challenger=first.version)


def start(versions, name: str, config: str) -> dict:
    "`mlops-nb serve` on the home with `config` as $MLOPS_NB_CONFIG, once /health answers."
    home = versions["home"]
    (home/f"{name}.toml").write_text(config)
    env = dict(versions["env"], MLOPS_NB_CONFIG=str(home/f"{name}.toml"))
    port, log = free_port(), open(home/f"{name}.log", "w+")
    proc = subprocess.Popen([str(Path(sys.executable).parent/"mlops-nb"), "serve", "--env", "dev", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200: break
        except httpx.TransportError: pass
        if proc.poll() is not None or time.monotonic() > deadline:
            log.seek(0); proc.kill()
            raise AssertionError(f"server did not start:\n{log.read()}")
        time.sleep(0.5)
    return dict(proc=proc, client=httpx.Client(base_url=url, timeout=60), config=home/f"{name}.toml", log=log)


def stop_and_read_log(versions, srv, table: str = "inference_log"):
    "SIGTERM the server (it writes what its log still holds), then the inference log's rows."
    srv["client"].close()
    srv["proc"].send_signal(signal.SIGTERM)
    assert srv["proc"].wait(90) in (0, -signal.SIGTERM)
    with home_environ(versions["home"]):
        from mlops_nb.lakehouse import read_table
        return read_table(f"dev.mlops_nb.{table}").data


@pytest.fixture(scope="module")
def split(versions):
    srv = start(versions, "split", "[dev]\nserve_routes = {champion = 90, challenger = 10}\nserve_reload_check_seconds = 1\n")
    srv["answered"] = []   # (prediction id, arm, version) of every record answered
    yield srv
    if srv["proc"].poll() is None: srv["proc"].kill()


def post(srv, records, **headers) -> dict:
    r = srv["client"].post("/predict", json=records, headers=headers)
    assert r.status_code == 200, r.text
    a = r.json()
    srv["answered"] += [(i, p["arm"], p["model_version"]) for i, p in zip(a["prediction_ids"], a["predictions"])]
    return a


def test_a_90_10_split_routes_each_record_on_its_key(versions, split):
    import mlflow, pandas as pd
    records = [{**RECORD, "id": i, "age": 20.0 + i % 50} for i in range(1000)]
    arms = {}
    for k in range(0, 1000, 200):
        a = post(split, records[k:k + 200])
        for rec, p in zip(records[k:k + 200], a["predictions"]):
            assert p["model_version"] == versions[p["arm"]], p
            arms[rec["id"]] = p
        assert {p["arm"] for p in a["predictions"]} == {"champion", "challenger"} and "model_version" not in a   # one request, both arms
        assert a["served"]["challenger"]["model_version"] == versions["challenger"]
    share = sum(p["arm"] == "challenger" for p in arms.values()) / len(arms)
    assert 0.07 < share < 0.13, share
    for rec in records[:60:3]:   # the same key alone, in another request: the same arm, the same answer
        p = post(split, [rec])["predictions"][0]
        assert (p["arm"], p["probability"]) == (arms[rec["id"]]["arm"], arms[rec["id"]]["probability"])
    with home_environ(versions["home"]):
        from mlops_nb.config import load_config
        from mlops_nb.mlflow_store import configure_mlflow
        configure_mlflow(load_config("dev"))
        v1 = mlflow.pyfunc.load_model(f"models:/dev.mlops_nb.demo_model/{versions['challenger']}")
    ch = [r for r in records if arms[r["id"]]["arm"] == "challenger"][:20]
    expected = v1.predict(pd.DataFrame(ch))
    assert max(abs(arms[r["id"]]["probability"] - e) for r, e in zip(ch, expected)) < 1e-12   # the challenger's own pyfunc
    keyless = [{k: v for k, v in RECORD.items()}] * 4   # no id: routed on the client's request id, all together
    got = {p["arm"] for c in ("client-a", "client-a") for p in post(split, keyless, **{"X-Client-Request-Id": c})["predictions"]}
    assert len(got) == 1


def test_reload_with_bad_routes_is_a_409_that_keeps_the_old_routes(versions, split):
    c, conf = split["client"], split["config"]
    good = conf.read_text()
    try:
        for bad, why in [("{champion = 90, challenger = 20}", "summing to 100"), ("{champion = 90, blue = 10}", "'blue', which model")]:
            conf.write_text(f"[dev]\nserve_routes = {bad}\nserve_reload_check_seconds = 1\n")
            r = c.post("/reload")
            assert r.status_code == 409 and why in r.json()["detail"], r.text
            assert r.json()["serving"]["routes"] == {"champion": 90, "challenger": 10}
            h = c.get("/health").json()["serving"]
            assert h["last_reload"]["ok"] is False and why in h["last_reload"]["error"], h
            assert {p["arm"] for p in post(split, [{**RECORD, "id": i} for i in range(200)])["predictions"]} == {"champion", "challenger"}
    finally: conf.write_text(good)   # the next tests of this module share the server
    assert c.post("/reload").status_code == 200


def test_the_periodic_check_follows_an_alias(versions, split):
    import mlflow
    c = split["client"]
    with home_environ(versions["home"]):
        mlflow.MlflowClient().set_registered_model_alias("dev.mlops_nb.demo_model", "challenger", versions["champion"])
    deadline = time.monotonic() + 60
    while c.get("/health").json()["serving"]["versions"]["challenger"] != versions["champion"]:
        assert time.monotonic() < deadline, c.get("/health").json()
        time.sleep(0.5)
    assert c.get("/health").json()["serving"]["last_reload"]["why"] == "the routes or an alias changed"
    with home_environ(versions["home"]):
        mlflow.MlflowClient().set_registered_model_alias("dev.mlops_nb.demo_model", "challenger", versions["challenger"])
    assert c.post("/reload").json()["serving"]["versions"]["challenger"] == versions["challenger"]


def test_five_reloads_under_steady_load_fail_no_request(versions, split):
    "4 threads post continuously while the routes flip 5 times between the champion alone and the challenger alone."
    c, conf, stop, failed, seen, lock = split["client"], split["config"], threading.Event(), [], [], threading.Lock()
    def load(t):
        with httpx.Client(base_url=str(c.base_url), timeout=60) as own:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    r = own.post("/predict", json=[{**RECORD, "id": 100_000 * t + i}])
                    ok = r.status_code == 200
                except httpx.HTTPError as e: ok, r = False, e
                with lock:
                    if ok:
                        a = r.json(); seen.append(a["predictions"][0]["model_version"])
                        split["answered"].append((a["prediction_ids"][0], a["predictions"][0]["arm"], a["predictions"][0]["model_version"]))
                    else: failed.append(str(r))
    threads = [threading.Thread(target=load, args=(t,)) for t in range(4)]
    for t in threads: t.start()
    statuses, marks = [], []
    for k in range(5):
        time.sleep(1.0)
        conf.write_text(f"[dev]\nserve_routes = {{{'challenger' if k % 2 == 0 else 'champion'} = 100}}\nserve_reload_check_seconds = 1\n")
        statuses.append(c.post("/reload").status_code)
        with lock: marks.append(len(seen))
    time.sleep(1.0)
    stop.set()
    for t in threads: t.join(60)
    assert failed == [] and statuses == [200] * 5, (failed[:5], statuses)
    after = [set(seen[marks[k]:marks[k + 1]]) for k in range(4)]   # what answered between reloads
    assert len(seen) > 50 and versions["challenger"] in after[0] | after[2] and versions["champion"] in after[1] | after[3], after


def test_split_log_holds_one_row_per_answered_record(versions, split):
    log = stop_and_read_log(versions, split)
    ok = log[(log.path == "/predict") & (log.status == 200)]
    assert ok.shadow_of.isna().all()
    rows = sorted((ids[0], arm, v) for ids, arm, v in zip(ok.prediction_ids, ok.arm, ok.model_version))
    assert rows == sorted(split["answered"])   # exactly one row per answered record, with its arm and version
    assert (ok.status_code == 200).all() and (ok.timestamp_ms > 0).all() and ok.date.notna().all() and ok.response.notna().all()


def test_shadow_mode_answers_with_the_champion_and_logs_each_shadow_score(versions):
    srv = start(versions, "shadow", '[dev]\nserve_routes = {champion = 100, challenger = 0}\nserve_mode = "shadow"\ninference_log_table = "shadow_log"\n')
    try:
        ids = []
        for k in range(10):
            a = srv["client"].post("/predict", json=[{**RECORD, "id": 10 * k + j} for j in range(k % 3 + 1)]).json()
            assert {(p["arm"], p["model_version"]) for p in a["predictions"]} == {("champion", versions["champion"])}
            ids += a["prediction_ids"]
        h = srv["client"].get("/health").json()
        assert h["serving"]["shadow"] == "challenger" and h["serving"]["mode"] == "shadow"
    finally:
        log = stop_and_read_log(versions, srv, "shadow_log")
    ok = log[(log.path == "/predict") & (log.status == 200)]
    answers, shadows = ok[ok.shadow_of.isna()], ok[ok.shadow_of.notna()]
    assert sorted(i[0] for i in answers.prediction_ids) == sorted(ids)
    assert sorted(shadows.shadow_of) == sorted(ids) and set(shadows.arm) == {"challenger"}   # one shadow row per answered record
    assert set(shadows.model_version) == {versions["challenger"]}
    assert not set(i[0] for i in shadows.prediction_ids) & set(ids)


def test_bad_routes_stop_the_server_before_it_starts(tmp_path, versions):
    from conftest import run_cli
    for bad, why in [('serve_routes = {champion = 90, challenger = 20}', "summing to 100"), ('serve_mode = "shadow"', "exactly one other alias"),
                     ('serve_routes = {champion = 90, blue = 10}', "'blue', which model dev.mlops_nb.demo_model lacks")]:
        (tmp_path/"c.toml").write_text(f"[dev]\n{bad}\n")
        r = run_cli(versions["home"], "serve", "--port", free_port(), env={"MLOPS_NB_CONFIG": str(tmp_path/"c.toml")}, timeout=120)
        assert r.returncode == 2 and why in r.stderr and "Traceback" not in r.stderr, str(r)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
