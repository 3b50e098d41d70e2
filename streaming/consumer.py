"""``tessera stream``: Kafka consumer group → the views' rules → Redis (and the offline store).

One process consumes every selected view's topic in one consumer group. Each micro-batch
(at most ``stream.max_batch_events`` events or ``stream.max_batch_ms``) goes, per topic:

1. decode (:mod:`streaming.decode`; undecodable, missing or mistyped fields, null times are
   dead letters), then the source's row-level expectations (:mod:`streaming.expectations`;
   failing events are dead letters with reason ``expectation``);
2. per view: dead letters for null keys and too-late events, the view's rules, and the
   exactly-once merge into Redis (:mod:`streaming.apply`);
3. send the dead letters to ``<topic>.dlq`` (original bytes and key; reason, view, source
   topic, partition and offset as headers) and wait for Kafka to have them;
4. hand the accepted events to the landing thread (:mod:`streaming.lander`), which lands them
   in the offline store (:mod:`streaming.landing`, once per offset) while the next batches are
   applied, several batches per file (``stream.land_every_ms``), and then
5. commits their next offsets to Kafka.

Steps 2 and 4 are idempotent per offset, so a crash anywhere (``kill -9`` included) only means
the batch is read again and nothing is applied twice. Redis unavailable: the batch is retried
with a growing pause (logged), within ``RETRY_FOR_S``. SIGTERM/SIGINT: the current batch is
finished, written and committed, then the process exits 0.
"""

from __future__ import annotations

import functools
import gc
import logging
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from features.config import RepoConfig
from features.definitions import FeatureView
from features.errors import OnlineUnavailableError
from features.heap import freeze_heap
from features.online.redis_store import RedisOnline
from features.windows import parse_duration
from streaming.apply import OFFSET_BITS, ViewWriter
from streaming.dead_letters import send_dead_letters
from streaming.decode import NULL_TIME, Bad, Decoder, JsonDecoder
from streaming.errors import StreamError
from streaming.expectations import RowGate
from streaming.fetcher import Fetcher
from streaming.kafka_admin import ensure_topic
from streaming.kafka_group import keep_finished_joins
from streaming.kafka_records import fast_records
from streaming.lander import Lander
from streaming.landing import OFFSET, PARTITION, Landing
from streaming.metrics import StreamMetrics

log = logging.getLogger("tessera.stream")
RETRY_FOR_S = 240.0  # below Kafka's max.poll.interval (300 s): the group keeps us meanwhile


@dataclass
class StreamSummary:
    events: int = 0
    applied: dict[str, int] = field(default_factory=dict)  # per view
    skipped: int = 0  # already applied (replays)
    landed: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)  # per reason
    batches: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def format(self) -> str:
        dlq = ", ".join(f"{k} {v:,}" for k, v in sorted(self.dead_letters.items())) or "none"
        views = ", ".join(f"{k} {v:,}" for k, v in self.applied.items())
        return (f"streamed {self.events:,} events in {self.seconds:.1f} s "
                f"({self.rate:,.0f} events/s, {self.batches} batches); applied: {views}; "
                f"already applied: {self.skipped:,}; landed: {self.landed:,}; "
                f"dead letters: {dlq}")


@dataclass
class _Topic:
    name: str
    views: list[ViewWriter]
    decoder: Decoder
    landing: Landing | None
    gate: RowGate


def group_id(cfg: RepoConfig, views: Sequence[FeatureView], all_views: bool) -> str:
    """The consumer group: the configured one, or per view selection (a subset must not share
    partitions with a process that applies other views)."""
    base = cfg.kafka.consumer_group
    return base if all_views else base + "." + "+".join(sorted(v.name for v in views))


class StreamConsumer:
    """The consumer loop; see the module docstring."""

    def __init__(self, cfg: RepoConfig, views: Sequence[FeatureView], *, group: str,
                 online: RedisOnline | None = None,
                 clock: Callable[[], int] | None = None,
                 decoder: Callable[[Any], Decoder] = JsonDecoder) -> None:
        topics: dict[str, list[FeatureView]] = {}
        for v in views:
            if not v.source.kafka_topic:
                raise StreamError(f"view {v.name!r}: its source {v.source.name!r} has no "
                                  f"kafka_topic to stream from")
            topics.setdefault(v.source.kafka_topic, []).append(v)
        self.cfg = cfg
        self.settings = cfg.stream
        self.group = group
        self.online = online or RedisOnline(cfg.online.url, cluster=cfg.online.cluster,
                                            timeout_s=5.0)
        self.clock = clock or (lambda: time.time_ns() // 1000)
        lateness = parse_duration(self.settings.allowed_lateness)
        future = parse_duration(self.settings.max_future)
        self.topics: dict[str, _Topic] = {}
        for name, vs in topics.items():
            sources = {v.source.name for v in vs}
            if len(sources) > 1:
                raise StreamError(f"topic {name!r} feeds sources {sorted(sources)}: one topic "
                                  f"must have one source (one schema)")
            writers = [ViewWriter(cfg.project, v, name, self.online, lateness, future)
                       for v in vs]
            landing = Landing(cfg, vs[0].source, name) if self.settings.land else None
            self.topics[name] = _Topic(name, writers, decoder(vs[0].source), landing,
                                      RowGate(vs[0].source))
        self.metrics = StreamMetrics(list(self.topics), [v.name for v in views])
        self._stop = False
        self._lander: Lander | None = None  # per run, when landing is on
        self._consumer: Any = None
        self._producer: Any = None

    # --- lifecycle ----------------------------------------------------------------------------

    def stop(self, *_: Any) -> None:
        """Finish the current batch, commit and return (the SIGTERM handler)."""
        self._stop = True

    def _make_consumer(self, fetcher: Fetcher) -> Any:
        """The KafkaConsumer, subscribed, its rebalances reported to ``fetcher``.

        kafka-python 3 runs the rebalance listener on its IO thread (the one that also sends
        heartbeats), where a blocking consumer call fails: the listener is async and awaits."""
        from kafka import KafkaConsumer
        from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener

        topics = self.topics
        holder: dict[str, Any] = {}

        class Listener(AsyncConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked: Any) -> None:
                if revoked:
                    log.info("partitions revoked: %s", _tps(revoked))
                # every handed-over batch written and committed first
                await fetcher.revoked(holder["consumer"]._net.sleep)

            async def on_partitions_assigned(self, assigned: Any) -> None:
                log.info("partitions assigned: %s", _tps(assigned))
                for t in topics.values():  # another process may have landed meanwhile
                    if t.landing is not None:
                        t.landing.forget()
                fetcher.assigned()

        consumer = KafkaConsumer(
            bootstrap_servers=self.cfg.kafka.bootstrap_servers.split(","), group_id=self.group,
            enable_auto_commit=False, auto_offset_reset="earliest",
            max_poll_records=self.settings.max_batch_events,
            fetch_max_bytes=64 << 20, max_partition_fetch_bytes=16 << 20,
            fetch_min_bytes=self.settings.fetch_min_bytes,  # docs/streaming.md, "Fetching"
            fetch_max_wait_ms=min(self.settings.fetch_max_wait_ms, self.settings.max_batch_ms),
            request_timeout_ms=30_000,
            session_timeout_ms=10_000, heartbeat_interval_ms=3_000,
            max_poll_interval_ms=300_000, client_id=f"tessera-stream-{self.group}")
        holder["consumer"] = consumer
        keep_finished_joins(consumer)
        fast_records(consumer)
        consumer.subscribe(list(self.topics), listener=Listener())
        return consumer

    def _connect(self, limit: int | None) -> Fetcher:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        _warm_up()
        try:
            for name in self.topics:  # never rely on the broker auto-creating it
                ensure_topic(self.cfg.kafka.bootstrap_servers, name + self.settings.dlq_suffix,
                             partitions=1)
            self._producer = KafkaProducer(
                bootstrap_servers=self.cfg.kafka.bootstrap_servers.split(","), acks="all",
                linger_ms=5, retries=10)
            fetcher = Fetcher(self._make_consumer, max_events=self.settings.max_batch_events,
                              max_ms=self.settings.max_batch_ms, limit=limit)
        except KafkaError as e:
            raise StreamError(f"Kafka at {self.cfg.kafka.bootstrap_servers} is unreachable: "
                              f"{type(e).__name__}: {e}") from None
        self._consumer = fetcher.consumer
        if any(t.landing is not None for t in self.topics.values()):
            self._lander = Lander(fetcher.done, every_s=self.settings.land_every_ms / 1000,
                                  max_rows=self.settings.land_max_events)
            fetcher.on_revoke = self._lander.flush  # a rebalance waits for the landing
            self._lander.start()
        return fetcher

    def close(self) -> None:
        for c in (self._consumer, self._producer):
            if c is not None:
                try:
                    c.close()
                except Exception as e:  # closing is best effort; say why it failed
                    log.warning("closing %s: %s", type(c).__name__, e)
        self._consumer = self._producer = None

    # --- the loop -------------------------------------------------------------------------------

    def run(self, *, max_events: int | None = None, max_seconds: float | None = None,
            until_idle_s: float | None = None, status: Callable[[str], None] | None = None,
            handle_signals: bool = True) -> StreamSummary:
        """Consume until SIGTERM/SIGINT, or ``max_events`` / ``max_seconds`` /
        ``until_idle_s`` (bounded runs for demos, tests and benchmarks): nothing left to do
        that long, i.e. the group gave this process its partitions (none is fine), every one is
        read to its end offset and written, the group committed every partition of the topics
        to its end offset (a killed member's too, once its session ended and the group moved
        them), and no event came since. A rebalance starts the count again."""
        summary = StreamSummary()
        if handle_signals:
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
        fetcher = self._connect(max_events)
        frozen = freeze_heap()  # its libraries out of every full collection (freshness)
        fetcher.start()
        began = last_event = last_status = time.monotonic()
        try:
            while not self._stop:
                now = time.monotonic()
                if fetcher.error is not None:
                    raise StreamError(f"Kafka consumer failed: {type(fetcher.error).__name__}: "
                                      f"{fetcher.error}") from fetcher.error
                lander = self._lander
                if lander is not None and lander.error is not None:
                    raise StreamError(f"landing in the offline store failed: "
                                      f"{type(lander.error).__name__}: {lander.error}"
                                      ) from lander.error
                if max_seconds is not None and now - began >= max_seconds:
                    break
                if max_events is not None and summary.events >= max_events:
                    break
                if until_idle_s is not None:
                    idle_since = fetcher.idle()  # joined, read to the end, all written
                    if idle_since is not None and now - max(last_event,
                                                            idle_since) >= until_idle_s:
                        break
                records = fetcher.take(timeout=0.05)
                if records:
                    offsets, land = self._process(records, summary)
                    if lander is None:
                        fetcher.done(offsets)
                    else:  # committed once landed, while the next batch is applied
                        lander.submit(land, offsets)
                    last_event = time.monotonic()  # idle counts from the end of the work
                elif lander is not None and fetcher.quiet:
                    lander.flush()  # a quiet stream lands now, not after land_every_ms (a
                    # flush with nothing waiting is skipped by the lander); its commits are
                    # what the group-wide idle check waits for
                self.metrics.lag(fetcher.lag)
                if status is not None and time.monotonic() - last_status >= \
                        self.settings.status_every_s:
                    last_status = time.monotonic()
                    status(self.metrics.status_line(fetcher.lag))
        finally:
            if self._lander is not None:  # land what was applied, so its offsets commit
                self._lander.close()
                summary.landed = self._lander.landed
            fetcher.finish()
            summary.seconds = time.monotonic() - began
            self.close()
            if frozen:
                gc.unfreeze()
        return summary

    def _process(self, records: dict[Any, list[Any]], summary: StreamSummary
                 ) -> tuple[dict[Any, int], list[tuple[Landing, Any]]]:
        """Apply one micro-batch; (the offsets to commit, the accepted events to land first)."""
        by_topic: dict[str, list[Any]] = {}
        for tp, recs in records.items():
            by_topic.setdefault(tp.topic, []).extend(recs)
        dead: list[tuple[str, Any, Bad]] = []
        land: list[tuple[Landing, Any]] = []
        started = time.monotonic()
        for name, recs in by_topic.items():
            topic = self.topics[name]
            bad, applied, accepted = self._with_retries(
                functools.partial(self._apply, topic, recs, summary))
            if topic.landing is not None:
                land.append((topic.landing, accepted))
            dead += [(name, recs[b.index], b) for b in bad]
            summary.events += len(recs)
            self.metrics.events(name, len(recs))
            self.metrics.freshness(applied)
        for reason in send_dead_letters(self._producer, dead, self.settings.dlq_suffix):
            summary.dead_letters[reason] = summary.dead_letters.get(reason, 0) + 1
            self.metrics.dead_letter(reason)
        summary.batches += 1
        self.metrics.batch(time.monotonic() - started)
        return {tp: recs[-1].offset + 1 for tp, recs in records.items() if recs}, land

    def _apply(self, topic: _Topic, recs: list[Any],
               summary: StreamSummary) -> tuple[list[Bad], Any, Any]:
        """Decode and apply one topic's records; (dead letters, applied event times, the
        accepted events: to land)."""
        import numpy as np
        import polars as pl

        frame, bad = topic.decoder.decode([r.value for r in recs])
        parts = np.fromiter((r.partition for r in recs), np.int64, len(recs))
        offs = np.fromiter((r.offset for r in recs), np.int64, len(recs))
        i = frame["__i"].to_numpy()
        frame = frame.with_columns(pl.Series(PARTITION, parts[i]), pl.Series(OFFSET, offs[i]),
                                   pl.Series("__seq", (parts[i] << OFFSET_BITS) | offs[i]))
        ts = topic.views[0].view.source.timestamp_field
        null_time = frame[ts].is_null()
        if null_time.any():
            bad += [Bad(int(j), NULL_TIME, f"event time `{ts}` is null")
                    for j in frame.filter(null_time)["__i"].to_list()]
            frame = frame.filter(~null_time)
        frame, failed = topic.gate.check(frame)  # the source's row-level expectations
        bad += failed
        now_us = self.clock()
        times = []
        for writer in topic.views:
            keep, rejected = writer.reject(frame, now_us)
            rows, failed = writer.rules(keep)
            result, overflowed = writer.apply_or_reject(rows, keep, now_us)
            bad += rejected + failed + overflowed
            name = writer.view.name
            summary.applied[name] = summary.applied.get(name, 0) + result.applied
            summary.skipped += result.skipped
            self.metrics.applied(name, result.applied, result.skipped)
            if result.applied:
                times.append(rows["__ts"].to_numpy())
        visible = self.clock()
        return bad, (visible - np.concatenate(times) if times else np.zeros(0, np.int64)), frame

    def _with_retries(self, step: Callable[[], Any]) -> Any:
        """Run a step that writes Redis; while Redis is unavailable retry with backoff."""
        pause, began = 0.2, time.monotonic()
        while True:
            try:
                return step()
            except OnlineUnavailableError as e:
                waited = time.monotonic() - began
                if waited + pause > RETRY_FOR_S:
                    raise StreamError(f"{e} (retried for {waited:.0f} s; nothing of this "
                                      f"batch was committed, it will be read again)") from None
                log.warning("%s; retrying in %.1f s", e, pause)
                self.metrics.retry("redis")
                time.sleep(pause)
                pause = min(pause * 2, 5.0)


def _warm_up() -> None:
    """Import what the first batch needs before timing starts (a cold import of pandas, which
    pyarrow pulls in, is ~2 s without bytecode caches)."""
    import msgspec  # noqa: F401
    import numpy  # noqa: F401
    import pandas  # noqa: F401
    import polars  # noqa: F401
    import pyarrow.compute  # noqa: F401


def _tps(tps: Any) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(
        tps, key=lambda t: (t.topic, t.partition))) or "none"


__all__ = ["StreamConsumer", "StreamError", "StreamSummary", "group_id"]
