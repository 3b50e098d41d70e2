"""A sum of integers that leaves int64 is never wrapped round: the batch run of either engine,
the merge of tiles into a window (what materialization and streaming build) and the
point-in-time read each fail with one line naming it and saying how to sum a float64. Before
a review found it, Polars and the merges wrapped round (online read -2^63), Spark failed with a
Java traceback and the training export with DuckDB's cast error."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from features import agg, col
from features.definitions import Entity, FeatureView, Source
from features.errors import SumOverflowError
from features.tiles import layout, suffix_merge
from tests.pipelines.window_harness import materialize, read_back

T0 = datetime(2026, 3, 2, 12, tzinfo=UTC)
SCHEMA = {"user_id": "int64", "qty": "int64", "event_ts": "timestamp"}
SOURCE = Source(name="events", path="unused", schema=SCHEMA, timestamp_field="event_ts")


def view_of(src: Source) -> FeatureView:
    return FeatureView(name="orders", entities=[Entity(name="user", join_key="user_id")],
                       source=src, ttl="1d",
                       features=[agg.sum(col("qty"), windows={"1h": "qty_1h"}),
                                 agg.count(windows={"1h": "n_1h"})])


@pytest.mark.parametrize("engine", ["polars", "spark"])
def test_a_tile_whose_integer_sum_leaves_int64_fails_the_run(engine: str,
                                                              tmp_path: Path) -> None:
    rows = [{"user_id": 1, "qty": 2**62, "event_ts": T0},  # one tile: 2^63
            {"user_id": 1, "qty": 2**62, "event_ts": T0 + timedelta(microseconds=1)},
            {"user_id": 2, "qty": 5, "event_ts": T0}]
    with pytest.raises(SumOverflowError, match=r"^feature view 'orders': a sum of integers "
                                               r"leaves int64 in a tile .*sum a float64 instead"):
        materialize(engine, view_of, SOURCE, rows, tmp_path)
    assert not list((tmp_path / "offline").rglob("*.parquet"))  # nothing committed


def test_a_window_whose_integer_sum_leaves_int64_fails_the_read(tmp_path: Path) -> None:
    """Each 1-minute tile fits; their window does not. Just before the second event the
    window fits, and reads exactly."""
    rows = [{"user_id": 1, "qty": 2**62, "event_ts": T0},
            {"user_id": 1, "qty": 2**62, "event_ts": T0 + timedelta(minutes=10)}]
    view, cfg = materialize("polars", view_of, SOURCE, rows, tmp_path)
    before = read_back(view, cfg, [((1,), T0 + timedelta(minutes=5))])
    assert before == [{"qty_1h": 2**62, "n_1h": 1}]
    with pytest.raises(SumOverflowError, match=r"^a sum of integers leaves int64 in a window of "
                                               r"the point-in-time read \(.*sum a float64"):
        read_back(view, cfg, [((1,), T0 + timedelta(minutes=20))])


def test_merging_tiles_into_a_window_never_wraps_round() -> None:
    """The suffix merge online values are built with (materialization, streaming)."""
    view = view_of(SOURCE)
    lay = layout(view)
    s = next(inp.column("s") for inp in lay.inputs if "s" in inp.kinds)
    fits = {"n": np.array([1, 1, 1]), s: np.array([2**61, 2**61, 2**61], np.int64)}
    merged = suffix_merge(lay, fits, np.array([3, 3, 3]))
    assert merged[s].tolist() == [3 * 2**61, 2 * 2**61, 2**61]
    over = {"n": np.array([1, 1]), s: np.array([2**62, 2**62], np.int64)}
    with pytest.raises(SumOverflowError, match=r"leaves int64 where tiles merge into a window"):
        suffix_merge(lay, over, np.array([2, 2]))
    under = {"n": np.array([1, 1]), s: np.array([-(2**62), -(2**62) - 1], np.int64)}
    with pytest.raises(SumOverflowError):
        suffix_merge(lay, under, np.array([2, 2]))
