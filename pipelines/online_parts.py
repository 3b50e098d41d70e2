"""A view's online values built and handed on in parts, so memory stays about flat as the view
grows (4x the view: 1.16x the memory, docs/benchmarks.md).

:func:`pipelines.online_build.build` holds every partial row it reads, their merges and the
packed values at once: ~7x the values' bytes (docs/benchmarks.md). :func:`built` splits the
view's entities into ranges of the first join key, each about ``BUILD_ROWS`` partial rows, and
builds one range after the other on one DuckDB connection: materialize writes a range to Redis,
and the batch run writes it to the snapshot, before the next is read.

Why ranges of the first join key, not a hash: the tile files are sorted by the join keys
(both engines), so a range condition lets DuckDB skip a file's row groups outside it by their
statistics (a file of one row group is still read whole by every range: the 11-17% more time
measured in docs/benchmarks.md). Every entity's rows have one first key, so they fall in one
range whatever the other keys; a first key shared by many entities only makes its range
bigger. An entity's values depend on its own rows only, so the
parts together are exactly what one build gives (tests/online/test_online_parts.py).

:class:`Parts` is what materialize writes: values part after part, keeping the entity tags it
has handed on (~20 bytes an entity) to know, at the end, which entities got none.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterable, Iterator
from typing import Any

from features import offline_store
from features.definitions import FeatureView
from features.online.codec import Codec
from features.sql import file_list, quote
from pipelines import online_build as ob

# Partial rows per part (environment: TESSERA_BUILD_ROWS). Measured here: ~110 MiB held
# whatever the part, plus ~260 MiB per million rows (docs/benchmarks.md, "Building in ranges
# of entities")
BUILD_ROWS = 500_000


class Parts:
    """A view's values, part after part (a snapshot's row groups, or ranges built from the
    tiles). ``total`` entity rows when known beforehand (None: not); the tags of every part
    handed on are kept for :attr:`window_tags` and :attr:`lifetime_tags`, read once iterated."""

    def __init__(self, parts: Iterable[ob.Values], total: int | None = None) -> None:
        self._parts = parts
        self.total = total
        self.planned: int | None = None  # parts to come, when known (ranges built)
        self._window: list[Any] = []
        self._lifetime: list[Any] = []

    def __iter__(self) -> Iterator[ob.Values]:
        for values in self._parts:
            self._window.append(values.window_tags)
            self._lifetime.append(values.lifetime_tags)
            yield values

    def expected(self) -> int | None:
        """``total`` if known, else an estimate once a part of the planned ones is handed on
        (the ranges hold about the same rows): what a progress bar shows."""
        rows = sum(map(len, self._window)) + sum(map(len, self._lifetime))
        if self.total is not None or not self.planned or not rows:
            return self.total
        return max(rows, round(rows * self.planned / len(self._window)))

    @property
    def window_tags(self) -> Any:
        """Arrow strings: every entity handed on with a window value."""
        import pyarrow as pa

        return pa.chunked_array(self._window, pa.string())

    @property
    def lifetime_tags(self) -> Any:
        import pyarrow as pa

        return pa.chunked_array(self._lifetime, pa.string())

    @property
    def entities(self) -> int:
        """Distinct entities handed on (one with lifetime values has two rows)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        both = pa.chunked_array(self._window + self._lifetime, pa.string())
        return len(pc.unique(both))


def _rows_per_part() -> int:
    rows = int(os.environ.get("TESSERA_BUILD_ROWS", BUILD_ROWS))
    if rows < 1:
        raise ValueError(f"TESSERA_BUILD_ROWS={rows}: expected a positive number of rows")
    return rows


def _literal(value: Any) -> str:
    """A join key value as SQL (keys are int64 or string: features.definitions.Entity)."""
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(int(value))


def ranges(reader: ob.Reader, cod: Codec, now_us: int, rows: int | None = None) -> list[str]:
    """SQL conditions on the first join key that split the entities a build as of ``now_us``
    reads into contiguous ranges of about ``rows`` partial rows each (``[""]``: one part).
    Null keys go with the first range."""
    rows = _rows_per_part() if rows is None else rows
    sources = [(files, f" AND tile >= {first}")
               for _, files, first in ob.section_files(reader, cod, now_us)]
    if cod.lifetime is not None and (days := reader.files(ob.DAY_US)):
        sources.append((days, ""))
    counts = [reader.query(f"SELECT count(*) AS n FROM read_parquet({file_list(files)}) "
                           f"WHERE true{where}{reader.semi}").column("n")[0].as_py()
              for files, where in sources]
    parts = math.ceil(sum(counts) / rows) if counts else 0
    if parts <= 1:
        return [""]
    files, where = sources[counts.index(max(counts))]  # cut where the most rows are
    key = quote(reader.view.join_keys[0])
    fractions = ", ".join(str(i / parts) for i in range(1, parts))
    found = reader.query(
        f"SELECT min({key}) AS low, quantile_disc({key}, [{fractions}]) AS cuts FROM "
        f"read_parquet({file_list(files)}) WHERE {key} IS NOT NULL{where}{reader.semi}")
    low, cuts = found.column("low")[0].as_py(), found.column("cuts")[0].as_py()
    # a cut at the smallest key would make an empty first range (few distinct keys)
    bounds = [_literal(c) for c in sorted(set(cuts or ()) - {low})]
    if not bounds:
        return [""]
    out = [f"{key} < {bounds[0]} OR {key} IS NULL"]
    out += [f"{key} >= {lo} AND {key} < {hi}" for lo, hi in itertools.pairwise(bounds)]
    out.append(f"{key} >= {bounds[-1]}")
    return out


def built(view: FeatureView, base: Any, manifest: offline_store.Manifest, entities: Any,
          cod: Codec, now_us: int, rows: int | None = None) -> Parts:
    """The view's values as of ``now_us`` (only ``entities``' when given), built from the tiles
    one range of entities at a time, each range only as the previous one was handed on."""
    reader = ob.Reader(view, base, manifest, entities)

    def parts() -> Iterator[ob.Values]:
        conditions = ranges(reader, cod, now_us, rows)
        out.planned = len(conditions)
        for part in conditions:
            yield ob.build(reader.within(part) if part else reader, cod, now_us)

    out = Parts(parts())
    return out


__all__ = ["BUILD_ROWS", "Parts", "built", "ranges"]
