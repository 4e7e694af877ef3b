"""Online serving: the real `mlops-nb serve` (uvicorn) on a loopback port, talked to over HTTP."""
from __future__ import annotations
import json, os, signal, socket, subprocess, sys, time
from pathlib import Path
import httpx, pytest
from scoring_helpers import CONTEXT, home_environ, make_champion

TOKEN = "t0ken-for-tests-only"
RECORD = {"age": 40.0, "income": 52000.0, "tenure_years": 3.5, "visits": 2.0, "balance": 0.3, "engagement": 0.6,
          "region": "west", "plan": "basic"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    "A home with a champion, and `mlops-nb serve` on it, with a bearer token; stopped with SIGTERM after."
    home = tmp_path_factory.mktemp("serving-home")
    with home_environ(home):
        first = make_champion(rows=2000)
        env = dict(os.environ, MLOPS_NB_SERVE_TOKEN=TOKEN, MLOPS_NB_SERVE_MAX_BODY_BYTES="")
    (home/"config.toml").write_text("[dev]\nserve_max_body_bytes = 20000\nserve_log_batch_rows = 3\n")
    env["MLOPS_NB_CONFIG"] = str(home/"config.toml")
    port = free_port()
    log = open(home/"serve.log", "w+")
    proc = subprocess.Popen([str(Path(sys.executable).parent/"mlops-nb"), "serve", "--env", "dev", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline, answered = time.monotonic() + 120, 0
    while True:
        try:
            answered += 1
            if httpx.get(f"{url}/health", timeout=2).status_code == 200: break   # open without the token
        except httpx.TransportError: answered -= 1
        if proc.poll() is not None or time.monotonic() > deadline:
            log.seek(0); proc.kill()
            raise AssertionError(f"server did not start:\n{log.read()}")
        time.sleep(0.5)
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    yield dict(home=home, proc=proc, client=client, url=url, first=first, log=log, answered=answered)
    client.close()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def test_predict_answers_with_lineage(server):
    c, first = server["client"], server["first"]
    r = c.post("/predict", json=[RECORD, {**RECORD, "income": None, "id": 12}])
    assert r.status_code == 200, r.text
    a = r.json()
    assert (a["model_name"], a["model_version"], a["mlflow_run_id"], a["git_sha"]) == (
        "dev.mlops_nb.demo_model", first.version, first.mlflow_run_id, CONTEXT["git_sha"])
    assert len(a["prediction_ids"]) == 2 and len(set(a["prediction_ids"])) == 2
    assert [0 <= p["probability"] <= 1 and p["label"] == int(p["probability"] >= 0.5) for p in a["predictions"]] == [True, True]
    assert r.headers["x-request-id"] == a["request_id"]
    v = c.get("/version").json()
    assert (v["model_version"], v["mlflow_run_id"]) == (first.version, first.mlflow_run_id)
    assert c.get("/health").json()["status"] == "ok"


def test_bad_requests_get_clear_errors(server):
    c = server["client"]
    bad = {**RECORD, "age": "forty"}
    del bad["plan"]
    r = c.post("/predict", json=[RECORD, bad])
    assert r.status_code == 422
    assert [e["loc"] for e in r.json()["detail"]] == [["body", 1, "age"], ["body", 1, "plan"]]
    assert c.post("/predict", content=b"{not json").status_code == 422
    assert c.post("/predict", json=[RECORD] * 200).status_code == 413  # ~40 kB > 20 kB configured
    assert c.post("/predict", json=[]).status_code == 422


def test_token_is_required_and_never_logged(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        r = httpx.post(f"{server['url']}/predict", json=[RECORD], headers=headers, timeout=30)
        assert r.status_code == 401, headers
    assert httpx.get(f"{server['url']}/version", timeout=30).status_code == 401
    assert httpx.post(f"{server['url']}/reload", timeout=30).status_code == 401


def test_health_is_open_for_liveness_probes(server):
    "With a token set, GET /health answers without it; the other paths still refuse."
    r = httpx.get(f"{server['url']}/health", timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "ok", r.text
    assert r.json()["model_version"] == server["first"].version


def test_nan_in_a_required_field_is_rejected_like_a_null(server):
    "A NaN literal (which Python's JSON parser accepts) in a required field gets the 422 a null gets; the model is not called."
    c = server["client"]
    calls = c.get("/health").json()["micro_batching"]["model_calls"]
    body = json.dumps([RECORD])   # Python's json writes NaN and Infinity as bare literals
    nan_body = json.dumps([{**RECORD, "age": float("nan"), "visits": float("inf")}])
    assert '"age": NaN' in nan_body and '"visits": Infinity' in nan_body
    assert nan_body != body
    r = c.post("/predict", content=nan_body.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert [(e["loc"], e["type"]) for e in detail] == [(["body", 0, "age"], "missing"), (["body", 0, "visits"], "double_type")], detail
    assert detail[0]["msg"] == "field is NaN; the model requires a double" and "finite" in detail[1]["msg"]
    null = c.post("/predict", json=[{**RECORD, "age": None}])
    assert null.status_code == 422 and null.json()["detail"][0]["loc"] == ["body", 0, "age"]
    assert c.get("/health").json()["micro_batching"]["model_calls"] == calls   # neither reached the model
    ok = c.post("/predict", content=json.dumps([{**RECORD, "income": float("nan")}]).encode(), headers={"content-type": "application/json"})
    assert ok.status_code == 200, ok.text   # an optional field that is NaN is missing, as in batch scoring


def test_concurrent_requests_share_model_calls_and_keep_their_own_answers(server):
    "48 different records from 16 threads at once: each answer is its own record's, and fewer model calls than requests."
    import mlflow, pandas as pd
    from concurrent.futures import ThreadPoolExecutor
    c, first = server["client"], server["first"]
    before = c.get("/health").json()["micro_batching"]
    records = [{**RECORD, "income": 20000.0 + 2500 * i, "age": 20.0 + i} for i in range(48)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda r: c.post("/predict", json=[r]), records))
    assert [a.status_code for a in answers] == [200] * 48
    after = c.get("/health").json()["micro_batching"]
    assert after["requests"] - before["requests"] == 48 and after["rows"] - before["rows"] == 48
    assert after["model_calls"] - before["model_calls"] < 48, after   # requests that met in the queue went together
    with home_environ(server["home"]):
        from mlops_nb.config import load_config
        from mlops_nb.mlflow_store import configure_mlflow
        configure_mlflow(load_config("dev"))
        model = mlflow.pyfunc.load_model(f"models:/dev.mlops_nb.demo_model/{first.version}")
    expected = model.predict(pd.DataFrame(records))  # the logged model's own pyfunc: P(class 1)
    got = [a.json()["predictions"][0]["probability"] for a in answers]
    assert max(abs(g - e) for g, e in zip(got, expected)) < 1e-12
    assert len({a.json()["request_id"] for a in answers}) == 48


def test_serve_fails_before_starting_with_one_clear_line(tmp_path, server):
    "No champion, or a bad setting: `mlops-nb serve` exits with one error line, no traceback, before listening."
    from conftest import run_cli
    r = run_cli(tmp_path, "serve", "--port", free_port(), timeout=120)  # an empty home: no store, and none is made
    assert r.returncode == 1 and f"no MLflow store at {tmp_path.resolve()}/mlflow.db" in r.stderr and "Traceback" not in r.stderr, str(r)
    assert not (tmp_path/"mlflow.db").exists()
    r = run_cli(server["home"], "serve", "--env", "staging", "--port", free_port(), timeout=120)  # a store, no staging champion
    assert r.returncode == 1 and "model staging.mlops_nb.demo_model has no champion" in r.stderr and "Traceback" not in r.stderr, str(r)
    (tmp_path/"bad.toml").write_text("[dev]\nserve_max_batch_rows = 0\n")
    r = run_cli(server["home"], "serve", "--port", free_port(), env={"MLOPS_NB_CONFIG": str(tmp_path/"bad.toml")}, timeout=120)
    assert r.returncode == 2 and "serve_max_batch_rows ([dev] of " in r.stderr and "expected a whole number, 1 or more, found 0" in r.stderr, str(r)
    assert "Traceback" not in r.stderr, str(r)


def test_reload_picks_up_a_new_champion_and_shutdown_flushes_the_log(server):
    c, home, proc = server["client"], server["home"], server["proc"]
    with home_environ(home):
        second = make_champion(rows=2000, model_type="hgb")
    assert c.post("/reload").json()["model_version"] == second.version
    assert c.post("/predict", json=[RECORD]).json()["model_version"] == second.version
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn shuts down gracefully, then re-raises the signal
    with home_environ(home):
        from mlops_nb.lakehouse import read_table
        log = read_table("dev.mlops_nb.inference_log").data
    server["log"].seek(0)
    out = server["log"].read()
    ok = log[(log.path == "/predict") & (log.status == 200)]
    assert ok.model_version.value_counts().to_dict() == {server["first"].version: 51, second.version: 1}   # a row per answered record
    assert ok.prediction_ids.map(len).tolist() and set(log.status) >= {200, 401, 413, 422}
    assert (log.latency_ms > 0).all() and sorted(log.request_id.value_counts())[-2:] == [1, 2]   # one request of two records: two rows
    assert ok.prediction_ids.map(lambda ids: ids[0]).is_unique
    # every response is there (an answer of two records is two rows): the start-up polls, then 4 + 4 + 5 + 1 + 5 + 50 + 2 of the tests
    assert len(log) == server["answered"] + 71, log[["path", "status"]]
    assert (ok.arm == "champion").all() and ok.shadow_of.isna().all() and (ok.status_code == 200).all()
    assert TOKEN not in log.to_json() and TOKEN not in out
