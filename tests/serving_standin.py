"""Hand-written (not a notebook): the Model Serving part of the Databricks API stand-in (tests/databricks_standin.py mixes it in)."""
# What mlops_nb.serving_endpoint calls, as databricks-sdk's ServingEndpointsAPI sends it:
#   GET  /api/2.0/serving-endpoints                  list
#   POST /api/2.0/serving-endpoints                  create (409 RESOURCE_ALREADY_EXISTS when the name is taken)
#   GET  /api/2.0/serving-endpoints/{name}           get (404 RESOURCE_DOES_NOT_EXIST); each get of an updating endpoint is a poll
#   PUT  /api/2.0/serving-endpoints/{name}/config    update the served entities and routes (409 while an update is in progress)
#   PUT  /api/2.0/serving-endpoints/{name}/ai-gateway  the AI gateway (its inference table)
# A create or a config update leaves the endpoint's config_update IN_PROGRESS (the new config as pending_config); the
# `ready_after_polls`-th get after it finishes the update: the pending config becomes the config (config_version + 1),
# the endpoint READY and NOT_UPDATING; or, when `update_result` is "UPDATE_FAILED", the update fails and the old config
# stays. `ready_after_polls = None` never finishes an update (to test the ready timeout).
from __future__ import annotations
import copy, re, time

__all__ = ["ServingEndpointsStandin"]

_SIZES = ("Small", "Medium", "Large")


class ServingEndpointsStandin:
    "The serving endpoints API over `self.endpoints` ({name: endpoint}); needs `ApiError` from the stand-in and its `_ids`."

    ready_after_polls: int | None = 2   # gets of an updating endpoint until its update ends
    update_result: str = "NOT_UPDATING" # how an update ends: NOT_UPDATING (success) or UPDATE_FAILED

    def _serving_reset(self):
        self.endpoints = {}

    def _serving_route(self, method, path, body, error):
        m = re.fullmatch(r"/api/2\.0/serving-endpoints(?:/([^/]+))?(/config|/ai-gateway)?", path)
        name, sub = (m[1], m[2]) if m else (None, "?")
        if m and name is None:
            if method == "GET": return {"endpoints": [self._endpoint_summary(e) for e in self.endpoints.values()]}
            if method == "POST": return self._endpoint_create(body, error)
        elif m:
            ep = self.endpoints.get(name)
            if ep is None: raise error(404, f"Serving endpoint with name '{name}' does not exist.", "RESOURCE_DOES_NOT_EXIST")
            if method == "GET" and sub is None: return self._endpoint_get(ep)
            if method == "PUT" and sub == "/config": return self._endpoint_update(ep, body, error)
            if method == "PUT" and sub == "/ai-gateway": return self._endpoint_ai_gateway(ep, body)
        raise error(404, f"No API found for '{method} {path}'", "ENDPOINT_NOT_FOUND")

    # -- checks -------------------------------------------------------------------------------------------
    def _check_config(self, c, error) -> dict:
        "The config as stored (served entities with their state), or an ApiError (400) for what the API refuses."
        ents = c.get("served_entities") or []
        if not ents: raise error(400, "The config must have at least one served entity.")
        for e in ents:
            for k in ("entity_name", "entity_version", "workload_size"):
                if not e.get(k): raise error(400, f"Missing required field: served_entities.{k}")
            if e["workload_size"] not in _SIZES: raise error(400, f"Invalid workload_size {e['workload_size']!r}: expected one of {', '.join(_SIZES)}")
            if not isinstance(e.get("scale_to_zero_enabled"), bool): raise error(400, "Missing required field: served_entities.scale_to_zero_enabled")
            e.setdefault("name", f"{e['entity_name'].rsplit('.', 1)[-1]}-{e['entity_version']}")
        names = [e["name"] for e in ents]
        if len(set(names)) < len(names): raise error(400, f"Served entity names must be unique, found {names}")
        routes = (c.get("traffic_config") or {}).get("routes")
        if routes is None: routes = [{"served_entity_name": names[0], "traffic_percentage": 100}] if len(ents) == 1 else None
        if routes is None: raise error(400, "traffic_config is required with more than one served entity")
        for r in routes:
            if r.get("served_entity_name") not in names: raise error(400, f"Route names {r.get('served_entity_name')!r}, which is not a served entity")
            if not 0 <= r.get("traffic_percentage", -1) <= 100: raise error(400, "traffic_percentage must be from 0 to 100")
        if sum(r["traffic_percentage"] for r in routes) != 100: raise error(400, "The traffic percentages must sum to 100")
        return {"served_entities": [dict(e, state={"deployment": "DEPLOYMENT_CREATING"}) for e in ents], "traffic_config": {"routes": routes}}

    # -- calls --------------------------------------------------------------------------------------------
    def _endpoint_create(self, b, error):
        name = b.get("name") or ""
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name): raise error(400, f"Invalid endpoint name {name!r}: use letters, digits, - and _")
        if name in self.endpoints: raise error(409, f"Endpoint with name '{name}' already exists.", "RESOURCE_ALREADY_EXISTS")
        pending = self._check_config(copy.deepcopy(b.get("config") or {}), error)
        now = int(time.time() * 1000)
        self.endpoints[name] = ep = dict(name=name, id=f"ep{next(self._ids)}", creator="ci@example.org", creation_timestamp=now,
                                         last_updated_timestamp=now, state=dict(ready="NOT_READY", config_update="IN_PROGRESS"),
                                         _config=None, _pending=dict(pending, config_version=1), _polls=0)
        if b.get("ai_gateway"): ep["ai_gateway"] = copy.deepcopy(b["ai_gateway"])
        return self._endpoint_view(ep)

    def _endpoint_update(self, ep, b, error):
        if ep["state"]["config_update"] == "IN_PROGRESS":
            raise error(409, f"Endpoint {ep['name']} is currently being updated; wait for the update to finish.", "RESOURCE_CONFLICT")
        pending = self._check_config(copy.deepcopy(b), error)
        version = (ep["_config"] or {}).get("config_version", 0) + 1
        ep.update(_pending=dict(pending, config_version=version), _polls=0, last_updated_timestamp=int(time.time() * 1000))
        ep["state"]["config_update"] = "IN_PROGRESS"
        return self._endpoint_view(ep)

    def _endpoint_ai_gateway(self, ep, b):
        ep["ai_gateway"] = copy.deepcopy(b)
        return copy.deepcopy(b)

    def _endpoint_get(self, ep):
        if ep["state"]["config_update"] == "IN_PROGRESS":
            ep["_polls"] += 1
            if self.ready_after_polls is not None and ep["_polls"] >= self.ready_after_polls:
                if self.update_result == "UPDATE_FAILED":
                    ep["state"]["config_update"] = "UPDATE_FAILED"
                    for e in ep["_pending"]["served_entities"]:
                        e["state"] = {"deployment": "DEPLOYMENT_FAILED", "deployment_state_message": "injected: the container image failed to build"}
                    ep["_failed"], ep["_pending"] = ep["_pending"], None
                else:
                    for e in ep["_pending"]["served_entities"]: e["state"] = {"deployment": "DEPLOYMENT_READY"}
                    ep.update(_config=ep["_pending"], _pending=None)
                    ep["state"] = dict(ready="READY", config_update="NOT_UPDATING")
        return self._endpoint_view(ep)

    # -- views --------------------------------------------------------------------------------------------
    def _endpoint_view(self, ep) -> dict:
        out = {k: copy.deepcopy(v) for k, v in ep.items() if not k.startswith("_")}
        if ep["_config"]: out["config"] = copy.deepcopy(ep["_config"])
        if ep["_pending"]: out["pending_config"] = dict(copy.deepcopy(ep["_pending"]), start_time=ep["last_updated_timestamp"])
        return out

    def _endpoint_summary(self, ep) -> dict:
        v = self._endpoint_view(ep)
        c = v.pop("config", None)
        v.pop("pending_config", None)
        if c: v["config"] = {"config_version": c["config_version"], "served_entities": [{"name": e["name"]} for e in c["served_entities"]]}
        return v
