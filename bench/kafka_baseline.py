"""Plain kafka-python consumption: the in-process floor for the streaming benchmark.

:func:`plain_consume` reads a whole topic from the beginning with a bare ``KafkaConsumer``
(manual assignment, no group, no commits, values not even decoded) and returns how many records
it read and how long that took. Whatever ``tessera stream`` does per record (decode, rules,
Redis writes) comes on top of this, so records/s here is what a consumer in one Python process
cannot beat with this client.

Run alone, it produces generated card transactions into a scratch topic with
:mod:`streaming.produce`, times the encoding, the producing and a few plain consumptions, then
deletes the topic:

    .venv/bin/python bench/kafka_baseline.py --events 200000
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]


def plain_consume(bootstrap: str, topic: str, expected: int, *, timeout_s: float = 120.0,
                  max_records: int = 10_000, **consumer_settings: Any) -> tuple[int, float]:
    """Read ``topic`` from the beginning until ``expected`` records (or ``timeout_s``).

    Args:
        bootstrap: ``host:port[,host:port...]``.
        topic: An existing topic.
        expected: Records to read (e.g. the sum of :func:`streaming.kafka_admin.end_offsets`).
        timeout_s: Give up after this long, returning what was read.
        max_records: ``poll(max_records=...)`` of each poll.
        **consumer_settings: Any other ``KafkaConsumer`` setting (``fetch_max_bytes``,
            ``max_partition_fetch_bytes``, ``fetch_min_bytes`` ...).

    Returns:
        (records read, seconds from the first poll to the last record).
    """
    from kafka import KafkaConsumer, TopicPartition

    from streaming.kafka_admin import refuse_auto_create

    settings: dict[str, Any] = {"group_id": None, "enable_auto_commit": False,
                                "client_id": "tessera-bench-plain",
                                "request_timeout_ms": 10_000, "bootstrap_timeout_ms": 10_000}
    settings.update(consumer_settings)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, **settings)
    refuse_auto_create(consumer)
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise SystemExit(f"no topic {topic!r} at {bootstrap}")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records = 0
        t0 = time.perf_counter()
        deadline = t0 + timeout_s
        poll = consumer.poll
        while records < expected and time.perf_counter() < deadline:
            for batch in poll(timeout_ms=500, max_records=max_records).values():
                records += len(batch)
        seconds = time.perf_counter() - t0
    finally:
        consumer.close()
    return records, seconds


def main(argv: list[str] | None = None) -> None:
    from features.config import load_config
    from features.repo import load_definitions
    from streaming.events import encode_events, encode_keys, event_order, generated_events
    from streaming.kafka_admin import delete_topic, end_offsets, ensure_topic
    from streaming.produce import produce
    from streaming.produce_cmd import resolve_stream

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3, help="plain consumptions to time")
    parser.add_argument("--max-records", type=int, default=10_000, help="per poll")
    parser.add_argument("--bootstrap", help="default: kafka.bootstrap_servers of the repo")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", DeprecationWarning)  # kafka-python's importlib use

    cfg = load_config(ROOT / "feature_repo.yaml")
    bootstrap = args.bootstrap or cfg.kafka.bootstrap_servers
    source, _, key = resolve_stream(load_definitions(cfg))
    topic = f"bench-baseline-{uuid.uuid4().hex[:8]}"

    frame = event_order(generated_events(args.events, days=7), source.timestamp_field)
    t0 = time.perf_counter()
    payloads = encode_events(frame, source)
    encode_s = time.perf_counter() - t0
    keys = encode_keys(frame, key)
    mean_bytes = sum(map(len, payloads)) / max(len(payloads), 1)
    print(f"encoded {len(payloads):,} events in {encode_s:.2f} s "
          f"({len(payloads) / encode_s:,.0f} events/s), {mean_bytes:.0f} bytes each")
    try:
        ensure_topic(bootstrap, topic, args.partitions)
        summary = produce(bootstrap, topic, payloads, keys)
        print(summary.format())
        expected = sum(end_offsets(bootstrap, topic).values())
        for i in range(args.rounds):
            records, seconds = plain_consume(bootstrap, topic, expected,
                                             max_records=args.max_records)
            print(f"plain consume, round {i + 1}: {records:,} records in {seconds:.2f} s "
                  f"({records / seconds:,.0f} records/s)")
    finally:
        delete_topic(bootstrap, topic)


if __name__ == "__main__":
    main()
