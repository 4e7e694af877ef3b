"""`mlops-nb rollout` on the real CLI against a real `mlops-nb serve` under steady load: steps the server follows without a
restart, the promotion at the end, the stops (an alert about the challenger, a challenger that fails), bad input, the defaults."""
from __future__ import annotations
import json, os, signal, subprocess, sys, threading, time
from pathlib import Path
import httpx, pytest
from conftest import Home, webhook_receiver
from scoring_helpers import home_environ, make_champion
from test_serving import RECORD
from test_serving_routes import start

MODEL = "dev.mlops_nb.demo_model"
CLI = str(Path(sys.executable).parent/"mlops-nb")
STOP = {"champion": 100, "challenger": 0}
FAILING = '''import mlflow
class Failing(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        raise RuntimeError("this challenger fails on every record")
mlflow.models.set_model(Failing())
'''


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    "A home with version 1 (logreg) champion by a recorded promotion, 2 (hgb) challenger, 3 a pyfunc that raises; all PASSED; a server."
    import mlflow
    home = tmp_path_factory.mktemp("rollout-home")
    with home_environ(home):
        from mlops_nb.config import load_config
        from mlops_nb.registry import move_champion
        first, second = make_champion(rows=2000), make_champion(rows=2000, model_type="hgb")
        c, cfg = mlflow.MlflowClient(), load_config("dev")
        sig = mlflow.models.get_model_info(f"models:/{MODEL}/{first.version}").signature
        (home/"failing_model.py").write_text(FAILING)
        with mlflow.start_run(): mlflow.pyfunc.log_model(name="model", python_model=str(home/"failing_model.py"), signature=sig,
                                                         pip_requirements=["mlflow"], registered_model_name=MODEL)
        versions = dict(champion=str(first.version), challenger=str(second.version), failing=str(max(int(v.version) for v in c.search_model_versions(f"name='{MODEL}'"))))
        for v in versions.values(): c.set_model_version_tag(MODEL, v, "model_validation_status", "PASSED")
        move_champion(c, cfg, versions["champion"], "promote", "the first champion")
        c.set_registered_model_alias(MODEL, "challenger", versions["challenger"])
        env = {k: v for k, v in os.environ.items() if k != "MLOPS_NB_SERVE_TOKEN"}
    lab = dict(home=home, env=env, **versions)
    srv = start(lab, "rollout", "[dev]\nserve_reload_check_seconds = 1\nserve_log_flush_seconds = 0.5\n")
    lab.update(srv=srv, url=str(srv["client"].base_url))
    yield lab
    if srv["proc"].poll() is None: srv["proc"].kill()


def history(lab) -> list:
    with home_environ(lab["home"]):
        from mlops_nb.config import load_config
        from mlops_nb.registry import champion_history
        return champion_history(load_config("dev"))


def set_alias(lab, alias: str, version):
    import mlflow
    with home_environ(lab["home"]):
        c = mlflow.MlflowClient()
        if version is None: c.delete_registered_model_alias(MODEL, alias)
        else: c.set_registered_model_alias(MODEL, alias, str(version))


def rollout(lab, *args, env: dict = None) -> subprocess.Popen:
    "`mlops-nb rollout --env dev *args` started in the background (SIGINT as a terminal's Ctrl-C delivers it)."
    return subprocess.Popen([CLI, "rollout", "--env", "dev", *map(str, args)], env={**lab["env"], "MLOPS_NB_CONFIG": str(lab["srv"]["config"]), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def serving(lab) -> dict:
    return lab["srv"]["client"].get("/health").json()["serving"]


def wait_for(what, ok, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


class Load:
    "Threads posting `per` records a request (ids cycling over `keys`) until stopped; each answer's (time, id, arm, version), each failure."
    def __init__(self, url: str, threads: int = 2, per: int = 10, keys: int = 2000):
        self.url, self.per, self.keys, self.answers, self.failed, self.stop = url, per, keys, [], [], threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(t,), daemon=True) for t in range(threads)]
        for t in self.threads: t.start()

    def run(self, t: int):
        with httpx.Client(base_url=self.url, timeout=60) as c:
            i = t * 7919
            while not self.stop.is_set():
                ids = [(i + j) % self.keys for j in range(self.per)]
                i += self.per
                try: r = c.post("/predict", json=[{**RECORD, "id": k, "age": 20.0 + k % 50} for k in ids])
                except httpx.HTTPError as e:
                    self.failed.append((time.time(), repr(e))); continue
                if r.status_code != 200: self.failed.append((time.time(), r.status_code)); continue
                now = time.time()
                self.answers += [(now, k, p["arm"], p["model_version"]) for k, p in zip(ids, r.json()["predictions"])]

    def close(self):
        self.stop.set()
        for t in self.threads: t.join(60)


def watch_routes(lab, until: threading.Event) -> list:
    "Poll /health until `until` is set: [(first time seen, routes, versions)] of each change."
    seen = []
    def poll():
        while not until.is_set():
            s = serving(lab)
            if not seen or (s["routes"], s["versions"]) != seen[-1][1:]: seen.append((time.time(), s["routes"], s["versions"]))
            time.sleep(0.2)
    threading.Thread(target=poll, daemon=True).start()
    return seen


def test_a_rollout_moves_the_challengers_share_step_by_step_then_promotes_it(lab):
    before, load, done = history(lab), Load(lab["url"]), threading.Event()
    seen = watch_routes(lab, done)
    try:
        p = rollout(lab, "--steps", "10,50,100", "--min-hours", 0.004, "--check-minutes", 0.05, "--json")
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
        wait_for("the config's routes with the new champion", lambda: serving(lab)["routes"] == {"champion": 100} and serving(lab)["versions"] == {"champion": lab["challenger"]})
        time.sleep(1.5)   # a little traffic after the promotion, and the inference log flushed
    finally:
        done.set(); load.close()
    rows = json.loads(out)
    steps = [{"champion": 90, "challenger": 10}, {"champion": 50, "challenger": 50}, {"champion": 0, "challenger": 100}]
    assert [(r["action"], r["trigger"], r["from_version"], r["to_version"]) for r in rows] == \
        [("rollout", "rollout", lab["champion"], lab["challenger"])] * 3 + [("promote", "rollout", lab["champion"], lab["challenger"])]
    assert [json.loads(r["routes"]) for r in rows[:3]] == steps and rows[3]["routes"] == ""
    assert [r["reason"] for r in rows[:3]] == ["step 1 of 3: challenger 10%", "step 2 of 3: challenger 50%", "step 3 of 3: challenger 100%"]
    assert history(lab) == before + rows                                       # one row per step, then the promotion
    assert "held 0.0" in err and "challenger rows" in err and "0 alerts" in err, err   # the progress of each check
    # the server followed each step without a restart, loading only the arms above 0%
    routes = [r for _, r, _ in seen]
    assert [routes.index(s) for s in steps] == sorted(routes.index(s) for s in steps), seen
    assert next(v for _, r, v in seen if r == steps[2]) == {"challenger": lab["challenger"]}
    assert lab["srv"]["proc"].poll() is None and serving(lab)["reloads"] >= 4 and load.failed == [], load.failed[:5]
    # the inference log's challenger share while each step was served is about the step's
    with home_environ(lab["home"]):
        from mlops_nb.lakehouse import read_table
        log = read_table("dev.mlops_nb.inference_log").data
    log = log[(log.path == "/predict") & (log.status_code == 200)]
    at = {json.dumps(r, sort_keys=True): t for t, r, _ in seen}
    edges = [at[json.dumps(s, sort_keys=True)] for s in steps] + [next(t for t, r, _ in seen if r == {"champion": 100} and t > at[json.dumps(steps[2], sort_keys=True)])]
    shares, counts = [], []
    for (lo, hi), s in zip(zip(edges, edges[1:]), steps):
        w = log[(log.timestamp_ms >= lo * 1000) & (log.timestamp_ms < hi * 1000)]
        assert len(w) > 100, (s, len(w))
        shares.append((w.arm == "challenger").mean()); counts.append(len(w))
        assert set(w[w.arm == "challenger"].model_version) == {lab["challenger"]}
    print(f"challenger share per step (10/50/100%): {[round(float(x), 3) for x in shares]}, log rows per step: {counts}")
    assert 0.04 < shares[0] < 0.18 and 0.38 < shares[1] < 0.62 and shares[2] > 0.95, shares
    # sticky: a key the challenger answered at 10% it answered at 50% too
    arm_at = lambda lo, hi: {k: a for t, k, a, _ in load.answers if lo + 0.5 < t < hi}
    at10, at50 = arm_at(edges[0], edges[1]), arm_at(edges[1], edges[2])
    both = [k for k in at10 if k in at50 and at10[k] == "challenger"]
    assert len(both) > 20 and all(at50[k] == "challenger" for k in both)


def test_the_champions_history_and_rollback_ignore_the_rollout_steps(lab):
    r = Home(lab["home"]).cli("champions", "--env", "dev")
    assert r.returncode == 0, str(r)
    lines = r.stdout.splitlines()
    assert len(lines) == 2 + len(history(lab)) and sum(" rollout " in l for l in lines) == 4, r.stdout   # 3 steps + the promotion's trigger
    assert "step 2 of 3: challenger 50%" in r.stdout and lines[-1].split()[2:6] == ["promote", lab["champion"], lab["challenger"], "rollout"], lines[-1]
    r = Home(lab["home"]).cli("rollback", "--env", "dev", "--json")
    assert r.returncode == 0 and r.json()["to_version"] == lab["champion"] and r.json()["from_version"] == lab["challenger"], str(r)
    wait_for("the server on the old champion", lambda: serving(lab)["versions"] == {"champion": lab["champion"]})
    assert [h["seq"] for h in history(lab)] == [str(i) for i in range(1, len(history(lab)) + 1)]   # one numbering for moves and steps


def raise_alert_about(lab, version: str):
    "The monitor's own `raise_alerts` on a window of `version` whose PSI breaks the rule."
    import pandas as pd, pyarrow as pa
    with home_environ(lab["home"]):
        from mlops_nb.alerts import raise_alerts
        from mlops_nb.config import load_config
        from mlops_nb.context import RunContext
        from mlops_nb.lakehouse import write_table
        from mlops_nb.monitoring import DRIFT_SCHEMA, PROFILE_SCHEMA
        cfg = load_config("dev", alert_rules=[{"name": "psi", "metric": "population_stability_index", "bound": 0.2, "direction": "above"}])
        day = pd.Timestamp.now(tz="UTC").floor("D")
        drift = {"window_start": day, "window_end": day + pd.Timedelta(days=1), "model_name": MODEL, "model_version": version, "job_run_id": "j-alert",
                 "slice_key": ":all", "slice_value": ":all", "column_name": "age", "drift_type": "BASELINE", "count": 5000, "base_count": 2000,
                 "population_stability_index": 0.5, "drifted": True, "drift_statistic": "population_stability_index", "drift_value": 0.5, "drift_bound": 0.2}
        write_table(pa.Table.from_pylist([drift], schema=DRIFT_SCHEMA), cfg.qualify(cfg.drift_metrics_table))
        write_table(PROFILE_SCHEMA.empty_table(), cfg.qualify(cfg.profile_metrics_table))
        res = raise_alerts(RunContext("dev", "local", "j-alert", "monitor", "a" * 40, "false"), cfg, "m-alert")
    assert len(res.raised) == 1 and res.raised[0]["model_version"] == version, res.note
    return res.raised[0]["alert_id"]


def test_an_alert_about_the_challenger_stops_the_rollout_and_the_server_follows(lab):
    set_alias(lab, "challenger", lab["challenger"])
    load = Load(lab["url"])
    try:
        with webhook_receiver("hooks/rollout") as (url, got):
            p = rollout(lab, "--steps", "20,100", "--min-hours", 0.05, "--check-minutes", 0.02, env={"MLOPS_NB_ALERT_WEBHOOK_URL": url})
            wait_for("step 1 served", lambda: serving(lab)["routes"] == {"champion": 80, "challenger": 20})
            aid = raise_alert_about(lab, lab["challenger"])
            out, err = p.communicate(timeout=120)
            assert p.returncode == 1, (out, err)
            wait_for("the champion alone", lambda: serving(lab)["routes"] == STOP and serving(lab)["versions"] == {"champion": lab["champion"]})
    finally: load.close()
    last = history(lab)[-1]
    assert last["action"] == "rollout" and json.loads(last["routes"]) == STOP and last["reason"].startswith(f"stopped: alert {aid}"), last
    assert f"history row {last['seq']}: rollout" in out and "stopped: alert" in out, out
    assert [b["event"] for _, b in got] == ["rollout_stopped"] and got[0][1]["challenger"] == lab["challenger"] and aid in got[0][1]["reason"]
    assert url not in out + err and "webhook delivered" in err, err
    assert load.failed == [], load.failed[:5]


def test_a_challenger_that_fails_is_stopped_by_its_error_rate(lab):
    set_alias(lab, "challenger", lab["failing"])
    load = Load(lab["url"], threads=3, per=1)
    try:
        p = rollout(lab, "--steps", "50,100", "--min-hours", 0.05, "--check-minutes", 0.02, "--max-error-rate", 0.05, "--json")
        out, err = p.communicate(timeout=120)
        assert p.returncode == 1, (out, err)
        wait_for("the champion alone", lambda: serving(lab)["routes"] == STOP)
        back = time.time()
        time.sleep(2)
    finally: load.close()
    rows = json.loads(out)
    assert [json.loads(r["routes"]) for r in rows] == [{"champion": 50, "challenger": 50}, STOP], rows
    assert "error rate" in rows[1]["reason"] and "passed 5.0%" in rows[1]["reason"], rows[1]
    fails = [t for t, why in load.failed if why == 500]
    assert len(fails) >= 10 and len(fails) == len(load.failed), load.failed[:5]   # the challenger's records failed, for real
    assert not [t for t in fails if t > back + 1] and all(a == "champion" for t, _, a, _ in load.answers if t > back)


def test_bad_input_exits_2_and_writes_nothing(lab, tmp_path):
    home, n = Home(lab["home"]), len(history(lab))
    set_alias(lab, "challenger", lab["challenger"])
    (tmp_path/"shadow.toml").write_text('[dev]\nserve_routes = {champion = 100, challenger = 0}\nserve_mode = "shadow"\n')
    cases = [(["--steps", "50,10,100"], {}, "strictly increasing"), (["--steps", "10,50"], {}, "the last one 100"),
             (["--min-hours", "-1"], {}, "--min-hours: expected hours"), ([], {"MLOPS_NB_CONFIG": str(tmp_path/"shadow.toml")}, 'serve_mode = "shadow"')]
    for args, env, why in cases:
        r = home.cli("rollout", "--env", "dev", "--min-hours", "0", *args, env=env)
        assert r.returncode == 2 and len(r.error_lines()) == 1 and why in r.stderr and "Traceback" not in r.stderr, str(r)
    for alias, why in [(lab["champion"], "found both at version"), (None, "found no challenger")]:
        set_alias(lab, "challenger", alias)
        r = home.cli("rollout", "--env", "dev", "--min-hours", "0")
        assert r.returncode == 2 and why in r.stderr and "Traceback" not in r.stderr, str(r)
    assert len(history(lab)) == n


def test_the_defaults_hold_an_hour_ctrl_c_keeps_the_step_and_a_rerun_resumes(lab):
    set_alias(lab, "challenger", lab["challenger"])
    n = len(history(lab))
    p = rollout(lab)   # what a user types: 10,50,100, an hour each, checks every 5 minutes
    wait_for("step 1 written", lambda: len(history(lab)) == n + 1)
    wait_for("step 1 served", lambda: serving(lab)["routes"] == {"champion": 90, "challenger": 10})
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    step1 = history(lab)[-1]
    assert p.returncode == 130 and f"history row {step1['seq']} stays in force" in err, (out, err)
    assert step1["reason"] == "step 1 of 3: challenger 10%" and f"history row {step1['seq']}: rollout" in out
    assert serving(lab)["routes"] == {"champion": 90, "challenger": 10}     # Ctrl-C left the step in force
    p = rollout(lab, "--min-hours", 0, "--json")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0 and f"resuming from history row {step1['seq']}" in err, err
    assert [r["reason"] for r in json.loads(out)][:2] == ["step 2 of 3: challenger 50%", "step 3 of 3: challenger 100%"]   # step 1 not again
    assert [h["action"] for h in history(lab)[n:]] == ["rollout"] * 3 + ["promote"]
    wait_for("the new champion alone", lambda: serving(lab)["versions"] == {"champion": lab["challenger"]})
