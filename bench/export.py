"""Training export at scale: Tessera's point-in-time read against hand-written DuckDB SQL.

Data: ``--events`` card transactions over 60 days (``pipelines.datagen``), tiled by the Polars
engine for one view with windows 1h, 1d, 7d, 30d and lifetime, each with count, sum, mean,
stddev, min, max and last of ``amount`` (35 features). Entity rows: ``--rows`` (user, instant)
pairs, seeded; 2% of users never seen; instants uniform over the period; a label column kept.

Runs, in one process, in this order (``--runs``):

- ``join``: hand-written exact SQL on the *raw* events (no Tessera code): each request row
  joined with its key's events up to ``t``, one aggregate per feature with
  ``FILTER (WHERE e.t >= window start)``. The fastest exact SQL I found;
- ``frames``: the other natural spelling: events and request rows in one table, one window
  aggregate per feature over a per-row frame ``[tile-aligned window start, t]``;
- ``tessera``: ``features.historical.plan_read(...).to_arrow()`` on the offline tiles;
- ``join`` again; the ratio is against the fastest baseline run.

Every run has the same DuckDB memory limit (``--memory-limit``, 2GB: ``offline.memory_limit``'s
default) and spill folder.

It checks the values are identical (counts, min, max, last, integer sums) or within a relative
1e-9 (float sums, means, stddev), and prints time and the process's peak RSS growth. Usage::

    .venv/bin/python bench/export.py --events 5000000 --rows 1000000
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORK = ROOT / ".tessera" / "bench-export"
START = datetime(2026, 1, 5)
DAYS = 60
WINDOWS = ["1h", "1d", "7d", "30d", "lifetime"]
FUNCTIONS = ["count", "sum", "mean", "stddev", "min", "max", "last"]
US = {"1h": 3_600_000_000, "1d": 86_400_000_000, "7d": 604_800_000_000,
      "30d": 2_592_000_000_000}


def bench_view(path: str):
    from example.card_features import transactions  # the generated events' schema
    from features import Entity, FeatureView, Source, agg, col

    schema = transactions.schema
    src = Source(name="transactions", path=path, schema=schema, timestamp_field="event_ts")
    feats = []
    for fn in FUNCTIONS:
        make = getattr(agg, fn)
        feats.append(make(windows=WINDOWS, name="n") if fn == "count" else
                     make(col("amount"), windows=WINDOWS, name=f"amount_{fn}"))
    return FeatureView(name="bench_user", entities=[Entity(name="user", join_key="user_id")],
                       source=src, features=feats)


def prepare(events: int, rows: int) -> tuple[Path, Path, Path]:
    """Events, tiles and entity rows on disk (made once per size, reused)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from features.config import OfflineConfig, RepoConfig
    from pipelines.batch import run_view
    from pipelines.datagen import generate_cli

    data = WORK / f"data-{events}"
    if not (data / "transactions").is_dir():
        generate_cli(rows=events, out=data, start=START, days=DAYS, seed=11, progress=False)
    offline = WORK / f"offline-{events}"
    view = bench_view(str(data / "transactions"))
    if not offline.is_dir():
        began = time.perf_counter()
        cfg = RepoConfig(project="bench", offline=OfflineConfig(path=offline), root=ROOT)
        run_view(cfg, view, "polars", START.date(), (START + timedelta(days=DAYS)).date())
        print(f"tiles written in {time.perf_counter() - began:.1f} s", flush=True)
    entity_file = WORK / f"entities-{events}-{rows}.parquet"
    if not entity_file.exists():
        users = max(50, events // 40)
        rng = np.random.default_rng(5)
        ids = rng.integers(0, int(users * 1.02), rows)
        known = pq.read_table(data / "transactions", columns=["user_id"]).column(0)
        known = np.unique(known.to_numpy())
        ids = np.where(ids < users, known[ids % len(known)], 10**12 + ids)
        lo = int(START.timestamp() * 1e6)
        ts = rng.integers(lo, lo + DAYS * US["1d"], rows)
        pq.write_table(pa.table({
            "user_id": pa.array(ids, pa.int64()),
            "event_ts": pa.array(ts, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "label": pa.array(rng.random(rows) < 0.1)}), entity_file)
    return data, offline, entity_file


def _tile_us(window: str) -> int:
    return US[window] // 60


def _events_sql(events_glob: str) -> str:
    return (f"SELECT user_id, epoch_us(event_ts) AS t, amount AS x, "
            f"(f.fi::BIGINT << 32) + file_row_number AS seq "
            f"FROM read_parquet('{events_glob}', file_row_number = true, filename = true) "
            f"JOIN (SELECT file, row_number() OVER (ORDER BY file) AS fi "
            f"FROM glob('{events_glob}')) f ON f.file = filename "
            f"WHERE user_id IS NOT NULL AND event_ts IS NOT NULL")


def _start_sql(t: str, window: str) -> str:
    """The first instant the window at ``t`` covers: the tile-aligned start."""
    s, k = _tile_us(window), US[window] // _tile_us(window)
    return f"(({t} - (({t} % {s}) + {s}) % {s}) - {(k - 1) * s})"


def _aggregates(window: str, x: str, t: str, seq: str, where: str | None = None,
                over: str = "") -> list[str]:
    """The seven features of one window: each aggregate, FILTERed by ``where``, then ``over``."""
    def agg(call: str, *conditions: str | None) -> str:
        kept = [c for c in conditions if c]
        return call + (f" FILTER (WHERE {' AND '.join(kept)})" if kept else "") + over

    order = "{'t': " + t + ", 'q': " + seq + "}"  # latest by event time, then source order
    return [f"{agg(f'count({x})', where)} AS n_{window}",
            f"coalesce({agg(f'sum({x})', where)}, 0.0) AS amount_sum_{window}",
            f"{agg(f'avg({x})', where)} AS amount_mean_{window}",
            f"{agg(f'stddev_samp({x})', where)} AS amount_stddev_{window}",
            f"{agg(f'min({x})', where)} AS amount_min_{window}",
            f"{agg(f'max({x})', where)} AS amount_max_{window}",
            f"{agg(f'arg_max({x}, {order})', f'{x} IS NOT NULL', where)} AS amount_last_{window}"]


def join_sql(events_glob: str, entity_file: str) -> str:
    """Hand-written: each row joined with its key's events up to t, FILTERed per window."""
    cols = []
    for w in WINDOWS:
        where = None if w == "lifetime" else f"e.t >= {_start_sql('r.t', w)}"
        cols += _aggregates(w, "e.x", "e.t", "e.seq", where=where)
    return f"""
    WITH req AS (SELECT row_number() OVER () - 1 AS rid, * FROM read_parquet('{entity_file}')),
    r AS (SELECT rid, user_id, epoch_us(event_ts) AS t FROM req),
    e AS ({_events_sql(events_glob)}),
    a AS (SELECT r.rid, {", ".join(cols)} FROM r LEFT JOIN e ON e.user_id = r.user_id
          AND e.t <= r.t GROUP BY r.rid)
    SELECT req.* EXCLUDE (rid), a.* EXCLUDE (rid) FROM req LEFT JOIN a USING (rid)
    ORDER BY req.rid
    """


def frames_sql(events_glob: str, entity_file: str) -> str:
    """Hand-written: one table of events and request rows, one framed window per feature."""
    cols = []
    for w in WINDOWS:
        frame = ("RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW" if w == "lifetime" else
                 f"RANGE BETWEEN (t - {_start_sql('t', w)}) PRECEDING AND CURRENT ROW")
        cols += _aggregates(w, "x", "t", "seq", over=f" OVER (PARTITION BY user_id ORDER BY t {frame})")
    # count() counts events: x is never null for a raw event here (amount is always set)
    return f"""
    WITH req AS (
        SELECT row_number() OVER () - 1 AS rid, * FROM read_parquet('{entity_file}')),
    ev AS (
        SELECT *, NULL::BIGINT AS rid FROM ({_events_sql(events_glob)})
        UNION ALL
        SELECT user_id, epoch_us(event_ts), NULL, 9223372036854775807, rid FROM req),
    w AS (SELECT rid, {", ".join(cols)} FROM ev)
    SELECT req.* EXCLUDE (rid), w.* EXCLUDE (rid)
    FROM req JOIN w USING (rid) ORDER BY req.rid
    """


def _connect(memory_limit: str):
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET memory_limit = '{memory_limit}'")
    con.execute(f"SET temp_directory = '{WORK / 'spill'}'")
    return con


def run_baseline(kind: str, data: Path, entity_file: Path, memory_limit: str,
                 out: Path | None) -> tuple[float, object]:
    con = _connect(memory_limit)
    sql = (join_sql if kind == "join" else frames_sql)(
        str(data / "transactions" / "*" / "*.parquet"), str(entity_file))
    began = time.perf_counter()
    if out is not None:
        con.execute(f"COPY ({sql}) TO '{out}' (FORMAT parquet, COMPRESSION zstd)")
        return time.perf_counter() - began, None
    table = con.sql(sql).to_arrow_table()
    return time.perf_counter() - began, table


def run_tessera(data: Path, offline: Path, entity_file: Path, memory_limit: str,
                out: Path | None) -> tuple[float, object]:
    from features.historical import plan_read

    view = bench_view(str(data / "transactions"))
    began = time.perf_counter()
    read = plan_read([view], str(entity_file), offline, memory_limit=memory_limit,
                     temp_directory=WORK / "spill")
    if out is not None:
        read.to_parquet(out)
        return time.perf_counter() - began, None
    table = read.to_arrow()
    return time.perf_counter() - began, table


def compare(a, b) -> list[str]:
    """Names of features whose values differ (exact, or 1e-9 relative for float aggregates)."""
    import numpy as np

    bad = []
    for w in WINDOWS:
        for fn in FUNCTIONS:
            name = f"n_{w}" if fn == "count" else f"amount_{fn}_{w}"
            x = a.column(name).to_numpy(zero_copy_only=False)
            y = b.column(name).to_numpy(zero_copy_only=False)
            x = np.asarray(x, dtype=float)
            y = np.asarray(y, dtype=float)
            both = np.isnan(x) & np.isnan(y)
            if fn in ("sum", "mean", "stddev"):
                ok = both | (np.abs(x - y) <= 1e-9 * np.maximum(np.abs(x), np.abs(y)) + 1e-300)
            else:
                ok = both | (x == y)
            if not ok.all():
                bad.append(f"{name} ({(~ok).sum():,} rows)")
    return bad


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", default="join,frames,tessera,join")
    parser.add_argument("--memory-limit", default="2GB")
    parser.add_argument("--to-parquet", action="store_true",
                        help="write each result to Parquet (out of core) instead of Arrow; "
                             "values are then not compared")
    args = parser.parse_args()
    data, offline, entity_file = prepare(args.events, args.rows)
    results: dict[str, list[float]] = {}
    tables = {}
    for i, run in enumerate(r for r in args.runs.split(",") if r):
        before = rss_mb()
        out = WORK / f"out-{run}-{i}.parquet" if args.to_parquet else None
        if run == "tessera":
            seconds, table = run_tessera(data, offline, entity_file, args.memory_limit, out)
        else:
            seconds, table = run_baseline(run, data, entity_file, args.memory_limit, out)
        results.setdefault(run, []).append(seconds)
        if table is not None:
            tables[run] = table
        print(f"{run:9s} {seconds:7.2f} s  {args.rows:,} rows  peak RSS {rss_mb():,.0f} MB "
              f"(+{rss_mb() - before:,.0f})", flush=True)
        del table
    for run in (r for r in tables if r != "tessera"):
        if "tessera" in tables:
            names = tables["tessera"].column_names
            bad = compare(tables["tessera"], tables[run].select(names))
            print(f"values vs {run}: " + ("identical (1e-9 relative for float sums, means, "
                                          "stddev)" if not bad else "DIFFER: " + ", ".join(bad)))
    baselines = {r: min(v) for r, v in results.items() if r != "tessera"}
    if baselines and "tessera" in results:
        best = min(baselines, key=baselines.__getitem__)
        print(f"ratio tessera / best baseline ({best}): "
              f"{min(results['tessera']) / baselines[best]:.2f}x")


if __name__ == "__main__":
    main()
