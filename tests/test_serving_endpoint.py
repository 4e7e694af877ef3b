"`mlops-nb deploy --env ENV --serving`: the env's Databricks Model Serving endpoint, by the real databricks-sdk against the local stand-in."
from __future__ import annotations
import json, os, sys
from pathlib import Path
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from databricks_standin import DatabricksStandin  # noqa: E402

from mlops_nb.cli import main

TOKEN = "dapi-serving-0123456789abcdef-SECRET"
MODEL = "dev.mlops_nb.demo_model"
EP = "mlops-nb-dev"


@pytest.fixture(scope="module")
def registry(make_home):
    "A home whose registry holds dev's model with versions 1, 2 and 3 and prod's with version 1 (each champion 1); no training needed."
    import mlflow
    home = make_home("serving-endpoint")
    client = mlflow.MlflowClient(tracking_uri=home.tracking_uri, registry_uri=home.tracking_uri)
    src = home.path / "model-source"; src.mkdir()
    for name, n in ((MODEL, 3), ("prod.mlops_nb.demo_model", 1)):
        client.create_registered_model(name)
        for _ in range(n): client.create_model_version(name, source=str(src))
        client.set_registered_model_alias(name, "champion", "1")
    return home, client


@pytest.fixture
def standin():
    with DatabricksStandin(TOKEN) as s:
        yield s


def standin_environ(monkeypatch, standin, tmp_path, home):
    "The stand-in's host and token, no ~/.databrickscfg, `home` as MLOPS_NB_HOME, and nothing else of ours or Databricks' set."
    for k in list(os.environ):
        if k.startswith(("DATABRICKS_", "MLOPS_NB_", "MLFLOW_")): monkeypatch.delenv(k)
    monkeypatch.setenv("DATABRICKS_HOST", standin.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no-databrickscfg"))
    monkeypatch.setenv("MLOPS_NB_HOME", str(home.path))


@pytest.fixture
def env(monkeypatch, tmp_path, registry, standin):
    "Credentials for the stand-in, no ~/.databrickscfg, the registry's home; `env.config(toml)` sets $MLOPS_NB_CONFIG; `env.aliases(...)` sets the aliases."
    home, client = registry
    standin_environ(monkeypatch, standin, tmp_path, home)

    def config(text):
        (tmp_path / "mlops.toml").write_text(text)
        monkeypatch.setenv("MLOPS_NB_CONFIG", str(tmp_path / "mlops.toml"))

    def aliases(**versions):
        for alias, v in versions.items():
            if v is None:
                try: client.delete_registered_model_alias(MODEL, alias)
                except Exception: pass
            else: client.set_registered_model_alias(MODEL, alias, str(v))

    aliases(champion=1, challenger=None)
    standin.config, standin.aliases, standin.client = config, aliases, client
    return standin


def deploy(capsys, *args) -> tuple:
    "Run `mlops-nb deploy --serving ARGS` in this process; return (exit code, stdout, stderr)."
    rc = main(["deploy", "--serving", "--retry-timeout", "5", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def posted(s, path_end="/api/2.0/serving-endpoints") -> list:
    "The bodies of the mutating calls whose path ends with `path_end`."
    return [body for _, path, _, body in s.mutating_calls() if path.endswith(path_end)]


def served(s, name=EP) -> dict:
    "The endpoint's current config as {served entity: (entity name, version, size, scale to zero, traffic)}."
    c = s.endpoints[name]["_config"]
    traffic = {r["served_entity_name"]: r["traffic_percentage"] for r in c["traffic_config"]["routes"]}
    return {e["name"]: (e["entity_name"], e["entity_version"], e["workload_size"], e["scale_to_zero_enabled"], traffic[e["name"]])
            for e in c["served_entities"]}


def test_first_deploy_creates_the_endpoint_and_the_second_changes_nothing(env, capsys):
    s = env
    champion = s.client.get_model_version_by_alias(MODEL, "champion").version
    rc, out, err = deploy(capsys, "--env", "dev", "--json")
    assert rc == 0, err
    summary = json.loads(out)
    assert (summary["endpoint"], summary["state"], summary["config_version"]) == (EP, "READY", 1)
    [body] = posted(s)
    assert body["name"] == EP and body["config"]["served_entities"] == [
        dict(name=f"demo_model-{champion}", entity_name=MODEL, entity_version=str(champion), workload_size="Small", scale_to_zero_enabled=True)]
    assert body["config"]["traffic_config"] == {"routes": [{"served_entity_name": f"demo_model-{champion}", "traffic_percentage": 100}]}
    assert body["ai_gateway"] == {"inference_table_config": dict(catalog_name="dev", schema_name="mlops_nb", table_name_prefix="mlops_nb_dev", enabled=True)}
    assert s.endpoints[EP]["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}
    assert f"create serving endpoint {EP}: demo_model-{champion} (v{champion}, champion) 100%" in err and "waiting for serving endpoint" in err
    calls = len(s.mutating_calls())
    rc, out, err = deploy(capsys, "--env", "dev")
    assert rc == 0, err
    assert len(s.mutating_calls()) == calls == 1
    assert out.splitlines()[0] == f"serving endpoint {EP} is current: demo_model-{champion} (v{champion}, champion) 100%; Small, scale to zero"


def test_a_90_10_split_serves_two_entities(env, capsys):
    s = env
    s.config("[dev]\nserve_routes = {champion = 90, challenger = 10}\nserving_workload_size = \"Medium\"\n")
    s.aliases(champion=1, challenger=2)
    rc, out, err = deploy(capsys, "--env", "dev")
    assert rc == 0, err
    assert served(s) == {"demo_model-1": (MODEL, "1", "Medium", True, 90), "demo_model-2": (MODEL, "2", "Medium", True, 10)}


def test_a_new_champion_updates_the_config(env, capsys):
    s = env
    assert deploy(capsys, "--env", "dev")[0] == 0
    s.aliases(champion=3)
    rc, out, err = deploy(capsys, "--env", "dev", "--json")
    assert rc == 0, err
    [update] = posted(s, "/config")
    assert [e["entity_version"] for e in update["served_entities"]] == ["3"]
    assert served(s) == {"demo_model-3": (MODEL, "3", "Small", True, 100)}
    assert json.loads(out)["config_version"] == 2 and len(posted(s)) == 1   # one create, one update
    assert f"update serving endpoint {EP} from demo_model-1 100% to demo_model-3 (v3, champion) 100%" in err


def test_ready_after_polls_with_progress(env, capsys):
    s = env
    s.ready_after_polls = 3
    rc, out, err = deploy(capsys, "--env", "dev")
    assert rc == 0, err
    waits = [l for l in out.splitlines() if l.startswith(f"waiting for serving endpoint {EP}: NOT_READY, config update IN_PROGRESS")]
    assert len(waits) == 2, out
    assert out.splitlines()[-1].startswith(f"serving endpoint {EP} is ready (config version 1)")


def test_an_endpoint_never_ready_is_a_timeout(env, capsys):
    s = env
    s.ready_after_polls = None
    rc, out, err = deploy(capsys, "--env", "dev", "--serving-timeout", "2")
    assert rc == 1
    assert err.strip().startswith(f"mlops-nb deploy: error: serving endpoint {EP} was not ready within 2 s (ready NOT_READY, config update IN_PROGRESS)")
    assert "--serving-timeout" in err and len(err.strip().splitlines()) == 1


def test_a_failed_update_is_an_error(env, capsys):
    s = env
    assert deploy(capsys, "--env", "dev")[0] == 0
    s.aliases(champion=2)
    s.update_result = "UPDATE_FAILED"
    rc, out, err = deploy(capsys, "--env", "dev")
    assert rc == 1 and f"the config update of serving endpoint {EP} ended UPDATE_FAILED" in err
    assert served(s) == {"demo_model-1": (MODEL, "1", "Small", True, 100)}   # the old config stays
    calls = len(s.mutating_calls())
    s.aliases(champion=1)   # back to the version it serves: current, though its last update failed
    rc, out, err = deploy(capsys, "--env", "dev")
    assert (rc, len(s.mutating_calls())) == (0, calls) and out.startswith(f"serving endpoint {EP} is current"), err
    s.aliases(champion=2)
    s.update_result = "NOT_UPDATING"   # fixed: the next deploy updates it
    assert deploy(capsys, "--env", "dev")[0] == 0 and served(s) == {"demo_model-2": (MODEL, "2", "Small", True, 100)}


def test_an_update_under_way_is_waited_for_first(env, capsys):
    s = env
    s.ready_after_polls = None
    assert deploy(capsys, "--env", "dev", "--serving-timeout", "1")[0] == 1   # left updating
    s.ready_after_polls = s.endpoints[EP]["_polls"] + 3   # the update ends on the third get from now
    s.aliases(champion=2)
    rc, out, err = deploy(capsys, "--env", "dev")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == f"serving endpoint {EP} is being updated; waiting for that update first"
    assert lines.index(next(l for l in lines if l.startswith("update serving endpoint"))) > 0
    assert [p.rsplit("/", 1)[1] for _, p, _, _ in s.mutating_calls()] == ["serving-endpoints", "config"]
    assert served(s) == {"demo_model-2": (MODEL, "2", "Small", True, 100)}


def test_503s_are_retried(env, capsys):
    s = env
    s.inject(503, "POST", r"/serving-endpoints$", times=2, retry_after=1)
    s.inject(500, "GET", r"/serving-endpoints/", times=1, message="Unexpected error: try again")   # a transient 500 the SDK retries
    rc, out, err = deploy(capsys, "--env", "dev")
    assert rc == 0, err
    assert [c[0] for c in s.calls if c[1] == "/api/2.0/serving-endpoints"] == ["POST"] * 3 and len(s.endpoints) == 1


@pytest.mark.parametrize("status", [400, 500])
def test_an_api_error_is_one_line_without_the_token(env, capsys, status):
    s = env
    s.inject(status, "POST", r"/serving-endpoints$", times=5, message=f"bad served entity (request carried {TOKEN})")
    rc, out, err = deploy(capsys, "--env", "dev")
    assert rc == 1 and TOKEN not in out + err
    [line] = err.strip().splitlines()
    assert line.startswith(f"mlops-nb deploy: error: creating serving endpoint {EP} failed:") and "***" in line
    assert len([c for c in s.calls if c[0] == "POST"]) == 1   # not retried


def test_no_champion_is_refused_before_any_api_call(env, capsys):
    s = env
    s.config('[dev]\nmodel = "never_trained"\n')
    rc, out, err = deploy(capsys, "--env", "dev")
    assert rc == 1 and s.calls == []
    assert err.strip() == ("mlops-nb deploy: error: no champion for dev.mlops_nb.never_trained: expected a version with the alias champion to serve; "
                           "run the pipeline (mlops-nb run) or promote a version (mlops-nb promote) first")


def test_a_routed_alias_without_a_version_is_refused_before_any_api_call(env, capsys):
    s = env
    s.config("[dev]\nserve_routes = {champion = 90, challenger = 10}\n")
    rc, out, err = deploy(capsys, "--env", "dev")
    assert rc == 1 and s.calls == [] and "serve_routes names alias(es) challenger, which model dev.mlops_nb.demo_model does not have" in err


@pytest.mark.parametrize("toml, expected", [
    ('[dev]\nserving_workload_size = "XL"\n', "serving_workload_size ([dev] of"),
    ('[dev]\nserving_endpoint = "no spaces"\n', "serving_endpoint ([dev] of"),
    ('[dev]\nserving_ready_timeout_seconds = 0\n', "serving_ready_timeout_seconds ([dev] of"),
])
def test_bad_settings_are_usage_errors_before_any_api_call(env, capsys, toml, expected):
    s = env
    s.config(toml)
    rc, out, err = deploy(capsys, "--env", "dev")
    assert rc == 2 and s.calls == [] and expected in err and len(err.strip().splitlines()) == 1


def test_code_options_are_refused_with_serving(env, capsys):
    s = env
    rc, out, err = deploy(capsys, "--env", "dev", "--git-ref", "main", "--run")
    assert rc == 2 and s.calls == [] and "found --git-ref, --run" in err
    rc, out, err = deploy(capsys, "--env", "dev", "--serving-timeout", "0")
    assert rc == 2 and s.calls == [] and "--serving-timeout: expected a number of seconds above 0, found 0" in err
    rc = main(["deploy", "--env", "dev", "--serving-timeout", "5"])
    assert rc == 2 and "--serving-timeout applies to deploy --serving only" in capsys.readouterr().err


def test_dry_run_changes_nothing(env, capsys):
    s = env
    rc, out, err = deploy(capsys, "--env", "dev", "--dry-run")
    assert rc == 0, err
    assert out.startswith(f"would create serving endpoint {EP}") and s.mutating_calls() == [] and s.endpoints == {}


def test_shadow_mode_serves_the_shadow_with_no_traffic(env, capsys):
    s = env
    s.config('[dev]\nserve_routes = {champion = 100, challenger = 0}\nserve_mode = "shadow"\n')
    s.aliases(champion=1, challenger=3)
    rc, out, err = deploy(capsys, "--env", "dev")
    assert rc == 0, err
    assert served(s) == {"demo_model-1": (MODEL, "1", "Small", True, 100), "demo_model-3": (MODEL, "3", "Small", True, 0)}
    assert out.splitlines()[0].startswith("note: serve_mode = shadow has no equivalent on Databricks Model Serving: demo_model-3 (challenger) is served with 0%")


def test_a_changed_inference_table_keeps_the_gateways_other_settings(env, capsys):
    s = env
    assert deploy(capsys, "--env", "dev")[0] == 0
    s.endpoints[EP]["ai_gateway"]["usage_tracking_config"] = {"enabled": True}   # set by someone in the workspace
    s.config('[dev]\nschema = "serving"\n')
    s.client.create_registered_model("dev.serving.demo_model")
    s.client.create_model_version("dev.serving.demo_model", source="/tmp")
    s.client.set_registered_model_alias("dev.serving.demo_model", "champion", "1")
    rc, out, err = deploy(capsys, "--env", "dev")
    assert rc == 0, err
    [gw] = posted(s, "/ai-gateway")
    assert gw == {"inference_table_config": dict(catalog_name="dev", schema_name="serving", table_name_prefix="mlops_nb_dev", enabled=True),
                  "usage_tracking_config": {"enabled": True}}
    assert [e["entity_name"] for e in posted(s, "/config")[0]["served_entities"]] == ["dev.serving.demo_model"]


def test_prod_defaults_to_always_on(env, capsys):
    s = env
    rc, out, err = deploy(capsys, "--env", "prod", "--json")
    assert rc == 0, err
    assert served(s, "mlops-nb-prod") == {"demo_model-1": ("prod.mlops_nb.demo_model", "1", "Small", False, 100)}
    assert json.loads(out)["inference_table"] == "prod.mlops_nb.mlops_nb_prod_payload"


def test_the_console_script_with_a_users_defaults(registry, standin, tmp_path):
    "The installed `mlops-nb` with nothing but the workspace's host and token and the home: the endpoint a user gets."
    home, client = registry
    client.set_registered_model_alias(MODEL, "champion", "1")
    if "challenger" in client.get_registered_model(MODEL).aliases: client.delete_registered_model_alias(MODEL, "challenger")
    r = home.cli("deploy", "--env", "dev", "--serving", env=dict(DATABRICKS_HOST=standin.url, DATABRICKS_TOKEN=TOKEN,
                                                                DATABRICKS_CONFIG_FILE=tmp_path / "none"))
    assert r.returncode == 0, str(r)
    assert served(standin) == {"demo_model-1": (MODEL, "1", "Small", True, 100)}
    assert r.stdout.splitlines()[0].startswith(f"create serving endpoint {EP}: demo_model-1 (v1, champion) 100%; Small, scale to zero; "
                                               "inference table dev.mlops_nb.mlops_nb_dev_payload")
    assert TOKEN not in r.stdout + r.stderr and all(standin.auth_seen)


def test_the_standin_refuses_what_the_serving_api_refuses(env):
    "Through the real SDK: a taken name (409), a missing endpoint (404), an update during an update (409), routes not summing to 100 (400)."
    from databricks.sdk.errors import InvalidParameterValue, NotFound, ResourceAlreadyExists, ResourceConflict
    from databricks.sdk.service.serving import EndpointCoreConfigInput, Route, ServedEntityInput, TrafficConfig
    from mlops_nb.workspace import workspace_client
    w, s = workspace_client(retry_timeout_seconds=5), env
    ent = lambda v: ServedEntityInput(entity_name=MODEL, entity_version=v, workload_size="Small", scale_to_zero_enabled=True)
    w.serving_endpoints.create("e1", config=EndpointCoreConfigInput(name="e1", served_entities=[ent("1")]))
    with pytest.raises(ResourceAlreadyExists): w.serving_endpoints.create("e1", config=EndpointCoreConfigInput(name="e1", served_entities=[ent("1")]))
    with pytest.raises(NotFound): w.serving_endpoints.get("e2")
    with pytest.raises(ResourceConflict): w.serving_endpoints.update_config("e1", served_entities=[ent("2")])   # the create is still updating
    while w.serving_endpoints.get("e1").state.config_update.value == "IN_PROGRESS": pass
    bad = TrafficConfig(routes=[Route(served_entity_name="demo_model-1", traffic_percentage=60), Route(served_entity_name="demo_model-2", traffic_percentage=60)])
    with pytest.raises(InvalidParameterValue): w.serving_endpoints.update_config("e1", served_entities=[ent("1"), ent("2")], traffic_config=bad)
    [e] = w.serving_endpoints.list()
    assert (e.name, [x.name for x in e.config.served_entities], e.state.ready.value) == ("e1", ["demo_model-1"], "READY")
    assert len(s.mutating_calls()) == 4


def test_a_rollout_with_serving_moves_the_endpoints_traffic_step_by_step(make_home, standin, monkeypatch, tmp_path, capsys):
    "`mlops-nb rollout --serving`: the endpoint is deployed before the first step and after each row: 50/50, 0/100, then the new champion alone."
    import mlflow
    home = make_home("rollout-serving")
    standin_environ(monkeypatch, standin, tmp_path, home)
    client = mlflow.MlflowClient(tracking_uri=home.tracking_uri, registry_uri=home.tracking_uri)
    client.create_registered_model(MODEL)
    for _ in range(2): client.create_model_version(MODEL, source=str(tmp_path))
    client.set_registered_model_alias(MODEL, "champion", "1")
    client.set_registered_model_alias(MODEL, "challenger", "2")
    client.set_model_version_tag(MODEL, "2", "model_validation_status", "PASSED")
    standin.ready_after_polls = 1

    assert main(["rollout", "--env", "dev", "--steps", "10,100", "--serving", "--min-hours", "0", "--serving-timeout", "30"]) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    [create] = posted(standin)
    routes = lambda body: {r["served_entity_name"]: r["traffic_percentage"] for r in body["traffic_config"]["routes"]}
    assert routes(create["config"]) == {"demo_model-1": 100}                     # before the first step: the champion alone
    assert [routes(u) for u in posted(standin, "/config")] == [
        {"demo_model-1": 90, "demo_model-2": 10}, {"demo_model-1": 0, "demo_model-2": 100}, {"demo_model-2": 100}]   # two steps, then the promotion
    assert served(standin) == {"demo_model-2": (MODEL, "2", "Small", True, 100)}
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "2"
    assert out.count(f"serving endpoint {EP} is ready") == 4 and TOKEN not in out

    assert main(["rollout", "--env", "dev", "--serving-timeout", "30"]) == 2      # the endpoint's options without --serving
    assert "go with --serving" in capsys.readouterr().err
