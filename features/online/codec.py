"""The online value of one entity in one feature view: what is kept, and its bytes.

For each view (named by its rule fingerprint) an entity has up to two Redis values:

- the **window value**: per tile size of the view's windows, the tiles still inside the longest
  window of that size, each with the *suffix merge* of it and every newer tile
  (:func:`features.tiles.suffix_merge`); the newest non-null value of each ``last`` input with
  its event time; the entity's newest event time. A window's value at ``t`` is the suffix at
  the first tile inside the window: one lookup, however long the window. It expires once its
  newest tile has left the longest window (and the plain features' TTL has passed);
- the **lifetime value**, for views with ``lifetime`` features: the merge of every tile, and the
  newest value of their ``last`` inputs. It never expires.

Bytes (little-endian, never pickle)::

    window   = version:u8 newest_event:i64 latest_bytes:u32 count:u32 * sections
               latest section*
    latest   = per last input: present:u8 [lt:i64 ls:i64 value]
    section  = (tile:i64 record) * count
    lifetime = version:u8 newest_event:i64 record latest
    record   = per partial column, in layout order: [present:u8] value (i64, f64 or bool)
    value    = i64 | f64 | u8 (bool) | len:u32 utf-8 (string)

``docs/online.md`` explains the choices and their measured costs.
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, cached_property
from typing import Any

from features.definitions import Feature, FeatureView
from features.tiles import NEEDS, Input, Layout, layout

VERSION = 3  # the byte format; part of every key name too (features.online.keys)
# 3: the window head holds the latest section's size and every section's tile count, so a
#    read jumps to the sections it needs (2 walked the value to find them)
NO_EVENT = -(2**63)
_CODES = {"int64": "q", "timestamp": "q", "float64": "d", "bool": "?"}
NUMPY_CODES = {"q": "<i8", "d": "<f8", "?": "u1"}  # the same fields for numpy structured arrays
_HEAD = struct.Struct("<Bq")  # version, newest event: the lifetime value's head
_LATEST = struct.Struct("<qq")
_LEN = struct.Struct("<I")
_TILE = struct.Struct("<q")  # a tile index, first in each tile of a section
_FLAG = struct.Struct("<B")


def field_code(kind: str, dtype: str) -> str:
    """struct code of one partial column."""
    if kind in ("n", "c", "lt", "ls"):
        return "q"
    if kind == "q":
        return "d"
    if kind == "s":
        return "q" if dtype in ("int64", "bool") else "d"
    return _CODES[dtype]  # lo, hi: min/max are numeric or timestamps (validated)


@dataclass(frozen=True)
class Record:
    """The fixed-width record of partial columns one section keeps per tile."""

    columns: tuple[str, ...]  # partial columns, layout order
    codes: tuple[str, ...]
    nullable: tuple[bool, ...]  # lo/hi carry a presence byte

    @property
    def struct(self) -> struct.Struct:
        return _record_struct(self.codes, self.nullable)

    @property
    def size(self) -> int:
        return self.struct.size

    def numpy_dtype(self) -> Any:
        """The same layout as a numpy structured dtype (for packing many records at once)."""
        import numpy as np

        fields = []
        for col, code, null in zip(self.columns, self.codes, self.nullable, strict=True):
            if null:
                fields.append((f"{col}?", "u1"))
            fields.append((col, NUMPY_CODES[code]))
        return np.dtype(fields)

    @property
    def position(self) -> dict[str, int]:
        """Index of each column (and ``column?`` of its presence flag) in an unpacked record."""
        out, i = {}, 0
        for col, null in zip(self.columns, self.nullable, strict=True):
            if null:
                out[f"{col}?"] = i
                i += 1
            out[col] = i
            i += 1
        return out

    def to_dict(self, values: Sequence[Any]) -> dict[str, Any]:
        if not any(self.nullable):
            return dict(zip(self.columns, values, strict=True))
        out: dict[str, Any] = {}
        i = 0
        for col, code, null in zip(self.columns, self.codes, self.nullable, strict=True):
            if null:
                present, value = values[i], values[i + 1]
                i += 2
                out[col] = (bool(value) if code == "?" else value) if present else None
            else:
                out[col] = values[i]
                i += 1
        return out


_WINDOW_HEAD = "<BqI"  # version, newest event, latest part's bytes; then a u32 count a section
COUNTS_AT = struct.calcsize(_WINDOW_HEAD)  # byte offset of the first tile count
_FIRST_COUNT = len(_WINDOW_HEAD) - 1  # its index in the unpacked head


@cache
def _window_head(sections: int) -> struct.Struct:
    return struct.Struct(_WINDOW_HEAD + "I" * sections)


@cache
def _record_struct(codes: tuple[str, ...], nullable: tuple[bool, ...]) -> struct.Struct:
    return struct.Struct("<" + "".join(("B" if n else "") + c for c, n in zip(codes, nullable,
                                                                              strict=True)))


def _record(lay: Layout, features: Sequence[Feature]) -> Record:
    wanted: set[str] = set()
    for f in features:
        inp = lay.input_of(f)
        if inp is None:
            wanted.add("n")
        else:
            wanted.update(inp.column(k) for k in inp.kinds
                          if k in NEEDS[f.function] and k not in ("l", "lt", "ls"))
    columns, codes, nullable = [], [], []
    for col, _dtype in lay.partial_columns():
        if col in wanted:
            kind = col.rstrip("0123456789")
            inp_dtype = _input_dtype(lay, col)
            columns.append(col)
            codes.append(field_code(kind, inp_dtype))
            nullable.append(kind in ("lo", "hi"))
    return Record(tuple(columns), tuple(codes), tuple(nullable))


def _input_dtype(lay: Layout, column: str) -> str:
    if column == "n":
        return "int64"
    index = int(column.lstrip("abcdefghijklmnopqrstuvwxyz"))
    return lay.inputs[index].dtype


@dataclass(frozen=True)
class Section:
    """One tile size of a view: its tiles inside the longest window of that size."""

    tile_us: int
    horizon: int  # tiles kept: the longest window of this tile size, in tiles
    record: Record


@dataclass(frozen=True)
class Codec:
    """How one feature view's online values are laid out (deterministic from its rules)."""

    view: FeatureView
    layout: Layout
    sections: tuple[Section, ...]
    latest: tuple[Input, ...]  # inputs of last() features outside lifetime, layout order
    lifetime: Record | None  # None: the view has no lifetime feature
    lifetime_latest: tuple[Input, ...]

    # cached_property writes the instance's __dict__ directly, so it works on a frozen
    # dataclass; after the first use an access is a plain attribute lookup
    @cached_property
    def records(self) -> list[tuple[Record, Any, int]]:
        """Per section: (record, its unpack_from, its size), computed once."""
        return [(s.record, s.record.struct.unpack_from, s.record.size) for s in self.sections]

    @cached_property
    def head(self) -> struct.Struct:
        """The window value's head: version, newest event, latest section bytes, tile count
        per section."""
        return _window_head(len(self.sections))

    def section_of(self, feature: Feature) -> int:
        assert feature.window is not None
        for i, s in enumerate(self.sections):
            if s.tile_us == feature.window.tile_us:
                return i
        raise KeyError(feature.name)

    # --- encode ---------------------------------------------------------------------------

    def encode_latest(self, inputs: Sequence[Input],
                      latest: Sequence[tuple[Any, int, int] | None]) -> bytes:
        """The latest section: per input ``(value, event time, seq)`` or None."""
        parts = []
        for inp, item in zip(inputs, latest, strict=True):
            if item is None or item[0] is None:
                parts.append(b"\x00")
                continue
            value, lt, ls = item
            parts.append(b"\x01" + _LATEST.pack(lt, ls) + _encode_value(inp.dtype, value))
        return b"".join(parts)

    def encode_window(self, newest_event: int, latest: bytes,
                      sections: Sequence[Sequence[tuple[int, bytes]]]) -> bytes:
        """A window value from its parts: per section, (tile index, record bytes) per tile."""
        parts = [self.head.pack(VERSION, newest_event, len(latest),
                                *(len(rows) for rows in sections)), latest]
        for rows in sections:
            parts += [struct.pack("<q", tile) + record for tile, record in rows]
        return b"".join(parts)

    def encode_lifetime(self, newest_event: int, record: bytes, latest: bytes) -> bytes:
        return _HEAD.pack(VERSION, newest_event) + record + latest

    # --- decode ---------------------------------------------------------------------------

    def window_plan(self, groups: Sequence[Sequence[tuple[int, int, Any]]]) -> tuple[Any, ...]:
        """What :meth:`read_windows` walks, fixed per request shape: per section up to the
        last one with a requested window (``groups[section]``: (tile size, tiles in the window,
        ``fill``)), the place of its tile count in the head, its record's unpack_from, its tile
        width, its tile-index readers and those windows."""
        last = len(groups) - 1
        while last >= 0 and not groups[last]:
            last -= 1
        records = self.records
        return tuple((_FIRST_COUNT + k, records[k][1], records[k][2] + 8,
                      self._tile_readers(k), tuple(groups[k])) for k in range(last + 1))

    def read_windows(self, blobs: Sequence[bytes | None], with_latest: bool, now_us: int,
                     plan: Sequence[Any], rows: Sequence[list[Any]]
                     ) -> tuple[list[int], list[list[Any] | None]]:
        """The hot path of a read: walk each entity's window value once, and for each
        requested window of ``plan`` (:meth:`window_plan`) put its features' values at
        ``now_us`` into that entity's ``rows[i]`` with ``fill(record, rows[i])``
        (:func:`features.tiles.finalizers`). Returns per entity (newest event, latest items);
        ``NO_EVENT`` and None where the entity has no window value.

        One loop over every entity of the request, with nothing built per entity but the
        records it reads: per-entity calls and objects cost a third of a 100-entity read.
        """
        head = self.head
        unpack_head, start = head.unpack_from, head.size
        unpack_tile = _TILE.unpack_from
        latest_inputs = self.latest if with_latest else ()
        sections = []  # plain loops: a comprehension or generator is a call per request
        for at, unpack, width, readers, wanted in plan:
            firsts = []
            for tile, tiles, fill in wanted:
                firsts.append((now_us // tile - tiles + 1, fill))
            sections.append((at, unpack, width, readers, firsts))
        newest_out: list[int] = []
        latest_out: list[list[Any] | None] = []
        for blob, values in zip(blobs, rows, strict=True):
            if blob is None:
                newest_out.append(NO_EVENT)
                latest_out.append(None)
                continue
            if blob[0] != VERSION:
                raise ValueError(f"online value of view {self.view.name!r} has version "
                                 f"{blob[0]}, expected {VERSION} (re-materialize)")
            fields = unpack_head(blob, 0)
            newest_out.append(fields[1])
            latest_out.append(_decode_latest(latest_inputs, blob, start)[0] if latest_inputs
                              else [])
            pos = start + fields[2]
            for at, unpack, width, readers, wanted in sections:
                count = fields[at]
                if wanted and count:
                    oldest = unpack_tile(blob, pos)[0]
                    tiles = None
                    for first, fill in wanted:
                        if oldest >= first:  # the whole section is in the window (common)
                            fill(unpack(blob, pos + 8), values)
                            continue
                        if tiles is None:  # else a binary search over its tile indices
                            tiles_at = readers.get(count)
                            if tiles_at is None:
                                tiles_at = readers[count] = struct.Struct(
                                    "<" + f"q{width - 8}x" * count).unpack_from
                            tiles = tiles_at(blob, pos)
                        p = bisect_left(tiles, first)
                        if p < count:
                            fill(unpack(blob, pos + p * width + 8), values)
                pos += count * width
        return newest_out, latest_out

    def _tile_readers(self, section: int) -> dict[int, Any]:
        """Per tile count, the unpack_from that reads a section's tile indices, skipping the
        records between them (one dict per section, filled as counts appear)."""
        readers = self.__dict__.setdefault("_tile_reader_cache", {})
        return readers.setdefault(section, {})  # type: ignore[no-any-return]

    def decode_lifetime(self, blob: bytes) -> tuple[int, dict[str, Any], list[Any]]:
        """(newest event time, merged partials of every tile, latest per lifetime last input)."""
        assert self.lifetime is not None
        version, newest = _HEAD.unpack_from(blob, 0)
        if version != VERSION:
            raise ValueError(f"online lifetime value of view {self.view.name!r} has version "
                             f"{version}, expected {VERSION} (re-materialize)")
        rec = self.lifetime
        merged = rec.to_dict(rec.struct.unpack_from(blob, _HEAD.size))
        latest, _ = _decode_latest(self.lifetime_latest, blob, _HEAD.size + rec.size)
        return newest, merged, latest


def _encode_value(dtype: str, value: Any) -> bytes:
    if dtype == "string":
        data = str(value).encode()
        return _LEN.pack(len(data)) + data
    if dtype == "timestamp" and not isinstance(value, int):
        from features.windows import to_micros

        value = to_micros(value)
    return struct.pack("<" + _CODES[dtype], value)


def _decode_latest(inputs: Sequence[Input], blob: bytes, pos: int) -> tuple[list[Any], int]:
    out: list[Any] = []
    for inp in inputs:
        flag = blob[pos]
        pos += 1
        if not flag:
            out.append(None)
            continue
        lt, ls = _LATEST.unpack_from(blob, pos)
        pos += _LATEST.size
        if inp.dtype == "string":
            (n,) = _LEN.unpack_from(blob, pos)
            pos += _LEN.size
            value: Any = blob[pos:pos + n].decode()
            pos += n
        else:
            code = _CODES[inp.dtype]
            (value,) = struct.unpack_from("<" + code, blob, pos)
            pos += struct.calcsize(code)
        out.append((value, lt, ls))
    return out, pos


@cache
def codec(view: FeatureView) -> Codec:
    """The online layout of a view (same rules, same bytes)."""
    lay = layout(view)
    sections = []
    for size in view.tile_sizes():
        feats = [f for f in view.features if f.window is not None and f.window.tile_us == size
                 and f.window.tiles is not None and f.function != "last"]
        if feats:  # windowed last() needs no tiles: the newest value answers every window
            horizon = max(f.window.tiles or 0 for f in feats if f.window is not None)
            sections.append(Section(size, horizon, _record(lay, feats)))
    life = [f for f in view.features if f.window is not None and f.window.tiles is None]
    life_agg = [f for f in life if f.function != "last"]

    def inputs_of(feats: Sequence[Feature]) -> tuple[Input, ...]:
        found = {lay.input_of(f) for f in feats if f.function == "last"}
        return tuple(sorted((i for i in found if i is not None), key=lambda i: i.index))

    timed = [f for f in view.features if f.window is None or f.window.tiles is not None]
    return Codec(view, lay, tuple(sections), inputs_of(timed),
                 _record(lay, life_agg) if life else None, inputs_of(life))
