"""The Polars engine's tiling step on its own: the sorted-run group-by gives the same partial
rows as a plain hash group-by per (keys, tile, day), and layers are produced and written one at
a time instead of all being held in memory."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from features import agg
from features.definitions import Entity, FeatureView, Source
from features.expr import col
from features.tiles import EXACT_TILE_US, layout
from pipelines import engine_polars

SCHEMA = {"user_id": "int64", "shop": "string", "amount": "float64", "qty": "int64",
          "channel": "string", "event_ts": "timestamp"}
T0 = datetime(2026, 3, 2, tzinfo=UTC)


def two_key_view() -> FeatureView:
    src = Source(name="events", path="unused", schema=SCHEMA, timestamp_field="event_ts")
    return FeatureView(
        name="user_shop", entities=[Entity(name="user", join_key="user_id"),
                                    Entity(name="shop", join_key="shop")],
        source=src, filter=col("qty") != 0,
        features=[agg.count(windows=["10m", "7d"], name="n"),
                  agg.count(col("amount"), windows=["1h"], name="amount_count"),
                  agg.sum(col("amount"), windows=["1h", "lifetime"], name="amount_sum"),
                  agg.sum(col("qty"), windows=["1d"], name="qty_sum"),
                  agg.mean(col("amount"), windows=["1d"], name="amount_mean"),
                  agg.min(col("amount"), windows=["7d"], name="amount_min"),
                  agg.max(col("qty"), windows=["10m"], name="qty_max"),
                  agg.stddev(col("amount"), windows=["1h"], name="amount_std"),
                  agg.last(col("channel"), windows=["1h"], name="channel_last")])


def events(n: int = 6_000, seed: int = 3) -> pl.DataFrame:
    """Few keys, many ties in time (to the microsecond), nulls, three days and midnights."""
    rnd = random.Random(seed)
    instants = [T0 + timedelta(microseconds=rnd.randrange(3 * 86_400) * 1_000_000
                               + rnd.choice([0, 0, 1])) for _ in range(n // 3)]
    rows = []
    for _ in range(n):
        rows.append({
            "user_id": rnd.randrange(7), "shop": rnd.choice(["a", "b", "ab", "B"]),
            "amount": None if rnd.random() < 0.1 else 1e6 + rnd.random(),
            "qty": rnd.randrange(-2, 5), "channel": rnd.choice(["web", "pos", None]),
            "event_ts": rnd.choice(instants)})
    return pl.DataFrame(rows, schema={"user_id": pl.Int64, "shop": pl.String,
                                      "amount": pl.Float64, "qty": pl.Int64, "channel": pl.String,
                                      "event_ts": pl.Datetime("us", "UTC")})


def projected(view: FeatureView, frame: pl.DataFrame) -> pl.DataFrame:
    with_seq = frame.with_row_index("__seq").with_columns(pl.col("__seq").cast(pl.Int64))
    out, _ = engine_polars.project(view, with_seq.lazy())
    return out.collect()


def plain_group_by(view: FeatureView, proj: pl.DataFrame, size: int) -> pl.DataFrame:
    """The obvious form: hash group-by on (keys, tile, day), rows kept in (time, seq) order."""
    keys = list(view.join_keys)
    return (proj.lazy()
            .with_columns((pl.col("__ts") // size).alias("tile"),
                          (pl.col("__ts") // engine_polars.DAY_US).alias("__day"))
            .group_by([*keys, "tile", "__day"]).agg(engine_polars.partial_aggs(layout(view)))
            .sort([*keys, "tile", "__day"]).collect())


def test_sorted_runs_give_the_partials_of_a_plain_group_by() -> None:
    view = two_key_view()
    proj = projected(view, events())
    sizes = (EXACT_TILE_US, *view.tile_sizes())
    got = list(engine_polars.tile_frames(view, proj))
    days = [T0.date() + timedelta(days=d) for d in range(3)]
    assert [(s, d) for s, d, _ in got] == [(s, d) for d in days for s in sizes]
    floats = {c for c, t in layout(view).partial_columns() if t == "float64"}
    for size in sizes:
        want = plain_group_by(view, proj, size)
        mine = pl.concat([f.with_columns(pl.lit((d - date(1970, 1, 1)).days, pl.Int64)
                                         .alias("__day"))
                          for s, d, f in got if s == size])
        assert mine.height == want.height > 0
        for frame in (f for s, _, f in got if s == size):  # each file sorted by keys and tile
            assert frame.equals(frame.sort([*view.join_keys, "tile"], maintain_order=True))
        stored = [(c, t) for c, t in want.schema.items() if c != "__day"]
        assert list(mine.drop("__day").schema.items()) == stored
        mine = mine.select(want.columns).sort([*view.join_keys, "tile", "__day"])
        for c in want.columns:
            if c in floats:
                diff = (mine[c] - want[c]).abs() <= 1e-9 * want[c].abs().clip(lower_bound=1.0)
                assert diff.all(), (size, c)
            else:
                assert mine[c].equals(want[c]), (size, c)


def test_an_empty_chunk_gives_no_frames() -> None:
    view = two_key_view()
    assert list(engine_polars.tile_frames(view, projected(view, events().clear()))) == []


def test_layers_are_written_as_they_come(tmp_path: Path) -> None:
    """Frame k is asked for only once frame k - 2 is on disk: at most one write is pending."""
    view = two_key_view()
    frames = list(engine_polars.tile_frames(view, projected(view, events())))

    def path(size: int, day: date) -> Path:
        return tmp_path / f"tile_us={size}" / f"day={day.isoformat()}" / "part-0.parquet"

    def produce() -> Iterator[tuple[int, date, pl.DataFrame]]:
        for k, (size, day, frame) in enumerate(frames):
            if k >= 2:
                assert path(*frames[k - 2][:2]).is_file()
            yield size, day, frame

    assert engine_polars.write_tiles(produce(), tmp_path) == sum(f.height for *_, f in frames)
    for size, day, frame in frames:
        assert pl.read_parquet(path(size, day), hive_partitioning=False).equals(frame)


def test_a_failing_layer_stops_the_writes(tmp_path: Path) -> None:
    view = two_key_view()
    frames = list(engine_polars.tile_frames(view, projected(view, events())))

    def produce() -> Iterator[tuple[int, date, pl.DataFrame]]:
        yield frames[0]
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        engine_polars.write_tiles(produce(), tmp_path)
    assert len(list(tmp_path.rglob("*.parquet"))) == 1  # the pending write finished
