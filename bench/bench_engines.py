"""Batch engines on N card transactions: events/s and peak RSS, against a hand-written baseline.

For a view with 3 windows (1h, 1d, 7d) × 4 aggregations (count, sum, max, stddev), each run
turns the same Parquet files into the same tiles (exact layer + one layer per tile size), written
as Parquet per day:

- ``baseline``: hand-written Polars, no Tessera code (scan, filter, group_by per tile size);
- ``baseline-duckdb``: hand-written DuckDB, no Tessera code (one ``GROUP BY`` per tile size, each
  ``COPY``'d to day-partitioned Parquet);
- ``baseline-duckdb-daily``: the same, one ``GROUP BY`` per tile size and day (faster);
- ``polars``: ``pipelines.engine_polars`` through the rule compiler and the tile layout;
- ``spark``: ``pipelines.engine_spark`` on ``local[2]``.

Each engine runs in its own subprocess (so peak RSS is its own); the ratio of each engine to
the fastest baseline (by its mean over repeats) is printed. ``--check`` then compares every
run's tiles with the first run's (same rows; counts and max equal, sums and M2 within 1e-9
relative). Usage::

    .venv/bin/python bench/bench_engines.py --rows 10000000 \
        [--engines baseline,baseline-duckdb,polars,spark,baseline,baseline-duckdb] [--check]
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
    from example.card_features import transactions  # the generated events' schema
    from features import Entity, FeatureView, Source, agg, col

    schema = transactions.schema
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


def baseline_duckdb(files: list[Path], out: Path, daily: bool = False) -> int:
    """The same tiles by hand in DuckDB: one GROUP BY per tile size into day-partitioned Parquet.

    With ``daily``, one GROUP BY per tile size *and day* instead (each day's events selected by
    time; the footers' statistics skip the other files' row groups), each copied to its own file:
    smaller hash tables, and the fastest DuckDB tiling we found. Rows are not sorted within a
    file (the engines sort them by key and tile; sorting costs DuckDB ~25%).
    """
    import duckdb

    day_us = 86_400_000_000
    con = duckdb.connect()
    con.execute(f"SET temp_directory = '{WORK / 'duckdb-tmp'}'")
    con.execute("SET preserve_insertion_order = false")
    source = "read_parquet([{}])".format(", ".join(f"'{f}'" for f in files))
    events = (f"SELECT user_id, epoch_us(event_ts) AS ts, amount FROM {source} "
              "WHERE amount > 0 AND user_id IS NOT NULL AND event_ts IS NOT NULL")
    partials = ("count(*) AS n, count(amount) AS c0, sum(amount) AS s0, "
                "coalesce(var_pop(amount) * count(amount), 0.0) AS q0, max(amount) AS hi0")
    sizes = [1, 60_000_000, 1_440_000_000, 10_080_000_000]
    rows = 0
    if not daily:
        for s in sizes:
            folder = out / f"tile_us={s}"
            folder.mkdir(parents=True, exist_ok=True)
            con.execute(f"""
                COPY (SELECT user_id, ts // {s} AS tile,
                             DATE '1970-01-01' + CAST(ts // {day_us} AS INTEGER) AS day, {partials}
                      FROM ({events}) GROUP BY ALL)
                TO '{folder}' (FORMAT parquet, PARTITION_BY (day), OVERWRITE_OR_IGNORE)""")
            rows += con.fetchone()[0]  # type: ignore[index]  # COPY returns the rows written
        return rows
    lo, hi = con.execute(f"SELECT min(ts) // {day_us}, max(ts) // {day_us} FROM ({events})"
                         ).fetchone()  # type: ignore[misc]
    for day in range(lo, hi + 1):
        when = (f"TIMESTAMPTZ '1970-01-01 00:00:00+00' + INTERVAL ({day}) DAY")
        for s in sizes:
            folder = out / f"tile_us={s}" / f"day={datetime(1970, 1, 1) + timedelta(days=day):%Y-%m-%d}"
            folder.mkdir(parents=True, exist_ok=True)
            con.execute(f"""
                COPY (SELECT user_id, epoch_us(event_ts) // {s} AS tile, {partials}
                      FROM {source}
                      WHERE amount > 0 AND user_id IS NOT NULL
                        AND event_ts >= {when} AND event_ts < {when} + INTERVAL 1 DAY
                      GROUP BY ALL)
                TO '{folder}/part-0.parquet' (FORMAT parquet)""")
            rows += con.fetchone()[0]  # type: ignore[index]
    return rows


def compare(a: Path, b: Path, rel: float = 1e-9) -> str:
    """Check two runs' tiles are the same rows (exact for counts and max, ``rel`` for floats).

    One (layer, day) partition at a time, so the check needs no more memory than a day.
    """
    import polars as pl

    def partitions(root: Path) -> dict[tuple[str, str], list[Path]]:
        out: dict[tuple[str, str], list[Path]] = {}
        for f in sorted(root.rglob("tile_us=*/day=*/*.parquet")):
            out.setdefault((f.parent.parent.name, f.parent.name), []).append(f)
        return out

    pa_, pb = partitions(a), partitions(b)
    assert pa_.keys() == pb.keys(), sorted(set(pa_) ^ set(pb))
    keys = ["user_id", "tile"]
    rows: dict[str, int] = {}
    for part in sorted(pa_):
        x, y = (pl.concat([pl.read_parquet(f, hive_partitioning=False) for f in files])
                .select(*keys, "n", "c0", "s0", "q0", "hi0").sort(keys)
                for files in (pa_[part], pb[part]))
        assert x.height == y.height, (part, x.height, y.height)
        for c in (*keys, "n", "c0", "hi0"):
            assert x[c].equals(y[c]), (part, c)
        for c in ("s0", "q0"):  # M2 of equal values is ~0: absolute 1e-6 there
            ok = (x[c] - y[c]).abs() <= (rel * y[c].abs()).clip(lower_bound=1e-6)
            assert ok.all(), (part, c)
        rows[part[0]] = rows.get(part[0], 0) + x.height
    return "; ".join(f"{layer}: {n:,} rows equal" for layer, n in sorted(rows.items()))


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
    elif engine in ("baseline-duckdb", "baseline-duckdb-daily"):
        written, read = baseline_duckdb(files, out, daily=engine.endswith("daily")), None
    else:
        cfg = RepoConfig(project="bench", offline=OfflineConfig(path=out), root=ROOT)
        s = run_view(cfg, view, engine, START.date(),  # type: ignore[arg-type]
                     (START + timedelta(days=DAYS)).date())
        written, read = s.partial_rows_written, s.rows_read
    seconds = time.perf_counter() - began
    use = resource.getrusage(resource.RUSAGE_SELF)
    cpu = use.ru_utime + use.ru_stime
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if engine == "spark":  # the JVM is still alive: read its own high-water mark
        from pyspark import SparkContext

        proc = SparkContext._gateway.proc  # type: ignore[union-attr]
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                child_mb = int(line.split()[1]) / 1024
    return {"seconds": seconds, "cpu": cpu, "rss_mb": rss_mb, "child_rss_mb": child_mb, "written": written,
            "read": read or 0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--engines",
                        default="baseline,baseline-duckdb,polars,baseline,baseline-duckdb")
    parser.add_argument("--check", action="store_true", help="compare every run's tiles")
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
        print(f"{engine:21s} {res['seconds']:7.2f} s  {args.rows / res['seconds']:>12,.0f} events/s  "
              f"cpu {res['cpu']:7.1f} s  "
              f"peak RSS {res['rss_mb']:7.0f} MB (+JVM {res['child_rss_mb']:.0f} MB)  "
              f"partial rows {int(res['written']):,}", flush=True)
    means = {}
    for name in {e for e, _ in results if e.startswith("baseline")}:
        times = [r["seconds"] for e, r in results if e == name]
        means[name] = sum(times) / len(times)
    if means:
        fastest = min(means, key=means.__getitem__)
        for engine, r in results:
            print(f"ratio {engine}/{fastest} (mean {means[fastest]:.2f} s): "
                  f"{r['seconds'] / means[fastest]:.2f}x time")
    if args.check:
        engines = list(dict.fromkeys(e for e, _ in results))
        for engine in engines[1:]:
            print(f"check {engine} = {engines[0]}:",
                  compare(WORK / f"out-{engine}", WORK / f"out-{engines[0]}"))


if __name__ == "__main__":
    main()
