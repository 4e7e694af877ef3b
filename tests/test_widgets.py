"""The pipeline notebooks run unchanged as Databricks job tasks: with no papermill parameters, every value
comes from `dbutils.widgets` (the job's base_parameters), and a step's outputs become task values
(`dbutils.jobs.taskValues`) that later tasks of the job run (the monitoring job's condition task) read.

A stand-in `dbutils` is put into the kernel's namespace by an IPython startup file in a temporary IPYTHONDIR,
so the notebook itself is exactly the one in the repository. Like Databricks, its `widgets.get` raises for a
widget that is not defined, its `jobs.taskValues.set` takes only JSON values, and its `jobs.taskValues.get` raises
for a value that was not set unless given a default. What was set is appended to $TEST_DBUTILS_TASK_VALUES.
"""
from __future__ import annotations
import json, os, sys
from pathlib import Path
import pytest
from conftest import MODEL, PIPELINES, clean_environ, head_sha

STARTUP = '''
# Test stand-in for Databricks' dbutils: widgets from the JSON in $TEST_DBUTILS_WIDGETS; task values set are
# appended as JSON lines ({"task", "key", "value"}) to $TEST_DBUTILS_TASK_VALUES.
import json as _json, os as _os

class InputWidgetNotDefined(Exception):
    "What Databricks raises for a widget that does not exist."

class _Widgets:
    def __init__(self, values): self._values = dict(values)
    def get(self, name):
        with open(_os.environ["TEST_DBUTILS_LOG"], "a") as f: f.write(name + "\\n")
        if name not in self._values: raise InputWidgetNotDefined(f"No input widget named {name} is defined")
        return self._values[name]

class _TaskValues:
    def __init__(self, task_key): self._task_key = task_key
    def set(self, key, value):
        line = _json.dumps({"task": self._task_key, "key": key, "value": value})  # raises, as Databricks does, for a non-JSON value
        with open(_os.environ["TEST_DBUTILS_TASK_VALUES"], "a") as f: f.write(line + "\\n")
    def get(self, taskKey, key, default=None, debugValue=None):
        with open(_os.environ["TEST_DBUTILS_TASK_VALUES"]) as f: rows = [_json.loads(l) for l in f if l.strip()]
        found = [r["value"] for r in rows if (r["task"], r["key"]) == (taskKey, key)]
        if found: return found[-1]
        if default is not None: return default
        raise ValueError(f"No task value with key {key} in task {taskKey}")

class _Jobs:
    def __init__(self, task_key): self.taskValues = _TaskValues(task_key)

class _DBUtils:
    def __init__(self, values): self.widgets, self.jobs = _Widgets(values), _Jobs(values.get("task_key"))

dbutils = _DBUtils(_json.loads(_os.environ["TEST_DBUTILS_WIDGETS"]))
del _DBUtils, _Widgets, _Jobs, _TaskValues
'''


@pytest.fixture(scope="module")
def job_task(make_home):
    "A seeded home and a function that runs one pipeline notebook as a Databricks job task would."
    import papermill as pm
    home = make_home("widgets")
    home.demo_data(rows=3000)
    ipython_dir = home.path/"ipython"
    (ipython_dir/"profile_default"/"startup").mkdir(parents=True)
    (ipython_dir/"profile_default"/"startup"/"00-dbutils.py").write_text(STARTUP)
    # a kernel spec on this very Python (the one with mlops_nb installed)
    kdir = home.path/"jupyter"/"kernels"/"mlops-nb-test"
    kdir.mkdir(parents=True)
    (kdir/"kernel.json").write_text(json.dumps({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                                                "display_name": "mlops-nb-test", "language": "python"}))
    sha = head_sha()
    mp = pytest.MonkeyPatch()

    def run(step: str, **widgets) -> tuple[Path, Path]:
        values = {"env": "dev", "job_id": "881", "run_id": "990", "task_key": step, "git_sha": sha, **widgets}
        log = home.path/f"widgets-{step}.log"
        # The kernel inherits os.environ: a clean one (no MLOPS_NB_*, DBR_*, GIT_SHA... from the caller's shell).
        env = clean_environ(home.path, IPYTHONDIR=ipython_dir, JUPYTER_PATH=home.path/"jupyter",
                            TEST_DBUTILS_WIDGETS=json.dumps(values), TEST_DBUTILS_LOG=log,
                            TEST_DBUTILS_TASK_VALUES=home.path/"task-values.jsonl")
        for k in [k for k in os.environ if k not in env]: mp.delenv(k)
        for k, v in env.items(): mp.setenv(k, v)
        out = home.path/"executed"/f"{step}.ipynb"
        out.parent.mkdir(exist_ok=True)
        pm.execute_notebook(str(PIPELINES/f"{step}.ipynb"), str(out), parameters=None, kernel_name="mlops-nb-test",
                            progress_bar=False, cwd=str(PIPELINES))
        return out, log

    try: yield home, run, sha
    finally: mp.undo()


@pytest.fixture(scope="module")
def trained(job_task):
    home, run, sha = job_task
    out, log = run("train", model_type="logreg")
    return home, out, log, sha


def _task_values(home, task_key) -> dict:
    "The task values the stand-in dbutils recorded for `task_key`, each one the last set."
    f = home.path/"task-values.jsonl"
    rows = [json.loads(l) for l in f.read_text().splitlines() if l.strip()] if f.exists() else []
    return {r["key"]: r["value"] for r in rows if r["task"] == task_key}


def _run_of(home, task_key):
    c = home.client()
    exp = c.get_experiment_by_name("/Shared/mlops-nb/dev")
    runs = c.search_runs([exp.experiment_id], f"tags.task_key = '{task_key}'")
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def test_notebook_ran_unchanged_without_parameters(trained):
    home, out, log, sha = trained
    nb = json.loads(out.read_text())
    src = json.loads((PIPELINES/"train.ipynb").read_text())
    # papermill injected nothing: same cells, same sources as the repository's notebook
    assert [c["source"] for c in nb["cells"]] == [c["source"] for c in src["cells"]]
    assert not any("injected-parameters" in c.get("metadata", {}).get("tags", []) for c in nb["cells"])
    # the notebook asked the widgets for its context and its own parameters (some of which are not defined)
    asked = set(log.read_text().split())
    assert {"env", "job_id", "run_id", "task_key", "git_sha", "model_type", "training_table", "label"} <= asked


def test_train_run_tagged_from_widgets(trained):
    home, out, log, sha = trained
    run = _run_of(home, "train")
    t, p = run.data.tags, run.data.params
    assert run.info.status == "FINISHED"
    assert t["DBR_JOB_ID"] == "881" and t["DBR_RUN_ID"] == "990"
    assert t["task_key"] == "train" and t["env"] == "dev" and t["GIT_SHA"] == sha
    assert p["model_type"] == "logreg"
    # widgets that do not exist fall back to the env's defaults
    assert p["training_table"] == "dev.mlops_nb.training" and p["label"] == "label"


def test_model_version_tagged_from_widgets(trained):
    home, out, log, sha = trained
    versions = home.model_versions(MODEL)
    assert [str(v.version) for v in versions] == ["1"]
    t = versions[0].tags
    assert t["DBR_RUN_ID"] == "990" and t["DBR_JOB_ID"] == "881" and t["GIT_SHA"] == sha
    assert t["model_type"] == "logreg" and _run_of(home, "train").data.tags["task_key"] == "train"
    assert t["MLFLOW_RUN_ID"] == _run_of(home, "train").info.run_id == versions[0].run_id


def test_evaluate_as_next_task(trained, job_task):
    "The next task of the same job run: evaluate finds the candidate through the registry and promotes it."
    home, run, sha = job_task
    out, log = run("evaluate")
    ev = _run_of(home, "evaluate")
    assert ev.info.status == "FINISHED"
    assert ev.data.tags["DBR_RUN_ID"] == "990" and ev.data.tags["DBR_JOB_ID"] == "881"
    c = home.client()
    assert str(c.get_model_version_by_alias(MODEL, "champion").version) == "1"
    tags = c.get_model_version(MODEL, "1").tags
    assert tags["candidate"] == "false" and tags["model_validation_status"] == "PASSED"
    # its outputs are task values too, a boolean lower-case as a condition task compares it
    tv = _task_values(home, "evaluate")
    assert (tv["promoted"], tv["champion_version"]) == ("true", "1"), tv


def test_outputs_are_task_values(trained):
    "Each output of a step is a task value of its job task, the string its output tag holds (booleans lower-case)."
    home, out, log, sha = trained
    tv, tags = _task_values(home, "train"), _run_of(home, "train").data.tags
    assert tv["model_name"] == MODEL and tv["model_version"] == "1", tv
    assert tv == {k.removeprefix("output."): v for k, v in tags.items() if k.startswith("output.")}


def test_evaluate_reads_the_train_tasks_values(trained, job_task):
    """A job run with two train tasks (train_logreg, train_hgb, as the pipeline job renders them for model_types): each
    sets its version as task values, and evaluate judges exactly those, not a candidate another job run left."""
    home, run, sha = job_task
    run("train", run_id="991", task_key="train_logreg", model_type="logreg")
    run("train", run_id="991", task_key="train_hgb", model_type="hgb")
    run("train", run_id="992", task_key="train", model_type="dummy")        # another job run's candidate
    tv = {k: _task_values(home, k) for k in ("train_logreg", "train_hgb")}
    assert {k: set(v) >= {"model_version", "model_uri", "run_id"} for k, v in tv.items()} == {"train_logreg": True, "train_hgb": True}, tv
    ours = {tv["train_logreg"]["model_version"], tv["train_hgb"]["model_version"]}
    assert tv["train_hgb"]["model_uri"] == f"models:/{MODEL}/{tv['train_hgb']['model_version']}"
    run("evaluate", run_id="991", task_key="evaluate", model_types="logreg,hgb")
    c = home.client()
    exp = c.get_experiment_by_name("/Shared/mlops-nb/dev")
    ev = c.search_runs([exp.experiment_id], "tags.DBR_RUN_ID = '991' and tags.task_key = 'evaluate'")[0]
    rec = json.loads(Path(c.download_artifacts(ev.info.run_id, "evaluation/decision.json")).read_text())
    assert rec["candidates_from"] == "task values of train_logreg, train_hgb", rec["candidates_from"]
    assert {r["version"] for r in rec["candidates"]} == ours
    assert {r["model_type"] for r in rec["candidates"]} == {"logreg", "hgb"}
    assert all(r["verdict"].startswith(("won:", "lost")) for r in rec["candidates"]), rec["candidates"]
    other = [v for v in home.model_versions(MODEL) if v.tags.get("DBR_RUN_ID") == "992"]
    assert len(other) == 1 and other[0].tags["candidate"] == "true"     # left for its own job run's evaluate
