# mlops-nb: set-up is idempotent; `make demo` and `make test` create and reuse .venv themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_HOME ?= $(CURDIR)/.mlops-test
export PYSPARK_PYTHON := $(abspath $(BIN))/python
export SPARK_LOCAL_IP ?= 127.0.0.1
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false

.PHONY: help venv demo demo-drift test check-sync test-nbdev test-nbval test-pytest notebooks bench clean reset-demo lab

help:
	@echo "make demo   set up .venv, write demo data, run the whole pipeline (explore, train, evaluate, score)"
	@echo "make demo-drift  the monitoring loop: days of drifting batches scored and monitored; an alert retrains (NO_DRIFT=1: none)"
	@echo "make test   set up .venv, check notebooks and module are in sync, then nbdev_test, nbval, pytest"
	@echo "make bench  run every benchmark script (bench/bench_*.py) and print its figures"
	@echo "make notebooks  re-execute the library notebooks (outputs nbval checks), clean and export them"
	@echo "make lab    JupyterLab on nbs/ with this repo's kernel and store (LAB_PORT, default 8888)"
	@echo "make clean  remove test and build leftovers; keeps the local store (.mlops) and .venv"
	@echo "make reset-demo  a fresh local store: remove the store, artifacts, tables and runs, write the demo tables"

# Re-install only when the requirements change (settings.ini / setup.py).
$(STAMP): settings.ini setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $@

venv: $(STAMP)

demo: venv
	$(BIN)/mlops-nb demo-data --env dev
	$(BIN)/mlops-nb run --env dev
	$(BIN)/mlops-nb monitor --env dev

# The monitoring loop in its own home (.mlops-drift): see tools/demo_drift.sh. NO_DRIFT=1 runs the same days without drift.
demo-drift: venv
	BIN=$(BIN) $(if $(NO_DRIFT),DRIFT_STEP=0) bash tools/demo_drift.sh

# Notebooks are the source: fail when nbdev_export would change mlops_nb/ or a notebook is not clean.
check-sync: venv
	@before=$$(find mlops_nb nbs -type f \( -name '*.py' -o -name '*.ipynb' \) -not -path '*/.ipynb_checkpoints/*' | sort | xargs sha256sum); \
	$(BIN)/nbdev_export && $(BIN)/nbdev_clean; \
	after=$$(find mlops_nb nbs -type f \( -name '*.py' -o -name '*.ipynb' \) -not -path '*/.ipynb_checkpoints/*' | sort | xargs sha256sum); \
	if [ "$$before" != "$$after" ]; then \
	  echo "FAIL: nbdev_export/nbdev_clean changed these files; the notebooks are the source: commit the result"; \
	  diff <(echo "$$before") <(echo "$$after") | grep '^[<>]' | awk '{print "  " $$3}' | sort -u; exit 1; \
	else echo "ok: mlops_nb/ matches nbs/ and every notebook is clean"; fi

# Each notebook cell runs no more often than its checks need. The library notebooks run under nbdev_test and nbval
# (strict), except the few heavy end-to-end cells marked `#| nbval_only` (settings.ini `tst_flags`), which nbval alone
# runs and checks. The pipeline notebooks run under nbval alone (a kernel, as Jupyter, papermill and a Databricks task
# run them), in pipeline order (train registers a candidate, evaluate promotes it, score uses the champion) against one
# seeded home holding the demo tables; pytest runs them again, through the runner, in every end-to-end test.
# The library notebooks make their own temporary homes; each check gives them an empty one besides.
PIPELINE_NBS := explore train evaluate score monitor
LOCK_HOME := flock $(TEST_HOME)/.lock
$(TEST_HOME)/.seeded: $(STAMP)
	rm -rf $(TEST_HOME)
	MLOPS_NB_HOME=$(TEST_HOME) $(BIN)/mlops-nb demo-data --env dev --rows 5000
	@touch $@

# The suites run several processes at once: one OpenMP thread each. scikit-learn's HistGradientBoosting spins its
# OpenMP threads; on a loaded 2-core machine five hgb fits took 24-50 s with the default threads and 1.3 s with one
# (test_evaluation's set-up went from 57 s to 843 s). Override with TEST_OMP_THREADS=N.
TEST_OMP_THREADS ?= 1
test-nbdev test-nbval test-pytest: export OMP_NUM_THREADS = $(TEST_OMP_THREADS)
# The suites start about twenty short-lived local Spark JVMs (every score step, the scoring notebooks and tests). A JVM's
# optimising JIT compiler spent half of each one's CPU on code that never ran long: a start and a small query took 30 s
# of CPU with the default tiered compilation, 15 s with the quick compiler alone. Only the tests' JVMs are started so
# (PySpark's own PYSPARK_SUBMIT_ARGS); a user's sessions and `make bench` keep the JVM's defaults. Override with
# TEST_JAVA_OPTIONS= (empty: the defaults).
TEST_JAVA_OPTIONS ?= -XX:TieredStopAtLevel=1 -XX:+UseSerialGC
test-nbdev test-nbval test-pytest: export PYSPARK_SUBMIT_ARGS = $(if $(strip $(TEST_JAVA_OPTIONS)),--driver-java-options "$(TEST_JAVA_OPTIONS)" pyspark-shell,pyspark-shell)

# Each part says when it finished, counted from the start of the parallel parts (TEST_START, seconds since the epoch,
# set by `make test`; a part run alone counts from its own start).
ifndef TEST_START
TEST_START := $(shell date +%s)
endif
took = @echo "$(1): done $$(( $$(date +%s) - $(TEST_START) )) s after the start"

# nbdev_test: the library notebooks (two workers).
test-nbdev: venv $(TEST_HOME)/.seeded
	MLOPS_NB_HOME=$(TEST_HOME)/library-nbdev $(BIN)/nbdev_test --n_workers 2 --path nbs --skip_folder_re '^(pipelines|[_.].*)$$'
	$(call took,test-nbdev)

# nbval runs numbered copies (nbdev_clean blanks execution counts; see tests/nbval_prepare.py): strict on the
# library notebooks (two workers, a kernel per notebook), lax with NBVAL_CHECK_OUTPUT cells on the pipeline
# notebooks (their runs differ in ids and times).
NBVAL := $(BIN)/pytest -q -p no:cacheprovider --nbval-current-env --nbval-sanitize-with nbs/nbval_sanitize.cfg
test-nbval: venv $(TEST_HOME)/.seeded
	$(BIN)/python tests/nbval_prepare.py nbs .nbval/nbs
	MLOPS_NB_HOME=$(TEST_HOME)/library-nbval $(NBVAL) -n 2 --dist loadfile --nbval .nbval/nbs/[0-9]*.ipynb
	MLOPS_NB_HOME=$(TEST_HOME) $(LOCK_HOME) $(NBVAL) --nbval-lax $(PIPELINE_NBS:%=.nbval/nbs/pipelines/%.ipynb)
	$(call took,test-nbval)

# pytest-xdist: each test module runs in one worker (its module fixtures are built once), modules in parallel.
PYTEST_WORKERS ?= 3
PYTEST_ARGS ?=
test-pytest: venv
	$(BIN)/pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadscope tests --junitxml=test-results.xml $(PYTEST_ARGS)
	$(call took,test-pytest)

# check-sync first (it runs nbdev_export), then the three suites at once; each prints its output when it is done,
# and all three run to the end even when one fails.
test: check-sync
	@echo "running test-nbdev, test-nbval and test-pytest in parallel; each prints its output when it finishes"
	@start=$$(date +%s); TEST_START=$$start $(MAKE) --no-print-directory -k -j3 --output-sync=target test-nbdev test-nbval test-pytest; \
	rc=$$?; echo "make test: $$(( $$(date +%s) - start )) s for nbdev_test, nbval and pytest (run in parallel), exit $$rc"; exit $$rc

# Re-run the library notebooks so their stored outputs (checked strictly by nbval) are current.
notebooks: venv
	MLOPS_NB_HOME=$$(mktemp -d) $(BIN)/python -c 'import sys, nbformat, nbclient; [nbformat.write(nbclient.NotebookClient(nbformat.read(f, 4), kernel_name="python3", resources={"metadata": {"path": "nbs"}}).execute(), f) for f in sys.argv[1:]]' nbs/[0-9]*.ipynb
	$(BIN)/nbdev_clean && $(BIN)/nbdev_export

# Speed and memory targets are shown by benchmark scripts, not timed tests.
bench: venv
	@set -e; for f in bench/bench_*.py; do echo "== $$f"; $(BIN)/python $$f; done

# JupyterLab (dev extras) on the notebooks, with this repository's package first on the kernels' path. The kernel is
# `python3`, this venv's Python; the store is the default home (`.mlops` at the repository root), the one `make demo`
# and `mlops-nb` use, so a pipeline notebook runs cell by cell with a user's defaults. As root (a container) it adds
# --allow-root, which Jupyter otherwise requires. LAB_ARGS=--no-browser etc.
LAB_PORT ?= 8888
LAB_ARGS ?=
lab: venv
	@echo "JupyterLab on nbs/ (kernel python3 = $(abspath $(BIN))/python; store $$($(BIN)/mlops-nb env --json | $(BIN)/python -c 'import json,sys; print(json.load(sys.stdin)["mlops_home"])'))"
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(BIN)/jupyter lab --notebook-dir=nbs --ServerApp.port=$(LAB_PORT) $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

clean:
	rm -rf $(TEST_HOME) .nbval .pytest_cache test-results.xml build _proc *.egg-info
	@echo "make clean kept the local store .mlops (your runs, models and tables: \`make reset-demo\` gives a fresh one) and .venv (delete it to reinstall)"

# A fresh local store (asks nothing): removes the default home's MLflow store, artifacts, tables and runs, printing
# each, then writes the demo tables (RESET_ARGS=--no-data to only remove, --rows N). Refuses, removing nothing, when
# MLFLOW_TRACKING_URI is set, when the home holds files mlops-nb did not write, or while a command holds an env's lock.
RESET_ARGS ?=
reset-demo: venv
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(BIN)/python tools/reset_demo.py $(RESET_ARGS)
