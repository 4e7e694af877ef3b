"""Screenshots of MLflow's UI on a home with a demo run: `mlops-nb ui` is started on a free port, then headless Chromium
(Debian's `chromium`: apt-get install -y chromium) takes the experiment's runs page, the train run's page and the
champion's model version page. For looking at what the UI shows of our runs; not a test.

    MLOPS_NB_HOME=/path/to/home python tools/ui_screenshots.py [--env dev] [--out ui-screenshots]
"""
from __future__ import annotations
import argparse, json, shutil, socket, subprocess, sys, tempfile, time, urllib.error, urllib.parse, urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--virtual-time-budget=8000", "--hide-scrollbars"]
HEIGHT = {"model_version.png": 2200}   # pages whose point is below the fold: taller windows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def get(url: str, body: dict = None) -> dict:
    "GET `url`, or POST `body` as JSON to it; the answer as JSON."
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body else None, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r: return json.loads(r.read())


def pages(url: str, env: str) -> dict:
    "{file name: UI address} of the env's experiment, its newest train run and the champion's version."
    exp = next(e for e in get(f"{url}/api/2.0/mlflow/experiments/search?max_results=100")["experiments"]
               if e["name"] == f"/Shared/mlops-nb/{env}")
    eid = exp["experiment_id"]
    runs = get(f"{url}/api/2.0/mlflow/runs/search", {"experiment_ids": [eid], "filter": "tags.task_key = 'train'",
                                                      "max_results": 1, "order_by": ["attributes.start_time DESC"]})
    out = {"experiment.png": f"{url}/#/experiments/{eid}?workflowType=machine_learning"}  # the address `mlops-nb ui` prints
    if runs.get("runs"): out["train_run.png"] = f"{url}/#/experiments/{eid}/runs/{runs['runs'][0]['info']['run_id']}"
    name = f"{env}.mlops_nb.demo_model"
    try:
        mv = get(f"{url}/api/2.0/mlflow/registered-models/alias?name={urllib.parse.quote(name)}&alias=champion")["model_version"]
        out["model_version.png"] = f"{url}/#/models/{urllib.parse.quote(name)}/versions/{mv['version']}"  # all its tags: tall
    except urllib.error.HTTPError: pass   # no champion yet
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="screenshots of MLflow's UI on a home with a demo run")
    p.add_argument("--env", default="dev")
    p.add_argument("--out", default="ui-screenshots", help="folder for the PNGs (default ui-screenshots)")
    a = p.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium: print("no chromium: apt-get install -y chromium", file=sys.stderr); return 2
    out, port = Path(a.out), free_port()
    out.mkdir(parents=True, exist_ok=True)
    log = open(out/"ui.log", "w")
    ui = subprocess.Popen([str(BIN/"mlops-nb"), "ui", "--env", a.env, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try: urllib.request.urlopen(f"{url}/health", timeout=2).close(); break
            except OSError: pass
            if ui.poll() is not None: print((out/"ui.log").read_text()[-2000:], file=sys.stderr); return 1
            if time.monotonic() > deadline: print("mlops-nb ui did not answer within 120 s", file=sys.stderr); return 1
            time.sleep(0.5)
        for name, page in pages(url, a.env).items():
            with tempfile.TemporaryDirectory() as profile:
                subprocess.run([chromium, *CHROMIUM_FLAGS, f"--window-size=1400,{HEIGHT.get(name, 1000)}", f"--user-data-dir={profile}", f"--screenshot={(out/name).resolve()}", page],
                               capture_output=True, timeout=180)
            print(f"{out/name}: {page}" if (out/name).is_file() else f"no screenshot of {page}")
    finally:
        ui.terminate()
        try: ui.wait(timeout=30)
        except subprocess.TimeoutExpired: ui.kill(); ui.wait()
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
