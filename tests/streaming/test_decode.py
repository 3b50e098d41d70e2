"""Decoding Kafka messages: the fast whole-batch path gives exactly what the careful
per-message path gives, and nothing a message contains can shift rows between messages."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from features.repo import load_definitions
from streaming.decode import JsonDecoder
from streaming.events import encode_events, generated_events
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def source():
    from features.config import load_config

    return load_definitions(load_config(REPO_ROOT)).sources["transactions"]


def test_fast_path_equals_the_careful_path_bit_for_bit(source) -> None:
    events = generated_events(5_000, days=2, seed=3)
    events = events.with_columns(pl.Series("amount", np.random.default_rng(1).normal(
        100, 1e6, events.height)))  # floats of every magnitude
    payloads = encode_events(events, source)
    decoder = JsonDecoder(source)
    fast, bad = decoder.decode(payloads)
    assert bad == [] and decoder._all_good(payloads) is not None  # the fast path was taken
    slow, bad_slow = decoder._one_by_one(payloads)
    assert bad_slow == []
    assert fast.equals(slow)
    assert (fast["amount"].to_numpy().view(np.int64)
            == events["amount"].to_numpy().view(np.int64)).all()


def test_a_message_holding_two_objects_cannot_shift_the_rows(source) -> None:
    good = encode_events(generated_events(3, days=1, seed=4), source)
    forged = good[1] + b"," + good[2]  # would be two array elements in a joined batch
    pretty = json.dumps(json.loads(good[0]), indent=1).encode()  # newlines inside: valid JSON
    frame, bad = JsonDecoder(source).decode([pretty, forged, good[2]])
    assert [(b.index, b.reason) for b in bad] == [(1, "undecodable")]
    assert frame["__i"].to_list() == [0, 2]
    assert frame["transaction_id"].to_list() == [json.loads(good[0])["transaction_id"],
                                                 json.loads(good[2])["transaction_id"]]
