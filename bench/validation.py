"""The batch gate on N card transactions against Great Expectations called directly.

Ten expectations of the kinds ``features.expect`` offers (not null ×3, between, in set ×3,
unique, row count, freshness) on the same generated batch:

- ``gx``: the hand-written baseline: the Parquet file read into pandas (not timed), then one
  suite of the ten Great Expectations objects validated on that frame (timed);
- ``gate``: ``validation.gate.check`` on the batch as ``tessera run`` hands it over (a lazy
  Polars scan), timed from the scan: reading the columns, pandas conversion, the same GX run,
  and Tessera's own outcome summary. ``gate-frame`` times the gate from the rows already in
  memory (a collected Polars frame), the closest to "the same frame".

Each side runs in its own subprocess (GX imported, untimed, before the clock starts), so peak
RSS is its own. The ratio of the gate to GX (best of the repeats) is printed. Usage::

    .venv/bin/python bench/validation.py --rows 10000000 [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORK = ROOT / ".tessera" / "bench" / "validation"
START = datetime(2026, 1, 5, tzinfo=UTC)
DAYS = 28


def expectations() -> list:
    from features import expect
    from pipelines.datagen import CHANNELS, COUNTRIES, CURRENCIES

    return [*expect.not_null("transaction_id", "user_id", "event_ts"),
            expect.between("amount", min=0, max=1_000_000, strict_min=True),
            expect.in_set("currency", CURRENCIES), expect.in_set("channel", CHANNELS),
            expect.in_set("country", COUNTRIES), expect.unique("transaction_id"),
            expect.row_count(min=1), expect.fresh(max_age="2d")]


def source(path: Path):
    from example.card_features import transactions
    from features import Source

    return Source(name="transactions", path=str(path), schema=transactions.schema,
                  timestamp_field="event_ts", expectations=expectations())


def end_us() -> int:
    return int((START.timestamp() + DAYS * 86_400) * 1_000_000)


def side(name: str, file: Path) -> dict:
    import great_expectations  # noqa: F401  (imported before timing, as a server would have)
    import polars as pl

    from validation.gate import check, columns_of
    from validation.gx_runner import gx_expectation

    src = source(file)
    if name == "gx":
        import pandas as pd

        frame = pd.read_parquet(file)
        import great_expectations as gx

        ctx = gx.get_context(mode="ephemeral")
        batch_def = (ctx.data_sources.add_pandas("p").add_dataframe_asset("a")
                     .add_batch_definition_whole_dataframe("b"))
        end = pd.Timestamp(end_us(), unit="us", tz="UTC")
        suite = gx.ExpectationSuite(name="s", expectations=[
            gx_expectation(e, c, end) for e, c in columns_of(src)])
        began = time.perf_counter()
        batch = batch_def.get_batch(batch_parameters={"dataframe": frame})
        result = batch.validate(suite, result_format={"result_format": "SUMMARY",
                                                      "partial_unexpected_count": 5})
        seconds = time.perf_counter() - began
        verdicts = {r.expectation_config.meta["tessera"]: bool(r.success) for r in result.results}
        rows = len(frame)
    else:
        events = pl.scan_parquet(file)
        if name == "gate-frame":
            events = events.collect().lazy()
        began = time.perf_counter()
        report = check(src, events, None, end_us())
        seconds = time.perf_counter() - began
        verdicts = {o.expectation.name: o.success for o in report.outcomes}
        rows = report.rows
    return {"side": name, "seconds": seconds, "rows": rows, "verdicts": verdicts,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--side", help=argparse.SUPPRESS)
    p.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        print(json.dumps(side(args.side, args.file)))
        return
    from rich.console import Console
    from rich.table import Table

    from pipelines.datagen import GenSpec, generate

    console = Console()
    file = WORK / f"batch-{args.rows}.parquet"
    if not file.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        with console.status(f"generating {args.rows:,} transactions"):
            spec = GenSpec(rows=args.rows, start=START, days=DAYS, seed=3, malformed_rate=0.001)
            generate(spec).write_parquet(file)
    runs: dict[str, list[dict]] = {}
    for k in range(args.repeat):
        for name in ("gx", "gate", "gate-frame"):
            with console.status(f"run {k + 1}/{args.repeat}: {name}"):
                out = subprocess.run([sys.executable, __file__, "--side", name, "--file",
                                      str(file)], capture_output=True, text=True, check=True,
                                     env={**os.environ, "PYTHONWARNINGS": "ignore"})
            runs.setdefault(name, []).append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = {n: min(r["seconds"] for r in rs) for n, rs in runs.items()}
    table = Table("side", "rows", "seconds (each run)", "best", "× GX", "peak RSS GB")
    for name, rs in runs.items():
        table.add_row(name, f"{rs[0]['rows']:,}", ", ".join(f"{r['seconds']:.2f}" for r in rs),
                      f"{best[name]:.2f}", f"{best[name] / best['gx']:.2f}",
                      f"{max(r['peak_rss_gb'] for r in rs):.2f}")
    console.print(table)
    same = all(r["verdicts"] == runs["gx"][0]["verdicts"] for rs in runs.values() for r in rs)
    failed = sorted(n for n, ok in runs["gx"][0]["verdicts"].items() if not ok)
    console.print(f"same verdicts on every run: {same}; failed (malformed rows): {failed}")


if __name__ == "__main__":
    main()
