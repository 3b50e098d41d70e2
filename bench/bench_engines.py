"""Batch engines on N card transactions: events/s and peak RSS, against a hand-written baseline.

For a view with 3 windows (1h, 1d, 7d) × 4 aggregations (count, sum, max, stddev), each run
turns the same Parquet files into the same tiles (exact layer + one layer per tile size), written
as Parquet per day:

- ``baseline``: hand-written Polars, no Tessera code (scan, filter, group_by per tile size);
- ``polars``: ``pipelines.engine_polars`` through the rule compiler and the tile layout;
- ``spark``: ``pipelines.engine_spark`` on ``local[2]``.

Each engine runs in its own subprocess (so peak RSS is its own), the baseline first and last;
the ratio to the mean baseline is printed. Usage::

    .venv/bin/python bench/bench_engines.py --rows 10000000 [--engines baseline,polars,spark]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORK = ROOT / ".tessera" / "bench"
START = datetime(2026, 1, 5)
DAYS = 28
WINDOWS = ["1h", "1d", "7d"]


def bench_view(path: str):
    from features import Entity, FeatureView, Source, agg, col
    from pipelines.datagen import SCHEMA

    types = {"Int64": "int64", "Float64": "float64", "String": "string", "Boolean": "bool"}
    schema = {n: ("timestamp" if str(t).startswith("Datetime") else types[str(t)])
              for n, t in SCHEMA.items()}
    src = Source(name="transactions", path=path, schema=schema, timestamp_field="event_ts")
    return FeatureView(
        name="bench_user", entities=[Entity(name="user", join_key="user_id")], source=src,
        filter=col("amount") > 0,
        features=[agg.count(windows=WINDOWS, name="n"),
                  agg.sum(col("amount"), windows=WINDOWS, name="amount_sum"),
                  agg.max(col("amount"), windows=WINDOWS, name="amount_max"),
                  agg.stddev(col("amount"), windows=WINDOWS, name="amount_std")])


def baseline(files: list[Path], out: Path) -> int:
    """The same tiles, by hand: what a competent engineer would write for this one view."""
    import polars as pl

    day_us = 86_400_000_000
    lf = pl.concat([
        pl.scan_parquet(f).with_row_index("r").with_columns(
            (pl.lit(i << 32, pl.Int64) + pl.col("r").cast(pl.Int64)).alias("seq"))
        for i, f in enumerate(files)])
    ev = (lf.filter(pl.col("amount") > 0, pl.col("user_id").is_not_null(),
                    pl.col("event_ts").is_not_null())
          .select("user_id", pl.col("event_ts").dt.epoch("us").alias("ts"), "seq", "amount")
          .sort("ts", "seq").collect())
    aggs = [pl.len().cast(pl.Int64).alias("n"), pl.col("amount").count().cast(pl.Int64).alias("c0"),
            pl.col("amount").sum().alias("s0"),
            (pl.col("amount").var(ddof=0) * pl.col("amount").count()).fill_null(0.0).alias("q0"),
            pl.col("amount").max().alias("hi0")]
    sizes = [1, 60_000_000, 1_440_000_000, 10_080_000_000]
    lazy = ev.lazy().with_columns((pl.col("ts") // day_us).cast(pl.Int32).cast(pl.Date).alias("day"))
    frames = pl.collect_all([lazy.with_columns((pl.col("ts") // s).alias("tile"))
                             .group_by("user_id", "tile", "day").agg(aggs).sort("user_id", "tile")
                             for s in sizes])
    rows = 0
    for s, frame in zip(sizes, frames, strict=True):
        for (day,), part in frame.partition_by("day", as_dict=True).items():
            folder = out / f"tile_us={s}" / f"day={day}"
            folder.mkdir(parents=True, exist_ok=True)
            part.drop("day").write_parquet(folder / "part-0.parquet")
            rows += part.height
    return rows


def run_one(engine: str, data: Path) -> dict[str, float]:
    from features.config import OfflineConfig, RepoConfig
    from pipelines.batch import run_view
    from pipelines.sources import source_files

    view = bench_view(str(data / "transactions"))
    files = source_files(view.source, ROOT)
    out = WORK / f"out-{engine}"
    shutil.rmtree(out, ignore_errors=True)
    began = time.perf_counter()
    if engine == "baseline":
        written, read = baseline(files, out), None
    else:
        cfg = RepoConfig(project="bench", offline=OfflineConfig(path=out), root=ROOT)
        s = run_view(cfg, view, engine, START.date(),  # type: ignore[arg-type]
                     (START + timedelta(days=DAYS)).date())
        written, read = s.partial_rows_written, s.rows_read
    seconds = time.perf_counter() - began
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if engine == "spark":  # the JVM is still alive: read its own high-water mark
        from pyspark import SparkContext

        proc = SparkContext._gateway.proc  # type: ignore[union-attr]
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                child_mb = int(line.split()[1]) / 1024
    return {"seconds": seconds, "rss_mb": rss_mb, "child_rss_mb": child_mb, "written": written,
            "read": read or 0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--engines", default="baseline,polars,spark,baseline")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    data = WORK / f"data-{args.rows}"
    if args.one:
        print(json.dumps(run_one(args.one, data)))
        return
    if not (data / "transactions").is_dir():
        from pipelines.datagen import generate_cli

        generate_cli(rows=args.rows, out=data, start=START, days=DAYS, seed=7)
    results: list[tuple[str, dict[str, float]]] = []
    for engine in args.engines.split(","):
        out = subprocess.run([sys.executable, __file__, "--rows", str(args.rows), "--one", engine],
                             capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"{engine} failed:\n{out.stderr[-3000:]}")
        res = json.loads(out.stdout.strip().splitlines()[-1])
        results.append((engine, res))
        print(f"{engine:9s} {res['seconds']:7.2f} s  {args.rows / res['seconds']:>12,.0f} events/s  "
              f"peak RSS {res['rss_mb']:7.0f} MB (+JVM {res['child_rss_mb']:.0f} MB)  "
              f"partial rows {int(res['written']):,}", flush=True)
    base = [r["seconds"] for e, r in results if e == "baseline"]
    if base:
        mean = sum(base) / len(base)
        for engine, r in results:
            if engine != "baseline":
                print(f"ratio {engine}/baseline: {r['seconds'] / mean:.2f}x time")


if __name__ == "__main__":
    main()
