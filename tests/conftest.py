"""Shared fixtures: each test gets its own MLOPS_NB_HOME and runs the real `mlops-nb` CLI in a subprocess.

Nothing is mocked: MLflow writes to SQLite under the home, tables are Delta tables under it, steps run in
papermill kernels and scoring on Spark local. Expensive set-up (demo data, pipeline runs) is shared through
module-scoped fixtures in the test modules, and across pytest-xdist workers through `build_once` (`make test-pytest`
runs the modules in parallel, each module's tests in one worker: `--dist loadscope`).
"""
from __future__ import annotations
import contextlib, fcntl, json, os, shutil, subprocess, sys
from dataclasses import dataclass
from pathlib import Path
import pytest

REPO = Path(__file__).resolve().parent.parent
PIPELINES = REPO/"nbs"/"pipelines"
VENV_BIN = Path(sys.executable).parent
CLI = VENV_BIN/"mlops-nb"
MODEL = "dev.mlops_nb.demo_model"
EXPERIMENT = "/Shared/mlops-nb/dev"
TRAINING, SCORING, PREDICTIONS = "dev.mlops_nb.training", "dev.mlops_nb.scoring_batch", "dev.mlops_nb.predictions"

# Variables of the caller's shell that would change what a run resolves (tracking server, context, config).
_LEAKY_PREFIXES = ("MLOPS_NB_", "MLFLOW_", "DATABRICKS_", "DBR_")
_LEAKY_NAMES = ("GIT_SHA", "GIT_DIRTY", "IPYTHONDIR", "JUPYTER_PATH")


def clean_environ(home: Path, **extra) -> dict:
    "os.environ without settings that leak from the caller, pointed at `home`, plus `extra` (None removes)."
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LEAKY_PREFIXES) and k not in _LEAKY_NAMES}
    env.update(MLOPS_NB_HOME=str(home), PYSPARK_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1",
               MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
               # a private IPython dir: no startup file of the user's (say, one defining dbutils) reaches the kernels
               IPYTHONDIR=str(home/".ipython"))
    for k, v in extra.items():
        if v is None: env.pop(k, None)
        else: env[k] = str(v)
    return env


@dataclass
class Result:
    "What one CLI call did."
    args: list
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> dict:
        "stdout parsed as the one JSON object `--json` prints."
        try: return json.loads(self.stdout)
        except json.JSONDecodeError as e:
            raise AssertionError(f"stdout of {self.args} is not one JSON object ({e}):\n{self.stdout[-3000:]}\n"
                                 f"stderr:\n{self.stderr[-3000:]}") from e

    def error_lines(self) -> list:
        "The `mlops-nb <cmd>: error:` lines on stderr."
        return [l for l in self.stderr.splitlines() if l.startswith("mlops-nb ") and ": error: " in l]

    def __str__(self):
        return f"{' '.join(map(str, self.args))} -> {self.returncode}\n--- stdout\n{self.stdout[-4000:]}\n--- stderr\n{self.stderr[-4000:]}"


class Home:
    "One MLOPS_NB_HOME: run the CLI against it and look at what it holds (MLflow, Delta tables)."

    def __init__(self, path: Path):
        self.path = Path(path).resolve()
        self.path.mkdir(parents=True, exist_ok=True)

    def __repr__(self): return f"Home({self.path})"

    @property
    def db(self) -> Path: return self.path/"mlflow.db"

    @property
    def tracking_uri(self) -> str: return f"sqlite:///{self.db}"

    def environ(self, **extra) -> dict: return clean_environ(self.path, **extra)

    def cli(self, *args, env: dict = None, timeout: float = 600) -> Result:
        "Run `mlops-nb *args` with this home; `env` adds (or, with None, removes) variables."
        cmd = [str(CLI), *map(str, args)]
        p = subprocess.run(cmd, env=self.environ(**(env or {})), cwd=REPO, capture_output=True, text=True,
                           timeout=timeout)
        return Result(cmd, p.returncode, p.stdout, p.stderr)

    def demo_data(self, rows: int = 5000, **kw) -> Result:
        extra = [a for k, v in kw.items() for a in (f"--{k.replace('_', '-')}", v)]
        r = self.cli("demo-data", "--rows", rows, *extra)
        assert r.returncode == 0, str(r)
        return r

    # --- MLflow, read in this process straight from the home's SQLite file ---
    def client(self):
        "An MlflowClient on this home's tracking store and registry."
        import mlflow
        assert self.db.is_file(), f"no MLflow database at {self.db}"
        return mlflow.MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def model_versions(self, name: str = None) -> list:
        "Every registered model version in this home (none when MLflow was never used)."
        if not self.db.is_file(): return []
        c = self.client()
        names = [name] if name else [m.name for m in c.search_registered_models()]
        return [v for n in names for v in c.search_model_versions(f"name='{n}'")]

    def runs_of_job(self, job_run_id: str) -> list:
        "The MLflow runs tagged DBR_RUN_ID = `job_run_id` in the dev experiment."
        c = self.client()
        exp = c.get_experiment_by_name(EXPERIMENT)
        if exp is None: return []
        return c.search_runs([exp.experiment_id], f"tags.DBR_RUN_ID = '{job_run_id}'")

    # --- Delta tables, through the library's own reader ---
    @contextlib.contextmanager
    def active(self):
        "Point the library, in this process, at this home for the duration."
        old = os.environ.get("MLOPS_NB_HOME")
        os.environ["MLOPS_NB_HOME"] = str(self.path)
        try: yield self
        finally:
            if old is None: os.environ.pop("MLOPS_NB_HOME", None)
            else: os.environ["MLOPS_NB_HOME"] = old

    def read_table(self, name: str, version=None):
        from mlops_nb.lakehouse import read_table
        with self.active(): return read_table(name, version)

    def write_table(self, df, name: str, mode: str = "overwrite") -> int:
        from mlops_nb.lakehouse import write_table
        with self.active(): return write_table(df, name, mode)

    def table_path(self, name: str) -> Path:
        return self.path/"tables"/Path(*name.split("."))

    def table_exists(self, name: str) -> bool:
        from deltalake import DeltaTable
        return DeltaTable.is_deltatable(str(self.table_path(name)))


def run_cli(home, *args, env: dict = None, timeout: float = 600) -> Result:
    "Run `mlops-nb *args` as a subprocess with MLOPS_NB_HOME=`home` (a path or a Home); stdout, stderr, exit code."
    return (home if isinstance(home, Home) else Home(home)).cli(*args, env=env, timeout=timeout)


@pytest.fixture(scope="session")
def cli():
    "The `run_cli` helper as a fixture: cli(home, 'run', '--json', ...)."
    return run_cli


@pytest.fixture(scope="session", autouse=True)
def _check_tools():
    "The suite runs the venv's console script; fail early and clearly when it is missing."
    assert CLI.is_file(), f"expected the console script at {CLI}; run the tests with the venv's pytest (make test)"


@pytest.fixture(scope="session")
def make_home(tmp_path_factory):
    "A factory of fresh, empty homes: make_home('name') -> Home."
    def make(name: str = "home") -> Home:
        return Home(tmp_path_factory.mktemp(name))
    return make


@pytest.fixture
def home(make_home) -> Home:
    "A fresh, empty home for one test."
    return make_home("home")


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory) -> Path:
    "A folder shared by every pytest-xdist worker of this test run (without xdist, this process's own)."
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"): base = base.parent  # workers' base temps live in the run's own
    d = base/"shared"
    d.mkdir(exist_ok=True)
    return d


def build_once(shared_dir: Path, name: str, build):
    """Build `shared_dir/name` once per test run, whichever worker asks first (the others wait for it).

    `build(path)` fills the empty folder `path` and returns something JSON can hold; every caller gets that value.
    A build that fails leaves nothing behind, so the next caller tries again (and fails with its own error).
    What is built here is shared: read it, or copy it (`copy_tables`); never write into it.
    """
    path, done = shared_dir/name, shared_dir/f"{name}.json"
    with open(shared_dir/f"{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if done.is_file(): return json.loads(done.read_text())
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir()
        try: value = build(path)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        done.write_text(json.dumps(value))
        return value


def copy_tables(src: Path, home: Home) -> Home:
    "Copy the Delta tables of home folder `src` into `home` (Delta logs hold relative paths; MLflow is not copied)."
    shutil.copytree(Path(src)/"tables", home.path/"tables", dirs_exist_ok=True)
    return home


@pytest.fixture(scope="session")
def demo_tables(shared_dir) -> Path:
    "A home folder holding only the demo tables (5000 training rows, seed 0), written once per test run: copy, never write."
    build_once(shared_dir, "demo-5000-seed0", lambda p: Home(p).demo_data(rows=5000, seed=0).returncode)
    return shared_dir/"demo-5000-seed0"


@pytest.fixture(scope="module")
def seeded_home(make_home, demo_tables) -> Home:
    "A home of this module's own with the demo training table (5000 rows) and scoring batch (1000 rows), no MLflow yet."
    return copy_tables(demo_tables, make_home("seeded"))


@pytest.fixture(scope="session")
def spark():
    "This test process's one local Spark session (started on first use, stopped at the end of the session)."
    from mlops_nb.scoring import get_spark
    saved = dict(os.environ)  # the JVM keeps the environment it starts with: a clean one, pointed at no home
    for k in [k for k in os.environ if k.startswith(_LEAKY_PREFIXES) or k in _LEAKY_NAMES]: del os.environ[k]
    os.environ.update(PYSPARK_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1")
    try: s = get_spark()
    finally: os.environ.clear(); os.environ.update(saved)
    yield s
    s.stop()


def head_sha() -> str:
    "The repository's current commit."
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


@contextlib.contextmanager
def webhook_receiver(path: str):
    "A local HTTP receiver of a webhook (the env's alert webhook): (its URL ending in `path`, every (path, JSON body) POSTed to it)."
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    got = []
    class Hook(BaseHTTPRequestHandler):
        def log_message(self, *a): pass
        def do_POST(self):
            got.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
            self.send_response(204); self.end_headers()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try: yield f"http://127.0.0.1:{srv.server_address[1]}/{path}", got
    finally: srv.shutdown(); srv.server_close()
