"""Benchmark: the default alert rules (mlops_nb.alert_rules.DEFAULT_ALERT_RULES) on monitoring rows (issue 15, "Measures").

The batches of bench_drift.py (16 numeric and 4 categorical features, plus a calibrated score `probability` and its
labels) go through the monitor's own code: each batch is profiled on a 1,000,000-row baseline's bins
(profiles.profile_on), its drift rows and `:table` quality row are what monitoring.drift_rows / quality_metrics write,
and the rules are replayed over the windows by alerts.rule_points / fired_points, as `mlops-nb monitor` does.

- false alarms: 200 consecutive daily windows of 10,000 rows without drift: the share of windows raising any alert
  with the default rules (target <= 1%); one window of 1,000,000 rows without drift: no alert (target 0);
- detection: 96 windows of 10,000 rows, each with one numeric feature shifted by 0.25 of its std (or one category's
  share moved by 10 points), after a clean window: the share in which column_drift raises an alert on that column
  (target >= 95%).
Run: .venv/bin/python bench/bench_alerts.py  (or make bench).
"""
import sys, time
from pathlib import Path
import numpy as np, pandas as pd
sys.path.insert(0, str(Path(__file__).parent))
import bench_drift as bd  # noqa: E402  the same seeded frames
from mlops_nb.alert_rules import DEFAULT_ALERT_RULES, parse_rules  # noqa: E402
from mlops_nb.alerts import fired_points, rule_points  # noqa: E402
from mlops_nb.monitoring import drift_rows  # noqa: E402
from mlops_nb.quality import quality_metrics  # noqa: E402
from mlops_nb.profiles import profile_frame, profile_on  # noqa: E402

RULES = parse_rules(DEFAULT_ALERT_RULES)


def scored(n, rng, **kw):
    "A bench frame with a calibrated score and labels drawn from it."
    df = bd.frame(n, rng, **kw)
    df["probability"] = rng.beta(2, 3, n)
    df["_label"] = (rng.random(n) < df.probability).astype(int)
    return df


def window_rows(base, df, day, job):
    "The drift rows and the `:table` profile row the monitor writes for one window of `df`."
    start = pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(days=day)
    meta = {"window_start": start, "window_end": start + pd.Timedelta(days=1), "model_name": "m", "model_version": "1",
            "slice_key": ":all", "slice_value": ":all", "job_run_id": job}
    cur = profile_on(base, df.drop(columns="_label"), score="probability")
    q = quality_metrics(df._label, df.probability, 0.5)
    return drift_rows(base, cur, base, meta, "BASELINE"), [{**meta, "column_name": ":table", "count": len(df), **q}]


def alerts(drift, prof):
    "(rule, column, window_start) of every alert the default rules raise over these rows."
    d, p = pd.DataFrame(drift), pd.DataFrame(prof)
    out = []
    for rule in RULES:
        pts = rule_points(rule, d, p)
        for _, series in (pts.groupby(["column_name", "model_version"]) if len(pts) else []):
            out += [(rule.name, r.column_name, r.window_start) for r in fired_points(rule, series).itertuples()]
    return out


def main():
    t0 = time.perf_counter()
    bd.STD.update({name: np.nanstd(bd.numeric_column(i, 1_000_000, np.random.default_rng(1000 + i))) for i, name in enumerate(bd.NUMERIC)})
    rng = np.random.default_rng(0)
    base_df = scored(1_000_000, rng)
    base = profile_frame(base_df.drop(columns="_label"), bd.NUMERIC, bd.CATEGORICAL, score="probability")
    rows, ok = [], True
    def row(measure, figure, target, good):
        nonlocal ok
        ok &= bool(good)
        rows.append((measure, figure, target, "OK" if good else "MISSED"))
    r1 = np.random.default_rng(1)
    drift, prof = [], []
    for day in range(200):
        d, p = window_rows(base, scored(10_000, r1), day, f"j{day:03d}")
        drift += d; prof += p
    fired = alerts(drift, prof)
    share = len({w for *_, w in fired}) / 200
    row("false alarms: 200 windows x 10,000 rows, no drift", f"{share:.1%} of windows ({len(fired)} alerts)", "<= 1%", share <= 0.01)
    d, p = window_rows(base, scored(1_000_000, np.random.default_rng(2)), 0, "big")
    big = alerts(d, p)
    row("false alarms: 1,000,000 rows, no drift", f"{len(big)} alerts", "0", not big)
    for kind, cols in (("shift", bd.NUMERIC), ("move", bd.CATEGORICAL)):
        r, hits = np.random.default_rng(11 if kind == "shift" else 12), 0
        for k in range(96):
            col = cols[k % len(cols)]
            d0, p0 = window_rows(base, scored(10_000, r), 0, "a")
            d1, p1 = window_rows(base, scored(10_000, r, **{kind: col}), 1, "b")
            hits += any(rule == "column_drift" and c == col and w.day == 2 for rule, c, w in alerts(d0 + d1, p0 + p1))
        label = "a numeric feature shifted by 0.25 std" if kind == "shift" else "a category's share moved by 10 points"
        row(f"detection: {label}, 10,000 rows", f"{hits / 96:.1%} of 96 windows", ">= 95%", hits / 96 >= 0.95)
    print("default alert rules: " + ", ".join(f"{r.name} ({r.metric}, {r.action})" for r in RULES))
    w = max(len(m) for m, *_ in rows)
    for m, fig, target, verdict in rows: print(f"  {m:<{w}} | {fig:<28} | {target:<8} | {verdict}")
    print(f"  bench time {time.perf_counter() - t0:.0f} s")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
