"""Producing events to Kafka: the JSON encoding, event order, keys, pacing, topics and errors.

The Kafka tests run against the real local broker (``kafka_bootstrap``); each uses its own
topic (a uuid in the name) and deletes it afterwards. Every consume loop is bounded in record
count and in time.
"""

from __future__ import annotations

import json
import math
import re
import socket
import struct
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from features.definitions import Source
from features.repo import load_definitions
from streaming import kafka_admin
from streaming import produce as produce_mod
from streaming.events import (
    ProduceError,
    ProduceWarning,
    encode_events,
    encode_keys,
    event_order,
    generated_events,
    read_events_file,
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
from streaming.produce_cmd import produce_cli, resolve_stream
from tests.conftest import REPO_ROOT

SOURCE = Source(
    name="events", path="unused", timestamp_field="ts", kafka_topic="events",
    schema={"id": "int64", "user": "int64", "x": "float64", "flag": "bool", "s": "string",
            "ts": "timestamp"},
)
NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


def _parse_ts(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


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


@pytest.fixture(scope="module")
def example() -> Any:
    """The example repo's definitions (the card transactions source and its views)."""
    from features.config import load_config

    cfg = load_config(REPO_ROOT / "feature_repo.yaml")
    return cfg, load_definitions(cfg)


# --- encoding, no Kafka ---------------------------------------------------------------------


def test_encoding_round_trips_every_value_exactly() -> None:
    rng = np.random.default_rng(11)
    n = 20_000
    floats = rng.integers(0, 2**64, n, dtype=np.uint64).view(np.float64)
    floats = np.where(np.isfinite(floats), floats, 0.5)  # NaN/inf: another test
    floats[:6] = [0.1, -0.0, 5e-324, 1e22, 2.0**53 + 2, 123456.789]
    us = rng.integers(-2 * 10**15, 4 * 10**15, n)  # 1906..2096, any microsecond
    ints = rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64)
    texts = ["", 'quote " backslash \\', "new\nline\ttab", "é ü 中 😀", "\u2028\x01"]
    df = pl.DataFrame({
        "id": ints, "user": rng.integers(0, 10, n), "x": floats,
        "flag": rng.integers(0, 2, n).astype(bool), "s": [texts[i % 5] for i in range(n)],
        "ts": pl.Series(us).cast(pl.Datetime("us", "UTC")),
    }).with_columns(  # nulls in every column, on different rows
        *[pl.when(pl.int_range(pl.len()) % 7 == k).then(None).otherwise(pl.col(c)).alias(c)
          for k, c in enumerate(SOURCE.schema)])
    payloads = encode_events(df, SOURCE)
    assert len(payloads) == n
    for row, payload in zip(df.iter_rows(named=True), payloads, strict=True):
        obj = json.loads(payload)
        assert list(obj) == list(SOURCE.schema)  # exactly the schema's fields, in its order
        assert {k: obj[k] for k in ("id", "user", "flag", "s")} == \
               {k: row[k] for k in ("id", "user", "flag", "s")}
        assert (obj["x"] is None and row["x"] is None) or _bits(obj["x"]) == _bits(row["x"])
        assert _parse_ts(obj["ts"]) == row["ts"]
    first = json.loads(payloads[1])  # row 1: only `user` is null
    assert first["user"] is None
    assert first["ts"].endswith("Z") and len(first["ts"]) == len("2026-11-29T10:00:00.123456Z")


def test_timestamps_are_utc_with_microseconds_and_z() -> None:
    df = pl.DataFrame({
        "id": [1, 2, 3], "user": [1, 1, 1], "x": [1.5, 2.0, None], "flag": [True, False, None],
        "s": ["a", None, "c"],
        "ts": [datetime(2026, 11, 29, 10, 0, 0, 123456, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC),
               None],
    })
    assert encode_events(df, SOURCE) == [
        b'{"id":1,"user":1,"x":1.5,"flag":true,"s":"a","ts":"2026-11-29T10:00:00.123456Z"}',
        b'{"id":2,"user":1,"x":2.0,"flag":false,"s":null,"ts":"2026-01-01T00:00:00.000000Z"}',
        b'{"id":3,"user":1,"x":null,"flag":null,"s":"c","ts":null}',
    ]


def test_encoding_converts_to_the_schema_types_like_the_batch_engines() -> None:
    cet = timezone(timedelta(hours=1))
    df = pl.DataFrame({
        "s": pl.Series(["a", "b"], dtype=pl.Categorical),
        "ts": pl.Series([datetime(2026, 1, 1, 12, 0, 0, 1), datetime(2026, 1, 1, 13)])
        .cast(pl.Datetime("ns")),  # naive: read as UTC
        "id": pl.Series([1, 2], dtype=pl.Int32), "user": pl.Series([7, 8], dtype=pl.UInt16),
        "x": [3, 4], "flag": [True, False], "extra": ["dropped", "dropped"],
    })
    objs = [json.loads(p) for p in encode_events(df, SOURCE)]
    assert objs[0] == {"id": 1, "user": 7, "x": 3.0, "flag": True, "s": "a",
                       "ts": "2026-01-01T12:00:00.000001Z"}
    aware = df.with_columns(pl.col("ts").dt.replace_time_zone("UTC").dt.convert_time_zone("Europe/Paris"))
    assert json.loads(encode_events(aware, SOURCE)[1])["ts"] == "2026-01-01T13:00:00.000000Z"
    assert datetime(2026, 1, 1, 14, tzinfo=cet) == datetime(2026, 1, 1, 13, tzinfo=UTC)


@pytest.mark.parametrize(("change", "message"), [
    (lambda df: df.drop("x"), "the events has no column 'x' of source 'events'"),
    (lambda df: df.drop("x", "s"), "the events has no columns 'x', 's' of source 'events'"),
    (lambda df: df.with_columns(pl.col("flag").cast(pl.Int64)),
     "the events: column 'flag' is Int64, but source 'events' declares it bool"),
    (lambda df: df.with_columns(pl.col("id").cast(pl.String)),
     "the events: column 'id' is String, but source 'events' declares it int64"),
])
def test_a_missing_or_mistyped_column_is_one_clear_error(change: Any, message: str) -> None:
    df = pl.DataFrame({"id": [1], "user": [2], "x": [0.5], "flag": [True], "s": ["a"],
                       "ts": [NOW]})
    with pytest.raises(ProduceError) as info:
        encode_events(change(df), SOURCE)
    assert str(info.value).startswith(message)


def test_nan_and_infinity_become_null_with_a_warning() -> None:
    df = pl.DataFrame({"id": [1, 2, 3], "user": [1, 1, 1],
                       "x": [float("nan"), float("inf"), 1.0], "flag": [True] * 3,
                       "s": ["a"] * 3, "ts": [NOW] * 3})
    with pytest.warns(ProduceWarning, match=r"2 NaN or infinite values \(2 in 'x'\)"):
        payloads = encode_events(df, SOURCE)
    assert [json.loads(p)["x"] for p in payloads] == [None, None, 1.0]


def test_keys_are_the_values_as_decimal_text() -> None:
    df = pl.DataFrame({"user": [1000042, None, -3], "name": ["ab", "é", None]})
    assert encode_keys(df, "user") == [b"1000042", None, b"-3"]
    assert encode_keys(df, "name") == [b"ab", "é".encode(), None]
    with pytest.raises(ProduceError, match="key field 'nope' is not a column"):
        encode_keys(df, "nope")


def test_event_order_is_stable_and_keeps_null_times_in_place() -> None:
    t = [NOW + timedelta(seconds=s) for s in range(4)]
    df = pl.DataFrame({"i": [0, 1, 2, 3, 4, 5, 6, 7],
                       "ts": [None, t[2], t[1], None, t[1], t[0], t[2], None]})
    # key after forward fill: None, t2, t1, t1, t1, t0, t2, t2 (stable on ties)
    assert event_order(df, "ts")["i"].to_list() == [0, 5, 2, 3, 4, 1, 6, 7]


def test_generated_events_span_the_days_before_now() -> None:
    now = datetime(2026, 11, 29, 20, 46, 12, 345678, tzinfo=UTC)
    df = generated_events(2_000, days=3, now=now, malformed_rate=0.0)
    assert df.height == 2_000
    first, last = df.select(pl.col("event_ts").min().alias("a"),
                            pl.col("event_ts").max().alias("b")).row(0)
    assert now - timedelta(days=3) <= first <= last < now
    with pytest.raises(ProduceError, match=r"--malformed-rate: expected a fraction in \[0, 1\]"):
        generated_events(10, malformed_rate=2.0)


def test_the_example_repo_streams_transactions_keyed_by_user(example: Any) -> None:
    _, defs = example
    source, topic, key = resolve_stream(defs)
    assert (source.name, topic, key) == ("transactions", "transactions", "user_id")
    assert resolve_stream(defs, topic="scratch")[1:] == ("scratch", "user_id")
    assert resolve_stream(defs, key="merchant_id")[2] == "merchant_id"
    with pytest.raises(ProduceError, match=r"--source: no source 'nope' \(defined: transactions\)"):
        resolve_stream(defs, source="nope")
    with pytest.raises(ProduceError, match="--key 'amt' is not a field of source 'transactions'"):
        resolve_stream(defs, key="amt")


def test_a_file_without_a_schema_column_names_the_file_and_the_column(
        tmp_path: Path, example: Any) -> None:
    cfg, defs = example
    path = tmp_path / "events.parquet"
    generated_events(50, days=1, now=NOW).drop("amount").write_parquet(path)
    with pytest.raises(ProduceError) as info:
        produce_cli(cfg, defs, file=path, topic="never-created", progress=False)
    assert str(info.value).startswith(
        f"file {str(path)!r} has no column 'amount' of source 'transactions' (it has: ")

    from typer.testing import CliRunner

    from tessera.cli import app

    result = CliRunner().invoke(app, ["produce", "--file", str(path), "--topic", "never-created",
                                      "--repo", str(REPO_ROOT / "feature_repo.yaml")])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: file {str(path)!r} has no column 'amount'")


def test_bad_files_and_options_are_one_clear_error(tmp_path: Path, example: Any) -> None:
    cfg, defs = example
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    with pytest.raises(ProduceError, match=re.escape(f"file {str(junk)!r}: cannot read it as Parquet")):
        read_events_file(junk, defs.sources["transactions"])
    with pytest.raises(ProduceError, match="no such file or folder"):
        read_events_file(tmp_path / "missing.parquet", defs.sources["transactions"])
    with pytest.raises(ProduceError, match=r"give --events .* or --file, not both"):
        produce_cli(cfg, defs, events=10, file=junk)
    with pytest.raises(KafkaAdminError, match="invalid Kafka topic name 'bad topic'"):
        produce_cli(cfg, defs, events=10, topic="bad topic")


# --- against the real Kafka -----------------------------------------------------------------


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
                assert _bits(obj[name]) == _bits(row[name]), name
            elif kind == "timestamp":
                assert _parse_ts(obj[name]) == row[name], name
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
