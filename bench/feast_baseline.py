"""Feast's online serving and plain redis-py baselines, on the same rows and the same Redis.

The reference side of the online benchmark (``bench/online.py`` measures Tessera against it in
the same run). Feast is used as a user would: a feature repo in a work folder
(``feature_store.yaml`` with ``online_store: redis`` on ``db=1`` and ``offline_store: duckdb``),
a ``FileSource`` over a Parquet file, an ``Entity`` and a ``FeatureView``, ``FeatureStore.apply``,
``materialize``, ``get_online_features(...).to_dict()`` and ``feast serve``.

Interface::

    side = FeastSide.setup(table, join_key="user_id", timestamp_column="event_ts",
                           workdir=Path(...), redis_host="127.0.0.1", redis_port=6390, redis_db=1)
    side.materialize()                         # {"rows", "seconds", "rows_per_s", "written"}
    side.verify(sample=200)                    # online values == the table's, or raises
    side.online_latency(ids, batch=1, iterations=2000, max_seconds=20)
    with side.serve() as server:               # `feast serve`, 127.0.0.1, a free port
        server.http_latency(ids, iterations=2000, max_seconds=20, concurrency=1)
        server.http_latency(ids, iterations=4000, max_seconds=20, concurrency=8)
    client = side.redis_client()
    keys, fields = side.redis_keys(ids), side.redis_fields()   # Feast's own hashes and fields
    raw_hmget_latency(client, keys, fields, batch=1, iterations=5000, max_seconds=10)
    raw_hmget_latency(client, keys, fields, batch=100, iterations=1000, max_seconds=10)
    raw_pipelined_hset_rate(client, side.copy_rows(ids), chunk=1000, max_seconds=60)
    raw_pipelined_hset_rate(client, side.encode_rows(), chunk=1000, max_seconds=60)
    side.clear_online(); side.close()

Every latency result is a dict: ``n`` (timed calls), ``seconds`` (wall time of the timed loop),
``p50_ms``, ``p99_ms``, ``max_ms``, ``mean_ms``, ``ops_per_s`` (calls/s) and ``entities_per_s``.
Every loop is bounded twice: at most ``iterations`` calls and at most ``max_seconds``; a short
warm-up (also bounded) comes first and is not recorded. Request entity ids are drawn with a
seeded RNG before the timed loop.

Choices, stated so they can be argued with:

- Feast's Redis online store runs with its defaults (``skip_dedup: false``: materialize first
  HMGETs the stored ``_ts`` of every entity, then HSETs; no key TTL). Its writes skip rows
  whose timestamp is not newer than the stored one, so ``setup`` first deletes this project's
  hashes in ``redis_db`` (a SCAN limited to keys ending in the project name; never FLUSHDB).
- ``feast serve`` runs with ``--workers 1`` (its default), ``--max-requests 0`` (gunicorn's
  "never restart"; Feast's default of 1000 restarts the worker mid-run) and ``--no-access-log``.
  Both favour Feast. The load generator runs in this process (httpx, one keep-alive client per
  thread, pre-encoded JSON bodies) on the same machine, so its CPU competes with the server's.
- The raw HMGET baseline reads the 10 feature fields of Feast's hashes (Feast itself also reads
  ``_ts:<view>``), with keys and field names computed up front by Feast's own helpers;
  ``decode=side.decode_values`` adds the protobuf decoding a reader needs.
- ``copy_rows`` rewrites the exact bytes Feast stored (read back with HGETALL) under keys
  with another project suffix: pure pipelined HSET. ``encode_rows`` also builds those bytes from
  the Arrow table in Python (Feast's key serializer, ``mmh3`` field names, ``Value`` protobufs),
  which is what a writer must do; both clean up their keys afterwards.

Where the parts live: ``FeastSide`` and ``synthetic_table`` in ``bench/feast_side.py``, the
server processes (``FeastServer``) in ``bench/servers.py``, ``summarize`` and ``timed_loop`` in
``bench/timing.py``; this module holds the raw redis-py baselines and the standalone run.

Run alone (needs the project's Redis: ``make services``)::

    .venv/bin/python bench/feast_baseline.py --entities 100000
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.feast_side import WORK, FeastSide, synthetic_table
from bench.timing import Progress, _batches, summarize, timed_loop

if TYPE_CHECKING:
    import redis


# --------------------------------------------------------------------------------------------
# Raw redis-py baselines
# --------------------------------------------------------------------------------------------

def raw_hmget_latency(client: redis.Redis, keys: Sequence[bytes], fields: Sequence[bytes],
                      batch: int = 1, iterations: int = 5000, max_seconds: float = 10.0,
                      seed: int = 0, decode: Callable[[list[Any]], Any] | None = None,
                      progress: Progress | None = None) -> dict[str, Any]:
    """Latency of one HMGET of ``fields`` (batch == 1) or of ``batch`` HMGETs in one
    non-transactional pipeline, on random keys among ``keys``. ``decode`` (optional) is applied
    to each hash's values inside the timed call. Raises if a read hash is missing."""
    flds = list(fields)
    requests = [[keys[i] for i in b] for b in _batches(range(len(keys)), batch,
                                                        min(iterations, 20_000), seed)]

    if batch == 1:
        def call(ks: list[bytes]) -> Any:
            vals = client.hmget(ks[0], flds)
            return decode(vals) if decode is not None else vals
    else:
        def call(ks: list[bytes]) -> Any:
            pipe = client.pipeline(transaction=False)
            for k in ks:
                pipe.hmget(k, flds)
            out = pipe.execute()
            return [decode(v) for v in out] if decode is not None else out

    # The very hashes Feast wrote: every field must be there.
    check = client.hmget(requests[0][0], flds)
    if any(v is None for v in check):
        raise RuntimeError(f"missing fields in hash {requests[0][0]!r}: {check}")
    lat, seconds = timed_loop(call, requests, iterations, max_seconds, progress=progress)
    return summarize(lat, seconds, batch)


def raw_pipelined_hset_rate(client: redis.Redis, rows: Iterable[tuple[bytes, Mapping[bytes, bytes]]],
                            chunk: int = 1000, max_seconds: float = 60.0, limit: int | None = None,
                            cleanup: bool = True, progress: Progress | None = None) -> dict[str, Any]:
    """Rows/s of HSET key mapping, ``chunk`` rows per non-transactional pipeline.

    ``rows`` may be a lazy iterator: producing the next row is timed too (so pass a list for
    pure HSET, a generator that encodes for encode + HSET). Stops after ``limit`` rows or once
    ``max_seconds`` is exceeded (checked per chunk). Deletes the written keys afterwards, untimed,
    unless ``cleanup`` is False."""
    written: list[bytes] = []
    it = iter(rows)
    began = time.perf_counter()
    deadline = began + max_seconds
    n = 0
    while limit is None or n < limit:
        part = list(itertools.islice(it, chunk if limit is None else min(chunk, limit - n)))
        if not part:
            break
        pipe = client.pipeline(transaction=False)
        for key, mapping in part:
            pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]
        pipe.execute()
        n += len(part)
        written.extend(k for k, _ in part)
        if progress is not None:
            progress(len(part))
        if time.perf_counter() > deadline:
            break
    seconds = time.perf_counter() - began
    if cleanup:
        for i in range(0, len(written), 10_000):
            client.unlink(*written[i:i + 10_000])
    return {"rows": n, "seconds": seconds, "rows_per_s": n / seconds if seconds else math.nan}


# --------------------------------------------------------------------------------------------
# Standalone run
# --------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=2000,
                        help="calls per 1-entity latency measure (batches: a quarter)")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="per measure")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--serve-workers", type=int, default=1)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--redis-host", default="127.0.0.1")
    parser.add_argument("--redis-port", type=int, default=6390)
    parser.add_argument("--redis-db", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=WORK)
    parser.add_argument("--incremental", action="store_true",
                        help="materialize_incremental instead of materialize")
    parser.add_argument("--keep", action="store_true", help="leave Feast's hashes in Redis")
    args = parser.parse_args()

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 150)
    it, its, bt, sec = args.iterations, args.iterations * 5 // 2, args.batch, args.max_seconds
    results: dict[str, dict[str, Any]] = {}

    with console.status("generating the table and importing Feast (~13 s)"):
        table = synthetic_table(args.entities, args.seed)
        t0 = time.perf_counter()
        side = FeastSide.setup(table, "user_id", "event_ts", args.workdir, args.redis_host,
                               args.redis_port, args.redis_db)
    console.print(f"setup (import feast + apply) {time.perf_counter() - t0:.1f} s; "
                  f"repo {args.workdir}")
    try:
        console.print("materializing (Feast's own progress bar follows)")
        mat = side.materialize(incremental=args.incremental)
        if mat["written"] != mat["rows"]:
            raise SystemExit(f"materialize wrote {mat['written']} of {mat['rows']} hashes")
        console.print(f"verified {side.verify():,} online values (200 entities) against the table")
        ids = side.entity_ids
        client = side.redis_client()
        keys, fields = side.redis_keys(ids), side.redis_fields()
        copies = side.copy_rows()

        cols = (TextColumn("{task.description:44s}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn())
        with Progress(*cols, console=console) as bar:
            def run(name: str, total: int, fn: Callable[..., dict[str, Any]], **kw: Any) -> None:
                task = bar.add_task(name, total=total)
                results[name] = fn(progress=lambda k: bar.advance(task, k), **kw)
                bar.update(task, completed=total)

            run("feast get_online_features 1", it, side.online_latency,
                entity_ids=ids, batch=1, iterations=it, max_seconds=sec)
            run(f"feast get_online_features {bt}", it // 4, side.online_latency,
                entity_ids=ids, batch=bt, iterations=it // 4, max_seconds=sec)
            run("raw HMGET 1", its, raw_hmget_latency, client=client, keys=keys,
                fields=fields, batch=1, iterations=its, max_seconds=sec)
            run("raw HMGET 1 + decode", its, raw_hmget_latency, client=client, keys=keys,
                fields=fields, batch=1, iterations=its, max_seconds=sec,
                decode=side.decode_values)
            run(f"raw pipelined HMGET {bt}", it // 4, raw_hmget_latency, client=client,
                keys=keys, fields=fields, batch=bt, iterations=it // 4, max_seconds=sec)
            run(f"raw pipelined HMGET {bt} + decode", it // 4, raw_hmget_latency,
                client=client, keys=keys, fields=fields, batch=bt, iterations=it // 4,
                max_seconds=sec, decode=side.decode_values)
            run("raw pipelined HSET (Feast's bytes)", len(copies), raw_pipelined_hset_rate,
                client=client, rows=copies, max_seconds=sec * 3)
            run("raw encode + pipelined HSET", table.num_rows, raw_pipelined_hset_rate,
                client=client, rows=side.encode_rows(), max_seconds=sec * 3)
            task = bar.add_task("starting feast serve", total=None)
            with side.serve(workers=args.serve_workers) as server:
                bar.update(task, description=f"feast serve on :{server.port}", total=1,
                           completed=1)
                run("feast serve GET /health (HTTP floor)", it, server.http_latency,
                    entity_ids=ids, iterations=it, max_seconds=sec, path="/health")
                run("feast serve HTTP 1", it, server.http_latency, entity_ids=ids,
                    iterations=it, max_seconds=sec)
                c = args.concurrency
                run(f"feast serve HTTP 1, {c} clients", its, server.http_latency,
                    entity_ids=ids, iterations=its, max_seconds=sec, concurrency=c)
                run(f"feast serve HTTP {bt}", it // 4, server.http_latency, entity_ids=ids,
                    iterations=it // 4, max_seconds=sec, batch=bt)
                serve_cmd = " ".join(server.command)
    finally:
        if not args.keep:
            side.clear_online()
        side.close()

    nf = len(side.feature_names)
    lat = Table(title=f"Online reads, {args.entities:,} entities × {nf} features "
                      f"(Redis {args.redis_host}:{args.redis_port} db {args.redis_db})")
    for col in ("measure", "n", "p50 ms", "p99 ms", "max ms", "calls/s", "entities/s",
                "p50 vs raw"):
        lat.add_column(col, justify="left" if col == "measure" else "right")
    one, many = results["raw HMGET 1"]["p50_ms"], results[f"raw pipelined HMGET {bt}"]["p50_ms"]
    base = {"feast get_online_features 1": one, f"feast get_online_features {bt}": many,
            "raw HMGET 1 + decode": one, f"raw pipelined HMGET {bt} + decode": many,
            "feast serve HTTP 1": one,  # none for the concurrent row: its p50 is queueing
            f"feast serve HTTP {bt}": many}
    for name, r in results.items():
        if "p50_ms" not in r:
            continue
        ratio = f"{r['p50_ms'] / base[name]:.1f}×" if name in base else ""
        lat.add_row(name, f"{r['n']:,}", f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}",
                    f"{r['max_ms']:.2f}", f"{r['ops_per_s']:,.0f}", f"{r['entities_per_s']:,.0f}",
                    ratio)
    console.print(lat)

    wr = Table(title="Writes")
    for col in ("measure", "rows", "seconds", "rows/s", "vs Feast"):
        wr.add_column(col, justify="left" if col == "measure" else "right")
    how = "materialize_incremental" if args.incremental else "materialize"
    wr.add_row(f"feast {how} (duckdb → redis)", f"{mat['rows']:,}", f"{mat['seconds']:.2f}",
               f"{mat['rows_per_s']:,.0f}", "1.0×")
    for name in ("raw pipelined HSET (Feast's bytes)", "raw encode + pipelined HSET"):
        r = results[name]
        wr.add_row(name, f"{r['rows']:,}", f"{r['seconds']:.2f}", f"{r['rows_per_s']:,.0f}",
                   f"{r['rows_per_s'] / mat['rows_per_s']:.1f}×")
    console.print(wr)
    console.print(f"feast serve: {serve_cmd}")


if __name__ == "__main__":
    main()
