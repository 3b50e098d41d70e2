"""Window and tile arithmetic: the contract of DESIGN.md in small, exact cases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from features.errors import DefinitionError
from features.windows import Window, format_duration, parse_duration, tile_index, to_micros

S = 1_000_000


def test_default_tile_is_a_sixtieth() -> None:
    assert Window.parse("10m").tile_us == 10 * S
    assert Window.parse("1h").tile_us == 60 * S
    assert Window.parse("7d").tile_us == 168 * 60 * S
    assert Window.parse("lifetime").tile_us == 86_400 * S
    assert Window.parse("lifetime").tiles is None


def test_tile_can_be_chosen_and_must_divide_the_window() -> None:
    assert Window.parse("7d/1h").tile_us == 3600 * S
    assert Window.parse("7d/1h").spec == "7d/1h"
    assert Window.parse("1h/7m").check() == "window '1h' is not divisible by its tile '7m'"
    with pytest.raises(DefinitionError, match="no whole default tile"):
        Window.parse("7s")


def test_bad_durations_say_what_is_expected() -> None:
    with pytest.raises(DefinitionError, match=r"invalid duration '1 hour'.*'10m'"):
        parse_duration("1 hour")
    with pytest.raises(DefinitionError, match="must be positive"):
        parse_duration("0m")
    assert format_duration(parse_duration("90s")) == "90s"
    assert parse_duration(timedelta(hours=2)) == 7200 * S


def test_tiles_are_epoch_aligned_and_floor_before_1970() -> None:
    assert tile_index(0, 60 * S) == 0
    assert tile_index(-1, 60 * S) == -1
    assert tile_index(60 * S - 1, 60 * S) == 0


def test_covers_current_tile_exactly_and_w_over_s_minus_one_tiles_before() -> None:
    w = Window.parse("1h")  # 60 tiles of 1 minute
    t = 10 * 3600 * S + 30 * S  # 10:00:30
    assert w.covers(t, t)  # e <= t is inclusive
    assert not w.covers(t + 1, t)  # nothing from the future
    assert w.covers(9 * 3600 * S + 60 * S, t)  # 09:01:00, first µs of the oldest tile kept
    assert not w.covers(9 * 3600 * S + 60 * S - 1, t)  # 09:00:59.999999 has left
    assert Window.parse("lifetime").covers(-10**15, t)


def test_naive_time_is_utc() -> None:
    naive = datetime(2026, 3, 1, 12)
    assert to_micros(naive) == to_micros(naive.replace(tzinfo=UTC))
    kolkata = timezone(timedelta(hours=5, minutes=30))
    assert to_micros(datetime(2026, 3, 1, 17, 30, tzinfo=kolkata)) == to_micros(naive)
