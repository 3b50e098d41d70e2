"""Writing a source's events to its Kafka topic: the producing side of streaming.

``tessera produce`` (:func:`streaming.produce_cmd.produce_cli`) takes events from a Parquet
file or folder or from the example generator (:mod:`streaming.events`), puts them in event-time
order, encodes each as one JSON object (:func:`encode_events`) and writes them to the source's
topic with a message key per entity (:func:`produce`, here), optionally paced to a rate. The streaming consumer
(``tessera stream``) reads them back; tests and benchmarks use the same functions.

The wire format, one Kafka message per event:

- value: a JSON object with exactly the source schema's fields, in schema order. ``int64`` and
  ``float64`` are JSON numbers (floats in their shortest round-trip form, so decoding gives the
  same bits), ``bool`` is ``true``/``false``, ``string`` a JSON string, ``timestamp`` an
  ISO-8601 UTC string with microseconds and a ``Z`` (``"2026-11-29T10:00:00.123456Z"``).
  A null is ``null``. JSON has no NaN or infinity: those become ``null``, with a warning.
- key: the key field's value as text, UTF-8 (``b"1000042"`` for ``user_id`` 1000042), so one
  entity always lands in one partition (Kafka's murmur2 partitioner, as the Java client);
  a null key is sent without a key.
- record timestamp: the time of sending (Kafka's CreateTime), not the event time: the
  broker rejects timestamps more than an hour ahead and would expire week-old ones at once.

Event-time order: rows are sorted by event time, stably (ties keep source order). A row with a
null event time keeps its place after the row before it, as it would arrive in a live stream.

polars, kafka-python and rich are imported inside the functions, so importing this module is
cheap (the CLI imports it).

Example:
    >>> from streaming.events import encode_events
    >>> from streaming.produce import produce
    >>> payloads = encode_events(df, transactions)                    # doctest: +SKIP
    >>> keys = [str(u).encode() for u in df["user_id"]]               # doctest: +SKIP
    >>> produce("127.0.0.1:9392", "transactions", payloads, keys, rate=1000)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from streaming.events import ProduceError, _first_line

__all__ = ["DEFAULT_EVENTS", "DEFAULT_PARTITIONS", "ProduceSummary", "produce"]

DEFAULT_PARTITIONS = 6
DEFAULT_EVENTS = 100_000
#: Pacing: the token bucket is topped up every slice and holds at most BURST_S of tokens.
SLICE_S = 0.01
BURST_S = 0.1
#: Sends between two looks at the clock (and progress updates) when not paced.
_UNPACED_CHUNK = 2048
#: Seconds for Kafka to acknowledge what is still buffered at the end.
FLUSH_TIMEOUT_S = 60.0
_KAFKA_TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class ProduceSummary:
    """What :func:`produce` wrote."""

    topic: str
    partitions: int
    sent: int  # acknowledged by Kafka (acks=all)
    requested: int  # events given; more than ``sent`` only when max_seconds stopped it
    seconds: float  # from the first send to the last acknowledgement
    rate: float | None = None  # the pace asked for, events/s (None: as fast as possible)
    max_seconds: float | None = None

    @property
    def events_per_second(self) -> float:
        """Events acknowledged per wall-clock second."""
        return self.sent / self.seconds if self.seconds > 0 else float("inf")

    @property
    def stopped_early(self) -> bool:
        """True when ``max_seconds`` ran out before every event was sent."""
        return self.sent < self.requested

    def format(self) -> str:
        """One line for a CLI to print."""
        plural = "" if self.partitions == 1 else "s"
        line = (f"produced {self.sent:,} events in {self.seconds:.2f} s "
                f"({self.events_per_second:,.0f} events/s) to topic {self.topic!r} "
                f"({self.partitions} partition{plural})")
        if self.rate is not None:
            line += f", paced to {self.rate:,.0f}/s"
        if self.stopped_early:
            line += (f"; stopped by --max-seconds {self.max_seconds:g} after {self.sent:,} of "
                     f"{self.requested:,}")
        return line


# --- sending --------------------------------------------------------------------------------


def _producer(bootstrap: str) -> object:
    """A KafkaProducer for event streams: acks=all, idempotent (ordered), large batches."""
    from kafka import KafkaProducer

    from streaming.kafka_admin import connection_errors, refuse_auto_create, unavailable

    try:
        producer = KafkaProducer(
            bootstrap_servers=bootstrap, client_id="tessera-produce",
            acks="all", enable_idempotence=True,  # retries never reorder nor duplicate
            linger_ms=5, batch_size=512 * 1024, compression_type=None,
            max_block_ms=_KAFKA_TIMEOUT_MS, request_timeout_ms=_KAFKA_TIMEOUT_MS,
            bootstrap_timeout_ms=_KAFKA_TIMEOUT_MS, delivery_timeout_ms=3 * _KAFKA_TIMEOUT_MS,
            allow_auto_create_topics=False)
    except connection_errors(OSError) as e:
        raise unavailable(bootstrap, e) from None
    refuse_auto_create(producer)
    return producer


def _partition_of(keys: Sequence[bytes | None], partitions: Sequence[int]) -> list[int | None]:
    """Each key's partition, exactly as Kafka's default (murmur2) partitioner picks it.

    Computed once per distinct key: the producer's own partitioner costs ~a fifth of each
    send. A null key gets None: the producer picks a partition.
    """
    from kafka.partitioner.default import murmur2

    ordered = sorted(partitions)
    of = {k: ordered[(murmur2(k) & 0x7FFFFFFF) % len(ordered)]
          for k in dict.fromkeys(keys) if k is not None}
    of[None] = None  # type: ignore[index]
    return [of[k] for k in keys]  # type: ignore[index]


def produce(bootstrap: str, topic: str, payloads: Sequence[bytes],
            keys: Sequence[bytes | None], rate: float | None = None,
            max_seconds: float | None = None, progress: bool = False,
            headers: list[tuple[str, bytes]] | None = None) -> ProduceSummary:
    """Send ``payloads[i]`` with key ``keys[i]`` to ``topic``, in order; wait for every ack.

    Args:
        bootstrap: ``host:port[,host:port...]``.
        topic: An existing topic (see :func:`streaming.kafka_admin.ensure_topic`).
        payloads: Message values, in the order to send (event-time order, see
            :func:`event_order`): within a partition Kafka keeps it.
        keys: One key per payload (None: no key, any partition).
        rate: Events per second, paced by a token bucket topped up every ~10 ms (bursts of
            at most 0.1 s of events); None sends as fast as possible.
        max_seconds: Stop sending after this many seconds (what was sent is still flushed).
        progress: Show a rich progress bar on stderr.
        headers: Kafka headers for every message, ``[("name", b"value")]``.

    Returns:
        What was sent and acknowledged, how long it took.

    Raises:
        ProduceError: bad arguments, or Kafka did not acknowledge every event (the message
            says how many and the first error).
        KafkaUnavailableError: no broker answered at ``bootstrap``.
    """
    from streaming.kafka_admin import check_topic_name, connection_errors, unavailable

    check_topic_name(topic)
    if len(keys) != len(payloads):
        raise ProduceError(f"{len(payloads)} payloads but {len(keys)} keys")
    if rate is not None and not (rate > 0 and math.isfinite(rate)):
        raise ProduceError(f"--rate: expected events per second > 0, got {rate!r}")
    if max_seconds is not None and not max_seconds > 0:
        raise ProduceError(f"--max-seconds: expected a number of seconds > 0, got "
                           f"{max_seconds!r}")
    if headers is not None and not all(
            isinstance(h, tuple) and len(h) == 2 and isinstance(h[0], str)
            and isinstance(h[1], bytes) for h in headers):
        raise ProduceError("headers must be a list of (str, bytes) pairs")

    import kafka.errors as errors

    from streaming.kafka_admin import partition_count

    # Asked with the admin client, which never creates it: see kafka_admin.refuse_auto_create.
    if partition_count(bootstrap, topic) is None:
        raise ProduceError(f"topic {topic!r} does not exist at {bootstrap}; create it first "
                           f"(tessera produce does; streaming.kafka_admin.ensure_topic)")
    producer = _producer(bootstrap)
    failed: list[BaseException] = []

    def on_error(error: BaseException) -> None:  # runs on the producer's I/O thread
        failed.append(error)

    try:
        try:
            found = producer.partitions_for(topic)  # type: ignore[attr-defined]
        except errors.KafkaTimeoutError:
            found = None
        if not found:
            raise ProduceError(f"topic {topic!r} at {bootstrap} has no partition with a leader "
                               f"after {_KAFKA_TIMEOUT_MS / 1000:g} s")
        partition_of = _partition_of(keys, list(found))
        sent, seconds = _send_all(producer, topic, payloads, keys, partition_of, rate,
                                  max_seconds, progress, headers, on_error)
        t_flush = time.perf_counter()
        try:
            producer.flush(timeout=FLUSH_TIMEOUT_S)  # type: ignore[attr-defined]
        except errors.KafkaTimeoutError:
            raise ProduceError(f"Kafka at {bootstrap} did not acknowledge the last events "
                               f"within {FLUSH_TIMEOUT_S:g} s") from None
        seconds += time.perf_counter() - t_flush
    except connection_errors() as e:
        raise unavailable(bootstrap, e) from None
    finally:
        producer.close(timeout=5)  # type: ignore[attr-defined]
    if failed:
        first = failed[0]
        raise ProduceError(f"{len(failed):,} of {sent:,} events were not written to topic "
                           f"{topic!r} at {bootstrap}: {type(first).__name__}: "
                           f"{_first_line(first)}")
    return ProduceSummary(topic=topic, partitions=len(found), sent=sent,
                          requested=len(payloads), seconds=seconds, rate=rate,
                          max_seconds=max_seconds)


def _send_all(producer: object, topic: str, payloads: Sequence[bytes],
              keys: Sequence[bytes | None], partition_of: Sequence[int | None],
              rate: float | None, max_seconds: float | None, progress: bool,
              headers: list[tuple[str, bytes]] | None,
              on_error: object) -> tuple[int, float]:
    """The send loop of :func:`produce`: (events handed to the producer, seconds)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    send = producer.send  # type: ignore[attr-defined]
    n = len(payloads)
    capacity = max(1.0, (rate or 0.0) * BURST_S)
    tokens = 1.0  # the first event goes at once
    bar = Progress(TextColumn(f"[bold]produce[/] {topic}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
                   disable=not progress)
    i = 0
    with bar:
        task = bar.add_task("", total=n)
        t0 = last = time.perf_counter()
        deadline = t0 + max_seconds if max_seconds is not None else math.inf
        while i < n:
            now = time.perf_counter()
            if now >= deadline:
                break
            if rate is None:
                j = min(n, i + _UNPACED_CHUNK)
            else:
                tokens = min(capacity, tokens + (now - last) * rate)
                last = now
                j = min(n, i + int(tokens))
                tokens -= j - i
            for k in range(i, j):
                send(topic, value=payloads[k], key=keys[k], partition=partition_of[k],
                     headers=headers).add_errback(on_error)
            i = j
            bar.update(task, completed=i)
            if rate is not None and i < n:
                wait = max(SLICE_S, (1.0 - tokens) / rate)
                time.sleep(max(0.0, min(wait, deadline - time.perf_counter())))
    return i, time.perf_counter() - t0


