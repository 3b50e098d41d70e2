"""Events as Tessera sends them to Kafka (``streaming.events``), without a broker: the JSON
encoding of every value exactly, UTC timestamps, conversion to the schema's types as the batch
engines convert, keys, event order, the generator, and one clear error for a bad file or
option."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from features.definitions import Source
from streaming.events import (
    ProduceError,
    ProduceWarning,
    encode_events,
    encode_keys,
    event_order,
    generated_events,
    read_events_file,
)
from streaming.kafka_admin import KafkaAdminError
from streaming.produce_cmd import produce_cli, resolve_stream
from tests.conftest import REPO_ROOT
from tests.reference.expr_eval import same_bits
from tests.streaming.event_checks import NOW, parse_ts

SOURCE = Source(
    name="events", path="unused", timestamp_field="ts", kafka_topic="events",
    schema={"id": "int64", "user": "int64", "x": "float64", "flag": "bool", "s": "string",
            "ts": "timestamp"},
)


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
        assert (obj["x"] is None and row["x"] is None) or same_bits(obj["x"], row["x"])
        assert parse_ts(obj["ts"]) == row["ts"]
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
