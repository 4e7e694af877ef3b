"""A logged model stands alone: in a fresh virtual environment holding only the model's `requirements.txt` (no
mlops_nb), `mlflow models serve -m models:/<name>@champion --env-manager local` answers `/invocations` with the same
probabilities as `mlops-nb serve`'s `/predict`.

The fresh environment is installed from the package index this machine reaches: pip downloads the wheels once into a
folder kept across runs under pytest's temporary root, so a second run installs from it without the index; when pip
cannot reach the index, the test fails and says so."""
from __future__ import annotations
import ast, fcntl, os, shutil, signal, socket, subprocess, sys, time
from pathlib import Path
import httpx, numpy as np, pytest
from conftest import MODEL, REPO, SCORING, VENV_BIN, CLI

_LEAKY = ("MLOPS_NB_", "MLFLOW_", "DATABRICKS_", "DBR_", "PYTHON", "VIRTUAL_ENV", "CONDA")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wheelhouse(tmp_path_factory) -> Path:
    "The wheels of model requirements, kept across test runs beside pytest's numbered temporary folders (`pytest-of-<user>`)."
    base = tmp_path_factory.getbasetemp()
    root = next((p for p in (base, *base.parents) if p.name.startswith("pytest-of-")), base.parent)
    d = root/"standalone-model-wheels"
    d.mkdir(exist_ok=True)
    return d


def pip_install(venv: Path, requirements: Path, wheels: Path):
    """Install `requirements` into `venv`: from the wheels kept by earlier runs when they hold them all, else
    downloaded into them from the package index first (pip's own HTTP cache keeps nothing here: the index's answers
    are not cacheable). A failure to reach the index fails the test and says so."""
    pip = [str(venv/"bin"/"python"), "-m", "pip"]
    run = lambda *a, **kw: subprocess.run([*pip, *a], cwd=venv.parent, env=bare_environ(venv), capture_output=True,
                                          text=True, timeout=1800, **kw)
    with open(wheels/".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run filling the same folder waits
        if run("install", "--no-index", "--find-links", str(wheels), "-r", str(requirements)).returncode == 0: return
        got = run("download", "--dest", str(wheels), "--cache-dir", str(wheels/".pip-cache"), "-r", str(requirements))
    if got.returncode != 0:
        pytest.fail(f"pip could not download the model's requirements.txt from the package index (exit {got.returncode}); "
                    f"this test needs the index: check the network and pip's configuration.\n{got.stderr[-3000:]}", pytrace=False)
    p = run("install", "--no-index", "--find-links", str(wheels), "-r", str(requirements))
    assert p.returncode == 0, f"pip could not install the downloaded requirements into {venv}:\n{p.stderr[-3000:]}"


def bare_environ(venv: Path, **extra) -> dict:
    "The caller's environment with nothing of this repository: no PYTHONPATH, no venv, `venv`'s bin first on PATH."
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LEAKY)}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p).resolve() != VENV_BIN.resolve()]
    env["PATH"] = os.pathsep.join([str(venv/"bin"), *path])
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start(cmd: list, env: dict, cwd: Path, log: Path, health: str) -> subprocess.Popen:
    "Start a server in a process group of its own and wait (up to 5 minutes) until `health` answers 200."
    out = open(log, "w+")
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(health, timeout=2).status_code == 200: return proc
        except httpx.TransportError: pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise AssertionError(f"{' '.join(map(str, cmd))} did not start:\n{log.read_text()[-5000:]}")
        time.sleep(0.5)


def stop(proc: subprocess.Popen):
    "End the process group this test started for a server (SIGTERM, then SIGKILL)."
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try: proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


@pytest.fixture(scope="module")
def champion(seeded_home, tmp_path_factory):
    "A champion trained and promoted by `mlops-nb run --steps train,evaluate`; its version and its artifacts, downloaded."
    import mlflow
    r = seeded_home.cli("run", "--env", "dev", "--steps", "train,evaluate", "--json")
    assert r.returncode == 0, str(r)
    client = seeded_home.client()
    mv = client.get_model_version_by_alias(MODEL, "champion")
    dst = tmp_path_factory.mktemp("champion-artifacts")
    local = mlflow.artifacts.download_artifacts(artifact_uri=client.get_model_version_download_uri(MODEL, mv.version),
                                                dst_path=str(dst))
    return seeded_home, mv, Path(local)


@pytest.fixture(scope="module")
def fresh_venv(champion, tmp_path_factory) -> Path:
    "A new virtual environment (not --system-site-packages) holding only the champion's requirements.txt."
    _, _, local = champion
    venv = tmp_path_factory.mktemp("fresh")/"venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, cwd=venv.parent, env=bare_environ(venv))
    assert "include-system-site-packages = false" in (venv/"pyvenv.cfg").read_text()
    pip_install(venv, local/"requirements.txt", wheelhouse(tmp_path_factory))
    return venv


def test_the_logged_requirements_pin_mlflow_and_name_nothing_of_this_repo(champion):
    import importlib.metadata as md
    _, _, local = champion
    reqs = [l.strip() for l in (local/"requirements.txt").read_text().splitlines() if l.strip()]
    assert f"mlflow=={md.version('mlflow')}" in reqs
    assert {r.split("==")[0] for r in reqs} >= {"mlflow", "scikit-learn", "skops", "pandas", "numpy"}
    assert all("==" in r for r in reqs), reqs                     # every one pinned
    assert not [r for r in reqs if "mlops" in r.lower() or "/" in r or r.startswith("-")], reqs
    # the pyfunc is the code file copied into the model (nothing pickled); it imports nothing of mlops_nb
    assert not list(local.rglob("python_model.pkl"))
    code = (local/"positive_class_model.py").read_text()
    tree = ast.parse(code)
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported == {"pandas", "mlflow"} and "set_model(PositiveClassModel())" in code


def test_mlflow_models_serve_answers_as_mlops_nb_serve(champion, fresh_venv, tmp_path_factory):
    import mlflow
    home, mv, local = champion
    outside = tmp_path_factory.mktemp("outside-the-repo")
    assert REPO not in outside.resolve().parents
    # the fresh environment has MLflow and the model's packages, and no mlops_nb
    p = subprocess.run([str(fresh_venv/"bin"/"python"), "-c", "import mlops_nb"], cwd=outside, env=bare_environ(fresh_venv),
                       capture_output=True, text=True)
    assert p.returncode != 0 and "No module named 'mlops_nb'" in p.stderr, p.stderr
    assert (fresh_venv/"bin"/"mlflow").is_file() and not (fresh_venv/"bin"/"mlops-nb").exists()
    # a few scoring rows, as the signature's columns
    cols = mlflow.models.Model.load(str(local)).signature.inputs.input_names()
    rows = home.read_table(SCORING).data[cols].dropna().head(7)
    records = rows.to_dict(orient="records")
    assert len(records) == 7
    logs = tmp_path_factory.mktemp("server-logs")
    ours = theirs = None
    try:
        port = free_port()
        ours = start([str(CLI), "serve", "--env", "dev", "--port", str(port)], home.environ(), REPO, logs/"mlops-nb.log",
                     f"http://127.0.0.1:{port}/health")
        r = httpx.post(f"http://127.0.0.1:{port}/predict", json=records, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == str(mv.version)
        want = np.array([a["probability"] for a in r.json()["predictions"]])
        mport = free_port()
        env = bare_environ(fresh_venv, MLFLOW_TRACKING_URI=home.tracking_uri, MLFLOW_REGISTRY_URI=home.tracking_uri)
        assert shutil.which("uvicorn", path=env["PATH"]) == str(fresh_venv/"bin"/"uvicorn")  # what mlflow serve starts
        theirs = start([str(fresh_venv/"bin"/"mlflow"), "models", "serve", "-m", f"models:/{MODEL}@champion",
                        "--env-manager", "local", "-h", "127.0.0.1", "-p", str(mport)], env, outside,
                       logs/"mlflow.log", f"http://127.0.0.1:{mport}/ping")
        body = {"dataframe_split": {"columns": cols, "data": [[rec[c] for c in cols] for rec in records]}}
        r = httpx.post(f"http://127.0.0.1:{mport}/invocations", json=body, timeout=60)
        assert r.status_code == 200, r.text
        got = np.asarray(r.json()["predictions"], dtype="float64")
    finally:
        for proc in (theirs, ours):
            if proc is not None: stop(proc)
    assert got.shape == want.shape == (7,)
    assert len(set(want.round(6))) > 1 and ((want > 0) & (want < 1)).all()   # real, varied probabilities of class 1
    assert np.abs(got - want).max() <= 1e-12, (got, want)
    assert theirs.returncode is not None and ours.returncode is not None   # both servers ended
