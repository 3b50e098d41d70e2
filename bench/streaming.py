"""``tessera stream`` on the real Kafka and Redis: throughput against plain kafka-python, and
freshness at a steady rate.

1. Throughput. ``--events`` generated card transactions (``pipelines.datagen``, the 10 days
   before today) are produced once to a private topic (6 partitions). Then, for ``--rounds``
   rounds in alternating order:

   - plain: :func:`bench.kafka_baseline.plain_consume` reads the whole topic with the consumer
     settings ``tessera stream`` uses (``max_poll_records`` = ``stream.max_batch_events``,
     ``fetch_max_bytes`` 64 MiB, ``max_partition_fetch_bytes`` 16 MiB, ``stream.fetch_min_bytes``
     and ``stream.fetch_max_wait_ms``);
   - stream: a :class:`streaming.consumer.StreamConsumer` of both example views
     (``user_spend``, ``merchant_activity``) with a new consumer group **and** a new project
     name (the first part of every Redis key), so every event is really merged into Redis,
     none skipped as already applied; it lands into a folder of its own (landing on, as by
     default); its clock is fixed at today's midnight + 1 min, as in the tests.

   A first stream run over the whole topic is the **cold** one (first Polars plans, Lua script
   load, first imports); the rounds after it are warm. Each stream run is reported end to end
   (``StreamSummary.rate``: connecting and joining the group included) and **steady** (the
   batches after the first, from the end of the first batch to the end of the last).

   Where the time goes: every warm run times the consumer's steps (JSON decoding, landing,
   rules, state merge, tags/offsets/CAS, Redis, the Kafka poll, and the main thread's time
   between batches) by wrapping its step methods, without a profiler (:class:`Timers`).
   ``--profile`` adds one more run under cProfile, the polling thread included when there is
   one, with the same split plus kafka-python's record decoding (``Fetcher.fetched_records``);
   the profile itself goes to ``.tessera/bench/streaming.prof``.

2. Freshness. A second private topic; a ``StreamConsumer`` with the wall clock consumes while
   another process (so that its sends do not take this process's GIL) produces
   ``--fresh-rate`` events/s for ``--fresh-seconds`` s with ``produce(rate=..., max_seconds=...)``.
   Event ``i``'s ``event_ts`` is the planned start + i / rate, so event time is the send time;
   the offset between the two that remains (the producer starts a little late) is measured
   from the records' CreateTime and subtracted. Freshness is event time to visible in Redis
   (``StreamMetrics``); the first second of applied batches is left out as warm-up. The
   batches' sizes and the time each step takes per batch are printed too.

Every loop is bounded; the topics, consumer groups and the Redis keys of every project the
benchmark made are deleted at the end.

The stream runs and their time split are in ``bench/streaming_runs.py``, the freshness run
and its table in ``bench/streaming_freshness.py``.

    .venv/bin/python bench/streaming.py [--events 200000] [--rounds 3] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import sys
import tempfile
import time
import uuid
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.table import Table

from bench.streaming_freshness import (
    GOAL_P99_S,
    WARMUP_S,
    _freshness_table,
    _goal,
    freshness,
)
from bench.streaming_runs import PARTS, Run, console, profile_split, round_config, stream_run

ROOT = Path(__file__).resolve().parents[1]
GOAL_RATE = 50_000  # events/s per process


# --- cleanup ----------------------------------------------------------------------------------


def delete_keys(redis_url: str, projects: list[str]) -> int:
    """UNLINK every key of the benchmark's projects (SCAN by prefix; never FLUSHALL)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    gone = 0
    try:
        for project in projects:
            batch = []
            for key in client.scan_iter(match=f"{project}:*", count=5000):
                batch.append(key)
                if len(batch) >= 5000:
                    gone += client.unlink(*batch)
                    batch = []
            if batch:
                gone += client.unlink(*batch)
    finally:
        client.close()
    return gone


def delete_groups(bootstrap: str, groups: list[str]) -> None:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="tessera-bench-cleanup")
    try:
        admin.delete_groups(groups)
    except Exception as e:  # best effort: an empty group expires on its own
        console.print(f"[yellow]deleting consumer groups: {type(e).__name__}: {e}[/]")
    finally:
        admin.close()


# --- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    from bench.kafka_baseline import plain_consume
    from features.config import StreamConfig, load_config
    from features.windows import to_micros
    from streaming.kafka_admin import end_offsets
    from tests.online.repo import today
    from tests.streaming.harness import StreamRepo

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--max-batch-events", type=int,
                        default=StreamConfig().max_batch_events,
                        help="stream.max_batch_events (default: the product default)")
    parser.add_argument("--profile", action="store_true", help="one more stream run, profiled")
    parser.add_argument("--fresh-rate", type=float, default=5000.0)
    parser.add_argument("--fresh-seconds", type=float, default=20.0)
    parser.add_argument("--no-freshness", action="store_true")
    parser.add_argument("--freshness-only", action="store_true",
                        help="skip the throughput rounds (the events are still generated)")
    parser.add_argument("--fresh-repeat", type=int, default=1,
                        help="freshness runs back to back, each on a topic of its own")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", DeprecationWarning)  # kafka-python's importlib use

    base = load_config(ROOT / "feature_repo.yaml")
    redis_url, bootstrap = base.online.url, base.kafka.bootstrap_servers
    batch = args.max_batch_events
    n = args.events
    at_us = to_micros(today() + timedelta(minutes=1))
    clock = lambda: at_us  # noqa: E731
    tag = uuid.uuid4().hex[:6]
    projects: list[str] = []
    groups: list[str] = []
    repos: list[Any] = []
    from bench.machine import snapshots_paused

    with tempfile.TemporaryDirectory(prefix="tessera-bench-stream-") as tmp, \
            snapshots_paused(redis_url) as saved:
        console.print(f"Redis snapshots (save {saved!r}) paused for the run")
        work = Path(tmp)
        try:
            with console.status(f"generating {n:,} events and a repo"):
                big = StreamRepo(work / "big", redis_url, bootstrap, rows=n, days=10,
                                 partitions=args.partitions,
                                 stream=f"max_batch_events: {batch}")
                repos.append(big)
                cfg, views = big.cfg, big.views
                projects.append(cfg.project)
            if not args.freshness_only:
                with console.status(f"producing {n:,} events to {big.topic}"):
                    t0 = time.perf_counter()
                    big.produce()
                    produce_s = time.perf_counter() - t0
                expected = sum(end_offsets(bootstrap, big.topic).values())
                console.print(f"produced {expected:,} events to {big.topic} ({args.partitions} "
                              f"partitions) in {produce_s:.1f} s; max_batch_events {batch:,}")

                settings = {"max_poll_records": batch, "fetch_max_bytes": 64 << 20,
                            "max_partition_fetch_bytes": 16 << 20,
                            "fetch_min_bytes": cfg.stream.fetch_min_bytes,
                            "fetch_max_wait_ms": min(cfg.stream.fetch_max_wait_ms,
                                                     cfg.stream.max_batch_ms)}

                def stream(name: str, profile: cProfile.Profile | None = None) -> Run:
                    project = f"{cfg.project}{name.replace(' ', '')}"
                    projects.append(project)
                    group = f"bench-{tag}-{name.replace(' ', '')}"
                    groups.append(group)
                    rc = round_config(cfg, project, work / "land" / project)
                    with console.status(f"stream {name}"):
                        run = stream_run(name, rc, views, group, expected, clock, profile)
                    console.print(f"  stream {name}: {run.summary.format()}; steady "
                                  f"{run.steady:,.0f}/s, first batch {run.first_batch_s:.2f} s")
                    return run

                def plain(name: str) -> float:
                    with console.status(f"plain {name}"):
                        records, seconds = plain_consume(bootstrap, big.topic, expected,
                                                         max_records=batch, **settings)
                    console.print(f"  plain {name}: {records:,} records in {seconds:.2f} s "
                                  f"({records / seconds:,.0f}/s)")
                    return records / seconds

                cold = stream("cold")
                rows = []
                for r in range(args.rounds):
                    if r % 2 == 0:
                        p, s = plain(f"r{r + 1}"), stream(f"r{r + 1}")
                    else:
                        s, p = stream(f"r{r + 1}"), plain(f"r{r + 1}")
                    rows.append((r + 1, p, s))

                table = Table(title=f"Throughput: {n:,} events, {args.partitions} partitions, "
                                    f"2 views, max_batch_events {batch:,}")
                for col in ("round", "plain events/s", "stream e2e events/s",
                            "stream steady events/s", "steady / plain", "first batch s",
                            f"goal ≥ {GOAL_RATE:,}/s"):
                    table.add_column(col, justify="right")
                table.add_row("cold", "", f"{cold.e2e:,.0f}", f"{cold.steady:,.0f}", "",
                              f"{cold.first_batch_s:.2f}", _goal(cold.steady >= GOAL_RATE))
                for r, p, s in rows:
                    table.add_row(str(r), f"{p:,.0f}", f"{s.e2e:,.0f}", f"{s.steady:,.0f}",
                                  f"{s.steady / p:.2f}", f"{s.first_batch_s:.2f}",
                                  _goal(s.steady >= GOAL_RATE))
                ps = sorted(p for _, p, _ in rows)
                ss = sorted(s.steady for _, _, s in rows)
                es = sorted(s.e2e for _, _, s in rows)
                ratios = sorted(s.steady / p for _, p, s in rows)
                mid = len(rows) // 2
                table.add_row("median", f"{ps[mid]:,.0f}", f"{es[mid]:,.0f}", f"{ss[mid]:,.0f}",
                              f"{ratios[mid]:.2f}", "", _goal(ss[mid] >= GOAL_RATE))
                console.print(table)

                warm = [s for _, _, s in rows]
                timed_total = sum(r.summary.seconds for r in warm)
                timed_parts = {k: sum(r.split[k] for r in warm) / len(warm) for k in PARTS}
                split = Table(title=f"Where the time goes: a warm stream run (mean of {len(warm)} "
                                    f"timed rounds, {timed_total / len(warm):.2f} s)"
                                    + (" and one run under cProfile" if args.profile else ""))
                for col in ("part", "timed s", "share"):
                    split.add_column(col, justify="left" if col == "part" else "right")
                if args.profile:
                    prof = cProfile.Profile()
                    run = stream("profiled", prof)
                    total = run.summary.seconds
                    prof_parts = profile_split(prof, run.split["threads"], total)  # type: ignore[arg-type]
                    split.add_column(f"cProfile s ({run.e2e:,.0f} events/s)", justify="right")
                    split.add_column("share", justify="right")
                mean_total = timed_total / len(warm)
                threaded = warm[0].split.get("threaded", 0.0) > 0
                for key, label in PARTS.items():
                    if key == "poll":
                        split.add_section()
                        label += (" on the polling thread (overlaps the rows above)" if threaded
                                  else ", part of the first row")
                    cells = [label, f"{timed_parts[key]:.2f}", f"{timed_parts[key] / mean_total:.0%}"]
                    if args.profile:
                        cells += [f"{prof_parts[key]:.2f}", f"{prof_parts[key] / total:.0%}"]
                    split.add_row(*cells)
                if args.profile:
                    split.add_row("  of which record decoding (kafka-python Fetcher.fetched_records)",
                                  "", "", f"{prof_parts['records']:.2f}",
                                  f"{prof_parts['records'] / total:.0%}")
                console.print(split)
                if args.profile:
                    out = ROOT / ".tessera" / "bench" / "streaming.prof"
                    out.parent.mkdir(parents=True, exist_ok=True)
                    prof.dump_stats(out)
                    console.print(f"profile written to {out.relative_to(ROOT)} "
                                  f"(python -m pstats {out.relative_to(ROOT)})")

            p99s: list[float] = []
            for k in range(0 if args.no_freshness else args.fresh_repeat):
                with console.status("freshness repo"):
                    fresh = StreamRepo(work / f"fresh{k}", redis_url, bootstrap, rows=1000,
                                       days=2, partitions=args.partitions)
                    repos.append(fresh)
                    projects.append(fresh.cfg.project)
                with console.status(f"freshness: {args.fresh_rate:,.0f} events/s for "
                                    f"{args.fresh_seconds:g} s"):
                    f = freshness(fresh, big.events, args.fresh_rate, args.fresh_seconds)
                p99s.append(_freshness_table(f, args.fresh_rate, args.fresh_seconds))
            if len(p99s) > 1:
                met = sum(p <= GOAL_P99_S * 1000 for p in p99s)
                console.print(f"freshness p99 (after the first {WARMUP_S:g} s) in "
                              f"{len(p99s)} runs: {', '.join(f'{p:,.0f}' for p in p99s)} ms; "
                              f"median {sorted(p99s)[len(p99s) // 2]:,.0f} ms; "
                              f"≤ {GOAL_P99_S * 1000:.0f} ms in {met} of {len(p99s)}")
        finally:
            with console.status("cleaning up"):
                for repo in repos:
                    repo.close()
                if groups:
                    delete_groups(bootstrap, groups)
                gone = delete_keys(redis_url, projects)
            console.print(f"deleted {len(repos)} topics (and their DLQs), {len(groups)} "
                          f"consumer groups and {gone:,} Redis keys of {len(projects)} projects")


if __name__ == "__main__":
    main()
