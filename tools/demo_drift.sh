#!/usr/bin/env bash
# The monitoring loop from one command (`make demo-drift`): day 0 trains the champion and scores a batch drawn like
# its training rows; each next day a new batch arrives whose features and label relation drift further (DRIFT_STEP per
# day; 0 = no drift), the labelled rows of that day become the training table, and the day's batch is scored and
# monitored. The env's default alert rules notify on each drifted column and retrain when a fifth of the features
# drifted in two of the last three monitor runs: the retraining (train, evaluate, score, tagged trigger=monitor) runs
# on the new training rows, and a retrained model that wins becomes the champion that scores the next day.
# Runs in its own home (DRIFT_HOME, default .mlops-drift), so the store of `make demo` is left alone.
set -euo pipefail
BIN=${BIN:-.venv/bin}
DAYS=${DAYS:-4}
DRIFT_STEP=${DRIFT_STEP:-0.4}
ROWS=${ROWS:-20000}
export MLOPS_NB_HOME=${DRIFT_HOME:-$PWD/.mlops-drift}
unset MLOPS_NB_CONFIG
rm -rf "$MLOPS_NB_HOME"
say() { printf '\n=== %s\n' "$*"; }

say "day 0: the demo tables, then the pipeline trains, promotes and scores (home $MLOPS_NB_HOME)"
"$BIN/mlops-nb" demo-data --env dev --rows "$ROWS" --seed 0
"$BIN/mlops-nb" run --env dev
say "day 0: monitor"
"$BIN/mlops-nb" monitor --env dev
for day in $(seq 1 "$DAYS"); do
  drift=$(awk -v d="$day" -v s="$DRIFT_STEP" 'BEGIN { printf "%.2f", d * s }')
  say "day $day: a new batch with drift $drift; its labelled rows become the training table"
  "$BIN/mlops-nb" demo-data --env dev --rows "$ROWS" --seed "$day" --drift "$drift" --drift-training
  say "day $day: score with the champion"
  "$BIN/mlops-nb" run --env dev --steps score
  say "day $day: monitor (and the retraining an alert asks for)"
  "$BIN/mlops-nb" monitor --env dev
done
say "alerts raised"
"$BIN/python" - <<'PY'
from mlops_nb.lakehouse import read_table, table_exists
t = "dev.mlops_nb.alerts"
if not table_exists(t): print("none")
else:
    a = read_table(t).data.sort_values("raised_at")
    for r in a.itertuples():
        print(f"{r.raised_at:%H:%M:%S} {r.severity:8} {r.rule:15} {r.statistic} of {r.column_name} = {r.value:.3g} (bound {r.bound:.3g}), "
              f"v{r.model_version}: {r.action_status}")
PY
