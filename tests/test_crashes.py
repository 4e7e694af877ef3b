"""Crashes leave nothing half-done: real `mlops-nb` processes killed (SIGKILL of the process group, SIGTERM, SIGINT)
at each stage of a run and at each point of a champion move, then the next command is checked against the store.

The stages of a run are killed from outside once the step's MLflow run is RUNNING (polled in the store; the step
pauses there at the `start_step_run.after_start` failpoint, so a quick step is caught whatever the load); the
points of a champion move are the `move_champion.*` of `mlops_nb.core.FAILPOINTS`, where `$MLOPS_NB_FAILPOINT` makes the process SIGKILL
itself. Small data (2000 rows) and logistic regression keep it cheap.
"""
from __future__ import annotations
import json, os, signal, subprocess, sys, time
import pytest
from conftest import CLI, REPO, MODEL, EXPERIMENT

LOGREG = ("--param", "model_type=logreg")
KILLED_LINE = "MLflow run(s) KILLED, their processes being gone"


@pytest.fixture(scope="module")
def lab(make_home):
    "A home with 2000 training rows, version 1 (champion, then replaced) and version 2 (champion), both PASSED."
    h = make_home("crashes")
    h.demo_data(rows=2000, seed=0)
    for _ in range(2):  # the second version is the same model: it passes validation but does not win
        r = h.cli("run", "--steps", "train,evaluate", *LOGREG)
        assert r.returncode == 0, str(r)
    passed = {str(v.version) for v in h.model_versions(MODEL) if v.tags.get("model_validation_status") == "PASSED"}
    assert passed == {"1", "2"}, passed
    if champion(h) != "2":
        r = h.cli("promote", "--version", "2")
        assert r.returncode == 0, str(r)
    return h


def champion(home) -> str:
    return str(home.client().get_model_version_by_alias(MODEL, "champion").version)


def history(home) -> list:
    from mlops_nb.config import load_config
    from mlops_nb.registry import champion_history
    with home.active(): return champion_history(load_config("dev"))


def running_runs(home) -> list:
    c = home.client()
    return c.search_runs([c.get_experiment_by_name(EXPERIMENT).experiment_id], "attributes.status = 'RUNNING'")


def start(home, *args, env: dict = None) -> subprocess.Popen:
    "Start `mlops-nb *args` in its own process group, as a shell starts a job."
    return subprocess.Popen([str(CLI), *map(str, args)], env=home.environ(**(env or {})), cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def wait_for_step_run(home, proc, step: str, before: set, timeout: float = 240):
    "(job run id, MLflow run) of `step` once the runner's new job run has started it (RUNNING, its kernel recorded)."
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the run ended ({proc.returncode}) before step {step} started:\n{out[-2000:]}\n{err[-3000:]}")
        new = sorted(p.name for p in (home.path/"runs").glob("*") if p.name not in before)
        if new and home.db.is_file():
            for r in home.runs_of_job(new[0]):
                if r.data.tags.get("task_key") == step and r.info.status == "RUNNING" and "mlops_nb.process" in r.data.tags:
                    return new[0], r
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"step {step} did not start within {timeout}s")


def runs_folder(home) -> set:
    return {p.name for p in (home.path/"runs").glob("*")}


def gone(token: str, timeout: float = 10) -> bool:
    "True once the process of `token` has ended (within `timeout` seconds)."
    from mlops_nb.core import process_alive
    deadline = time.monotonic() + timeout
    while process_alive(token):
        if time.monotonic() > deadline: return False
        time.sleep(0.1)
    return True


def test_a_kill_at_each_point_of_a_champion_move_is_completed_by_the_next_command(lab):
    from mlops_nb.core import FAILPOINTS
    from mlops_nb.registry import champion_stack
    c = lab.client()
    for point in [p for p in FAILPOINTS if p.startswith("move_champion.")]:
        before, hist = champion(lab), history(lab)
        target = "1" if before == "2" else "2"
        r = lab.cli("promote", "--version", target, env={"MLOPS_NB_FAILPOINT": point})
        assert r.returncode == -signal.SIGKILL, f"{point}: {r}"
        if point == "move_champion.before_history":  # killed before anything was written: nothing moved
            assert (champion(lab), history(lab)) == (before, hist), point
            expected = champion_stack(hist)[-2]  # the default rollback goes to the champion before `before`
        else:  # the move is recorded; its alias and tags may or may not be in place
            assert [h["to_version"] for h in history(lab)] == [h["to_version"] for h in hist] + [target], point
            expected = before  # the real previous champion once the killed move is completed
        r = lab.cli("rollback", "--json")
        assert r.returncode == 0, f"{point}: {r}"
        if point in ("move_champion.after_history", "move_champion.after_alias"):
            assert f"completed the interrupted champion move of {MODEL}: {before} -> {target}" in r.stderr, f"{point}: {r}"
        row, now = r.json(), history(lab)
        assert (row["from_version"], row["to_version"]) == ((target, before) if expected == before else (before, expected)), f"{point}: {row}"
        # alias and history agree, and the move is marked complete on the version
        assert champion(lab) == champion_stack(now)[-1] == expected, f"{point}: {now}"
        assert c.get_model_version(MODEL, expected).tags["champion_seq"] == str(now[-1]["seq"]), point
        if expected == before:  # the completed move tagged its version like any move
            assert c.get_model_version(MODEL, target).tags["champion_seq"] == str(now[-2]["seq"]), point
            assert c.get_model_version(MODEL, target).tags["approval_status"] == "APPROVED", point


def test_a_kill_at_each_stage_of_a_run_leaves_no_running_run_after_the_next_command(lab):
    c, killed = lab.client(), []
    for step in ("explore", "train", "evaluate", "score"):
        before = runs_folder(lab)
        # the step pauses once its run is RUNNING, so even a quick step is killed there, whatever the machine's load
        proc = start(lab, "run", "--steps", step, *(LOGREG if step == "train" else ()),
                     env={"MLOPS_NB_FAILPOINT": "start_step_run.after_start=sleep:120"})
        job, run = wait_for_step_run(lab, proc, step, before)
        os.killpg(proc.pid, signal.SIGKILL)  # kill -9 of the job: the runner, not the kernel (its own session)
        _, err = proc.communicate(timeout=60)
        if killed:  # this run was the next command after the previous kill: it ended that run and said so once
            assert err.count(KILLED_LINE) == 1 and f"{killed[-1][0]} of job run {killed[-1][1]}" in err, err
        kernel, runner = run.data.tags["mlops_nb.process"], run.data.tags["mlops_nb.runner"]
        assert kernel != runner
        assert gone(kernel), f"the {step} kernel ({kernel}) outlived its killed runner"
        assert c.get_run(run.info.run_id).info.status == "RUNNING"  # nobody has closed it yet
        assert (lab.path/"runs"/job/f"{step}.ipynb").is_file()
        killed.append((step, job, run.info.run_id))
    r = lab.cli("run", "--steps", "score")
    assert r.returncode == 0, str(r)
    assert r.stderr.count(KILLED_LINE) == 1 and f"score of job run {killed[-1][1]}" in r.stderr, r.stderr
    assert running_runs(lab) == []
    from mlops_nb.registry import champion_stack
    assert champion(lab) == champion_stack(history(lab))[-1]  # alias and history agree
    for step, job, run_id in killed:
        run = c.get_run(run_id)
        assert run.info.status == "KILLED", (step, run.info.status)
        assert "no process of the run is left" in run.data.tags["end_reason"], run.data.tags
        assert {a.path for a in c.list_artifacts(run_id, "notebooks")} == {f"notebooks/{step}.ipynb", f"notebooks/{step}.html"}


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_step_cleanly_and_a_refused_command_names_the_lock_holder(lab, sig):
    before = runs_folder(lab)
    # the step pauses once its run is RUNNING, holding the env's lock, until the signal comes: a quick train could
    # otherwise end (and free the lock) between the checks below
    proc = start(lab, "run", "--steps", "train", *LOGREG, env={"MLOPS_NB_FAILPOINT": "start_step_run.after_start=sleep:120"})
    job, run = wait_for_step_run(lab, proc, "train", before)
    if sig == "SIGTERM":  # while it runs, the env is locked: a second command is refused, names the holder, writes nothing
        r = lab.cli("run", "--steps", "explore")
        assert r.returncode == 1, str(r)
        assert len(r.error_lines()) == 1 and r.stderr.strip() == r.error_lines()[0], r.stderr
        assert f"env dev is locked by `mlops-nb run --steps train --param model_type=logreg` (pid {proc.pid} on " in r.stderr, r.stderr
        assert runs_folder(lab) == before | {job}
        r = lab.cli("rollback")
        assert r.returncode == 1 and f"(pid {proc.pid} on " in r.stderr, str(r)
    os.kill(proc.pid, getattr(signal, sig))  # the runner only, as `kill` or Ctrl-C would
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    errors = [l for l in err.splitlines() if l.startswith("mlops-nb run: error:")]
    assert errors == [l for l in err.splitlines() if "error" in l.lower() or "Traceback" in l], err
    assert len(errors) == 1 and f"step train stopped: mlops-nb run was interrupted ({sig})" in errors[0], err
    assert gone(run.data.tags["mlops_nb.process"], timeout=5)
    c = lab.client()
    done = c.get_run(run.info.run_id)
    assert done.info.status == "FAILED" and "interrupted" in done.data.tags["error"], done.data.tags
    assert (lab.path/"runs"/job/"train.ipynb").is_file()
    assert {a.path for a in c.list_artifacts(run.info.run_id, "notebooks")} == {"notebooks/train.ipynb", "notebooks/train.html"}
    assert running_runs(lab) == []


def test_delta_reading_commands_exit_with_their_own_status_under_load(lab):
    """20 `champions` (a Delta read) beside a CPU burner: each exits 0 with its output (no abort 134 at exit).

    The burner runs at the lowest priority: it keeps a core busy when this test runs alone, and yields to the rest
    of the suite when it runs beside it (a burner at normal priority took a core from every other test module)."""
    burner = subprocess.Popen([sys.executable, "-c", "import os; os.nice(19)\nwhile True: pass"])
    try:
        for i in range(20):
            r = lab.cli("champions", "--json")
            assert r.returncode == 0, f"repetition {i}: {r}"
            assert r.json() and "terminate called" not in r.stderr, str(r)
    finally:
        burner.kill(); burner.wait()
