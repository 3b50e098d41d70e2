"""Training export of plain TTL features: Tessera's point-in-time read against Feast's.

Issue 9's goal: "plain TTL features: >= 5x faster than Feast's ``get_historical_features`` on the
same rows". One view, two plain (no window) ``last`` features with a 30-day TTL: the latest
``country`` and ``amount`` of the user among the events with ``t - 30d <= e <= t``.

Data: ``--events`` card transactions over 60 days from 2026-01-05 (``pipelines.datagen``, seed
11). Entity rows: ``--rows`` (user, instant) pairs, seeded; user ids drawn from the generated
users plus ~2% never seen; instants uniform (microseconds) over the 60 days; a label column and a
row id ``rid`` (used only to match the two results). The same Parquet file feeds both sides.

- ``tessera``: the Polars engine tiles the view once (not timed: like Feast's offline store
  reading an already written Parquet file); then timed:
  ``features.historical.plan_read([view], entity_file, offline, memory_limit="2GB",
  temp_directory=...).to_arrow()`` (planning, which reads the entity file, included).
- ``feast``: a Feast repo in a work folder (``offline_store: duckdb``, sqlite online store, never
  used), a ``FileSource`` over ONE Parquet file of the raw events (user_id, event_ts, country,
  amount), an ``Entity`` and a ``FeatureView`` (ttl 30 days, the two features),
  ``FeatureStore.apply`` (not timed); the entity rows read into pandas (not timed); then timed:
  ``store.get_historical_features(entity_df=df, features=[...]).to_arrow()``.

Both sides first run the same call on the first 1,000 entity rows, untimed, so that one-off
module imports (pandas, DuckDB, ibis' backend: seconds on a cold process) are not counted.

Each side runs in its own subprocess (``--one``), so its peak RSS (``ru_maxrss``) is its own;
the RSS after imports and setup, just before the timed call, is printed too. Each subprocess is
killed after ``--timeout`` seconds. Then this process compares, row by row (matched on ``rid``),
Feast's and Tessera's values, counts rows Feast dropped or duplicated, and explains every
difference it finds: a tie (several events of the user at the latest instant in the window,
with different values: Feast takes an arbitrary one of them, ``row_number()`` over
``event_ts DESC``) or an event exactly on a boundary (``e == t`` or ``e == t - ttl``).

Usage::

    .venv/bin/python bench/export_feast.py --events 5000000 --rows 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORK = ROOT / ".tessera" / "bench-export-feast"
START = datetime(2026, 1, 5)
DAYS = 60
TTL_DAYS = 30
DAY_US = 86_400_000_000
VIEW = "bench_plain"
FEATURES = ["last_country", "last_amount"]


def paths(events: int, rows: int) -> dict[str, Path]:
    return {
        "data": WORK / f"data-{events}",
        "events": WORK / f"events-{events}.parquet",  # Feast's one file of raw events
        "offline": WORK / f"offline-{events}",
        "entities": WORK / f"entities-{events}-{rows}.parquet",
        "feast_repo": WORK / "feast-repo",
        "spill": WORK / "spill",
        "out_tessera": WORK / f"result-tessera-{events}-{rows}.parquet",
        "out_feast": WORK / f"result-feast-{events}-{rows}.parquet",
    }


def bench_view(path: str):
    from example.card_features import transactions  # the generated events' schema
    from features import Entity, FeatureView, Source, agg, col

    schema = transactions.schema
    src = Source(name="transactions", path=path, schema=schema, timestamp_field="event_ts")
    return FeatureView(name=VIEW, entities=[Entity(name="user", join_key="user_id")],
                       source=src, ttl=f"{TTL_DAYS}d",
                       features=[agg.last(col("country"), name="last_country"),
                                 agg.last(col("amount"), name="last_amount")])


def prepare(events: int, rows: int) -> dict[str, Path]:
    """Events, Feast's single Parquet file, tiles and entity rows on disk (made once, reused)."""
    import duckdb
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from features.config import OfflineConfig, RepoConfig
    from pipelines.batch import run_view
    from pipelines.datagen import generate_cli

    p = paths(events, rows)
    WORK.mkdir(parents=True, exist_ok=True)
    data = p["data"]
    if not (data / "transactions").is_dir():
        began = time.perf_counter()
        generate_cli(rows=events, out=data, start="2026-01-05", days=DAYS, seed=11,
                     progress=False)
        print(f"events generated in {time.perf_counter() - began:.1f} s", flush=True)
    if not p["events"].exists():
        tmp = p["events"].with_suffix(".tmp")
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        glob = str(data / "transactions" / "*" / "*.parquet")
        con.execute(f"COPY (SELECT user_id, event_ts, country, amount FROM read_parquet('{glob}')"
                    f") TO '{tmp}' (FORMAT parquet, COMPRESSION zstd)")
        con.close()
        tmp.rename(p["events"])
    if not p["offline"].is_dir():
        began = time.perf_counter()
        cfg = RepoConfig(project="bench", offline=OfflineConfig(path=p["offline"]), root=ROOT)
        run_view(cfg, bench_view(str(data / "transactions")), "polars", START.date(),
                 (START + timedelta(days=DAYS)).date())
        print(f"tiles written in {time.perf_counter() - began:.1f} s (not timed below)",
              flush=True)
    if not p["entities"].exists():
        rng = np.random.default_rng(5)
        known = pq.read_table(p["events"], columns=["user_id"]).column(0).to_numpy()
        known = np.unique(known)
        users = len(known)
        ids = rng.integers(0, int(users * 1.02), rows)
        ids = np.where(ids < users, known[np.minimum(ids, users - 1)], 10**12 + ids)
        lo = int(START.timestamp() * 1e6)
        ts = rng.integers(lo, lo + DAYS * DAY_US, rows)
        pq.write_table(pa.table({
            "rid": pa.array(np.arange(rows), pa.int64()),
            "user_id": pa.array(ids, pa.int64()),
            "event_ts": pa.array(ts, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "label": pa.array(rng.random(rows) < 0.1)}), p["entities"])
    return p


def _status_mb(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process in MB. Not ``ru_maxrss``: Linux carries that over
    ``fork`` + ``exec``, so a child would report its parent's peak if that is higher."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def rss_mb() -> float:
    """Peak RSS of this process so far (MB)."""
    return _status_mb("VmHWM")


def cpu_s() -> float:
    """User + system CPU seconds of this process so far (all threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_tessera(p: dict[str, Path]) -> dict[str, float]:
    import pyarrow.parquet as pq

    from features.historical import plan_read

    view = bench_view(str(p["data"] / "transactions"))
    # Warm-up on 1,000 rows (not timed): module imports (pandas via pyarrow.dataset, DuckDB)
    # are a one-off cost of the process, not of the export.
    warm = pq.read_table(p["entities"]).slice(0, 1000)
    plan_read([view], warm, p["offline"], memory_limit="2GB",
              temp_directory=p["spill"]).to_arrow()
    return timed(lambda: plan_read([view], str(p["entities"]), p["offline"], memory_limit="2GB",
                                   temp_directory=p["spill"]), p["out_tessera"])


def timed(plan: Any, out: Path) -> dict[str, float]:
    """Time ``plan()`` (returns a job) and its ``to_arrow()``; write the result to ``out``."""
    import pyarrow.parquet as pq

    before, cpu = rss_mb(), cpu_s()
    began = time.perf_counter()
    job = plan()
    planned = time.perf_counter() - began
    table = job.to_arrow()
    seconds = time.perf_counter() - began
    peak, cpu = rss_mb(), cpu_s() - cpu
    pq.write_table(table, out)
    return {"seconds": seconds, "cpu_s": cpu, "rss_mb": peak, "rss_before_mb": before,
            "rows": table.num_rows, "plan_s": planned}


def run_feast(p: dict[str, Path]) -> dict[str, float]:
    import shutil

    import pyarrow.parquet as pq
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, String

    repo = p["feast_repo"]
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir(parents=True)
    (repo / "feature_store.yaml").write_text(
        "project: tessera_bench_export\n"
        f"registry: {repo / 'registry.db'}\n"
        "provider: local\n"
        "online_store:\n"
        "  type: sqlite\n"
        f"  path: {repo / 'online.db'}\n"
        "offline_store:\n"
        "  type: duckdb\n"
        "entity_key_serialization_version: 3\n"
        "auth:\n"
        "  type: no_auth\n")
    entity = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
    # field_mapping: the file keeps the raw column names, the features get Tessera's names.
    source = FileSource(name="transactions", path=str(p["events"]), timestamp_field="event_ts",
                        field_mapping={"country": "last_country", "amount": "last_amount"})
    view = FeatureView(name=VIEW, entities=[entity], ttl=timedelta(days=TTL_DAYS), online=False,
                       source=source, schema=[Field(name="last_country", dtype=String),
                                              Field(name="last_amount", dtype=Float64)])
    store = FeatureStore(repo_path=str(repo))
    store.apply([entity, source, view])
    entity_df = pq.read_table(p["entities"]).to_pandas()
    # Warm-up on 1,000 rows (not timed), as on Tessera's side: imports (ibis' DuckDB backend).
    store.get_historical_features(entity_df=entity_df.iloc[:1000],
                                  features=[f"{VIEW}:{f}" for f in FEATURES]).to_arrow()
    return timed(lambda: store.get_historical_features(
        entity_df=entity_df, features=[f"{VIEW}:{f}" for f in FEATURES]), p["out_feast"])


def one(con, sql: str) -> tuple:
    """The single row of a query."""
    return tuple(con.execute(sql).fetchall()[0])


def compare(p: dict[str, Path]) -> dict[str, int]:
    """Row-by-row comparison on ``rid``, with the cause of every difference."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    ent, tes, fea = (str(p[k]) for k in ("entities", "out_tessera", "out_feast"))
    # the raw events (with transaction_id, datagen's tie-break: the order of the source files)
    evs = str(p["data"] / "transactions" / "*" / "*.parquet")
    ttl = TTL_DAYS * DAY_US
    r: dict[str, int] = {}
    r["entity_rows"] = one(con, f"SELECT count(*) FROM '{ent}'")[0]
    r["tessera_rows"], r["tessera_distinct_rid"] = one(con,
        f"SELECT count(*), count(DISTINCT rid) FROM '{tes}'")
    r["feast_rows"], r["feast_distinct_rid"] = one(con,
        f"SELECT count(*), count(DISTINCT rid) FROM '{fea}'")
    r["feast_dropped_rows"] = one(con,
        f"SELECT count(*) FROM '{ent}' e ANTI JOIN '{fea}' f USING (rid)")[0]
    r["feast_duplicated_rows"] = r["feast_rows"] - r["feast_distinct_rid"]
    r["tessera_out_of_order"] = one(con,
        f"SELECT count(*) FROM (SELECT rid, row_number() OVER () - 1 AS i FROM '{tes}') "
        f"WHERE rid <> i")[0]
    con.execute(f"""
        CREATE TEMP TABLE j AS
        SELECT e.rid, e.user_id, epoch_us(e.event_ts) AS t,
               t.last_country AS tc, t.last_amount AS ta,
               f.last_country AS fc, f.last_amount AS fa,
               epoch_us(f.event_ts) AS ft, f.user_id AS fu
        FROM '{ent}' e JOIN '{tes}' t USING (rid)
        JOIN (SELECT * FROM '{fea}' QUALIFY row_number() OVER (PARTITION BY rid) = 1) f
        USING (rid)""")
    r["compared_rows"] = one(con, "SELECT count(*) FROM j")[0]
    r["feast_key_or_ts_changed"] = one(con,
        "SELECT count(*) FROM j WHERE fu <> user_id OR ft <> t")[0]
    r["non_null_tessera"] = one(con, "SELECT count(*) FROM j WHERE tc IS NOT NULL")[0]
    r["non_null_feast"] = one(con, "SELECT count(*) FROM j WHERE fc IS NOT NULL")[0]
    con.execute("CREATE TEMP TABLE bad AS SELECT * FROM j "
                "WHERE tc IS DISTINCT FROM fc OR ta IS DISTINCT FROM fa")
    r["rows_differing"] = one(con, "SELECT count(*) FROM bad")[0]
    r["last_country_differs"] = one(con,
        "SELECT count(*) FROM bad WHERE tc IS DISTINCT FROM fc")[0]
    r["last_amount_differs"] = one(con,
        "SELECT count(*) FROM bad WHERE ta IS DISTINCT FROM fa")[0]
    # Ambiguity in the data itself, over all rows: the latest event in [t - ttl, t] is tied
    # (several events of the user at that same instant, with different values), or an event
    # lies exactly on a boundary.
    con.execute(f"""
        CREATE TEMP TABLE ev AS SELECT transaction_id, user_id, epoch_us(event_ts) AS e,
                                       country, amount
        FROM read_parquet('{evs}')""")
    con.execute(f"""
        CREATE TEMP TABLE cand AS
        SELECT j.rid, max(ev.e) AS m, count(*) AS n_in_window,
               count(*) FILTER (WHERE ev.e = j.t) AS on_t,
               count(*) FILTER (WHERE ev.e = j.t - {ttl}) AS on_lo
        FROM j JOIN ev ON ev.user_id = j.user_id AND ev.e <= j.t AND ev.e >= j.t - {ttl}
        GROUP BY j.rid""")
    con.execute("""
        CREATE TEMP TABLE ties AS
        SELECT c.rid, count(*) AS n_at_max, count(DISTINCT (ev.country, ev.amount)) AS values_at_max,
               list(ev.country) AS cs, list(ev.amount) AS am,
               arg_max(ev.country, ev.transaction_id) AS c_last,
               arg_max(ev.amount, ev.transaction_id) AS a_last
        FROM cand c JOIN j USING (rid) JOIN ev ON ev.user_id = j.user_id AND ev.e = c.m
        GROUP BY c.rid""")
    r["rows_with_tied_latest_event"] = one(con,
        "SELECT count(*) FROM ties WHERE values_at_max > 1")[0]
    r["rows_with_event_at_t"] = one(con, "SELECT count(*) FROM cand WHERE on_t > 0")[0]
    r["rows_with_event_at_t_minus_ttl"] = one(con,
        "SELECT count(*) FROM cand WHERE on_lo > 0")[0]
    r["reference_non_null"] = one(con, "SELECT count(*) FROM cand")[0]
    # An independent reference (the events themselves): where the latest event in the window is
    # not tied, its values; where no event is in the window, null.
    for side, c, a in (("tessera", "tc", "ta"), ("feast", "fc", "fa")):
        r[f"{side}_differs_from_reference"] = one(con, f"""
            SELECT count(*) FROM j LEFT JOIN ties USING (rid)
            WHERE CASE WHEN ties.rid IS NULL THEN {c} IS NOT NULL OR {a} IS NOT NULL
                       WHEN values_at_max = 1 THEN {c} IS DISTINCT FROM cs[1]
                                                   OR {a} IS DISTINCT FROM am[1]
                       ELSE NOT (list_contains(cs, {c}) AND list_contains(am, {a})) END""")[0]
    # On ties: which tied event each side took.
    for side, c, a in (("tessera", "tc", "ta"), ("feast", "fc", "fa")):
        r[f"{side}_on_ties_took_last_in_file_order"] = one(con, f"""
            SELECT count(*) FROM j JOIN ties USING (rid)
            WHERE values_at_max > 1 AND {c} = c_last AND {a} = a_last""")[0]
        r[f"{side}_on_ties_mixed_two_events"] = one(con, f"""
            SELECT count(*) FROM j JOIN ties USING (rid)
            WHERE values_at_max > 1 AND NOT list_contains(
                list_zip(cs, am), {{'cs': {c}, 'am': {a}}})""")[0]
    # Explain each difference.
    r["diff_explained_by_tie"] = one(con, """
        SELECT count(*) FROM bad JOIN ties USING (rid)
        WHERE values_at_max > 1 AND list_contains(cs, fc) AND list_contains(cs, tc)
          AND list_contains(am, fa) AND list_contains(am, ta)""")[0]
    r["diff_with_boundary_event"] = one(con,
        "SELECT count(*) FROM bad JOIN cand USING (rid) WHERE on_t > 0 OR on_lo > 0"
    )[0]
    r["diff_unexplained"] = one(con, """
        SELECT count(*) FROM bad LEFT JOIN ties USING (rid)
        WHERE NOT coalesce(values_at_max > 1 AND list_contains(cs, fc)
                           AND list_contains(cs, tc) AND list_contains(am, fa)
                           AND list_contains(am, ta), false)""")[0]
    sample = con.execute("SELECT rid, user_id, t, tc, fc, ta, fa FROM bad ORDER BY rid LIMIT 5"
                         ).fetchall()
    if sample:
        print("first differing rows (rid, user, t, tessera country, feast country, "
              "tessera amount, feast amount):")
        for row in sample:
            print("  ", row)
    return r


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", default="tessera,feast",
                        help="comma-separated sides, in order (each in its own subprocess)")
    parser.add_argument("--timeout", type=float, default=1200.0,
                        help="seconds before a side's subprocess is killed")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        p = paths(args.events, args.rows)
        res = run_tessera(p) if args.one == "tessera" else run_feast(p)
        print(json.dumps(res))
        return
    began = time.perf_counter()
    p = prepare(args.events, args.rows)
    print(f"inputs ready in {time.perf_counter() - began:.1f} s: {args.events:,} events, "
          f"{args.rows:,} entity rows", flush=True)
    results: dict[str, dict[str, float]] = {}  # each side's fastest run
    for side in args.runs.split(","):
        try:
            out = subprocess.run([sys.executable, __file__, "--events", str(args.events),
                                  "--rows", str(args.rows), "--one", side],
                                 capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            print(f"{side:8s} TIMED OUT after {args.timeout:.0f} s", flush=True)
            continue
        if out.returncode != 0:
            print(f"{side:8s} FAILED (exit {out.returncode}):\n{out.stderr[-3000:]}", flush=True)
            continue
        res = json.loads(out.stdout.strip().splitlines()[-1])
        if side not in results or res["seconds"] < results[side]["seconds"]:
            results[side] = res
        print(f"{side:8s} {res['seconds']:7.2f} s (plan {res['plan_s']:.2f} s)  "
              f"CPU {res['cpu_s']:6.1f} s  {res['rows']:,} rows  peak RSS "
              f"{res['rss_mb']:,.0f} MB (before the timed call: {res['rss_before_mb']:,.0f} MB)"
              f"  [load avg {os.getloadavg()[0]:.1f}]", flush=True)
    if "tessera" in results and "feast" in results:
        t, f = results["tessera"], results["feast"]
        print(f"ratio Feast / Tessera (fastest runs): time {f['seconds'] / t['seconds']:.2f}x, "
              f"CPU {f['cpu_s'] / t['cpu_s']:.2f}x, peak RSS {f['rss_mb'] / t['rss_mb']:.2f}x",
              flush=True)
    if p["out_tessera"].exists() and p["out_feast"].exists() and {"tessera", "feast"} <= set(
            results):
        began = time.perf_counter()
        r = compare(p)
        for k, v in r.items():
            print(f"  {k:40s} {v:>12,}")
        verdict = ("IDENTICAL" if r["rows_differing"] == 0 else
                   f"identical except {r['rows_differing']:,} rows, all of them ties Feast broke "
                   f"otherwise" if r["diff_unexplained"] == 0 else
                   f"DIFFER on {r['diff_unexplained']:,} rows not explained by ties")
        print(f"values: {verdict} ({r['compared_rows']:,} rows compared in "
              f"{time.perf_counter() - began:.1f} s)")


if __name__ == "__main__":
    main()
