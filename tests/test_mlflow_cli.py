"""The MLflow commands users know work on the project's store with only MLFLOW_TRACKING_URI set, and the pipeline
and `trace` work against a real remote `mlflow server` (SQLite backend, artifacts served by the server)."""
from __future__ import annotations
import contextlib, json, os, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest
from lineage_helpers import shared_pipeline, clean_env, cli, clone, run_pipeline, BIN, MODEL


@pytest.fixture(scope="module")
def shared(shared_dir):
    return shared_pipeline(shared_dir)


def only_tracking_uri(uri: str, tmp: Path) -> dict:
    "A minimal environment: PATH, HOME and MLFLOW_TRACKING_URI, nothing of mlops-nb."
    return {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp), "MLFLOW_TRACKING_URI": uri,
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def mlflow_cmd(env, *args):
    r = subprocess.run([str(BIN/"mlflow"), *args], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"mlflow {' '.join(args)} -> {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r.stdout


def test_standard_mlflow_commands_on_our_store(shared, tmp_path):
    src, home, env, job = shared
    uri = json.loads(cli(env, "env", "--json", cwd=src).stdout)["tracking_uri"]
    assert uri == f"sqlite:///{home}/mlflow.db"
    e = only_tracking_uri(uri, tmp_path)
    assert "/Shared/mlops-nb/dev" in mlflow_cmd(e, "experiments", "search")
    train = job["model"]["mlflow_run_id"]
    described = json.loads(mlflow_cmd(e, "runs", "describe", "--run-id", train))
    assert described["data"]["tags"]["GIT_SHA"] == job["git_sha"] and described["data"]["params"]["model_type"] == "logreg"
    out = tmp_path/"artifacts"
    mlflow_cmd(e, "artifacts", "download", "-r", train, "-d", str(out))
    assert (out/"notebooks"/"train.ipynb").is_file() and (out/"environment"/"requirements.txt").is_file()
    code = (f"import mlflow, pandas as pd\n"
            f"m = mlflow.pyfunc.load_model('models:/{MODEL}@champion')\n"
            f"x = pd.read_parquet({str(tmp_path/'rows.parquet')!r})\n"
            f"p = m.predict(x)\nprint(len(p), float(p.min().min()) >= 0, float(p.max().max()) <= 1)\n")
    from deltalake import DeltaTable
    DeltaTable(str(home/"tables"/"dev"/"mlops_nb"/"scoring_batch")).to_pandas().drop(columns=["id"]).head(5).to_parquet(tmp_path/"rows.parquet")
    r = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["5", "True", "True"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(argv: list, log_path: Path, url: str, ready: str = "/health", **popen):
    """Start `argv` (a server) with its output in `log_path`, wait until GET `url + ready` answers 200 (at most 120 s,
    failing with the log's tail if the process dies), yield the process; stop it after."""
    log = open(log_path, "w")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, **popen)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}{ready}", timeout=2) as r:
                    if r.status == 200: break
            except OSError: pass
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{argv[0]} did not answer {ready} within 120s"
            time.sleep(0.5)
        yield proc
    finally:
        proc.terminate()
        try: proc.wait(timeout=30)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait()
        log.close()


@pytest.fixture
def mlflow_server(tmp_path):
    "A real `mlflow server` on a free loopback port: SQLite backend and served artifacts in tmp; stopped after."
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with serving([str(BIN/"mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                  "--backend-store-uri", f"sqlite:///{tmp_path/'server.db'}",
                  "--artifacts-destination", str(tmp_path/"server-artifacts"), "--serve-artifacts"],
                 tmp_path/"server.log", url, env={**os.environ, "HOME": str(tmp_path)}):
        yield url, tmp_path


def test_pipeline_and_trace_against_remote_server(mlflow_server, tmp_path):
    url, server_tmp = mlflow_server
    src = clone(tmp_path/"src")
    env = clean_env(tmp_path/"home", src, MLFLOW_TRACKING_URI=url)
    job = run_pipeline(env, src, "train,evaluate", rows=1000)
    assert not (tmp_path/"home"/"mlflow.db").exists()  # nothing tracked locally
    r = cli(env, "trace", f"models:/{MODEL}@champion", "--json", cwd=src)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    t = json.loads(r.stdout)
    assert t["model"]["mlflow_run_id"] == job["model"]["mlflow_run_id"] and t["model"]["artifact_uri"].startswith("mlflow-artifacts:")
    assert t["code"]["git_sha"] == job["git_sha"] and t["data"]["rows"] == "1000"
    assert [n["step"] for n in t["notebooks"]] == ["train", "evaluate"]
    stored = list((server_tmp/"server-artifacts").rglob("train.ipynb"))  # the server stored the executed notebook
    assert stored and list((server_tmp/"server-artifacts").rglob("requirements.txt"))


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200, url
        return json.loads(r.read())


def test_ui_shows_our_store(shared, tmp_path):
    """`mlops-nb ui` serves MLflow's UI and REST API on the project's store (the experiment, the train run, the
    registered model, an artifact); on a home with no store it says where it looked and creates nothing."""
    src, home, env, job = shared
    empty = tmp_path/"empty"
    r = cli(clean_env(empty, src), "ui", "--port", free_port(), cwd=src, timeout=120)
    assert r.returncode == 1 and f"no MLflow store at {empty.resolve()}/mlflow.db" in r.stderr, r.stderr
    assert not empty.exists()
    port, before = free_port(), sorted(p.name for p in home.iterdir())
    url = f"http://127.0.0.1:{port}"
    with serving([str(BIN/"mlops-nb"), "ui", "--port", str(port)], tmp_path/"ui.log", url, ready="/", env=env, cwd=src):
        with urllib.request.urlopen(f"{url}/", timeout=10) as page: assert b"<html" in page.read().lower()  # the UI's page
        exps = get_json(f"{url}/api/2.0/mlflow/experiments/search?max_results=100")["experiments"]
        exp = next(e for e in exps if e["name"] == "/Shared/mlops-nb/dev")
        assert f"/#/experiments/{exp['experiment_id']}?workflowType=machine_learning" in (tmp_path/"ui.log").read_text()  # the URL it printed: the runs table
        assert exp["tags"] and {"key": "mlflow.experimentKind", "value": "custom_model_development"} in exp["tags"]
        train = job["model"]["mlflow_run_id"]
        run = get_json(f"{url}/api/2.0/mlflow/runs/get?run_id={train}")["run"]
        assert {t["key"]: t["value"] for t in run["data"]["tags"]}["GIT_SHA"] == job["git_sha"]
        assert get_json(f"{url}/api/2.0/mlflow/registered-models/get?name={MODEL}")["registered_model"]["name"] == MODEL
        with urllib.request.urlopen(f"{url}/get-artifact?path=environment/requirements.txt&run_uuid={train}", timeout=10) as a:
            assert b"mlflow==" in a.read()   # artifacts are served from the home's artifact root
    assert sorted(p.name for p in home.iterdir()) == before and not (src/"mlflow.db").exists() and not (src/"mlartifacts").exists()
