"""Feature values at request time from an entity's online values: windows merged at read.

A windowed feature at ``now`` is the suffix merge stored at the first tile inside the window
(tiles that left the window are skipped by a binary search: a key that went quiet an hour ago
reads ``count_1h == 0`` without any write); a plain ``last`` is the newest value if it is no
older than its TTL; ``lifetime`` reads the lifetime value. :func:`features.tiles.finalize` turns
merged partials into values, as in the offline read, so both paths give equal values.

Statuses follow Feast: ``PRESENT``; ``NULL_VALUE`` (the entity is known, the value is null: an
empty window's mean); ``NOT_FOUND`` (no online value for the feature: never seen, or every
window expired, for the features of the window value; no lifetime value, for lifetime ones);
``OUTSIDE_MAX_AGE`` (a plain feature's newest value is older than its TTL). A feature's status
depends on its own value only, never on which other features a request names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

from features.definitions import Feature, FeatureView
from features.online.codec import NO_EVENT, Codec, codec
from features.tiles import finalize, finalizer, finalizers

PRESENT = "PRESENT"
NULL_VALUE = "NULL_VALUE"
NOT_FOUND = "NOT_FOUND"
OUTSIDE_MAX_AGE = "OUTSIDE_MAX_AGE"

_WINDOW, _WINDOW_LAST, _PLAIN, _LIFETIME, _LIFETIME_LAST = range(5)
_FROM_LIFETIME = (_LIFETIME, _LIFETIME_LAST)  # read from the lifetime value; the rest: window


@dataclass(frozen=True)
class _Step:
    feature: Feature
    how: int
    index: int  # section (windows) or latest input position (last)
    tile_us: int = 0
    tiles: int = 0
    ttl_us: int | None = None
    final: Any = None  # features.tiles.finalizer of the feature
    empty: Any = None  # its value over no events


@dataclass(frozen=True)
class ViewRead:
    """How to evaluate some features of one view from its two online values."""

    view: FeatureView
    codec: Codec
    steps: tuple[_Step, ...]
    window: bool  # needs the window value
    lifetime: bool  # needs the lifetime value
    empty: tuple[Any, ...]  # each feature's value for an empty window
    others: tuple[tuple[int, _Step], ...]  # (position, step) of every other feature

    needs_latest: bool  # some feature reads the newest values (last)
    # Codec.window_plan of the requested windows: what read_windows walks, and per window
    # (tile size, tiles, fill) with fill the features.tiles.finalizers of its features
    walk: tuple[Any, ...]
    never_null: tuple[bool, ...]  # per feature: a count or sum over tiles, never null
    on_window: tuple[int, ...]  # positions of the features read from the window value
    on_lifetime: tuple[int, ...]  # ... and from the lifetime value

    @classmethod
    def of(cls, view: FeatureView, features: Sequence[Feature]) -> ViewRead:
        c = codec(view)
        steps = []
        for f in features:
            w = f.window
            common = {"final": finalizer(c.layout, f), "empty": finalize(c.layout, f, None)}
            if w is None:
                pos = c.latest.index(c.layout.input_of(f))  # type: ignore[arg-type]
                steps.append(_Step(f, _PLAIN, pos, ttl_us=view.feature_ttl_us(f), **common))
            elif w.tiles is None and f.function == "last":
                pos = c.lifetime_latest.index(c.layout.input_of(f))  # type: ignore[arg-type]
                steps.append(_Step(f, _LIFETIME_LAST, pos, **common))
            elif w.tiles is None:
                steps.append(_Step(f, _LIFETIME, 0, **common))
            elif f.function == "last":
                pos = c.latest.index(c.layout.input_of(f))  # type: ignore[arg-type]
                steps.append(_Step(f, _WINDOW_LAST, pos, w.tile_us, w.tiles, **common))
            else:
                steps.append(_Step(f, _WINDOW, c.section_of(f), w.tile_us, w.tiles, **common))
        groups: dict[tuple[int, int, int], list[tuple[int, Feature]]] = {}
        others = []
        for k, step in enumerate(steps):
            if step.how == _WINDOW:
                groups.setdefault((step.index, step.tile_us, step.tiles), []).append(
                    (k, step.feature))
            else:
                others.append((k, step))
        hows = {s.how for s in steps}
        by_section = tuple(
            tuple((tile, tiles, finalizers(c.layout, fs, c.sections[k].record.position))
                  for (sec, tile, tiles), fs in groups.items() if sec == k)
            for k in range(len(c.sections)))
        return cls(view, c, tuple(steps),
                   bool(hows & {_WINDOW, _WINDOW_LAST, _PLAIN}),
                   bool(hows & {_LIFETIME, _LIFETIME_LAST}),
                   tuple(step.empty for step in steps),
                   tuple(others), bool(hows & {_PLAIN, _WINDOW_LAST}),
                   c.window_plan(by_section),
                   tuple(s.how in (_WINDOW, _LIFETIME) and s.feature.function in ("count", "sum")
                         for s in steps),
                   tuple(k for k, s in enumerate(steps) if s.how not in _FROM_LIFETIME),
                   tuple(k for k, s in enumerate(steps) if s.how in _FROM_LIFETIME))

    def evaluate(self, windows: Sequence[bytes | None], lifetimes: Sequence[bytes | None],
                 now_us: int) -> tuple[list[list[Any]], list[list[str]], list[int | None]]:
        """The features at ``now_us`` for every entity of a request, from each entity's window
        and lifetime value (None: none stored, or not needed).

        Returns per feature a column of values and a column of statuses, and per entity its
        newest event time (None when it has no online value or no event).
        """
        n = len(windows)
        rows = list(map(list, repeat(self.empty, n)))  # per entity, its features' values
        if self.window:
            newest, latest = self.codec.read_windows(windows, self.needs_latest, now_us,
                                                     self.walk, rows)
        else:
            newest, latest = [NO_EVENT] * n, [None] * n
        marked: list[tuple[int, int]] = []  # (entity, feature) OUTSIDE_MAX_AGE
        if self.lifetime or self.others:
            for i, values in enumerate(rows):
                life_newest, late = self._rest(values, latest[i], lifetimes[i], now_us)
                newest[i] = max(newest[i], life_newest)
                for k in late:
                    marked.append((i, k))
        values_out = list(map(list, zip(*rows, strict=True))) if rows else [
            [] for _ in self.steps]
        # Plain loops and C-level `in` tests: each comprehension is a call, and a 1-entity
        # read is made of little else.
        statuses = []
        for column, never in zip(values_out, self.never_null, strict=True):
            statuses.append([PRESENT] * n if never else
                            [NULL_VALUE if v is None else PRESENT for v in column])
        for i, k in marked:
            statuses[k][i] = OUTSIDE_MAX_AGE
        on_window, on_lifetime = self.on_window, self.on_lifetime
        if (on_window and None in windows) or (on_lifetime and None in lifetimes):
            for i, (window, lifetime) in enumerate(zip(windows, lifetimes, strict=True)):
                if window is None:  # no window value: its features are not found
                    for k in on_window:
                        statuses[k][i] = NOT_FOUND
                if lifetime is None:
                    for k in on_lifetime:
                        statuses[k][i] = NOT_FOUND
        if NO_EVENT in newest:
            return values_out, statuses, [None if t == NO_EVENT else t for t in newest]
        return values_out, statuses, newest  # type: ignore[return-value]

    def evaluate_one(self, window: bytes | None, lifetime: bytes | None, now_us: int
                     ) -> tuple[list[Any], list[str], int | None]:
        """:meth:`evaluate` of one entity: its features' values and statuses (one per feature)
        and its newest event time. The same steps as :meth:`evaluate` (``read_windows``,
        ``_other``) without the per-entity columns, which cost half a 1-entity read's Python."""
        values = list(self.empty)
        if self.window:
            newest_out, latest_out = self.codec.read_windows(
                (window,), self.needs_latest, now_us, self.walk, (values,))
            newest, latest = newest_out[0], latest_out[0]
        else:
            newest, latest = NO_EVENT, None
        marked: list[int] = []
        if self.lifetime or self.others:
            life_newest, marked = self._rest(values, latest, lifetime, now_us)
            newest = max(newest, life_newest)
        if window is None and lifetime is None:  # no online value at all
            return values, [NOT_FOUND] * len(values), None
        statuses = [PRESENT if never or v is not None else NULL_VALUE
                    for v, never in zip(values, self.never_null, strict=True)]
        for k in marked:
            statuses[k] = OUTSIDE_MAX_AGE
        for k in (self.on_window if window is None else
                  self.on_lifetime if lifetime is None else ()):  # one value of two missing
            statuses[k] = NOT_FOUND
        return values, statuses, None if newest == NO_EVENT else newest

    def _rest(self, values: list[Any], latest: list[Any] | None, lifetime: bytes | None,
              now_us: int) -> tuple[int, list[int]]:
        """Put one entity's features other than windows into ``values``, from its latest items
        and its lifetime value; returns the lifetime value's newest event (``NO_EVENT`` without
        one) and the positions of the features OUTSIDE_MAX_AGE."""
        life: tuple[int, Any, list[Any]] | None = None
        if lifetime is not None and self.lifetime:
            life = self.codec.decode_lifetime(lifetime)
        marked = []
        for k, step in self.others:
            if self._other(step, values, k, latest, life, now_us):
                marked.append(k)
        return NO_EVENT if life is None else life[0], marked

    @staticmethod
    def _other(step: _Step, values: list[Any], k: int, latest: list[Any] | None,
               life: tuple[int, Any, list[Any]] | None, now_us: int) -> bool:
        """Put one non-window feature's value into ``values[k]``; True when it is
        OUTSIDE_MAX_AGE."""
        how = step.how
        if how == _LIFETIME:
            if life is not None:
                values[k] = step.final(life[1])
            return False
        if how == _LIFETIME_LAST:
            item = None if life is None else life[2][step.index]
        else:
            item = None if latest is None else latest[step.index]
        if item is None:
            return False
        lt = item[1]
        if how == _WINDOW_LAST:
            if lt // step.tile_us > now_us // step.tile_us - step.tiles:
                values[k] = item[0]
        elif how == _PLAIN and step.ttl_us is not None and lt < now_us - step.ttl_us:
            return True
        else:
            values[k] = item[0]
        return False
