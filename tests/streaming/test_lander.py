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
