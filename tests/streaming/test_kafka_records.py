"""The fast record loop (streaming/kafka_records.py) gives exactly the records kafka-python's own
loop gives, from a real broker: same offsets, keys, values, headers, timestamps and sizes,
with partial takes (small ``max_poll_records``), compression, null keys and values, headers
and records long enough for multi-byte varints."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import pytest

from streaming.kafka_admin import ensure_topic
from streaming.kafka_records import fast_records


def _messages() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(600):
        value: bytes | None = b'{"i": %d, "pad": "%s"}' % (i, b"x" * (i % 7) * (i % 50))
        if i % 97 == 5:
            value = b"z" * 20_000  # lengths past 8 KiB: three-byte varints
        if i % 113 == 7:
            value = None  # a tombstone
        if i % 131 == 9:
            value = b""
        keyed = value is None or i % 3 == 0  # a tombstone needs a key
        out.append({"key": b"user-%d" % i if keyed else None, "value": value,
                    "headers": [("h", b"v%d" % i), ("empty", b"")] if i % 5 == 0 else [],
                    "timestamp_ms": 1_700_000_000_000 + i * 997})
    return out


def _consume(bootstrap: str, topic: str, fast: bool, max_poll: int) -> list[tuple]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap.split(","), group_id=None,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             max_poll_records=max_poll, consumer_timeout_ms=10_000)
    if fast:
        assert fast_records(consumer)
    got: list[tuple] = []
    deadline = time.monotonic() + 60
    polls = 0
    try:
        while len(got) < 600 and time.monotonic() < deadline:
            polls += 1
            for recs in consumer.poll(timeout_ms=500).values():
                assert len(recs) <= max_poll
                got += [tuple(r) for r in recs]
        if len(got) < 600:  # say where the consumer stood (a CI run once saw 0 of 600)
            where = {str(tp): (consumer.position(tp), consumer.highwater(tp))
                     for tp in consumer.assignment()}
            pytest.fail(f"{'fast' if fast else 'library'} consumer: {len(got)} of 600 records "
                        f"after {polls} polls; (position, highwater) by partition: {where}")
    finally:
        consumer.close()
    return got


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_fast_records_equal_the_library_records(kafka_bootstrap: str, compression,
                                                caplog: pytest.LogCaptureFixture) -> None:
    from kafka import KafkaProducer

    # The fetcher's own account of each fetch (offsets, positions), shown if the test fails.
    caplog.set_level(logging.DEBUG, logger="kafka.consumer.fetcher")

    topic = f"t-records-{uuid.uuid4().hex[:8]}"
    ensure_topic(kafka_bootstrap, topic, partitions=1)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap.split(","), linger_ms=20,
                             compression_type=compression)
    for m in _messages():
        producer.send(topic, **m)
    producer.flush()
    producer.close()
    library = _consume(kafka_bootstrap, topic, fast=False, max_poll=37)
    fast = _consume(kafka_bootstrap, topic, fast=True, max_poll=37)
    assert len(library) == 600
    assert [r[3] for r in fast] == list(range(600))  # every offset once, in order
    assert fast == library
