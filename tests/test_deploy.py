"Deploy to Databricks: rendered jobs, the Repos and Jobs API calls of the real databricks-sdk against a local stand-in, bad input, secrets, azure-pipelines.yml."
from __future__ import annotations
import json, os, re, shlex, socket, subprocess, sys, time
from pathlib import Path
import pytest, yaml

sys.path.insert(0, str(Path(__file__).parent))
from databricks_standin import DatabricksStandin  # noqa: E402

from databricks.sdk.service.jobs import JobSettings
from mlops_nb.cli import build_parser, main
from mlops_nb.config import ENVS, load_config
from mlops_nb.job_templates import render_jobs, template_names, templates_root

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TOKEN = "dapi-test-0123456789abcdef-SECRET"


def git(repo, *args) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    "A git repository with tag v1.0.0 on the first commit, tag v1.1.0 and branches main and release/1.1 on the second."
    d = tmp_path / "repo"; d.mkdir()
    git(d, "init", "-q", "-b", "main"); git(d, "config", "user.email", "t@example.org"); git(d, "config", "user.name", "t")
    for i, tag in enumerate(["v1.0.0", "v1.1.0"]):
        (d / "f.txt").write_text(str(i)); git(d, "add", "f.txt"); git(d, "commit", "-q", "-m", f"c{i}"); git(d, "tag", tag)
    git(d, "branch", "release/1.1")
    return d


@pytest.fixture
def standin(repo):
    refs = {n: git(repo, "rev-parse", f"{n}^{{commit}}") for n in ("main", "release/1.1", "v1.0.0", "v1.1.0")}
    with DatabricksStandin(TOKEN, refs=refs) as s:
        yield s


@pytest.fixture
def env(monkeypatch, tmp_path, repo, standin):
    "Credentials for the stand-in, no ~/.databrickscfg, a fresh MLOPS_NB_HOME, and the scratch repository as cwd."
    for k in list(os.environ):
        if k.startswith(("DATABRICKS_", "MLOPS_NB_", "ARM_", "AZURE_")): monkeypatch.delenv(k)
    monkeypatch.setenv("DATABRICKS_HOST", standin.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no-databrickscfg"))
    monkeypatch.setenv("MLOPS_NB_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(repo)
    return standin


def deploy(capsys, *args) -> tuple:
    "Run `mlops-nb deploy ARGS` in this process; return (exit code, stdout, stderr)."
    rc = main(["deploy", *args, "--retry-timeout", "5"])
    out = capsys.readouterr()
    return rc, out.out, out.err


# -- rendering --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("env_name", ENVS)
def test_rendered_jobs_are_job_settings(env_name):
    ref = 'release/"quoted" \\ {{job.id}}\nx'
    jobs = render_jobs(load_config(env_name), "0123abcd", ref)
    assert list(jobs) == [f"mlops-nb-{env_name}-monitoring", f"mlops-nb-{env_name}-pipeline", f"mlops-nb-{env_name}-scoring"]
    for d in jobs.values():
        assert JobSettings.from_dict(d).as_dict() == d
        assert d["max_concurrent_runs"] == 1 and ref in d["description"]
        assert d["job_clusters"][0]["new_cluster"]["spark_env_vars"]["GIT_SHA"] == "0123abcd"
        for t in (t for t in d["tasks"] if "notebook_task" in t):
            p = t["notebook_task"]["base_parameters"]
            assert (p["job_id"], p["run_id"], p["git_sha"], p["env"], p["task_key"]) == ("{{job.id}}", "{{job.run_id}}", "0123abcd", env_name, t["task_key"])
            assert t["notebook_task"]["notebook_path"] == f"/Repos/{env_name}/mlops-nb/nbs/pipelines/{t['task_key']}"
            # the package comes from the Git folder (repo root on sys.path), never as a wheel or a second pyspark
            assert all("whl" not in lib and "pyspark" not in json.dumps(lib) for lib in t.get("libraries", []))
    assert [t["task_key"] for t in jobs[f"mlops-nb-{env_name}-pipeline"]["tasks"]] == ["train", "evaluate", "score"]
    assert [t["task_key"] for t in jobs[f"mlops-nb-{env_name}-scoring"]["tasks"]] == ["score"]
    assert [t["task_key"] for t in jobs[f"mlops-nb-{env_name}-monitoring"]["tasks"]] == ["monitor", "retrain_needed", "retrain"]


def test_templates_are_package_data():
    "The templates load through importlib.resources and settings.ini's package_data ships each of them."
    names = sorted(p.name for p in templates_root().iterdir() if p.name.endswith(".json.j2"))
    assert template_names() == ["monitoring_job.json.j2", "pipeline_job.json.j2", "scoring_job.json.j2"] and "_common.json.j2" in names
    pattern = re.search(r"(?m)^package_data\s*=\s*(.+)$", (ROOT / "settings.ini").read_text())[1].split()
    shipped = {p.name for pat in pattern for p in (ROOT / "mlops_nb").glob(pat)}
    assert set(names) <= shipped


def test_render_jobs_cli(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MLOPS_NB_HOME", str(tmp_path))
    assert main(["render-jobs", "--env", "staging", "--git-sha", "0123abcd", "--git-ref", 'a"b']) == 0
    out = capsys.readouterr()
    jobs = json.loads(out.out)
    assert jobs["mlops-nb-staging-pipeline"]["tags"]["git_sha"] == "0123abcd"
    # without a workspace the pipeline job's id is unknown: left out of the monitoring job, with one note saying so
    assert "job_id" not in jobs["mlops-nb-staging-monitoring"]["tasks"][2]["run_job_task"]
    assert len(out.err.strip().splitlines()) == 1 and "--pipeline-job-id N" in out.err and "run_job_task.job_id" in out.err
    assert main(["render-jobs", "--env", "staging", "--git-sha", "0123abcd", "--pipeline-job-id", "4242"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["mlops-nb-staging-monitoring"]["tasks"][2]["run_job_task"]["job_id"] == 4242 and out.err == ""
    assert main(["render-jobs", "--env", "staging", "--git-sha", "0123abcd", "--pipeline-job-id", "0"]) == 1
    assert "expected the positive integer id of job mlops-nb-staging-pipeline" in capsys.readouterr().err
    assert main(["render-jobs", "--env", "staging", "--git-sha", 'x"y']) == 1
    assert "expected 7 to 40 hex digits" in capsys.readouterr().err


# -- deploying against the stand-in -----------------------------------------------------------------------

def test_first_deploy_creates_second_resets(env, capsys, repo):
    s = env
    rc, out, err = deploy(capsys, "--env", "staging", "--git-ref", "main", "--json")
    assert rc == 0, err
    first = json.loads(out)
    assert "create Git folder /Repos/staging/mlops-nb" in err and "create job mlops-nb-staging-pipeline" in err
    [r] = s.repos.values()
    assert (r["path"], r["branch"], r["head_commit_id"]) == ("/Repos/staging/mlops-nb", "main", git(repo, "rev-parse", "main"))
    assert sorted(j["settings"]["name"] for j in s.jobs.values()) == ["mlops-nb-staging-monitoring", "mlops-nb-staging-pipeline", "mlops-nb-staging-scoring"]
    # a new commit on main, deployed again: the jobs are reset (same ids), nothing is duplicated
    (repo / "g.txt").write_text("2"); git(repo, "add", "g.txt"); git(repo, "commit", "-q", "-m", "c2")
    s.refs["main"] = git(repo, "rev-parse", "main")
    rc, out, err = deploy(capsys, "--env", "staging", "--json")
    assert rc == 0, err
    second = json.loads(out)
    assert second["jobs"] == first["jobs"] and second["repo_id"] == first["repo_id"]
    assert len(s.jobs) == 3 and len(s.repos) == 1
    assert [c[1].rsplit("/", 1)[1] for c in s.mutating_calls()].count("create") == 3
    assert [c[1].rsplit("/", 1)[1] for c in s.mutating_calls()].count("reset") == 3
    pipeline = s.jobs[first["jobs"]["mlops-nb-staging-pipeline"]]["settings"]
    assert pipeline["job_clusters"][0]["new_cluster"]["spark_env_vars"]["GIT_SHA"] == s.refs["main"]
    assert r["head_commit_id"] == s.refs["main"]


def _jobs_by_name(s) -> dict:
    return {j["settings"]["name"]: j for j in s.jobs.values()}


def test_deploy_creates_the_monitoring_job_with_the_pipeline_jobs_id(env, capsys, repo):
    "The monitoring job: monitor, a condition on its task value, and a run of the pipeline job by its real id."
    s = env
    rc, out, err = deploy(capsys, "--env", "staging", "--git-ref", "main", "--json")
    assert rc == 0, err
    first, jobs = json.loads(out), _jobs_by_name(s)
    assert sorted(jobs) == ["mlops-nb-staging-monitoring", "mlops-nb-staging-pipeline", "mlops-nb-staging-scoring"]
    assert first["jobs"] == {n: j["job_id"] for n, j in jobs.items()}
    pipeline, monitoring = jobs["mlops-nb-staging-pipeline"], jobs["mlops-nb-staging-monitoring"]["settings"]
    # the pipeline job's parameters, which reach its notebook tasks as widgets
    assert pipeline["settings"]["parameters"] == [{"name": "trigger", "default": "schedule"}, {"name": "alert_id", "default": ""},
                                                  {"name": "monitor_job_run_id", "default": ""}]
    monitor, cond, retrain = monitoring["tasks"]
    assert monitor["task_key"] == "monitor" and monitor["notebook_task"]["notebook_path"] == "/Repos/staging/mlops-nb/nbs/pipelines/monitor"
    assert monitor["notebook_task"]["base_parameters"]["task_key"] == "monitor" and monitor["job_cluster_key"] == "mlops_nb"
    assert cond == {"task_key": "retrain_needed", "depends_on": [{"task_key": "monitor"}],
                    "condition_task": {"op": "EQUAL_TO", "left": "{{tasks.monitor.values.retrain}}", "right": "true"}}
    assert retrain == {"task_key": "retrain", "depends_on": [{"task_key": "retrain_needed", "outcome": "true"}],
                       "run_job_task": {"job_id": pipeline["job_id"],
                                        "job_parameters": {"trigger": "monitor", "alert_id": "{{tasks.monitor.values.alert_id}}",
                                                           "monitor_job_run_id": "{{job.run_id}}"}}}
    assert monitoring["schedule"] == {"quartz_cron_expression": "0 0 7 * * ?", "timezone_id": "UTC", "pause_status": "PAUSED"}
    assert monitoring["max_concurrent_runs"] == 1 and monitoring["tags"]["git_sha"] == git(repo, "rev-parse", "main")
    # the pipeline job was created before the job that runs it, and what was sent is what JobSettings keeps
    creates = [c[3]["name"] for c in s.mutating_calls() if c[1].endswith("/jobs/create")]
    assert creates.index("mlops-nb-staging-pipeline") < creates.index("mlops-nb-staging-monitoring")
    assert JobSettings.from_dict(monitoring).as_dict() == monitoring
    # deployed again at the same commit: the same three jobs, reset to the same settings
    before = {n: j["settings"] for n, j in jobs.items()}
    s.calls.clear()
    rc, out, err = deploy(capsys, "--env", "staging", "--git-ref", "main", "--json")
    assert rc == 0, err
    assert json.loads(out)["jobs"] == first["jobs"] and len(s.jobs) == 3
    assert {n: j["settings"] for n, j in _jobs_by_name(s).items()} == before
    assert sorted(c[1].rsplit("/", 1)[1] for c in s.mutating_calls() if "/jobs/" in c[1]) == ["reset"] * 3


def test_monitoring_job_runs_an_existing_pipeline_job(env, capsys):
    "A pipeline job already in the workspace (say, from an earlier release) keeps its id, and the monitoring job runs that id."
    s = env
    old = s.add_job({"name": "mlops-nb-prod-pipeline"}, job_id=555)
    rc, out, err = deploy(capsys, "--env", "prod", "--git-ref", "main")
    assert rc == 0, err
    assert "reset job mlops-nb-prod-pipeline (id 555)" in out and "create job mlops-nb-prod-monitoring after the pipeline job" in out
    monitoring = _jobs_by_name(s)["mlops-nb-prod-monitoring"]["settings"]
    assert monitoring["tasks"][2]["run_job_task"]["job_id"] == old and monitoring["schedule"]["pause_status"] == "UNPAUSED"
    assert len(s.jobs) == 3


def test_the_standin_refuses_what_the_jobs_api_refuses(env):
    "A run_job_task must name an existing job (so the pipeline job comes first), an outcome only a condition task."
    from mlops_nb.workspace import call_api, workspace_client
    from databricks.sdk.service.jobs import JobSettings
    w = workspace_client(retry_timeout_seconds=5)
    run = {"name": "m", "tasks": [{"task_key": "r", "run_job_task": {"job_id": 424242}}]}
    with pytest.raises(Exception, match="Job 424242 does not exist"):
        call_api("creating job m", w.jobs.create, **{k: v for k, v in vars(JobSettings.from_dict(run)).items() if v not in (None, [])})
    bad = {"name": "n", "tasks": [{"task_key": "a", "notebook_task": {"notebook_path": "/x"}},
                                  {"task_key": "b", "depends_on": [{"task_key": "a", "outcome": "true"}], "notebook_task": {"notebook_path": "/y"}}]}
    with pytest.raises(Exception, match="only be given for a dependency on a condition task"):
        call_api("creating job n", w.jobs.create, **{k: v for k, v in vars(JobSettings.from_dict(bad)).items() if v not in (None, [])})
    assert env.jobs == {}


def test_deploy_tag_then_rollback(env, capsys, repo):
    s = env
    rc, out, err = deploy(capsys, "--env", "prod", "--git-ref", "refs/tags/v1.1.0", "--git-sha", git(repo, "rev-parse", "v1.1.0^{commit}"))
    assert rc == 0, err
    [r] = s.repos.values()
    assert (r["_tag"], r["branch"]) == ("v1.1.0", None)
    assert "update Git folder /Repos/prod/mlops-nb to tag v1.1.0" in out
    rc, out, err = deploy(capsys, "--env", "prod", "--rollback-to", "v1.0.0")
    assert rc == 0, err
    old = git(repo, "rev-parse", "v1.0.0^{commit}")
    assert (r["_tag"], r["head_commit_id"]) == ("v1.0.0", old)
    for j in s.jobs.values():
        assert j["settings"]["tags"]["git_sha"] == old
        assert all(t["notebook_task"]["base_parameters"]["git_sha"] == old for t in j["settings"]["tasks"] if "notebook_task" in t)
    assert "reset job mlops-nb-prod-pipeline" in out and len(s.jobs) == 3


def test_dry_run_changes_nothing(env, capsys):
    rc, out, err = deploy(capsys, "--env", "staging", "--git-ref", "release/1.1", "--dry-run", "--run")
    assert rc == 0, err
    assert "would create Git folder /Repos/staging/mlops-nb" in out and "would create job mlops-nb-staging-scoring" in out
    assert "would update Git folder /Repos/staging/mlops-nb to branch release/1.1" in out
    assert out.splitlines()[-2] == "would create job mlops-nb-staging-monitoring after the pipeline job, with its id"
    assert env.calls and env.mutating_calls() == [] and env.repos == {} and env.jobs == {}


def test_run_waits_and_fails_when_the_run_fails(env, capsys):
    rc, out, err = deploy(capsys, "--env", "staging", "--run")
    assert rc == 0, err
    [run] = env.runs.values()
    assert env.jobs[run["job_id"]]["settings"]["name"] == "mlops-nb-staging-pipeline"
    assert run["run_page_url"] in out and "ended SUCCESS" in out
    env.run_result = "FAILED"
    rc, out, err = deploy(capsys, "--env", "staging", "--run")
    assert rc == 1
    assert "ended FAILED" in err and "/run/" in err and len(env.runs) == 2


def test_run_that_does_not_end_in_time(env, capsys):
    env.run_ends = False
    rc, out, err = deploy(capsys, "--env", "staging", "--run", "--run-timeout", "0.02")
    assert rc == 1
    assert "did not end within 0.02 minutes" in err and "/run/" in err


# -- API errors -------------------------------------------------------------------------------------------

def test_403_on_the_repos_api_is_a_clear_error(env, capsys):
    env.inject(403, "GET", r"/api/2\.0/repos$", message="User ci@example.org does not have Manage permissions on /Repos/staging")
    rc, out, err = deploy(capsys, "--env", "staging")
    assert rc == 1
    assert "listing Git folders under /Repos/staging/mlops-nb failed: PermissionDenied PERMISSION_DENIED" in err
    assert "CAN MANAGE" in err and env.mutating_calls() == []


def test_404_on_reset_is_a_clear_error(env, capsys):
    assert deploy(capsys, "--env", "staging")[0] == 0
    env.inject(404, "POST", r"/jobs/reset$", message="Job does not exist.")
    rc, out, err = deploy(capsys, "--env", "staging")
    assert rc == 1
    assert "resetting job 'mlops-nb-staging-pipeline' failed: ResourceDoesNotExist RESOURCE_DOES_NOT_EXIST: Job does not exist;" in err and "does not exist" in err


def test_429_then_success_is_retried(env, capsys):
    f = env.inject(429, "POST", r"/jobs/create$", retry_after=0, message="Too many requests")
    t = time.time()
    rc, out, err = deploy(capsys, "--env", "staging", "--json")
    assert rc == 0, err
    assert f.times == 0 and len(env.jobs) == 3
    assert [c[1] for c in env.calls].count("/api/2.2/jobs/create") == 4  # one refused, then the three jobs
    assert time.time() - t < 10


def test_unreachable_host_gives_up_within_the_retry_timeout(env, capsys, monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0)); port = sock.getsockname()[1]
    monkeypatch.setenv("DATABRICKS_HOST", f"http://127.0.0.1:{port}")
    t = time.time()
    rc = main(["deploy", "--env", "staging", "--retry-timeout", "1"])
    err = capsys.readouterr().err
    assert rc == 1 and "check DATABRICKS_HOST" in err
    assert time.time() - t < 30


def test_503_then_success_is_retried(env, capsys):
    f = env.inject(503, "GET", r"/repos$", retry_after=0, message="Service unavailable")
    rc, out, err = deploy(capsys, "--env", "staging", "--dry-run", "--json")
    assert rc == 0, err
    assert f.times == 0 and [c[1] for c in env.calls].count("/api/2.0/repos") == 2 and env.mutating_calls() == []


def test_refused_connection_is_not_retried(env, capsys, monkeypatch):
    "A host that refuses the connection fails the dry run at once (the default 300 s retry timeout is not spent), naming the host."
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0)); port = sock.getsockname()[1]   # closed again: nothing listens there
    monkeypatch.setenv("DATABRICKS_HOST", f"http://127.0.0.1:{port}")
    t = time.time()
    rc = main(["deploy", "--env", "staging", "--dry-run"])   # default --retry-timeout 300
    err = capsys.readouterr().err
    assert rc == 1 and time.time() - t < 20, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"could not connect to http://127.0.0.1:{port}" in lines[0] and "Connection refused" in lines[0], err
    assert "not retried" in lines[0] and TOKEN not in err
    assert env.calls == []


def test_a_host_that_never_answers_is_retried_until_the_retry_timeout(env, capsys, monkeypatch):
    "Timeouts can recover: a host that accepts connections and never answers is tried again until --retry-timeout."
    import threading
    accepted, stop = [], threading.Event()
    srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(16); srv.settimeout(0.2)
    def accept():
        while not stop.is_set():
            try: accepted.append(srv.accept()[0])   # held open, never answered
            except OSError: pass
    th = threading.Thread(target=accept, daemon=True); th.start()
    monkeypatch.setenv("DATABRICKS_HOST", f"http://127.0.0.1:{srv.getsockname()[1]}")
    try:
        t = time.time()
        rc = main(["deploy", "--env", "staging", "--dry-run", "--retry-timeout", "4"])   # 4 s per request, 4 s of retries
        took, err = time.time() - t, capsys.readouterr().err
    finally:
        stop.set(); th.join(5)
        for c in accepted: c.close()
        srv.close()
    assert rc == 1 and "raise --retry-timeout" in err and "Timed out" in err, err
    assert len(accepted) >= 2, accepted   # the timed-out request was sent again
    assert 4 <= took < 30


# -- bad input: a clear message before any API call -------------------------------------------------------

BAD = {
    "no host": ({"DATABRICKS_HOST": None}, [], "DATABRICKS_HOST is not set"),
    "no token": ({"DATABRICKS_TOKEN": None}, [], "DATABRICKS_TOKEN is not set"),
    "unknown env": ({}, ["--env", "qa"], "unknown env 'qa'"),
    "missing ref": ({}, ["--git-ref", "no-such-branch"], "git ref 'no-such-branch' not found"),
    "rollback to a branch": ({}, ["--rollback-to", "main"], "expected a tag"),
    "sha of another commit": ({}, ["--git-ref", "v1.1.0", "--git-sha", "0000000"], "but --git-sha says 0000000"),
    "undefined template variable": ({}, ["--templates", "TEMPLATES"], "'cluster_size' is undefined"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_fails_before_any_api_call(env, capsys, monkeypatch, tmp_path, case):
    envs, args, message = BAD[case]
    for k, v in envs.items(): monkeypatch.delenv(k)
    if "TEMPLATES" in args:
        (tmp_path / "t").mkdir()
        (tmp_path / "t" / "pipeline_job.json.j2").write_text('{"name": {{ pipeline_job_name|tojson }}, "max_concurrent_runs": {{ cluster_size|tojson }}}')
        args = [str(tmp_path / "t") if a == "TEMPLATES" else a for a in args]
    if "--env" not in args: args = ["--env", "staging", *args]
    rc, out, err = deploy(capsys, *args)
    assert rc == 1
    assert message in err and len(err.strip().splitlines()) == 1
    assert env.calls == []


# -- the token is never printed, logged or written --------------------------------------------------------

def test_token_never_appears_in_output_or_files(env, tmp_path, repo, capfd):
    "Successful, failing and refused deploys (in this process and as the console script): the token shows nowhere."
    outputs = []
    for args in (["deploy", "--env", "staging", "--dry-run", "--retry-timeout", "5"], ["deploy", "--env", "staging", "--git-ref", "no-such-ref"],
                 ["env", "--env", "staging", "--json"]):
        main(args); o = capfd.readouterr(); outputs.append(o.out + o.err)
    env.inject(403, "GET", r"/api/2\.0/repos$", message="denied")
    main(["deploy", "--env", "staging", "--retry-timeout", "5"]); o = capfd.readouterr(); outputs.append(o.out + o.err)
    cli = [str(BIN / "mlops-nb"), "deploy", "--env", "staging", "--retry-timeout", "5"]
    p = subprocess.run(cli + ["--run", "--json"], capture_output=True, text=True, timeout=120)
    outputs.append(p.stdout + p.stderr)
    env.token = "another-token"   # the workspace now rejects ours: the 401's message must not echo it either
    p = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    outputs.append(p.stdout + p.stderr)
    assert "would create job" in outputs[0] and "PermissionDenied" in outputs[3]
    assert "ended SUCCESS" in outputs[4] and "Unauthenticated" in outputs[5], outputs[4:]
    assert env.jobs and any(env.auth_seen)   # the token was really used
    for o in outputs: assert TOKEN not in o
    written = [p for p in tmp_path.rglob("*") if p.is_file() and ".git" not in p.parts]
    for p in written: assert TOKEN.encode() not in p.read_bytes(), p
    for c in env.calls: assert TOKEN not in json.dumps(c)


# -- azure-pipelines.yml ----------------------------------------------------------------------------------

def test_azure_pipelines_is_valid_offline(tmp_path):
    "Valid against check-jsonschema's bundled Azure Pipelines schema, with any download made to fail; a typo fails."
    schema = Path(__import__("check_jsonschema").__file__).parent / "builtin_schemas" / "vendor" / "azure-pipelines.json"
    assert schema.is_file()
    offline = {**os.environ, "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}
    cmd = [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.azure-pipelines", "--data-transform", "azure-pipelines",
           "--regex-variant", "python"]
    p = subprocess.run(cmd + [str(ROOT / "azure-pipelines.yml")], capture_output=True, text=True, env=offline, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    bad = tmp_path / "azure-pipelines.yml"
    bad.write_text((ROOT / "azure-pipelines.yml").read_text().replace("displayName: make test\n", "displayNme: make test\n", 1))
    assert subprocess.run(cmd + [str(bad)], capture_output=True, text=True, env=offline, timeout=120).returncode == 1


def _scripts(node):
    "Every script of every step in a pipeline document."
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("script", "bash") and isinstance(v, str): yield v
            else: yield from _scripts(v)
    elif isinstance(node, list):
        for v in node: yield from _scripts(v)


def test_azure_pipelines_runs_only_make_targets_and_mlops_nb_commands():
    doc = yaml.safe_load((ROOT / "azure-pipelines.yml").read_text())
    targets = set(re.findall(r"(?m)^([A-Za-z][\w-]*):", (ROOT / "Makefile").read_text()))
    parser = build_parser()
    lines = [l.strip() for s in _scripts(doc) for l in s.splitlines() if l.strip() and not l.strip().startswith("#")]
    assert any(l == "make test" for l in lines) and any(" deploy " in l and "--run" in l for l in lines)
    seen = set()
    for line in lines:
        words = shlex.split(re.sub(r"\$\((\w|\.)+\)", "X", line.split(" > ")[0]))
        if words[0] == "make":
            assert words[1:] and set(words[1:]) <= targets, line
        else:
            assert words[0] in ("mlops-nb", ".venv/bin/mlops-nb"), f"not a make target or an mlops-nb command: {line}"
            args = parser.parse_args(words[1:])   # exits (fails the test) on an unknown subcommand or option
            seen.add(args.command)
    assert {"deploy", "render-jobs"} <= seen
    deploys = [s for s in _scripts(doc) if " deploy " in s]
    steps = [st for st in _steps(doc) if " deploy " in st.get("script", "")]
    assert len(steps) == len(deploys) == 2
    for st in steps:
        assert set(st["env"]) == {"DATABRICKS_HOST", "DATABRICKS_TOKEN"} and st["env"]["DATABRICKS_TOKEN"].startswith("$(")
    assert {"group": "mlops-nb-databricks"} in doc["variables"]
    prod = next(s for s in doc["stages"] if s["stage"] == "Prod")
    assert prod["jobs"][0]["environment"] == "mlops-nb-prod" and "isRelease" in prod["condition"]


def _steps(node):
    if isinstance(node, dict):
        if "steps" in node:
            yield from node["steps"]
        for v in node.values(): yield from _steps(v)
    elif isinstance(node, list):
        for v in node: yield from _steps(v)


# -- notebooks import mlops_nb from the Git folder --------------------------------------------------------

RUNTIME_LACKS = ("fastcore", "deltalake", "papermill", "nbdev", "execnb", "nbval", "check_jsonschema")
_BLOCKER = f"""
import importlib, importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {RUNTIME_LACKS!r}: raise ImportError(name + " is not on the runtime")
sys.meta_path.insert(0, Block())
for m in sys.argv[1:]: importlib.import_module(m)
"""


def test_pipeline_modules_import_with_the_runtime_packages_only(tmp_path):
    "What the pipeline notebooks import from mlops_nb needs only what a Databricks Runtime ML has (the Git folder has no installer)."
    mods = sorted({m for nb in (ROOT / "nbs" / "pipelines").glob("*.ipynb") for m in re.findall(r"from (mlops_nb\.\w+) import", nb.read_text())})
    assert "mlops_nb.training" in mods and "mlops_nb.scoring" in mods
    p = subprocess.run([sys.executable, "-c", _BLOCKER, *mods], capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={**os.environ, "MLOPS_NB_HOME": str(tmp_path)})
    assert p.returncode == 0, p.stderr[-3000:]
    # and the job template installs neither the package nor anything the runtime already has
    libs = [lib["pypi"]["package"] for d in render_jobs(load_config("prod"), "0123abcd").values() for t in d["tasks"] for lib in t.get("libraries", [])]
    assert libs and not any(re.match(r"(mlops.nb|pyspark|mlflow)\b", l) for l in libs)


def test_deploy_parallel_train_tasks_and_notifications(env, capsys, tmp_path, monkeypatch):
    """Two model types: two train tasks in parallel, evaluate after both (it reads their task values), and the env's
    notifications on every job; the output names no address."""
    s = env
    conf = tmp_path / "conf.toml"
    conf.write_text('[staging]\nmodel_types = ["logreg", "hgb"]\nnotify_emails = ["ml-oncall@example.com"]\n'
                    'notify_webhook_ids = ["5f1c-destination"]\non_validation_failure = "fail"\n')
    monkeypatch.setenv("MLOPS_NB_CONFIG", str(conf))
    rc, out, err = deploy(capsys, "--env", "staging", "--git-ref", "main")
    assert rc == 0, err
    assert "ml-oncall@example.com" not in out + err and "5f1c-destination" not in out + err
    jobs = {n: j["settings"] for n, j in _jobs_by_name(s).items()}
    tasks = {t["task_key"]: t for t in jobs["mlops-nb-staging-pipeline"]["tasks"]}
    assert list(tasks) == ["train_logreg", "train_hgb", "evaluate", "score"]
    for key, model_type in (("train_logreg", "logreg"), ("train_hgb", "hgb")):
        t = tasks[key]
        assert "depends_on" not in t and t["notebook_task"]["notebook_path"] == "/Repos/staging/mlops-nb/nbs/pipelines/train"
        assert t["notebook_task"]["base_parameters"]["model_type"] == model_type and t["notebook_task"]["base_parameters"]["task_key"] == key
    assert tasks["evaluate"]["depends_on"] == [{"task_key": "train_logreg"}, {"task_key": "train_hgb"}]
    assert tasks["evaluate"]["notebook_task"]["base_parameters"]["model_types"] == "logreg,hgb"
    for name, settings in jobs.items():
        assert settings["email_notifications"]["on_failure"] == ["ml-oncall@example.com"], name
        assert settings["webhook_notifications"] == {"on_failure": [{"id": "5f1c-destination"}]}, name
        assert JobSettings.from_dict(settings).as_dict() == settings
    # the monitoring job's condition still reads the monitor task's value, and runs the pipeline job by its id
    assert jobs["mlops-nb-staging-monitoring"]["tasks"][1]["condition_task"]["left"] == "{{tasks.monitor.values.retrain}}"
