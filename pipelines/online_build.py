"""Building a view's online values from its offline tiles: what materialization writes.

DuckDB reads the tiles still inside each tile size's longest window, the newest value of each
``last`` input and, for lifetime features, every day tile; numpy computes the suffix merges
(:func:`features.tiles.suffix_merge`) and :mod:`pipelines.online_pack` packs every entity's
values at once (the format of :mod:`features.online.codec`). :func:`build` returns them as
columns; :mod:`pipelines.materialize` writes them to Redis and :mod:`pipelines.online_snapshot`
keeps them next to the tiles.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from features import offline_store
from features.definitions import FeatureView
from features.online.codec import NO_EVENT, Codec, Record
from features.sql import file_list, quote
from features.tiles import EXACT_TILE_US, suffix_merge
from features.windows import US_PER_UNIT, from_micros
from pipelines import online_pack as pk
from pipelines.online_expiry import expire_at

DAY_US = US_PER_UNIT["d"]
_TWO64 = 2**64  # (time, seq) as one sortable HUGEINT: time * 2^64 + seq


def _day(us: int) -> str:
    return from_micros(us - us % DAY_US).date().isoformat()


class Reader:
    """DuckDB over one manifest's files, limited to some entities when incremental."""

    def __init__(self, view: FeatureView, base: Any, manifest: offline_store.Manifest,
                 entities: Any | None) -> None:
        import duckdb

        self.view = view
        self.base = base
        self.manifest = manifest
        self.keys = ", ".join(quote(k) for k in view.join_keys)
        self.con = duckdb.connect()
        self.con.execute("SET TimeZone = 'UTC'")
        self.semi = ""
        if entities is not None:
            self.con.register("wanted", entities)
            self.semi = f" AND ({self.keys}) IN (SELECT ({self.keys}) FROM wanted)"

    def files(self, tile_us: int, first_day: str | None = None) -> list[str]:
        prefix = f"{tile_us}/"
        return sorted(str(self.base / f) for key, fs in self.manifest.partitions.items()
                      if key.startswith(prefix) and (first_day is None
                                                     or key[len(prefix):] >= first_day)
                      for f in fs)

    def query(self, sql: str) -> Any:
        return self.con.sql(sql).to_arrow_table()

    def within(self, part: str) -> Reader:
        """The same files and connection, limited to the entities where ``part`` (an SQL
        condition on the join keys) holds: one range of a build in parts (online_parts)."""
        out = copy.copy(self)
        out.semi = f"{self.semi} AND ({part})"
        return out


def changed_days(partitions: Mapping[str, Any], before: Mapping[str, Any]) -> set[str]:
    """Days with a (tile size, day) partition that differs between two manifests' partitions."""
    return {key.split("/", 1)[1] for key in set(partitions) | set(before)
            if partitions.get(key) != before.get(key)}


class OldFilesGone(LookupError):
    """Files of a superseded manifest are gone, so which entities they held is unknown."""


def changed_entities(reader: Reader, days: Sequence[str],
                     before: Mapping[str, Sequence[str]] | None = None) -> Any:
    """Distinct entities with events on ``days`` (from the exact layer), or None.

    ``before`` are the partitions last written (materialized or snapshotted): their entities
    count too, since an entity whose events on a day were replaced away (a corrected source)
    must be rewritten without them. Raises :class:`OldFilesGone` when one of those files was
    already collected.
    """
    key = [f"{EXACT_TILE_US}/{d}" for d in days]
    new = [str(reader.base / f) for k in key for f in reader.manifest.partitions.get(k, [])]
    old = [reader.base / f for k in key for f in (before or {}).get(k, [])]
    gone = [f for f in old if not f.is_file()]
    if gone:
        raise OldFilesGone(f"{gone[0]}: superseded tiles already collected")
    files = sorted(set(new) | {str(f) for f in old})
    if not files:
        return None
    return reader.query(f"SELECT DISTINCT {reader.keys} FROM read_parquet({file_list(files)})")


def entity_tags(columns: Sequence[Any]) -> list[str]:
    """:func:`features.online.keys.entity_tag` of many rows at once (Arrow key columns)."""
    return entity_tag_array(columns).to_pylist()


def entity_tag_array(columns: Sequence[Any]) -> Any:
    """:func:`entity_tags` as an Arrow string array (no Python string per row)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    parts = []
    for column in columns:
        column = column.combine_chunks() if hasattr(column, "combine_chunks") else column
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            text = column
            for old, new in (("\\", "\\\\"), (",", "\\,"), ("}", "\\]")):
                text = pc.replace_substring(text, old, new)
            parts.append(pc.binary_join_element_wise("s", text, ""))
        else:
            parts.append(pc.cast(column, pa.string()))
    if len(parts) == 1:
        return parts[0]
    return pc.binary_join_element_wise(*parts, ",")


def _groups(table: Any, keys: Sequence[str]) -> tuple[Any, Any, Any, Any]:
    """(group end per row, entity tag (Arrow), start and end row per group) of a table sorted
    by its key columns."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    rows = table.num_rows
    if rows == 0:
        empty = np.zeros(0, np.int64)
        return empty, pa.array([], pa.string()), empty, empty
    change = np.zeros(rows, bool)
    change[0] = True
    for k in keys:
        col = table.column(k).combine_chunks()
        if rows > 1:
            diff = pc.not_equal(col.slice(1), col.slice(0, rows - 1)).to_numpy(
                zero_copy_only=False)
            change[1:] |= diff
    starts = np.flatnonzero(change)
    ends = np.append(starts[1:], rows)
    group_end = np.repeat(ends, ends - starts)
    tags = entity_tag_array([table.column(k).take(starts) for k in keys])
    return group_end, tags, starts, ends


def _records(rec: Record, merged: dict[str, Any], rows: Any, tiles: Any = None) -> bytes:
    """The records of ``rows`` packed (``codec.Record`` layout), each after its tile index
    when ``tiles`` is given (the window sections' ``(tile, record)`` rows)."""
    import numpy as np

    fields = rec.numpy_dtype().descr
    if tiles is not None:
        fields = [("__tile", "<i8"), *fields]
    out = np.zeros(len(rows), np.dtype(fields))
    if tiles is not None:
        out["__tile"] = tiles[rows]
    for col, null in zip(rec.columns, rec.nullable, strict=True):
        out[col] = merged[col][rows]
        if null:
            out[f"{col}?"] = merged[f"{col}?"][rows]
    return out.tobytes()


def _partials(reader: Reader, rec: Record, files: list[str],
              where: str) -> tuple[Any, dict[str, Any]]:
    """Partial rows of one tile size, sorted by entity and tile, as numpy columns."""
    import numpy as np

    cols = ", ".join(quote(c) for c in rec.columns)
    sel = f", {cols}" if cols else ""
    table = reader.query(
        f"SELECT {reader.keys}, tile{sel} FROM read_parquet({file_list(files)}) "
        f"WHERE true{where}{reader.semi} ORDER BY {reader.keys}, tile{sel}")
    arrays: dict[str, Any] = {"tile": table.column("tile").to_numpy()}
    for col, null in zip(rec.columns, rec.nullable, strict=True):
        arr = table.column(col).combine_chunks()
        if null:
            arrays[f"{col}?"] = arr.is_valid().to_numpy(zero_copy_only=False)
        arrays[col] = pk.numbers(arr)
    arrays.setdefault("tile", np.zeros(0, np.int64))
    return table, arrays


def _latest(reader: Reader, inputs: Sequence[Any], first_day: str | None) -> pk.Latest | None:
    """Per entity: the newest event time and each input's newest non-null (value, lt, seq)."""
    import numpy as np

    files = reader.files(EXACT_TILE_US, first_day)
    if not files:
        return None
    newest = (f"SELECT {reader.keys}, max(tile) AS newest FROM read_parquet({file_list(files)}) "
              f"WHERE true{reader.semi} GROUP BY {reader.keys}")
    if not inputs:
        table = reader.query(newest)
    else:
        # Every tile layer keeps each tile's newest value with its (time, seq), so the arg-max
        # over the coarsest layer equals the one over the exact instants, from far fewer rows.
        # (time, seq) is ordered as one HUGEINT time * 2^64 + seq (half the time of a struct
        # key here); the newest time is also max(time), and seq what the key holds beyond it.
        sizes = reader.view.tile_sizes()
        coarse = reader.files(max(sizes), first_day) if sizes else files
        sel = []
        for i in inputs:
            lt, present = quote(i.column("lt")), f"FILTER (WHERE {quote(i.column('l'))} IS NOT NULL)"
            order = f"({lt}::HUGEINT * {_TWO64} + {quote(i.column('ls'))})"
            sel.append(f"arg_max({quote(i.column('l'))}, {order}) {present} AS v{i.index}, "
                       f"max({lt}) {present} AS t{i.index}, max({order}) {present} AS k{i.index}")
        values = (f"SELECT {reader.keys}, {', '.join(sel)} FROM read_parquet({file_list(coarse)})"
                  f" WHERE true{reader.semi} GROUP BY {reader.keys}")
        split = ", ".join(f"v.v{i.index}, v.t{i.index}, (v.k{i.index} - v.t{i.index}::HUGEINT * "
                          f"{_TWO64})::BIGINT AS s{i.index}" for i in inputs)
        table = reader.query(f"WITH t AS ({newest}), v AS ({values}) SELECT t.*, {split} "
                             f"FROM t LEFT JOIN v USING ({reader.keys})")
    out = pk.Latest(entity_tag_array([table.column(k) for k in reader.view.join_keys]),
                    table.column("newest").to_numpy().astype(np.int64), [], [], [], [])
    for i in inputs:
        at = table.column(f"t{i.index}").combine_chunks()
        out.present.append(at.is_valid().to_numpy(zero_copy_only=False))
        out.at.append(at.fill_null(0).to_numpy(zero_copy_only=False))
        out.seq.append(table.column(f"s{i.index}").combine_chunks().fill_null(0)
                       .to_numpy(zero_copy_only=False))
        out.values.append(table.column(f"v{i.index}").combine_chunks())
    return out


@dataclass
class Values:
    """Everything one materialization writes, as columns."""

    window_tags: Any  # Arrow strings, one per entity with a window value
    window_blobs: Any  # Arrow binary, one per window tag
    expire_us: Any  # np.int64 per window tag; -1: never
    lifetime_tags: Any  # Arrow strings
    lifetime_blobs: Any



def _index(tags: Any, among: Any) -> Any:
    """Position of each of ``tags`` in ``among`` (Arrow strings; -1 where absent)."""
    import pyarrow.compute as pc

    return pc.index_in(tags, value_set=among).fill_null(-1).to_numpy(zero_copy_only=False)


def section_files(reader: Reader, cod: Codec, now_us: int) -> list[tuple[int, list[str], int]]:
    """(section index, its files, its first tile still in the window) of each window section
    with files: the partial rows a build as of ``now_us`` reads."""
    out = []
    for k, section in enumerate(cod.sections):
        s = section.tile_us
        first_tile = now_us // s - section.horizon + 1
        files = reader.files(s, _day(first_tile * s))
        if files:
            out.append((k, files, first_tile))
    return out


def build(reader: Reader, cod: Codec, now_us: int) -> Values:
    """Read the offline tiles and pack every entity's online values (see online_pack)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    view = reader.view
    lay = cod.layout
    sections: list[tuple[int, pk.Section]] = []
    for k, files, first_tile in section_files(reader, cod, now_us):
        section = cod.sections[k]
        table, arrays = _partials(reader, section.record, files, f" AND tile >= {first_tile}")
        group_end, tags, starts, ends = _groups(table, view.join_keys)
        merged = suffix_merge(lay, {c: a for c, a in arrays.items() if c != "tile"}, group_end)
        tiles = arrays["tile"].astype(np.int64)
        rows = _records(section.record, merged, np.arange(len(tiles)), tiles)
        sections.append((k, pk.Section(tags, starts, ends, tiles, rows)))
    latest = None
    if cod.latest:
        latest = _latest(reader, cod.latest, _latest_bound(view, cod, now_us))
    elif cod.sections:  # the newest event time still comes from the exact layer
        horizon = max(sec.horizon * sec.tile_us for sec in cod.sections)
        latest = _latest(reader, (), _day(now_us - horizon))
    tag_lists = [sec.tags for _, sec in sections]
    if cod.latest and latest is not None:
        tag_lists.append(latest.tags)
    tags = pc.unique(pa.chunked_array(tag_lists, pa.string()))  # first-seen order
    entities = len(tags)
    newest = np.full(entities, NO_EVENT, np.int64)
    latest_index = np.zeros(0, np.int64)
    if latest is not None:
        latest_index = _index(latest.tags, tags)
        known = latest_index >= 0
        if not known.all():  # newest times of entities with no window here
            latest = _subset(latest, np.flatnonzero(known))
            latest_index = latest_index[known]
        newest[latest_index] = latest.newest
    placed = [(k, (_index(sec.tags, tags), sec)) for k, sec in sections]
    window = (pk.window_blobs(cod, entities, placed, latest, latest_index,
                              newest) if entities else None)
    expire = expire_at(view, cod, placed, latest, latest_index, entities)
    life_tags = pa.array([], pa.string())
    life_blobs = None
    if cod.lifetime is not None:
        life_tags, life_blobs = _lifetime(reader, cod, tags, newest)
    return Values(tags, window, expire, life_tags, life_blobs)


def _subset(latest: pk.Latest, rows: Any) -> pk.Latest:
    import numpy as np
    import pyarrow as pa

    idx = np.asarray(rows, np.int64)
    return pk.Latest(latest.tags.take(pa.array(idx)), latest.newest[idx],
                     [p[idx] for p in latest.present], [a[idx] for a in latest.at],
                     [q[idx] for q in latest.seq],
                     [v.take(pa.array(idx)) for v in latest.values])


def _latest_bound(view: FeatureView, cod: Codec, now_us: int) -> str | None:
    """First day the newest values can come from (None: every day, a plain last without TTL)."""
    spans = [sec.horizon * sec.tile_us for sec in cod.sections]
    for f in view.features:
        if f.function != "last" or (f.window is not None and f.window.tiles is None):
            continue
        if f.window is None:
            ttl = view.feature_ttl_us(f)
            if ttl is None:
                return None
            spans.append(ttl)
        else:
            spans.append(f.window.length_us or 0)
    return _day(now_us - max(spans)) if spans else None


def _lifetime(reader: Reader, cod: Codec, window_tags: Any,
              newest: Any) -> tuple[Any, Any]:
    """Lifetime values: the merge of every day tile, and the newest lifetime last values;
    ``newest`` is the newest event time of each of ``window_tags``."""
    import numpy as np
    import pyarrow as pa

    rec = cod.lifetime
    assert rec is not None
    files = reader.files(DAY_US)
    if not files:
        return pa.array([], pa.string()), None
    table, arrays = _partials(reader, rec, files, "")
    group_end, tags, starts, _ends = _groups(table, reader.view.join_keys)
    merged = suffix_merge(cod.layout, {c: a for c, a in arrays.items() if c != "tile"},
                          group_end)
    records = pk.fixed(_records(rec, merged, starts), rec.size, len(tags))
    life_newest = np.full(len(tags), NO_EVENT, np.int64)
    at = _index(tags, window_tags)
    known = at >= 0
    life_newest[known] = newest[at[known]]
    latest = (_latest(reader, cod.lifetime_latest, None) if cod.lifetime_latest else None)
    index = np.zeros(0, np.int64)
    if latest is not None:
        index = _index(latest.tags, tags)
        latest = _subset(latest, np.flatnonzero(index >= 0))
        index = index[index >= 0]
        np.maximum.at(life_newest, index, latest.newest)
    parts = [pk.head_values(life_newest), records,
             *pk.latest_values(cod.lifetime_latest, latest, len(tags), index)]
    return tags, pk.join(parts)
