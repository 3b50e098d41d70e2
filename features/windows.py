"""Windows and tiles: the time arithmetic every path shares.

A window ``w`` has a tile size ``s`` that divides it (default ``w / 60``). Tiles are aligned to
the Unix epoch: the tile of an instant ``t`` (in microseconds) is ``i(t) = floor(t / s)``. The
value of a windowed feature at ``t`` aggregates the events ``e`` of that key with
``i(e) > i(t) - w/s`` and ``e <= t``: the current tile exactly up to ``t`` plus the ``w/s - 1``
tiles before it. ``lifetime`` covers every event with ``e <= t``; it is tiled by day.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from features.errors import DefinitionError

US_PER_UNIT = {"s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000}
DEFAULT_TILES_PER_WINDOW = 60
LIFETIME = "lifetime"
LIFETIME_TILE_US = US_PER_UNIT["d"]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DURATION = re.compile(r"^(\d+)([smhd])$")


def parse_duration(text: str | timedelta) -> int:
    """Microseconds in a duration written ``90s``, ``10m``, ``1h``, ``7d`` (or a timedelta).

    >>> parse_duration("10m")
    600000000
    """
    if isinstance(text, timedelta):
        us = (text.days * 86_400 + text.seconds) * 1_000_000 + text.microseconds
    else:
        m = _DURATION.match(str(text).strip())
        if m is None:
            raise DefinitionError(
                f"invalid duration {text!r}: expected a number and a unit s, m, h or d, "
                f"like '10m', '1h' or '7d'")
        us = int(m.group(1)) * US_PER_UNIT[m.group(2)]
    if us <= 0:
        raise DefinitionError(f"invalid duration {text!r}: must be positive")
    return us


def format_duration(us: int) -> str:
    """The shortest exact spelling of a duration: 3600000000 → '1h'."""
    for unit in ("d", "h", "m", "s"):
        if us % US_PER_UNIT[unit] == 0:
            return f"{us // US_PER_UNIT[unit]}{unit}"
    return f"{us}us"


def tile_index(t_us: int, tile_us: int) -> int:
    """Index of the epoch-aligned tile holding instant ``t_us``."""
    return t_us // tile_us


def parse_instant(value: datetime | date | str | None) -> datetime | None:
    """A datetime from a datetime, a date (its UTC midnight) or ISO text (None stays None).

    Raises:
        ValueError: text that is no ISO date or datetime; callers add which option it was.
    """
    if value is None or isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    try:
        return datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"expected an ISO date or datetime like 2026-01-05 or "
                         f"2026-01-05T12:00:00Z, got {value!r}") from None


def to_micros(t: datetime) -> int:
    """Microseconds since the epoch; a naive datetime is read as UTC."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    delta = t - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


@dataclass(frozen=True, slots=True)
class Window:
    """A window length (or lifetime) and its tile size, both in microseconds.

    Example:
        >>> w = Window.parse("1h")
        >>> (w.name, w.tile_us // 1_000_000, w.tiles)
        ('1h', 60, 60)
    """

    length_us: int | None  # None: lifetime
    tile_us: int

    @classmethod
    def parse(cls, spec: str | Window, tile: str | None = None) -> Window:
        """``"1h"``, ``"7d"``, ``"lifetime"``; ``tile`` overrides the default ``w / 60``."""
        if isinstance(spec, Window):
            return spec
        text = str(spec).strip()
        if "/" in text and tile is None:  # "7d/1h": a 7-day window in 1-hour tiles
            text, tile = (part.strip() for part in text.split("/", 1))
        if text == LIFETIME:
            return cls(None, parse_duration(tile) if tile else LIFETIME_TILE_US)
        length = parse_duration(text)
        if tile is not None:
            tile_us = parse_duration(tile)
        elif length % DEFAULT_TILES_PER_WINDOW == 0:
            tile_us = length // DEFAULT_TILES_PER_WINDOW
        else:
            raise DefinitionError(
                f"window {text!r} has no whole default tile (window / 60); set one, "
                f"e.g. '{text}/1s'")
        return cls(length, tile_us)

    @property
    def name(self) -> str:
        return LIFETIME if self.length_us is None else format_duration(self.length_us)

    @property
    def spec(self) -> str:
        """Round-trippable spelling: ``"7d/168m"``."""
        return f"{self.name}/{format_duration(self.tile_us)}"

    @property
    def tiles(self) -> int | None:
        """Tiles per window (``w / s``); None for lifetime."""
        return None if self.length_us is None else self.length_us // self.tile_us

    def check(self) -> str | None:
        """Why this window is invalid, or None."""
        if self.length_us is not None and self.length_us % self.tile_us != 0:
            return (f"window {self.name!r} is not divisible by its tile "
                    f"{format_duration(self.tile_us)!r}")
        return None

    def first_tile(self, t_us: int) -> int | None:
        """Lowest tile index inside the window at ``t_us`` (None: unbounded, lifetime)."""
        if self.tiles is None:
            return None
        return tile_index(t_us, self.tile_us) - self.tiles + 1

    def covers(self, event_us: int, t_us: int) -> bool:
        """Whether an event at ``event_us`` counts in the value at ``t_us`` (the contract)."""
        if event_us > t_us:
            return False
        first = self.first_tile(t_us)
        return first is None or tile_index(event_us, self.tile_us) >= first
