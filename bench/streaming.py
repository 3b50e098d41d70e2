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

    .venv/bin/python bench/streaming.py [--events 200000] [--rounds 3] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import multiprocessing
import pstats
import sys
import tempfile
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
GOAL_RATE = 50_000  # events/s per process
GOAL_P99_S = 0.5
WARMUP_S = 1.0  # freshness: applied batches of the first second are left out
console = Console(width=150)


@dataclass
class Run:
    """One StreamConsumer run: its summary and per-batch (start, end, events so far)."""

    name: str
    summary: Any
    marks: list[tuple[float, float, int]] = field(default_factory=list)
    split: dict[str, float] = field(default_factory=dict)  # part -> seconds (Timers.parts)

    @property
    def e2e(self) -> float:
        return self.summary.rate

    @property
    def steady(self) -> float:
        """Events/s of the batches after the first (from the end of the first)."""
        if len(self.marks) < 2:
            return float("nan")
        return ((self.marks[-1][2] - self.marks[0][2])
                / (self.marks[-1][1] - self.marks[0][1]))

    @property
    def first_batch_s(self) -> float:
        return self.marks[0][1] - self.marks[0][0] if self.marks else float("nan")


def timed(consumer: Any) -> list[tuple[float, float, int]]:
    """Record each batch's processing start, end and the events so far (wraps the instance's
    ``_process``; the class is untouched)."""
    marks: list[tuple[float, float, int]] = []
    process = consumer._process

    def wrapper(records: Any, summary: Any) -> Any:
        began = time.monotonic()
        out = process(records, summary)
        marks.append((began, time.monotonic(), summary.events))
        return out

    consumer._process = wrapper
    return marks


class Timers:
    """Wall time of each step of the consumer, without a profiler: the step methods of this
    consumer's own objects are wrapped (one clock read per call, a few calls per batch);
    ``merge_batch`` in ``streaming.apply`` and, when polling has a thread of its own,
    ``streaming.fetcher.Fetcher._poll`` are swapped for the run and put back after."""

    def __init__(self, consumer: Any) -> None:
        import streaming.apply as apply_module

        self.seconds: dict[str, float] = {}
        self._patched: list[tuple[Any, str, Any]] = []
        self.threaded = not hasattr(consumer, "_poll")
        if self.threaded:
            from streaming.fetcher import Fetcher

            self._patch(Fetcher, "_poll", "poll")
        else:
            self._wrap(consumer, "_poll", "poll")
        for name in ("_commit", "_dead_letters"):
            if hasattr(consumer, name):
                self._wrap(consumer, name, "commit")
        self._wrap(consumer.online, "get", "redis")
        self._wrap(consumer.online, "call_many", "redis")
        for topic in consumer.topics.values():
            self._wrap(topic.decoder, "decode", "json")
            if topic.landing is not None:
                self._wrap(topic.landing, "write", "landing")
            for writer in topic.views:
                self._wrap(writer, "reject", "rules")
                self._wrap(writer, "rules", "rules")
                self._wrap(writer, "apply", "apply")
        self._patch(apply_module, "merge_batch", "merge")

    def _timed(self, inner: Any, label: str) -> Any:
        seconds = self.seconds
        seconds.setdefault(label, 0.0)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                seconds[label] += time.perf_counter() - began

        return wrapper

    def _wrap(self, obj: Any, attr: str, label: str) -> None:
        """An instance's method: the wrapper dies with the instance."""
        setattr(obj, attr, self._timed(getattr(obj, attr), label))

    def _patch(self, owner: Any, attr: str, label: str) -> None:
        """A class's or module's function: put back by :meth:`restore`."""
        inner = getattr(owner, attr)
        self._patched.append((owner, attr, inner))
        setattr(owner, attr, self._timed(inner, label))

    def restore(self) -> None:
        for owner, attr, inner in reversed(self._patched):
            setattr(owner, attr, inner)
        self._patched.clear()

    def parts(self, total: float, inside: float) -> dict[str, float]:
        """Seconds per part of ``PARTS`` (nested calls subtracted from their callers);
        ``inside``: the seconds spent in batches (``_process``)."""
        t = self.seconds
        known = t["json"] + t.get("landing", 0.0) + t["rules"] + t["apply"] + t["commit"]
        return {"outside": total - inside, "json": t["json"],
                "landing": t.get("landing", 0.0), "rules": t["rules"], "merge": t["merge"],
                "bookkeeping": t["apply"] - t["merge"] - t["redis"], "redis": t["redis"],
                "commit": t["commit"], "inside": inside - known, "poll": t["poll"],
                "threaded": float(self.threaded)}


#: The parts of a stream run, in the order they are shown. All but ``poll`` are the main
#: thread's and add up to the run's wall time.
PARTS = {
    "outside": "main thread between batches: connect, group join, and the Kafka poll "
               "(or, with a polling thread, waiting for it)",
    "json": "JSON decoding (streaming/decode.py)",
    "landing": "landing Parquet (streaming/landing.py, one fsync'd file per partition)",
    "rules": "rules + partials: reject, project, collect (ViewWriter.reject/rules)",
    "merge": "state merge (streaming/state.py merge_batch)",
    "bookkeeping": "entity tags, offsets, CAS commands (rest of ViewWriter.apply)",
    "redis": "Redis: MGET + EVALSHA pipelines (RedisOnline.get/call_many)",
    "commit": "dead letters (+ the offset commit when on the main thread)",
    "inside": "the rest of each batch: frames, partition/offset columns, metrics",
    "poll": "Kafka poll: fetch + record decoding (kafka-python)",
}


class ThreadProfiles:
    """cProfile for the consumer's polling thread too (``cProfile`` sees one thread): while
    installed, a thread named ``tessera-stream-fetcher`` starts a profiler of its own."""

    NAME = "tessera-stream-fetcher"

    def __init__(self) -> None:
        self.profiles: list[cProfile.Profile] = []

    def _hook(self, *_: Any) -> None:
        sys.setprofile(None)
        if threading.current_thread().name.startswith(self.NAME):
            profile = cProfile.Profile()
            self.profiles.append(profile)
            profile.enable()

    def __enter__(self) -> ThreadProfiles:
        threading.setprofile(self._hook)
        return self

    def __exit__(self, *_: Any) -> None:
        threading.setprofile(None)  # type: ignore[arg-type]


def round_config(cfg: Any, project: str, land: Path) -> Any:
    """``cfg`` with its own Redis namespace (project) and landing folder."""
    return cfg.model_copy(update={"project": project,
                                  "offline": cfg.offline.model_copy(update={"path": land})})


def stream_run(name: str, cfg: Any, views: list, group: str, events: int, clock: Any,
               profile: cProfile.Profile | None = None) -> Run:
    from streaming.consumer import StreamConsumer

    consumer = StreamConsumer(cfg, views, group=group, clock=clock)
    timers = Timers(consumer) if profile is None else None
    marks = timed(consumer)
    threads = ThreadProfiles()
    try:
        if profile is not None:
            threads.__enter__()
            profile.enable()
        summary = consumer.run(max_events=events, max_seconds=300, handle_signals=False)
    finally:
        if profile is not None:
            profile.disable()
            threads.__exit__()
        if timers is not None:
            timers.restore()
        consumer.online.close()
    inside = sum(end - began for began, end, _ in marks)
    split = {} if timers is None else timers.parts(summary.seconds, inside)
    if profile is not None:
        split = {"threads": threads.profiles}  # type: ignore[dict-item]
    applied = sum(summary.applied.values())
    if summary.events != events or applied != 2 * events or summary.skipped:
        console.print(f"[red]{name}: expected {events:,} events each applied to both views, "
                      f"got {summary.format()}[/]")
    return Run(name, summary, marks, split)


# --- profile ----------------------------------------------------------------------------------


def profile_split(profile: cProfile.Profile, threads: list[cProfile.Profile],
                  total: float) -> dict[str, float]:
    """Seconds per part of ``PARTS`` (and ``records``: kafka-python's record decoding, part of
    ``poll``) in one profiled stream run, from the cumulative times of the entry points; the
    polling thread's profile, when there is one, is added to the main thread's."""
    merged = pstats.Stats(profile)
    for p in threads:
        merged.add(p)
    stats = merged.stats  # type: ignore[attr-defined]

    def cum(suffix: str, *names: str) -> float:
        return sum(v[3] for (file, _line, name), v in stats.items()
                   if file.replace("\\", "/").endswith(suffix) and name in names)

    redis = cum("features/online/redis_store.py", "get", "call_many")
    merge = cum("streaming/state.py", "merge_batch")
    apply = cum("streaming/apply.py", "apply")
    out = {
        "json": cum("streaming/decode.py", "decode"),
        "landing": cum("streaming/landing.py", "write"),
        "rules": cum("streaming/apply.py", "reject", "rules"),
        "merge": merge,
        "bookkeeping": apply - merge - redis,
        "redis": redis,
        "commit": cum("streaming/consumer.py", "_commit", "_dead_letters"),
    }
    inside = cum("streaming/consumer.py", "_process")
    out["inside"] = inside - out["json"] - out["landing"] - out["rules"] - apply - out["commit"]
    out["outside"] = total - inside
    out["poll"] = cum("streaming/consumer.py", "_poll") + cum("streaming/fetcher.py", "_poll")
    out["records"] = cum("kafka/consumer/fetcher.py", "fetched_records")
    return out


# --- freshness --------------------------------------------------------------------------------


def _produce_at(bootstrap: str, topic: str, payloads: list[bytes], keys: list[bytes],
                rate: float, seconds: float, start: float, out: Any) -> None:
    """In its own process: wait for the planned instant, then produce at ``rate``."""
    import kafka  # noqa: F401  (imported before the planned instant, not after it)
    import rich.progress  # noqa: F401

    from streaming.produce import produce

    time.sleep(max(0.0, start - time.time()))
    summary = produce(bootstrap, topic, payloads, keys, rate=rate, max_seconds=seconds)
    out.put((summary.sent, summary.seconds))


def freshness(repo: Any, events: Any, rate: float, seconds: float) -> dict[str, Any]:
    import numpy as np
    import polars as pl

    from streaming import events as E
    from streaming.consumer import StreamConsumer

    n = int(rate * seconds)
    frame = events.sample(n, with_replacement=n > events.height, seed=11)
    views = repo.views
    consumer = StreamConsumer(repo.cfg, views, group=f"bench-fresh-{uuid.uuid4().hex[:6]}")
    batches: list[tuple[float, Any]] = []  # (applied at, lags in µs), every batch
    observe = consumer.metrics.freshness

    def record(lag_us: Any) -> None:
        if len(lag_us):
            batches.append((time.monotonic(), np.asarray(lag_us)))
        observe(lag_us)

    consumer.metrics.freshness = record
    timers = Timers(consumer)
    marks = timed(consumer)
    sent_at: list[tuple[int, bytes]] = []  # (CreateTime ms, value) of every 20th record
    process = consumer._process

    def sample(records: Any, summary: Any) -> Any:
        for recs in records.values():
            sent_at.extend((r.timestamp, r.value) for r in recs[::20])
        return process(records, summary)

    consumer._process = sample
    result: dict[str, Any] = {}
    assigned = threading.Event()
    log = logging.getLogger("tessera.stream")
    handler = _OnAssigned(assigned)
    level, propagate = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # the bench prints its own lines (warnings through the handler)
    thread = threading.Thread(target=lambda: result.update(summary=consumer.run(
        max_seconds=seconds + 60, handle_signals=False)), daemon=True)
    thread.start()
    if not assigned.wait(30):  # start producing once the consumer holds its partitions
        console.print("[yellow]freshness: no partitions assigned after 30 s[/]")
    start = time.time() + 2.0
    start_us = int(start * 1e6)
    ts = pl.Series("event_ts", start_us + (np.arange(n) * (1e6 / rate)).astype(np.int64))
    frame = frame.with_columns(ts.cast(pl.Datetime("us", "UTC")))
    src = views[0].source
    payloads, keys = E.encode_events(frame, src), E.encode_keys(frame, "user_id")
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    producer = ctx.Process(target=_produce_at, args=(repo.bootstrap, repo.topic, payloads, keys,
                                                     rate, seconds, start, out))
    producer.start()
    try:
        sent, produce_s = out.get(timeout=seconds + 90)
    finally:
        producer.join(timeout=30)
    deadline = time.monotonic() + 30
    while consumer.metrics.total_events < sent and time.monotonic() < deadline:
        time.sleep(0.05)
    consumer.stop()
    thread.join(timeout=30)
    timers.restore()
    consumer.online.close()
    log.removeHandler(handler)
    log.setLevel(level)
    log.propagate = propagate

    skew = np.array([ms * 1000 - _event_us(json.loads(v)["event_ts"]) for ms, v in sent_at],
                    np.float64) / 1e6  # send time - event time, s
    offset = float(np.median(skew)) if len(skew) else 0.0
    first = batches[0][0] if batches else 0.0
    every = np.concatenate([x for _, x in batches]) / 1e6 if batches else np.zeros(0)
    warm = [x for t, x in batches if t - first >= WARMUP_S]
    steady = np.concatenate(warm) / 1e6 if warm else np.zeros(0)
    return {
        "sent": sent, "produce_s": produce_s, "summary": result.get("summary"),
        "consumed": consumer.metrics.total_events,
        "metrics_p50": consumer.metrics.freshness_p(0.5, seconds=3600),
        "metrics_p99": consumer.metrics.freshness_p(0.99, seconds=3600),
        "offset": offset, "skew_p99": float(np.quantile(skew, 0.99)) if len(skew) else 0.0,
        "all": every, "steady": steady, "marks": marks, "timers": timers.seconds,
    }


class _OnAssigned(logging.Handler):
    """Sets ``event`` when the consumer logs that it got partitions."""

    def __init__(self, event: threading.Event) -> None:
        super().__init__(logging.INFO)
        self.event = event

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            console.print(f"[yellow]stream: {text}[/]")
        if text.startswith("partitions assigned") and not text.endswith("none"):
            self.event.set()


def _event_us(text: str) -> int:
    from datetime import datetime

    from features.windows import to_micros

    return to_micros(datetime.fromisoformat(text.replace("Z", "+00:00")))


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
    from bench.feast_baseline import snapshots_paused

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


def _goal(ok: bool) -> str:
    return "[green]met[/]" if ok else "[red]missed[/]"


def _freshness_table(f: dict[str, Any], rate: float, seconds: float) -> float:
    """Prints the run's tables; returns its p99 after the warm-up, ms (inf: no batch)."""
    import numpy as np

    def q(x: Any, p: float) -> str:
        return f"{np.quantile(x, p) * 1000:,.0f}" if len(x) else "n/a"

    off = f["offset"]
    table = Table(title=f"Freshness: {f['sent']:,} events produced at {rate:,.0f}/s for "
                        f"{seconds:g} s ({f['sent'] / f['produce_s']:,.0f}/s achieved), "
                        f"{f['consumed']:,} consumed")
    for col in ("measure", "events × views", "p50 ms", "p99 ms", "max ms",
                f"goal p99 ≤ {GOAL_P99_S * 1000:.0f} ms"):
        table.add_column(col, justify="right")
    mp50, mp99 = f["metrics_p50"], f["metrics_p99"]
    table.add_row("StreamMetrics.freshness_p, all (event time to visible)",
                  f"{len(f['all']):,}",
                  "n/a" if mp50 is None else f"{mp50 * 1000:,.0f}",
                  "n/a" if mp99 is None else f"{mp99 * 1000:,.0f}",
                  f"{f['all'].max() * 1000:,.0f}" if len(f["all"]) else "n/a", "")
    for name, x in (("all, send offset subtracted", f["all"] - off),
                    (f"after the first {WARMUP_S:g} s, send offset subtracted",
                     f["steady"] - off)):
        ok = len(x) and np.quantile(x, 0.99) <= GOAL_P99_S
        table.add_row(name, f"{len(x):,}", q(x, 0.5), q(x, 0.99),
                      f"{x.max() * 1000:,.0f}" if len(x) else "n/a", _goal(bool(ok)))
    console.print(table)
    console.print(f"send time − event time (CreateTime, sampled): median {off * 1000:,.0f} ms, "
                  f"p99 {f['skew_p99'] * 1000:,.0f} ms (the median is subtracted above)")
    if f["summary"] is not None:
        console.print(f"  {f['summary'].format()}")
    marks = f["marks"]
    if len(marks) > 1:
        sizes = np.diff([0] + [m[2] for m in marks])
        spent = np.array([m[1] - m[0] for m in marks])
        console.print(f"  batches: {len(marks)}, events per batch median {np.median(sizes):,.0f}; "
                      f"processing per batch (decode → Redis → commit) p50 "
                      f"{np.median(spent) * 1000:,.0f} ms, p99 "
                      f"{np.quantile(spent, 0.99) * 1000:,.0f} ms, first {spent[0] * 1000:,.0f} ms")
        t = f["timers"]
        per = {"JSON": t["json"], "landing": t.get("landing", 0.0), "rules": t["rules"],
               "merge": t["merge"], "tags/offsets/CAS": t["apply"] - t["merge"] - t["redis"],
               "Redis": t["redis"], "commit": t["commit"]}
        per["rest"] = spent.sum() - sum(per.values())
        console.print("  per batch, mean ms: " + ", ".join(
            f"{k} {v / len(marks) * 1000:,.0f}" for k, v in per.items()))
    steady = f["steady"] - off
    return float(np.quantile(steady, 0.99) * 1000) if len(steady) else float("inf")


if __name__ == "__main__":
    main()
