"""Producing events to Kafka: keys and partitions, pacing, topics and errors, and every value
back exactly (the encoding without Kafka: test_events.py).

The Kafka tests run against the real local broker (``kafka_bootstrap``); each uses its own
topic (a uuid in the name) and deletes it afterwards. Every consume loop is bounded in record
count and in time.
"""

from __future__ import annotations

import json
import math
import re
import socket
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from streaming import kafka_admin
from streaming import produce as produce_mod
from streaming.events import (
    ProduceError,
    ProduceWarning,
    encode_events,
    encode_keys,
    event_order,
    generated_events,
)
from streaming.kafka_admin import (
    KafkaAdminError,
    KafkaUnavailableError,
    delete_topic,
    end_offsets,
    ensure_topic,
    refuse_auto_create,
)
from streaming.produce import produce
from streaming.produce_cmd import produce_cli
from tests.reference.expr_eval import same_bits
from tests.streaming.event_checks import NOW, parse_ts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def consume(bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0) -> list[Any]:
    """Every record of ``topic`` from the beginning: stops at ``expected`` or after
    ``timeout_s``, then waits briefly for any record beyond ``expected`` (there must be none)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False, request_timeout_ms=10_000,
                             bootstrap_timeout_ms=10_000)
    refuse_auto_create(consumer)  # else closing it may re-create the topic deleted next
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500, max_records=10_000).values():
                records.extend(batch)
        for batch in consumer.poll(timeout_ms=200).values():  # nothing more
            records.extend(batch)
    finally:
        consumer.close()
    return records


@pytest.fixture
def new_topic(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """Make uniquely named topics; every one is deleted after the test."""
    made: list[str] = []

    def make(partitions: int = 6, create: bool = True) -> str:
        name = f"test-produce-{uuid.uuid4().hex[:12]}"
        made.append(name)
        if create:
            assert ensure_topic(kafka_bootstrap, name, partitions) == partitions
        return name

    yield make
    for name in made:
        delete_topic(kafka_bootstrap, name)


@pytest.mark.kafka
def test_events_round_trip_through_kafka_exactly(kafka_bootstrap: str,
                                                 new_topic: Callable[..., str],
                                                 example: Any) -> None:
    _, defs = example
    source = defs.sources["transactions"]
    df = event_order(generated_events(20_000, days=2, now=NOW, malformed_rate=0.03),
                     "event_ts")
    assert df["user_id"].null_count() > 0 and df["event_ts"].null_count() > 0
    topic = new_topic(6)
    summary = produce(kafka_bootstrap, topic, encode_events(df, source),
                      encode_keys(df, "user_id"))
    assert (summary.sent, summary.requested, summary.partitions) == (20_000, 20_000, 6)
    assert sum(end_offsets(kafka_bootstrap, topic).values()) == 20_000

    records = consume(kafka_bootstrap, topic, 20_000)
    assert len(records) == 20_000
    rows = {r["transaction_id"]: (i, r) for i, r in enumerate(df.iter_rows(named=True))}
    last_index: dict[int, int] = {}
    for rec in sorted(records, key=lambda r: (r.partition, r.offset)):
        obj = json.loads(rec.value)
        assert list(obj) == list(source.schema)
        index, row = rows.pop(obj["transaction_id"])
        for name, kind in source.schema.items():
            if kind == "float64":
                assert same_bits(obj[name], row[name]), name
            elif kind == "timestamp":
                assert parse_ts(obj[name]) == row[name], name
            else:
                assert obj[name] == row[name], name
        assert rec.key == (None if row["user_id"] is None else str(row["user_id"]).encode())
        # within a partition, Kafka keeps the order they were sent in (event-time order)
        assert index > last_index.get(rec.partition, -1)
        last_index[rec.partition] = index
    assert not rows  # every event came back, once


@pytest.mark.kafka
def test_one_user_one_partition_as_kafkas_own_partitioner_picks(
        kafka_bootstrap: str, new_topic: Callable[..., str], example: Any) -> None:
    from kafka import KafkaProducer

    _, defs = example
    df = generated_events(5_000, days=1, now=NOW)
    keys = encode_keys(df, "user_id")
    ours, theirs = new_topic(6), new_topic(6)
    produce(kafka_bootstrap, ours, encode_events(df, defs.sources["transactions"]), keys)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)  # its default partitioner
    try:
        for key in dict.fromkeys(keys):
            producer.send(theirs, value=b"x", key=key)
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=5)

    partition_of: dict[bytes, set[int]] = {}
    for rec in consume(kafka_bootstrap, ours, len(keys)):
        partition_of.setdefault(rec.key, set()).add(rec.partition)
    assert len(partition_of) == len(set(keys)) > 100
    assert all(len(parts) == 1 for parts in partition_of.values())
    expected = {rec.key: rec.partition
                for rec in consume(kafka_bootstrap, theirs, len(partition_of))}
    assert {k: next(iter(p)) for k, p in partition_of.items()} == expected
    assert len(set(expected.values())) == 6  # the users spread over every partition


@pytest.mark.kafka
def test_rate_paces_the_sending(kafka_bootstrap: str, new_topic: Callable[..., str]) -> None:
    topic = new_topic(3)
    payloads = [b'{"n":%d}' % i for i in range(2_000)]
    keys = [str(i % 50).encode() for i in range(2_000)]
    t0 = time.perf_counter()
    summary = produce(kafka_bootstrap, topic, payloads, keys, rate=4_000)
    elapsed = time.perf_counter() - t0
    assert summary.sent == 2_000 and not summary.stopped_early
    assert 0.45 <= summary.seconds <= elapsed < 10  # 2,000 events at 4,000/s: ~0.5 s
    assert "paced to 4,000/s" in summary.format()
    assert sum(end_offsets(kafka_bootstrap, topic).values()) == 2_000


@pytest.mark.kafka
def test_max_seconds_stops_sending_and_flushes_what_was_sent(
        kafka_bootstrap: str, new_topic: Callable[..., str]) -> None:
    topic = new_topic(2)
    payloads = [b"{}"] * 100_000
    summary = produce(kafka_bootstrap, topic, payloads, [b"k"] * 100_000, rate=1_000,
                      max_seconds=0.3)
    assert summary.stopped_early and 100 <= summary.sent <= 1_000
    assert "stopped by --max-seconds 0.3 after" in summary.format()
    assert sum(end_offsets(kafka_bootstrap, topic).values()) == summary.sent


@pytest.mark.kafka
def test_tessera_produce_from_the_generator_and_from_a_file(
        kafka_bootstrap: str, new_topic: Callable[..., str], example: Any,
        tmp_path: Path) -> None:
    cfg, defs = example
    assert cfg.kafka.bootstrap_servers == kafka_bootstrap
    generated = new_topic(create=False)
    summary = produce_cli(cfg, defs, events=300, topic=generated, partitions=4, days=1,
                          malformed_rate=0.1, progress=False)
    assert (summary.sent, summary.partitions) == (300, 4)
    assert len(end_offsets(kafka_bootstrap, generated)) == 4

    # A file in any row order is sent in event-time order; the topic exists: its 4 partitions
    # stay (with a warning), and the events are appended.
    df = generated_events(400, days=1, start=datetime(2020, 1, 6)).sample(
        fraction=1.0, shuffle=True, seed=3)
    path = tmp_path / "shuffled.parquet"
    df.write_parquet(path)
    with pytest.warns(ProduceWarning, match="already exists with 4 partitions"):
        summary = produce_cli(cfg, defs, file=path, topic=generated, partitions=6,
                              progress=False)
    assert (summary.sent, summary.partitions) == (400, 4)
    records = consume(kafka_bootstrap, generated, 700)
    assert len(records) == 700
    for partition in range(4):
        times = [json.loads(r.value)["event_ts"]
                 for r in sorted(records, key=lambda r: r.offset)
                 if r.partition == partition and r.offset >= 0]
        from_file = [t for t in times if t is not None and t < "2021"]
        assert from_file == sorted(from_file)
        assert len(from_file) > 50


@pytest.mark.kafka
def test_topics_are_created_once_and_never_changed(kafka_bootstrap: str) -> None:
    name = f"test-produce-{uuid.uuid4().hex[:12]}"
    try:
        assert kafka_admin.partition_count(kafka_bootstrap, name) is None
        assert ensure_topic(kafka_bootstrap, name, 2) == 2
        assert ensure_topic(kafka_bootstrap, name, 5) == 2  # exists: left as it is
        assert end_offsets(kafka_bootstrap, name) == {0: 0, 1: 0}
    finally:
        assert delete_topic(kafka_bootstrap, name) is True
    assert delete_topic(kafka_bootstrap, name) is False  # already gone: fine
    with pytest.raises(KafkaAdminError, match=re.escape(f"no topic {name!r} at {kafka_bootstrap}")):
        end_offsets(kafka_bootstrap, name)
    with pytest.raises(KafkaAdminError, match="partitions of topic 'x' must be a whole number"):
        ensure_topic(kafka_bootstrap, "x", 0)


@pytest.mark.kafka
def test_producing_to_a_missing_topic_is_one_clear_error(kafka_bootstrap: str) -> None:
    name = f"test-produce-{uuid.uuid4().hex[:12]}"
    with pytest.raises(ProduceError, match=re.escape(f"topic {name!r} does not exist at {kafka_bootstrap}")):
        produce(kafka_bootstrap, name, [b"{}"], [b"k"])
    assert kafka_admin.partition_count(kafka_bootstrap, name) is None  # not auto-created


def test_an_unreachable_kafka_is_one_line_naming_the_servers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    bootstrap = f"127.0.0.1:{_free_port()}"
    monkeypatch.setattr(kafka_admin, "TIMEOUT_S", 1.0)
    monkeypatch.setattr(produce_mod, "_KAFKA_TIMEOUT_MS", 1_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for call in (lambda: ensure_topic(bootstrap, "t"), lambda: end_offsets(bootstrap, "t"),
                     lambda: delete_topic(bootstrap, "t"),
                     lambda: produce(bootstrap, "t", [b"{}"], [None])):
            t0 = time.monotonic()
            with pytest.raises(KafkaUnavailableError) as info:
                call()
            assert time.monotonic() - t0 < 5
            message = str(info.value)
            assert message.startswith(f"Kafka is unreachable at {bootstrap} (no answer within")
            assert "\n" not in message


def test_bad_produce_arguments_are_refused_before_connecting() -> None:
    with pytest.raises(ProduceError, match="2 payloads but 1 keys"):
        produce("127.0.0.1:1", "t", [b"a", b"b"], [None])
    with pytest.raises(ProduceError, match=r"--rate: expected events per second > 0, got 0"):
        produce("127.0.0.1:1", "t", [b"a"], [None], rate=0)
    with pytest.raises(ProduceError, match="--rate: expected events per second > 0, got nan"):
        produce("127.0.0.1:1", "t", [b"a"], [None], rate=math.nan)
    with pytest.raises(ProduceError, match="--max-seconds: expected"):
        produce("127.0.0.1:1", "t", [b"a"], [None], max_seconds=-1)
