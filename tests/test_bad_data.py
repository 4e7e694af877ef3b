"""Bad training data and broken tables, caught up front (issue 12, items 8 and 9): one line naming the column or
the table and version, the right exit code, and nothing written (no model version, no predictions, no new Delta
version, at most the one FAILED MLflow run the README documents)."""
from __future__ import annotations
import os
from pathlib import Path
import numpy as np, pytest
from conftest import PREDICTIONS, SCORING, TRAINING, copy_tables

BAD_PREFIX = "dev.mlops_nb.bad_training_"  # each case spoils a table of its own in the shared home


def one_error_line(r, command="run", only_line=True) -> str:
    "The one `mlops-nb <command>: error:` line (no traceback, no Rust backtrace); with only_line, all of stderr."
    assert "Traceback" not in r.stderr + r.stdout and "<unknown>" not in r.stderr, str(r)
    errors = r.error_lines()
    assert len(errors) == 1, str(r)
    assert errors[0].startswith(f"mlops-nb {command}: error: ")
    if only_line: assert r.stderr.strip().splitlines() == errors, str(r)
    return errors[0]


def delta_versions(home, *names) -> dict:
    "{table: latest commit} of the tables that exist (from their _delta_log; readable or not)."
    out = {}
    for n in names:
        log = home.table_path(n)/"_delta_log"
        if log.is_dir(): out[n] = max(int(p.name[:20]) for p in log.glob("*.json"))
    return out


def all_runs(home) -> list:
    "Every MLflow run of the dev experiment (none when MLflow was never used)."
    if not home.db.is_file(): return []
    exp = home.client().get_experiment_by_name("/Shared/mlops-nb/dev")
    return [] if exp is None else home.client().search_runs([exp.experiment_id])


def assert_nothing_written(home, before: dict, job: dict = None, failed_step: str = None):
    "No model version, no predictions table, no new Delta version; only the failed step's FAILED run, if any."
    assert home.model_versions() == [], [f"{v.name} v{v.version}" for v in home.model_versions()]
    assert not home.table_path(PREDICTIONS).exists()
    assert delta_versions(home, *before) == before
    if job is not None:
        runs = home.runs_of_job(job["job_run_id"])
        assert [(x.data.tags["task_key"], x.info.status) for x in runs] == [(failed_step, "FAILED")]


# --- item 8: the training table is checked before anything is fitted or logged ------------------------------

@pytest.fixture(scope="module")
def bad_home(make_home):
    "One home with the demo tables (2000 rows) for every bad-training case: each spoils a table of its own, all fail."
    home = make_home("bad-training")
    home.demo_data(rows=2000)
    return home


@pytest.fixture(scope="module")
def pristine_tables(make_home):
    "A home folder with the demo tables (1000 rows), written once here: each broken-table case damages a copy."
    home = make_home("pristine")
    home.demo_data(rows=1000)
    return home.path


def _strings_in_numeric(df):
    df["age"] = df.age.astype(str)
    df.loc[::97, "age"] = "unknown"
    return df

def _all_null(df):
    df["income"] = np.nan
    return df

def _infinity(df):
    df.loc[[3, 10], "balance"] = np.inf
    return df

def _overflow(df):  # logreg's scaler squares these: before the check, "Input X contains NaN" deep in scikit-learn
    df.loc[::2, "balance"] = 1e300
    return df

def _three_classes(df):
    df["label"] = df.id % 3
    return df

BAD_TRAINING = [  # (id, how the demo table is spoiled, extra params, words the error line must contain)
    ("strings-in-numeric", _strings_in_numeric, [], ["column age: numbers stored as strings", "'unknown'", "cast it to a number type"]),
    ("all-null-feature", _all_null, [], ["column income has no values (all 2000 are null)", "features="]),
    ("infinity", _infinity, [], ["column balance has 2 infinite value(s)"]),
    ("overflow-logreg", _overflow, ["--param", "model_type=logreg"], ["column balance: values too large to scale", "model_type=hgb"]),
    ("three-classes", _three_classes, [], ["label 'label': expected two classes (0 and 1), found 3: [0, 1, 2]",
                                           "encode the positive class as 1"]),
]


@pytest.mark.parametrize("case, spoil, extra, words", BAD_TRAINING, ids=[c[0] for c in BAD_TRAINING])
def test_bad_training_data_fails_train_naming_the_column(bad_home, case, spoil, extra, words):
    home, bad = bad_home, f"{BAD_PREFIX}{case.replace('-', '_')}"
    home.write_table(spoil(home.read_table(TRAINING).data), bad)
    before = delta_versions(home, TRAINING, SCORING, bad)
    r = home.cli("run", "--json", "--steps", "train,evaluate,score", "--param", f"training_table={bad}", *extra)
    assert r.returncode == 1, str(r)
    line = one_error_line(r, only_line=False)  # the progress lines come first
    assert r.stderr.strip().splitlines()[-1] == line
    assert f"table {bad}@0 cannot be trained on: " in line and "no model was trained or registered" in line
    for w in words: assert w in line, (w, line)
    assert "one class" not in line  # a label with three values is not "one class"
    j = r.json()
    assert [(s["name"], s["status"]) for s in j["steps"]] == [("train", "FAILED"), ("evaluate", "SKIPPED"), ("score", "SKIPPED")]
    assert_nothing_written(home, before, j, "train")


def test_every_problem_is_listed_and_explore_stops_the_pipeline(bad_home):
    "The default steps: explore checks the table first (what no model type can take), so train never runs."
    home, bad = bad_home, f"{BAD_PREFIX}everything"
    df = _three_classes(_infinity(_all_null(_strings_in_numeric(home.read_table(TRAINING).data))))
    home.write_table(df, bad)
    before = delta_versions(home, TRAINING, SCORING, bad)
    r = home.cli("run", "--json", "--param", f"training_table={bad}")
    assert r.returncode == 1, str(r)
    line = one_error_line(r, only_line=False)
    assert "notebook explore.ipynb" in line
    parts = ["column income has no values", "column balance has 2 infinite value(s)", "column age: numbers stored as strings",
             "label 'label': expected two classes (0 and 1), found 3"]
    assert all(p in line for p in parts), line
    assert [line.index(p) for p in parts] == sorted(line.index(p) for p in parts)  # one line, in column order
    j = r.json()
    assert [(s["name"], s["status"]) for s in j["steps"]] == [("explore", "FAILED"), ("train", "SKIPPED"),
                                                              ("evaluate", "SKIPPED"), ("score", "SKIPPED")]
    assert_nothing_written(home, before, j, "explore")


# --- item 9: broken tables, caught by the runner's up-front check before any step or write -------------------

def _garble_latest_commit(home, name):
    log = home.table_path(name)/"_delta_log"
    latest = max(log.glob("*.json"))
    latest.write_text('{"commitInfo": {garbage')
    return int(latest.name[:20])

def _delete_a_data_file(home, name):
    files = sorted(home.table_path(name).glob("*.parquet"))
    assert files, name
    files[0].unlink()
    return files[0].name


@pytest.mark.parametrize("damage", ["garbled-log", "missing-file"])
@pytest.mark.parametrize("table, steps", [(TRAINING, "explore,train,evaluate,score"), (SCORING, "score")],
                         ids=["training", "scoring"])
def test_broken_table_is_one_line_before_any_step(home, pristine_tables, damage, table, steps):
    copy_tables(pristine_tables, home)
    if damage == "garbled-log": version, what = _garble_latest_commit(home, table), "its Delta log is damaged (Kernel error: Json error"
    else: version, what = 0, f"1 data file(s) its Delta log lists are missing ({_delete_a_data_file(home, table)} under"
    before = delta_versions(home, TRAINING, SCORING)
    r = home.cli("run", "--json", "--steps", steps)
    assert r.returncode == 1, str(r)
    line = one_error_line(r)  # the only line: no progress, no job run started
    assert line.startswith(f"mlops-nb run: error: table {table} version {version} cannot be read: {what}"), line
    assert str(home.table_path(table)) in line and ("restore" in line and "mlops-nb demo-data" in line)
    assert r.stdout == ""
    assert not (home.path/"runs").exists() or list((home.path/"runs").iterdir()) == []
    assert_nothing_written(home, before)
    assert all_runs(home) == []


def test_missing_file_mended_by_rewriting_and_garbled_log_refuses_writes(home):
    "The messages' advice holds: demo-data rewrites a table that lost a file; a damaged log refuses writes in one line."
    home.demo_data(rows=1000)
    _delete_a_data_file(home, TRAINING)
    home.demo_data(rows=1000)  # overwrite: the new version no longer needs the lost file
    assert len(home.read_table(TRAINING).data) == 1000
    version = _garble_latest_commit(home, SCORING)
    r = home.cli("demo-data", "--rows", 1000)
    assert r.returncode == 1, str(r)
    line = one_error_line(r, "demo-data", only_line=False)
    assert f"table {SCORING} version {version} cannot be written: its Delta log is damaged" in line
    assert f"move {home.table_path(SCORING)} away" in line


def test_damaged_predictions_table_stops_score_before_it_writes(champion_home, spark):
    "The predictions table is read (ids already written) and appended to: a damaged one is caught up front, and trace says so."
    from scoring_helpers import CONTEXT, home_environ
    from mlops_nb.config import load_config
    from mlops_nb.context import resolve_context
    from mlops_nb.scoring import score_table
    home = champion_home
    with home_environ(home.path):  # the predictions, scored in this process on its one Spark session (no kernel needed)
        assert score_table(resolve_context(run_id="local-20260101T000000-000001", **CONTEXT), load_config("dev")).rows > 0
    pid = home.read_table(PREDICTIONS).data.prediction_id.iloc[0]
    lost = sorted(home.table_path(PREDICTIONS).glob("*.parquet"))[0]
    lost.rename(lost.with_suffix(".away"))
    try:
        before = delta_versions(home, SCORING, PREDICTIONS)
        runs_before = len(all_runs(home))
        r = home.cli("run", "--json", "--steps", "score")
        assert r.returncode == 1, str(r)
        line = one_error_line(r)
        assert line.startswith(f"mlops-nb run: error: table {PREDICTIONS} version {before[PREDICTIONS]} cannot be read: "
                               f"1 data file(s) its Delta log lists are missing ({lost.name} under"), line
        assert delta_versions(home, SCORING, PREDICTIONS) == before
        assert len(all_runs(home)) == runs_before  # no step ran
        t = home.cli("trace", pid)
        assert t.returncode == 1, str(t)
        assert f"table {PREDICTIONS} version {before[PREDICTIONS]} cannot be read" in one_error_line(t, "trace", only_line=False)
    finally: lost.with_suffix(".away").rename(lost)


# --- item 9: an empty scoring batch scores nothing and says so -----------------------------------------------

@pytest.fixture(scope="module")
def champion_home(make_home):
    "A home with demo data and a logreg champion (trained in this process: no kernel needed)."
    from scoring_helpers import home_environ, make_champion
    home = make_home("champion")
    with home_environ(home.path): make_champion(rows=2000)
    return home


def test_empty_scoring_batch_scores_nothing_and_says_so(champion_home):
    home = champion_home
    empty = "dev.mlops_nb.empty_batch"
    home.write_table(home.read_table(SCORING).data.head(0), empty)
    before = delta_versions(home, empty, PREDICTIONS)
    r = home.cli("run", "--json", "--steps", "score", "--param", f"scoring_table={empty}")
    assert r.returncode == 0, str(r)
    assert "UNABLE_TO_INFER_SCHEMA" not in r.stderr and r.error_lines() == []
    j = r.json()
    (score,) = j["steps"]
    assert score["status"] == "SUCCEEDED" and score["outputs"]["rows"] == "0"
    assert score["outputs"]["note"] == f"table {empty}@0 has no rows: nothing scored, no predictions written"
    assert "predictions_version" not in score["outputs"] and j["predictions"] == {}
    assert delta_versions(home, empty, PREDICTIONS) == before  # no predictions commit
    run = home.client().get_run(score["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.metrics["predictions_rows"] == 0
    nb = Path(score["output_notebook"]).read_text()
    assert f"nothing to score: {empty}@0 has no rows" in nb
