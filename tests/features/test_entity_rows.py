"""Point-in-time input: the unambiguous shapes and time types are accepted, everything else is
one clear error; user columns can never collide with internal ones or with feature outputs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

from features import agg, col
from features.definitions import Entity, FeatureView, Source
from features.entity_rows import check
from features.errors import EntityRowsError
from features.historical import get_historical_features
from tests.pipelines.window_harness import materialize

T0 = datetime(2026, 3, 2, 10, tzinfo=UTC)
SCHEMA = {"user_id": "int64", "amount": "float64", "event_ts": "timestamp"}
SOURCE = Source(name="events", path="unused", schema=SCHEMA, timestamp_field="event_ts")
KEYS = {"user_id": ("int64", "feature view 'v'")}


def view_of(src: Source) -> FeatureView:
    return FeatureView(name="v", entities=[Entity(name="user", join_key="user_id")], source=src,
                       ttl="1d", features=[agg.count(windows={"1h": "n"}),
                                           agg.sum(col("amount"), windows={"1h": "total"}),
                                           agg.last(col("amount"), name="amount_last")])


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[FeatureView, Path]:
    rows = [{"user_id": 1, "amount": 2.5, "event_ts": T0 - timedelta(minutes=m)}
            for m in (1, 2, 3)]
    view, cfg = materialize("polars", view_of, SOURCE, rows, tmp_path_factory.mktemp("pit"))
    return view, cfg.resolve(cfg.offline.path)


def test_the_unambiguous_shapes_and_time_types_agree(store: tuple[FeatureView, Path]) -> None:
    view, root = store
    shapes = {
        "polars": pl.DataFrame({"user_id": [1], "event_ts": [T0]}),
        "pandas tz-aware ns": pd.DataFrame({"user_id": [1], "event_ts": [pd.Timestamp(T0)]}),
        "pandas other zone": pd.DataFrame({"user_id": [1], "event_ts": [
            pd.Timestamp(T0).tz_convert("America/New_York")]}),
        "naive is UTC": pa.table({"user_id": [1], "event_ts": pa.array(
            [T0.replace(tzinfo=None)], pa.timestamp("ms"))}),
        "seconds": pa.table({"user_id": pa.array([1], pa.int32()), "event_ts": pa.array(
            [T0], pa.timestamp("s", tz="UTC"))}),
        "ISO Z": {"user_id": [1], "event_ts": ["2026-03-02T10:00:00Z"]},
        "ISO offset": [{"user_id": 1, "event_ts": "2026-03-02 11:00:00+01:00"}],
        "ISO naive": [{"user_id": 1, "event_ts": "2026-03-02T10:00:00"}],
    }
    for name, rows in shapes.items():
        out = get_historical_features([view], rows, root).to_pylist()[0]
        assert (out["n"], out["total"], out["amount_last"]) == (3, 7.5, 2.5), name


def test_nanoseconds_are_floored_so_nothing_after_the_instant_is_read(
        store: tuple[FeatureView, Path]) -> None:
    view, root = store
    ns = pd.Timestamp(T0 - timedelta(minutes=1)) - pd.Timedelta(1, "ns")  # 1 ns before event
    out = get_historical_features([view], pd.DataFrame({"user_id": [1], "event_ts": [ns]}),
                                  root).to_pylist()[0]
    assert out["n"] == 2  # the event at exactly T0 - 1 min is after this instant


@pytest.mark.parametrize("value", ["01", " 1", "1"])
def test_string_keys_never_match_integer_entities(value: str) -> None:
    rows = {"user_id": [value], "event_ts": [T0]}
    with pytest.raises(EntityRowsError, match=r"join key 'user_id' is string, but feature view "
                                              r"'v' has int64 keys.*never parsed from text"):
        check(rows, timestamp_field="event_ts", keys=KEYS)


def test_float_keys_from_pandas_get_a_hint() -> None:
    rows = pd.DataFrame({"user_id": [1, None], "event_ts": [T0, T0]})
    with pytest.raises(EntityRowsError, match=r"is double.*nullable 'Int64' dtype"):
        check(rows, timestamp_field="event_ts", keys=KEYS)


@pytest.mark.parametrize(("times", "message"), [
    ([1_772_445_600], "holds numbers .*does not say its unit"),
    ([datetime(2026, 3, 2).date()], "holds dates"),
    (["yesterday"], "'yesterday', which is not an ISO-8601 timestamp"),
    ([T0, None], "'event_ts' is null in row 1"),
])
def test_ambiguous_or_bad_times_are_one_clear_error(times: list[object], message: str) -> None:
    rows = {"user_id": [1] * len(times), "event_ts": times}
    with pytest.raises(EntityRowsError, match=message):
        check(rows, timestamp_field="event_ts", keys=KEYS)


@pytest.mark.parametrize(("rows", "message"), [
    ({"user_id": [1]}, "no timestamp column 'event_ts'"),
    ({"event_ts": [T0]}, "feature view 'v' needs join key column 'user_id'"),
    ({"user_id": [1, 2], "event_ts": [T0]}, "different lengths"),
    ({"user_id": [1, "a"], "event_ts": [T0, T0]}, "column 'user_id' mixes types"),
    (42, "expected a pandas or Polars DataFrame.*got int"),
])
def test_malformed_rows_name_the_column(rows: object, message: str) -> None:
    with pytest.raises(EntityRowsError, match=message):
        check(rows, timestamp_field="event_ts", keys=KEYS)


def test_a_column_named_like_a_feature_is_refused(store: tuple[FeatureView, Path]) -> None:
    view, root = store
    rows = pl.DataFrame({"user_id": [1], "event_ts": [T0], "total": [0.0]})
    with pytest.raises(EntityRowsError, match="column 'total' has the name of a feature"):
        get_historical_features([view], rows, root)
    out = get_historical_features([view], rows, root, full_feature_names=True)
    assert out.column_names == ["user_id", "event_ts", "total", "v__n", "v__total",
                                "v__amount_last"]


@pytest.mark.parametrize("name", ["__t", "__rid", "__tessera_rid", "__tessera_t", "p", "tile",
                                  "n", "c0", "req"])
def test_user_columns_never_collide_with_internal_names(store: tuple[FeatureView, Path],
                                                        name: str) -> None:
    view, root = store
    rows = pl.DataFrame({"user_id": [1, 2], "event_ts": [T0, T0], name: [7, 8]})
    if name == "n":
        with pytest.raises(EntityRowsError, match="name of a feature"):
            get_historical_features([view], rows, root)
        return
    out = get_historical_features([view], rows, root).to_pylist()
    assert [(r["n"], r["total"], r[name]) for r in out] == [(3, 7.5, 7), (0, 0.0, 8)]


def test_every_input_row_comes_back_in_order_with_its_columns(
        store: tuple[FeatureView, Path]) -> None:
    view, root = store
    rows = pl.DataFrame({"label": ["c", "a", "b", "a"], "user_id": [2, 1, None, 1],
                         "event_ts": [T0, T0, T0, T0 - timedelta(minutes=2)]},
                        schema_overrides={"user_id": pl.Int64})
    out = pl.from_arrow(get_historical_features([view], rows, root))
    assert out.select("label", "user_id", "event_ts").equals(rows)
    assert out["n"].to_list() == [0, 3, 0, 2]  # a null key reads like an unseen entity


@pytest.mark.parametrize(("columns", "chosen"), [
    ({"event_ts": [T0], "event_timestamp": [T0 - timedelta(days=1)]}, "event_ts"),
    ({"event_timestamp": [T0], "label_ts": [T0 - timedelta(days=1)]}, "event_timestamp"),
    ({"label": [1], "asked_at": [T0]}, "asked_at"),  # Feast's rule: the one datetime column
])
def test_the_time_column_is_found_as_feast_finds_it(columns: dict, chosen: str) -> None:
    """With no timestamp_field, the rows' instants come from event_ts, else Feast's
    event_timestamp, else the only timestamp column, and the choice is recorded."""
    rows = check({"user_id": [1], **columns}, timestamp_field=None, keys=KEYS)
    assert rows.timestamp_field == chosen
    assert rows.times_us.to_pylist() == [int(columns[chosen][0].timestamp() * 1_000_000)]


@pytest.mark.parametrize(("columns", "message"), [
    ({"label": [1]}, r"^entity rows: no timestamp column and none named event_ts or "
                     r"event_timestamp \(columns: user_id, label\); pass timestamp_field="),
    ({"a": [T0], "b": [T0]}, r"^entity rows: several timestamp columns \(a, b\) and none "
                             r"named event_ts"),
])
def test_no_time_column_or_an_ambiguous_one_is_one_line(columns: dict, message: str) -> None:
    with pytest.raises(EntityRowsError, match=message):
        check({"user_id": [1], **columns}, timestamp_field=None, keys=KEYS)
    with pytest.raises(EntityRowsError, match=r"no timestamp column 'when' \(columns: user_id"):
        check({"user_id": [1], **columns}, timestamp_field="when", keys=KEYS)


def test_a_feast_entity_frame_reads_as_with_its_column_named(
        store: tuple[FeatureView, Path]) -> None:
    view, root = store
    feast_style = pd.DataFrame({"user_id": [1, 1], "event_timestamp": [T0, T0 - timedelta(
        minutes=2, seconds=30)]})
    named = get_historical_features([view], feast_style, root,
                                    timestamp_field="event_timestamp").to_pylist()
    assert get_historical_features([view], feast_style, root).to_pylist() == named
    assert [r["n"] for r in named] == [3, 1]
