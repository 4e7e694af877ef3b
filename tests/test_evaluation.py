"""Issue 4: validation, champion/challenger promotion by a paired bootstrap, manual approval and rollback.

The bootstrap is checked against scikit-learn on the same resamples. The registry flows train real models and
evaluate them in this process (real MLflow on SQLite, real Delta tables); approval and rollback go through the
`mlops-nb` CLI, and one real score run (papermill + Spark) shows that the rolled-back model is the one used.
"""
from __future__ import annotations
import json
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mlops_nb.core import DataError, ParameterError
from mlops_nb.bootstrap import bootstrap_auc, bootstrap_resamples, paired_bootstrap_auc, compare_auc
from evaluation_helpers import WEAK, STRONG, pointed_at, write_data, train, evaluate, client, alias

DEV, PROD = "dev.mlops_nb.demo_model", "prod.mlops_nb.demo_model"


# --- the bootstrap -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ties", [False, True])
def test_bootstrap_agrees_with_sklearn_on_the_same_resamples(ties):
    rng = np.random.default_rng(11)
    y = (rng.random(3000) < 0.25).astype(int)
    a, b = rng.normal(0, 1, 3000) + y, rng.normal(0, 1, 3000) + 0.5*y
    if ties: a, b = np.round(a, 1), np.round(b, 0)
    da, db = paired_bootstrap_auc(y, a, b, n_boot=60, seed=5)
    rows = list(bootstrap_resamples(y, a, n_boot=60, seed=5))
    assert len(rows) == 60 and len({r.tobytes() for r in rows}) == 60
    assert max(abs(da[k] - roc_auc_score(y[r], a[r])) for k, r in enumerate(rows)) <= 1e-12
    assert max(abs(db[k] - roc_auc_score(y[r], b[r])) for k, r in enumerate(rows)) <= 1e-12
    np.testing.assert_array_equal(bootstrap_auc(y, a, n_boot=60, seed=5), da)  # A's draws are bootstrap_auc's


def test_same_seed_same_result_other_seed_other_result():
    rng = np.random.default_rng(2)
    y, s = rng.integers(0, 2, 500), rng.random(500)
    np.testing.assert_array_equal(bootstrap_auc(y, s, 100, seed=9), bootstrap_auc(y, s, 100, seed=9))
    assert not np.array_equal(bootstrap_auc(y, s, 100, seed=9), bootstrap_auc(y, s, 100, seed=10))
    c1, c2 = compare_auc(y, s, s[::-1].copy(), n_boot=100, seed=4), compare_auc(y, s, s[::-1].copy(), n_boot=100, seed=4)
    assert c1.record() == c2.record()


def test_single_class_resamples_are_redrawn_and_counted():
    y = np.zeros(40, int); y[0] = 1        # one positive in 40: about 36% of resamples miss it
    d = bootstrap_auc(y, np.linspace(0, 1, 40), n_boot=200, seed=1)
    assert len(d) == 200 and np.isfinite(d).all()
    assert 40 < d.redrawn < 250             # counted, not filled in


@pytest.mark.parametrize("y, s, message", [
    ([], [], "the held-out set is empty"),
    ([1, 1, 1, 1], [0.1, 0.2, 0.3, 0.4], "expected two classes, found 1"),
    ([0, 1, 0], [0.1, 0.2], "expected 3 scores"),
    ([0, 1], [0.1, np.inf], "non-finite"),
])
def test_bad_input_is_a_clear_data_error(y, s, message):
    with pytest.raises(DataError, match=message): bootstrap_auc(y, s)


def test_bad_n_boot_is_a_parameter_error():
    with pytest.raises(ParameterError, match="n_boot: expected a whole number"): bootstrap_auc([0, 1], [0.2, 0.8], n_boot=-5)


# --- validation, comparison, promotion (dev: no approval needed) -------------------------------------------
@pytest.fixture(scope="module")
def dev_lab(make_home):
    "dev: a dummy (fails), a weak model (first champion, vs baseline), a strong one failing a slice floor, the strong one."
    home = make_home("eval-dev")
    out = {"home": home}
    with pointed_at(home.path, MLOPS_NB_USER="ci-bot"):
        write_data("dev")
        out["dummy"] = train("dev", "dummy");          out["d_dummy"] = evaluate("dev")
        out["weak"] = train("dev", **WEAK);            out["d_weak"] = evaluate("dev")
        out["sliced"] = train("dev", **STRONG);        out["d_sliced"] = evaluate("dev", slice_floors={"plan": 0.99, "region": 0.5})
        out["strong"] = train("dev", **STRONG);        out["d_strong"] = evaluate("dev")
        out["again"] = train("dev", **STRONG);         out["d_again"] = evaluate("dev")
        out["tags"] = {str(v.version): v.tags for v in client().search_model_versions(f"name='{DEV}'")}
        out["descriptions"] = {str(v.version): v.description for v in client().search_model_versions(f"name='{DEV}'")}
        out["aliases"] = {a: alias(DEV, a) for a in ("champion", "challenger")}
    return out


def test_a_dummy_model_fails_validation_and_never_gets_an_alias(dev_lab):
    d, tags = dev_lab["d_dummy"], dev_lab["tags"][dev_lab["dummy"]]
    assert d.outcome == "none" and not d.promoted and d.champion_after is None
    assert tags["model_validation_status"] == "FAILED" and "predictions" in tags["validation_failures"].split(",")
    assert tags["candidate"] == "false"
    assert "constant model" in json.dumps(d.candidates)
    # the refused version keeps why, where its model page shows it (a tag and its description), though it has no alias
    assert tags["evaluation_reason"].startswith("refused, failed validation (predictions: ") and "constant model" in tags["evaluation_reason"]
    with pointed_at(dev_lab["home"].path):
        desc = client().get_model_version(DEV, dev_lab["dummy"]).description
    assert desc.startswith("dummy trained by job run ") and f"evaluate run {d.mlflow_run_id}: validation FAILED; refused, failed validation" in desc


def test_every_judged_version_records_the_verdict(dev_lab):
    for key in ("weak", "strong"):
        t = dev_lab["tags"][dev_lab[key]]
        assert t["evaluation_reason"].startswith("promote: ") and "win" in t["evaluation_reason"], t["evaluation_reason"]
    sliced = dev_lab["tags"][dev_lab["sliced"]]["evaluation_reason"]
    assert sliced.startswith("refused, failed validation (") and "slice" in sliced, sliced
    # the model page shows the description whole: its validation status and verdict are there, not only in the tag box
    assert "validation PASSED; promote: " in dev_lab["descriptions"][dev_lab["strong"]]


def test_a_model_version_keeps_its_tags_few_and_its_lineage_whole(dev_lab):
    for v, t in dev_lab["tags"].items():
        assert len(t) <= 20 and not any(k.startswith("infra.") for k in t), (v, sorted(t))
        grouped = json.loads(t["lineage"])   # the rest of the train run's lineage, in one tag
        assert {"environment_hash", "python", "data_rows"} <= set(grouped) and grouped["infrastructure"]["cpu_count"], grouped
        assert {"GIT_SHA", "MLFLOW_RUN_ID", "DBR_RUN_ID", "env", "data_table", "data_version", "data_fingerprint"} <= set(t)


def test_the_first_champion_is_compared_with_the_baseline_auc(dev_lab):
    d = dev_lab["d_weak"]
    assert d.promoted and d.champion_before is None and d.champion_after == dev_lab["weak"]
    assert d.compared["against"] == "baseline" and d.compared["champion_auc"] == 0.5
    assert d.compared["win_rate"] >= 0.9 and d.compared["n_boot"] == 200


def test_a_failed_validation_blocks_promotion(dev_lab):
    d, v = dev_lab["d_sliced"], dev_lab["sliced"]
    tags = dev_lab["tags"][v]
    assert tags["model_validation_status"] == "FAILED" and tags["validation_failures"] == "slices"
    assert not d.promoted and d.champion_after == dev_lab["weak"] and d.challenger is None
    rec = d.candidates[0]
    slices = next(c for c in rec["checks"] if c["name"] == "slices")
    assert "below 0.99" in slices["detail"] and set(rec["slices"]["region"]) >= {"north", "south", "east", "west"}
    assert v not in dev_lab["aliases"].values()


def test_a_clearly_better_challenger_is_promoted_and_the_decision_is_recorded(dev_lab):
    d = dev_lab["d_strong"]
    assert d.promoted and d.outcome == "promote"
    assert (d.champion_before, d.champion_after) == (dev_lab["weak"], dev_lab["strong"])
    c = d.compared
    assert c["against"] == "champion" and c["challenger_auc"] > c["champion_auc"] + 0.05
    assert c["win_rate"] >= 0.9 and c["diff_ci95"][0] > 0 and c["rows"] > 500
    with pointed_at(dev_lab["home"].path):
        cl = client()
        run = cl.get_run(d.mlflow_run_id)
        assert run.data.metrics["win_rate"] == c["win_rate"] and run.data.tags["output.promoted"] == "true"
        # stable metric names, the versions as params: runs compare on one metric whatever versions they judged
        assert {"challenger_auc", "champion_auc", "auc_diff", "win_rate", "candidate_auc"} <= set(run.data.metrics)
        assert not [k for k in run.data.metrics if k.startswith("v") and k[1].isdigit()], run.data.metrics
        assert (run.data.params["challenger_version"], run.data.params["champion_version"]) == (dev_lab["strong"], dev_lab["weak"])
        hist = cl.get_metric_history(d.mlflow_run_id, "candidate_auc")
        assert dev_lab["strong"] in {str(m.step) for m in hist}
        arts = {f.path for f in cl.list_artifacts(d.mlflow_run_id, "evaluation")}
        assert arts >= {"evaluation/decision.json", "evaluation/bootstrap_auc.png", "evaluation/roc.png"}
        rec = json.loads(open(cl.download_artifacts(d.mlflow_run_id, "evaluation/decision.json")).read())
        assert rec["outcome"] == "promote" and rec["rule"].startswith("promote the best passing candidate")
        assert rec["compared"]["challenger"] == dev_lab["strong"] and "wins" in rec["reason"]
        assert {f.path for f in cl.list_artifacts(d.mlflow_run_id, "validation")} == {f"validation/version_{dev_lab['strong']}.json"}


def test_a_copy_of_the_champion_is_not_promoted_and_candidates_are_cleared(dev_lab):
    d, tags = dev_lab["d_again"], dev_lab["tags"]
    assert d.outcome == "reject" and d.compared["win_rate"] == 0.0 and d.champion_after == dev_lab["strong"]
    assert dev_lab["aliases"] == {"champion": dev_lab["strong"], "challenger": None}
    assert all(t["candidate"] == "false" for t in tags.values())


def test_the_run_summary_says_what_was_decided_and_why(dev_lab):
    "`mlops-nb run`'s decision line, from each decision record of the lab (in process: no pipeline run)."
    from dataclasses import asdict
    from mlops_nb.decisions import decision_summary
    say = lambda d: decision_summary(asdict(d), "dev", 0.9)
    s = say(dev_lab["d_dummy"])
    assert s["outcome"] == "none" and s["refused"][0]["version"] == dev_lab["dummy"]
    assert "predictions" in [f["check"] for f in s["refused"][0]["failed"]]
    assert s["summary"].startswith(f"no candidate passed validation; champion stays version none; refused version {dev_lab['dummy']} (failed ")
    s = say(dev_lab["d_sliced"])
    assert f"refused version {dev_lab['sliced']} (failed slices: " in s["summary"] and "below 0.99" in s["summary"]
    s = say(dev_lab["d_strong"])
    assert s["summary"].startswith(f"promoted version {dev_lab['strong']} to champion: it won ") and f"champion version {dev_lab['weak']} (90% required)" in s["summary"]
    s = say(dev_lab["d_again"])
    assert s["summary"].startswith(f"kept champion version {dev_lab['strong']}: challenger version {dev_lab['again']} lost the comparison: it won 0.0% of 200")
    assert "AUC difference +0.0000" in s["summary"] and s["win_rate"] == 0.0


# --- rollback through the CLI, then a real score run ---------------------------------------------------------
def test_rollback_restores_the_previous_champion_and_the_next_score_uses_it(dev_lab):
    home = dev_lab["home"]
    r = home.cli("rollback", "--env", "dev", "--reason", "complaints about batch 7", "--json", env={"MLOPS_NB_USER": "grace"})
    assert r.returncode == 0, str(r)
    row = r.json()
    assert (row["from_version"], row["to_version"], row["action"], row["user"]) == (dev_lab["strong"], dev_lab["weak"], "rollback", "grace")
    assert row["reason"] == "complaints about batch 7" and row["moved_at"]
    hist = home.cli("champions", "--env", "dev", "--json").json()
    assert [(h["action"], h["from_version"], h["to_version"], h["user"]) for h in hist] == [
        ("promote", "", dev_lab["weak"], "ci-bot"), ("promote", dev_lab["weak"], dev_lab["strong"], "ci-bot"),
        ("rollback", dev_lab["strong"], dev_lab["weak"], "grace")]
    s = home.cli("run", "--env", "dev", "--steps", "score", "--json")
    assert s.returncode == 0, str(s)
    preds = home.read_table("dev.mlops_nb.predictions").data
    assert set(preds.model_version) == {dev_lab["weak"]} and len(preds) == 300


def test_rollback_refuses_failed_unknown_and_deleted_versions(dev_lab):
    home = dev_lab["home"]
    r = home.cli("rollback", "--env", "dev", "--version", dev_lab["sliced"])
    assert r.returncode == 1 and "FAILED validation (slices)" in r.stderr, str(r)
    r = home.cli("rollback", "--env", "dev", "--version", "99")
    assert r.returncode == 1 and "has no version 99" in r.stderr, str(r)
    with pointed_at(home.path): client().delete_model_version(DEV, dev_lab["again"])
    r = home.cli("rollback", "--env", "dev", "--version", dev_lab["again"])
    assert r.returncode == 1 and f"has no version {dev_lab['again']} (it was deleted" in r.stderr, str(r)
    r = home.cli("rollback", "--env", "dev", "--mlflow-run-id", "0"*32)
    assert r.returncode == 1 and "no version of dev.mlops_nb.demo_model was registered from MLflow run" in r.stderr, str(r)
    r = home.cli("promote", "--env", "dev", "--version", "x")
    assert r.returncode == 2 and "--version: expected a version number" in r.stderr, str(r)


def test_rollback_by_mlflow_run_id(dev_lab):
    home = dev_lab["home"]
    with pointed_at(home.path): run_id, champion = client().get_model_version(DEV, dev_lab["strong"]).run_id, alias(DEV, "champion")
    if champion == dev_lab["strong"]:  # set-up when run alone: the rollback test before it leaves the weak one champion
        r = home.cli("rollback", "--env", "dev", "--version", dev_lab["weak"])
        assert r.returncode == 0, str(r)
    r = home.cli("rollback", "--env", "dev", "--mlflow-run-id", run_id, "--json")
    assert r.returncode == 0 and r.json()["to_version"] == dev_lab["strong"], str(r)
    with pointed_at(home.path): assert alias(DEV, "champion") == dev_lab["strong"]


# --- prod: approval ------------------------------------------------------------------------------------------
def test_prod_stops_at_challenger_until_promote(make_home):
    home = make_home("eval-prod")
    with pointed_at(home.path):
        write_data("prod")
        v = train("prod", **STRONG)
        d = evaluate("prod")
        assert d.outcome == "await_approval" and not d.promoted and "requires approval" in d.reason
        assert (alias(PROD, "champion"), alias(PROD, "challenger")) == (None, v)
        from dataclasses import asdict
        from mlops_nb.config import load_config
        from mlops_nb.decisions import decision_summary
        s = decision_summary(asdict(d), "prod", load_config("prod").promote_win_rate)
        assert s["promote_command"] == f"mlops-nb promote --env prod --version {v}"
        assert s["summary"].startswith(f"stopped version {v} at challenger because env prod requires approval (it won ")
        assert s["summary"].endswith(f"; to promote it run: mlops-nb promote --env prod --version {v}")
    r = home.cli("promote", "--env", "prod", "--json", env={"MLOPS_NB_USER": "alice"})
    assert r.returncode == 0, str(r)
    assert (r.json()["to_version"], r.json()["user"], r.json()["reason"]) == (v, "alice", "manual approval")
    with pointed_at(home.path):
        assert (alias(PROD, "champion"), alias(PROD, "challenger")) == (v, None)
        tags = client().get_model_version(PROD, v).tags
        assert tags["approval_status"] == "APPROVED" and tags["approved_by"] == "alice" and tags["approved_at"]
    r = home.cli("promote", "--env", "prod")
    assert r.returncode == 1 and "no challenger awaiting approval" in r.stderr, str(r)
    r = home.cli("rollback", "--env", "prod")
    assert r.returncode == 1 and "no previous champion" in r.stderr, str(r)
