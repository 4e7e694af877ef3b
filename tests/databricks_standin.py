"""Hand-written (not a notebook): a local stand-in for the Databricks REST API that tests drive the real databricks-sdk against over HTTP."""
# It implements only what mlops_nb.deploy calls (through mlops_nb.workspace), with state in memory, on 127.0.0.1 and a free port, in a thread:
#   GET /.well-known/databricks-config        404 (the SDK's host-metadata probe; it falls back to explicit config)
#   /api/2.0/repos                            list (path_prefix), get, create, update (branch or tag)
#   /api/2.0/workspace/mkdirs                 create a folder (idempotent)
#   /api/2.1/jobs/... and /api/2.2/jobs/...   list (name filter), get, create, reset, run-now, runs/get
#   /api/2.0/serving-endpoints/...            Model Serving: list, create, get, PUT config, PUT ai-gateway (tests/serving_standin.py)
# Job settings are stored and returned as sent (job parameters, condition_task and run_job_task included). Like the
# Jobs API, create and reset refuse tasks that depend on a task the job lacks, an `outcome` on a dependency that is not
# a condition task (or one other than "true"/"false"), a condition task without op, left and right, and a
# run_job_task whose job_id is missing or names no job of the workspace.
# Faults can be injected per method and path (e.g. a 403, a 404, or one 429 and then success). Tests may seed Git folders
# and jobs directly (add_repo, add_job) and empty the workspace again (reset).
from __future__ import annotations
import json, re, threading, time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse
from serving_standin import ServingEndpointsStandin

__all__ = ["DatabricksStandin", "Fault"]


@dataclass
class Fault:
    "An error the stand-in answers with, `times` times, for requests matching `method` and a `path` regex."
    status: int
    method: str | None = None       # None: any method
    path: str | None = None         # a regex searched in the path; None: any /api path
    times: int = 1                  # how many requests it answers; then the request goes through
    error_code: str = ""
    message: str = ""
    retry_after: int | None = None  # Retry-After header (seconds), for 429 and 503

    def matches(self, method, path) -> bool:
        return self.times > 0 and (self.method is None or self.method == method) and \
            (re.search(self.path, path) if self.path else path.startswith("/api/"))


_CODES = {400: "INVALID_PARAMETER_VALUE", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "RESOURCE_DOES_NOT_EXIST",
          429: "REQUEST_LIMIT_EXCEEDED", 500: "INTERNAL_ERROR", 503: "TEMPORARILY_UNAVAILABLE"}


class ApiError(Exception):
    def __init__(self, status, message, error_code=None):
        super().__init__(message)
        self.status, self.message, self.error_code = status, message, error_code or _CODES.get(status, "UNKNOWN")


class DatabricksStandin(ServingEndpointsStandin):
    "A Databricks workspace API stand-in: `with DatabricksStandin(token) as s: ... s.url ...`."

    def __init__(self, token="dapi-standin-token", run_result="SUCCESS", refs=None):
        self.token = token
        self.run_result = run_result      # result_state of every run: SUCCESS, FAILED, ...
        self.run_ends = True              # False: runs stay RUNNING (to test --run-timeout)
        self.refs = refs                  # {"main": sha, "v1.0": sha, ...}: known refs; None accepts any ref
        self.repos, self.jobs, self.runs, self.folders = {}, {}, {}, set()
        self._serving_reset()             # self.endpoints: {name: serving endpoint}
        self.faults: list[Fault] = []
        self.calls: list[tuple] = []      # (method, path, query, body) of every /api request, in order
        self.auth_seen: list[bool] = []   # whether each /api request carried the right bearer token
        self._ids = iter(range(1001, 10**9))
        self._lock = threading.Lock()
        self._server = None

    # -- life cycle ---------------------------------------------------------------------------------------
    def start(self) -> "DatabricksStandin":
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a): pass
            def do_GET(self): standin._handle(self, "GET")
            def do_POST(self): standin._handle(self, "POST")
            def do_PATCH(self): standin._handle(self, "PATCH")
            def do_PUT(self): standin._handle(self, "PUT")
            def do_DELETE(self): standin._handle(self, "DELETE")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True, name="databricks-standin").start()
        return self

    def stop(self):
        if self._server: self._server.shutdown(); self._server.server_close(); self._server = None

    def __enter__(self): return self.start()
    def __exit__(self, *exc): self.stop()

    @property
    def url(self) -> str: return f"http://127.0.0.1:{self._server.server_address[1]}"

    def inject(self, status, method=None, path=None, times=1, message="", error_code="", retry_after=None) -> Fault:
        "Answer the next `times` matching requests with `status`."
        f = Fault(status, method, path, times, error_code, message or f"injected {status}", retry_after)
        with self._lock: self.faults.append(f)
        return f

    def mutating_calls(self) -> list:
        "The calls that change state (anything but GET)."
        return [c for c in self.calls if c[0] != "GET"]

    # -- seeding (tests set the workspace up directly, not through the API) ------------------------------------
    def reset(self):
        "An empty workspace again: no Git folders, folders, jobs, runs, serving endpoints, faults or recorded calls (the settings stay)."
        with self._lock:
            self.repos, self.jobs, self.runs, self.folders = {}, {}, {}, set()
            self._serving_reset()
            self.faults, self.calls, self.auth_seen = [], [], []

    def add_repo(self, path, url="https://github.com/example/mlops-nb.git", provider="gitHub", branch="main", repo_id=None) -> int:
        "Seed a Git folder at `path` (its id `repo_id`, default the next free one); return its id."
        with self._lock:
            rid = self._new_id(self.repos, repo_id)
            self.repos[rid] = dict(id=rid, path=path, url=url, provider=provider, branch=branch,
                                   head_commit_id=(self.refs or {}).get(branch, "0" * 40), _tag=None)
        return rid

    def add_job(self, settings, job_id=None) -> int:
        "Seed a job with `settings` (a dict, e.g. `{'name': 'j'}`; its id `job_id`, default the next free one); return its id."
        with self._lock:
            jid = self._new_id(self.jobs, job_id)
            self.jobs[jid] = dict(job_id=jid, created_time=int(time.time() * 1000), settings=dict(settings))
        return jid

    def _new_id(self, taken, wanted):
        if wanted is None:
            while (i := next(self._ids)) in taken: pass
            return i
        if wanted in taken: raise ValueError(f"id {wanted} is taken")
        return wanted

    # -- HTTP ---------------------------------------------------------------------------------------------
    def _handle(self, h, method):
        u = urlparse(h.path)
        path, query = u.path, {k: v[-1] for k, v in parse_qs(u.query).items()}
        n = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(n) if n else b""
        try: body = json.loads(raw) if raw else {}
        except json.JSONDecodeError: body = None
        if path == "/.well-known/databricks-config":
            return self._send(h, 404, {"error_code": "NOT_FOUND", "message": "no host metadata"})
        with self._lock:
            self.calls.append((method, path, query, body))
            self.auth_seen.append(h.headers.get("Authorization") == f"Bearer {self.token}")
            fault = next((f for f in self.faults if f.matches(method, path)), None)
            if fault: fault.times -= 1
        if fault:
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            return self._send(h, fault.status, {"error_code": fault.error_code or _CODES.get(fault.status, "UNKNOWN"),
                                                "message": fault.message}, headers)
        if h.headers.get("Authorization") != f"Bearer {self.token}":
            return self._send(h, 401, {"error_code": "UNAUTHENTICATED", "message": "Invalid access token."})
        if body is None: return self._send(h, 400, {"error_code": "MALFORMED_REQUEST", "message": "body is not JSON"})
        try:
            with self._lock: out = self._route(method, path, query, body)
        except ApiError as e:
            return self._send(h, e.status, {"error_code": e.error_code, "message": e.message})
        self._send(h, 200, out)

    def _send(self, h, status, payload, headers=None):
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items(): h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def _route(self, method, path, q, body):
        if path == "/api/2.0/workspace/mkdirs" and method == "POST":
            self.folders.add(body["path"]); return {}
        if path == "/api/2.0/repos":
            if method == "GET": return self._repos_list(q)
            if method == "POST": return self._repos_create(body)
        m = re.fullmatch(r"/api/2.0/repos/(\d+)", path)
        if m:
            repo = self.repos.get(int(m[1]))
            if repo is None: raise ApiError(404, f"Repo {m[1]} does not exist.")
            if method == "GET": return self._repo_view(repo)
            if method == "PATCH": return self._repos_update(repo, body)
        m = re.fullmatch(r"/api/2\.[12]/jobs/([a-z/-]+)", path)
        if m:
            fn = {("GET", "list"): self._jobs_list, ("GET", "get"): self._jobs_get, ("POST", "create"): self._jobs_create,
                  ("POST", "reset"): self._jobs_reset, ("POST", "run-now"): self._run_now,
                  ("GET", "runs/get"): self._runs_get}.get((method, m[1]))
            if fn: return fn(q if method == "GET" else body)
        if path.startswith("/api/2.0/serving-endpoints"): return self._serving_route(method, path, body, ApiError)
        raise ApiError(404, f"No API found for '{method} {path}'", "ENDPOINT_NOT_FOUND")

    # -- repos --------------------------------------------------------------------------------------------
    def _repo_view(self, r) -> dict:
        return {k: v for k, v in r.items() if not k.startswith("_") and v is not None}

    def _repos_list(self, q):
        # like the workspace, a path and the same path under /Workspace are one: either prefix finds either
        plain = lambda p: p.removeprefix("/Workspace")
        prefix = plain(q.get("path_prefix", "/Repos"))
        return {"repos": [self._repo_view(r) for r in self.repos.values() if plain(r["path"]).startswith(prefix)]}

    def _repos_create(self, b):
        for k in ("url", "provider", "path"):
            if not b.get(k): raise ApiError(400, f"Missing required field: {k}")
        if any(r["path"] == b["path"] for r in self.repos.values()):
            raise ApiError(400, f"{b['path']} already exists", "RESOURCE_ALREADY_EXISTS")
        parent = b["path"].rsplit("/", 1)[0]
        if parent.count("/") >= 2 and parent not in self.folders:
            raise ApiError(404, f"Parent folder {parent} does not exist", "RESOURCE_DOES_NOT_EXIST")
        rid = next(self._ids)
        self.repos[rid] = dict(id=rid, path=b["path"], url=b["url"], provider=b["provider"], branch="main",
                               head_commit_id=(self.refs or {}).get("main", "0" * 40), _tag=None)
        return self._repo_view(self.repos[rid])

    def _repos_update(self, repo, b):
        ref = b.get("branch") or b.get("tag")
        if not ref or (b.get("branch") and b.get("tag")): raise ApiError(400, "Exactly one of branch or tag is required")
        if self.refs is not None and ref not in self.refs:
            raise ApiError(400, f"Error checking out {ref}: it does not exist on the remote")
        repo.update(branch=b.get("branch"), _tag=b.get("tag"), head_commit_id=(self.refs or {}).get(ref, "f" * 40))
        return {}

    # -- jobs ---------------------------------------------------------------------------------------------
    def _job_view(self, j, full=True) -> dict:
        s = j["settings"] if full else {k: v for k, v in j["settings"].items() if k not in ("tasks", "job_clusters")}
        return dict(job_id=j["job_id"], created_time=j["created_time"], creator_user_name="ci@example.org", settings=s)

    def _job(self, job_id) -> dict:
        j = self.jobs.get(int(job_id or 0))
        if j is None: raise ApiError(400, f"Job {job_id} does not exist.", "INVALID_PARAMETER_VALUE")
        return j

    def _jobs_list(self, q):
        name = q.get("name")
        js = [j for j in self.jobs.values() if name is None or j["settings"].get("name", "").lower() == name.lower()]
        return {"jobs": [self._job_view(j, q.get("expand_tasks") == "true") for j in js], "has_more": False}

    def _jobs_get(self, q): return self._job_view(self._job(q.get("job_id")))

    def _check_tasks(self, settings):
        "An ApiError (400) for tasks the Jobs API refuses: see the module's comment."
        tasks = {t.get("task_key"): t for t in settings.get("tasks", [])}
        for key, t in tasks.items():
            for dep in t.get("depends_on", []):
                up = tasks.get(dep.get("task_key"))
                if up is None: raise ApiError(400, f"Task {key} depends on {dep.get('task_key')}, which is not a task of the job")
                if "outcome" in dep and ("condition_task" not in up or dep["outcome"] not in ("true", "false")):
                    raise ApiError(400, f"Task {key}: an outcome ('true' or 'false') can only be given for a dependency on a condition task")
            c = t.get("condition_task")
            if c is not None and not (c.get("op") and "left" in c and "right" in c):
                raise ApiError(400, f"Task {key}: condition_task requires op, left and right")
            r = t.get("run_job_task")
            if r is not None:
                if r.get("job_id") is None: raise ApiError(400, f"Task {key}: Missing required field: run_job_task.job_id")
                if int(r["job_id"]) not in self.jobs: raise ApiError(400, f"Task {key}: Job {r['job_id']} does not exist.")

    def _jobs_create(self, b):
        self._check_tasks(b)
        jid = next(self._ids)
        self.jobs[jid] = dict(job_id=jid, created_time=int(time.time() * 1000), settings=b)
        return {"job_id": jid}

    def _jobs_reset(self, b):
        if "new_settings" not in b: raise ApiError(400, "Missing required field: new_settings")
        self._check_tasks(b["new_settings"])
        self._job(b.get("job_id"))["settings"] = b["new_settings"]
        return {}

    def _run_now(self, b):
        j = self._job(b.get("job_id"))
        rid = next(self._ids)
        ok = self.run_result == "SUCCESS"
        self.runs[rid] = dict(run_id=rid, job_id=j["job_id"], number_in_job=rid, run_name=j["settings"].get("name"),
                              run_page_url=f"{self.url}/#job/{j['job_id']}/run/{rid}",
                              state=dict(life_cycle_state="TERMINATED", result_state=self.run_result,
                                         state_message="" if ok else "Task score failed with message: injected failure")
                              if self.run_ends else dict(life_cycle_state="RUNNING", state_message="In run"),
                              tasks=[dict(task_key=t["task_key"], run_id=next(self._ids)) for t in j["settings"].get("tasks", [])])
        return {"run_id": rid, "number_in_job": rid}

    def _runs_get(self, q):
        r = self.runs.get(int(q.get("run_id") or 0))
        if r is None: raise ApiError(400, f"Run {q.get('run_id')} does not exist.", "INVALID_PARAMETER_VALUE")
        return r
