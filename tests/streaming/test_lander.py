"""The landing thread: a batch's offsets are handed on only after its events are in Parquet, in
batch order; batches that queue up while it writes land together; a landing error stops every
later commit. Real Parquet files, no Kafka needed."""

from __future__ import annotations

import threading
from pathlib import Path

import polars as pl
import pytest

from features.config import load_config
from features.repo import load_definitions
from streaming.events import generated_events
from streaming.lander import Lander
from streaming.landing import OFFSET, PARTITION, Landing
from tests.conftest import REPO_ROOT


@pytest.fixture()
def landing(tmp_path: Path) -> Landing:
    cfg = load_config(REPO_ROOT)
    land = Landing(cfg, load_definitions(cfg).sources["transactions"], "t")
    land.root = tmp_path / "landed"
    return land


def _batch(first: int, n: int) -> pl.DataFrame:
    events = generated_events(n, days=1, seed=first)
    return events.with_columns(pl.Series(PARTITION, [i % 2 for i in range(n)]),
                               pl.Series(OFFSET, range(first, first + n)))


def test_offsets_follow_their_landing_in_order_and_queued_batches_land_together(
        landing: Landing) -> None:
    done: list[dict] = []
    gate = threading.Event()
    write = landing.write

    def first_write_waits(frame: pl.DataFrame) -> int:
        gate.wait(10)
        return write(frame)

    landing.write = first_write_waits  # type: ignore[method-assign]
    lander = Lander(lambda offsets: done.append(dict(offsets)))
    lander.start()
    lander.submit([(landing, _batch(0, 10))], {"p": 10})
    for k in range(1, 4):  # queued while the first write waits
        lander.submit([(landing, _batch(k * 10, 10))], {"p": 10 + 10 * k})
    lander.submit([], {"p": 41})  # nothing to land: still after the ones before it
    threading.Event().wait(0.3)
    assert done == []  # nothing handed on before its events are landed
    gate.set()
    lander.close()
    assert done == [{"p": 10}, {"p": 20}, {"p": 30}, {"p": 40}, {"p": 41}]
    assert lander.landed == 40 and lander.writes == 2  # the queued three: one write
    files = sorted(p.name for p in landing.root.rglob("*.parquet"))
    assert len(files) == 4  # two partitions, two writes
    landed = pl.read_parquet(list(landing.root.rglob("*.parquet")))
    assert sorted(landed[OFFSET].to_list()) == list(range(40))


def test_a_landing_error_stops_every_later_commit(landing: Landing) -> None:
    done: list[dict] = []
    lander = Lander(lambda offsets: done.append(dict(offsets)))
    lander.start()
    lander.submit([(landing, _batch(0, 5))], {"p": 5})
    for _ in range(1000):  # landed alone, before the bad one comes
        if done:
            break
        threading.Event().wait(0.01)
    lander.submit([(landing, _batch(5, 5).drop(OFFSET))], {"p": 10})  # cannot be landed
    lander.submit([(landing, _batch(10, 5))], {"p": 15})
    lander.close()
    assert done == [{"p": 5}]
    assert isinstance(lander.error, pl.exceptions.ColumnNotFoundError)
    assert lander.landed == 5


def test_batches_within_land_every_land_as_one_file_per_partition_and_flush_lands_now(
        landing: Landing) -> None:
    done: list[dict] = []
    lander = Lander(lambda offsets: done.append(dict(offsets)), every_s=30, max_rows=10_000)
    lander.start()
    for k in range(3):  # one at a time, as a steady stream hands them over
        lander.submit([(landing, _batch(k * 10, 10))], {"p": 10 + 10 * k})
        threading.Event().wait(0.1)
    assert done == [] and lander.writes == 0  # online already; waiting to land together
    lander.flush()  # the stream went quiet (or a rebalance began)
    for _ in range(500):
        if done:
            break
        threading.Event().wait(0.01)
    assert done == [{"p": 10}, {"p": 20}, {"p": 30}]
    assert lander.writes == 1 and lander.landed == 30
    assert len(list(landing.root.rglob("*.parquet"))) == 2  # one file per partition

    lander.submit([(landing, _batch(30, 10))], {"p": 40})
    lander.close()  # stopping lands what waits, without waiting for land_every
    assert done[-1] == {"p": 40} and lander.landed == 40 and lander.writes == 2


def test_land_max_events_lands_before_land_every(landing: Landing) -> None:
    done: list[dict] = []
    lander = Lander(lambda offsets: done.append(dict(offsets)), every_s=30, max_rows=25)
    lander.start()
    for k in range(3):
        lander.submit([(landing, _batch(k * 10, 10))], {"p": 10 + 10 * k})
    for _ in range(500):  # 30 rows waiting >= 25: landed without a flush
        if len(done) == 3:
            break
        threading.Event().wait(0.01)
    assert done == [{"p": 10}, {"p": 20}, {"p": 30}] and lander.writes == 1
    lander.close()
