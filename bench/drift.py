"""Drift report at scale: ``tessera drift``'s comparison against Evidently run on all the rows.

Data: two frames of ``--rows`` card transactions (``pipelines.datagen``, 28 days from
2025-01-06): the reference without drift (seed 7), the current with ``drift_from`` at its first
instant (seed 8). Ten feature-like columns per row, their kinds declared:

- numerical: ``amount``, ``amount_eur`` (amount / FX rate), ``hour`` (UTC), ``weekday``;
- categorical: ``channel``, ``currency``, ``mcc``, ``country``, ``card_present``, ``is_fraud``.

The generator's drift moves ``amount_eur`` (x1.6 in six categories), ``channel`` and
``card_present`` (online share up), ``currency`` (USD share up) and ``hour`` (night share up);
``weekday``, ``mcc`` and ``country`` are left alone.

Each side runs in its own subprocess (so its peak RSS is its own), after building the frames:

- ``tessera``: :func:`validation.drift.compare` (sample ``drift.sample_rows`` rows per side,
  seeded, Evidently's preset on the sample with declared column types, borderline features
  confirmed on all rows) then :func:`validation.drift.write_report` (HTML, JSON, summary).
  ``import evidently`` is done and timed first, so the report time excludes it;
- ``evidently``: ``Report([DataDriftPreset()]).run(current, reference)`` on the full pandas
  frames, as Evidently's docs show it (column types inferred), then ``save_html``.

It prints each side's times and peak RSS (``VmHWM``; the RSS after building the frames, before
the report, too), the ratio, and each column's verdict on both sides. Usage::

    .venv/bin/python bench/drift.py --rows 1000000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
START = datetime(2025, 1, 6, tzinfo=UTC)
NUMERICAL = ["amount", "amount_eur", "hour", "weekday"]
CATEGORICAL = ["channel", "currency", "mcc", "country", "card_present", "is_fraud"]
DRIFTED_BY_GENERATOR = {"amount_eur", "channel", "card_present", "currency", "hour"}


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def frames(rows: int):
    """(reference, current) as pyarrow tables of the ten columns."""
    import polars as pl

    from pipelines.datagen import FX_PER_EUR, GenSpec, generate

    out = []
    for seed, drift in ((7, None), (8, START)):
        df = generate(GenSpec(rows=rows, start=START, days=28, seed=seed, drift_from=drift))
        out.append(df.select(
            pl.col("amount"),
            (pl.col("amount") / pl.col("currency").replace_strict(
                FX_PER_EUR, return_dtype=pl.Float64)).alias("amount_eur"),
            pl.col("event_ts").dt.hour().cast(pl.Int64).alias("hour"),
            pl.col("event_ts").dt.weekday().cast(pl.Int64).alias("weekday"),
            *CATEGORICAL).rechunk().to_arrow())
    return out[0], out[1]


def run_tessera(ref, cur, sample_rows: int, seed: int) -> dict:
    from features.config_jobs import DriftConfig
    from validation.drift import FeatureColumn, Side, compare, summary, write_report

    cfg = DriftConfig()
    sample_rows = sample_rows or cfg.sample_rows
    t = time.perf_counter()
    import evidently.presets  # noqa: F401  (timed apart: the report time excludes it)
    import_s = time.perf_counter() - t
    columns = [FeatureColumn(c, "float64", "numerical") for c in NUMERICAL] + [
        FeatureColumn(c, "string", "categorical") for c in CATEGORICAL]
    began, cpu = time.perf_counter(), time.process_time()
    a = Side("reference", ref, ref.num_rows)
    b = Side("current", cur, cur.num_rows)
    result = compare(a, b, columns, sample_rows=sample_rows, seed=seed,
                     drift_share=cfg.threshold)
    compared = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        write_report(result, summary(result, a, b, sample_rows=sample_rows, seed=seed),
                     Path(tmp))
    done = time.perf_counter()
    return {"import_s": import_s, "report_s": done - began, "cpu_s": time.process_time() - cpu,
            "compare_s": compared - began,
            "write_s": done - compared, "rows_used": list(result.rows_used),
            "verdicts": {f.ref: [f.test, f.score, f.drifted, f.confirmed_on_all_rows,
                                 f.sample_score] for f in result.features}}


def run_evidently(ref, cur) -> dict:
    t = time.perf_counter()
    from evidently import Report
    from evidently.presets import DataDriftPreset
    import_s = time.perf_counter() - t
    ref_df, cur_df = ref.to_pandas(), cur.to_pandas()
    began, cpu = time.perf_counter(), time.process_time()
    snapshot = Report([DataDriftPreset()], include_tests=True).run(current_data=cur_df,
                                                                   reference_data=ref_df)
    ran = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        snapshot.save_html(str(Path(tmp) / "report.html"))
    done = time.perf_counter()
    doc = snapshot.dict()
    verdicts: dict[str, list] = {}
    for m in doc["metrics"]:
        cfg = m.get("config", {})
        if cfg.get("type") == "evidently:metric_v2:ValueDrift":
            verdicts[cfg["column"]] = [cfg["method"], float(m["value"])]
    for t_ in doc["tests"]:
        params = t_.get("metric_config", {}).get("params", {})
        if params.get("type") == "evidently:metric_v2:ValueDrift":
            verdicts[params["column"]].append(t_["status"] == "FAIL")
    return {"import_s": import_s, "report_s": done - began, "cpu_s": time.process_time() - cpu,
            "run_s": ran - began,
            "write_s": done - ran, "verdicts": verdicts}


def one(side: str, rows: int, sample_rows: int, seed: int) -> None:
    t = time.perf_counter()
    ref, cur = frames(rows)
    built_s = time.perf_counter() - t
    rss_before = _status_mb("VmRSS")
    out = (run_tessera(ref, cur, sample_rows, seed) if side == "tessera"
           else run_evidently(ref, cur))
    out.update(side=side, frames_s=built_s, rss_before_mb=rss_before,
               peak_rss_mb=_status_mb("VmHWM"))
    print("RESULT " + json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--sample-rows", type=int, default=0, help="default drift.sample_rows")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--sides", default="tessera,evidently")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        one(args.one, args.rows, args.sample_rows, args.seed)
        return
    results = {}
    for side in args.sides.split(","):
        proc = subprocess.run([sys.executable, __file__, "--rows", str(args.rows),
                               "--sample-rows", str(args.sample_rows), "--seed", str(args.seed),
                               "--one", side], capture_output=True, text=True, check=False)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            sys.exit(f"{side} failed:\n{proc.stdout}\n{proc.stderr}")
        results[side] = json.loads(line[0][7:])
        r = results[side]
        print(f"{side:9}  report {r['report_s']:6.2f} s wall, {r['cpu_s']:6.2f} s CPU  (import {r['import_s']:5.2f} s, not "
              f"included)  peak RSS {r['peak_rss_mb']:,.0f} MB (frames built: "
              f"{r['rss_before_mb']:,.0f} MB)  "
              + (f"compare {r['compare_s']:.2f} s + write {r['write_s']:.2f} s, rows used "
                 + " / ".join(f"{n:,}" for n in r["rows_used"]) if side == "tessera" else f"run {r['run_s']:.2f} s + html {r['write_s']:.2f} s"),
              flush=True)
    if len(results) == 2:
        t, e = results["tessera"]["verdicts"], results["evidently"]["verdicts"]
        print(f"\nratio (evidently / tessera report time): "
              f"{results['evidently']['report_s'] / results['tessera']['report_s']:.1f}x")
        print(f"\n{'column':13} {'tessera test':30} {'score':>8} {'drift':>6} | "
              f"{'evidently (all rows) test':30} {'score':>8} {'drift':>6} | generator")
        same = True
        for col in NUMERICAL + CATEGORICAL:
            tt, ee = t[col], e[col]
            same &= tt[2] == ee[2]
            note = " (all rows)" if tt[3] else ""
            print(f"{col:13} {tt[0]:30} {tt[1]:8.4f} {tt[2]!s:>6} | {ee[0]:30} "
                  f"{ee[1]:8.4f} {ee[2]!s:>6} | "
                  f"{'drifted' if col in DRIFTED_BY_GENERATOR else 'unchanged'}{note}")
        print(f"\nsame verdicts on every column: {same}")


if __name__ == "__main__":
    main()
