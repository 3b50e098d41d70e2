"""A micro-batch merged into the online values of its entities, for many entities at once.

The stored window value keeps, per tile size, each retained tile's *suffix merge* (it and every
newer tile, :mod:`features.online.codec`). Events of a micro-batch in tile ``k`` belong to the
suffix of every tile ``<= k``, so for each stored or new tile ``t``::

    new suffix(t) = old suffix at t  ⊕  merge of the batch's partials of tiles >= t

where "old suffix at t" is the stored record of the first stored tile ``>= t`` (a new tile
between two stored ones starts from its newer neighbour's suffix). Both sides are computed for
every entity of the batch in a few numpy passes (:func:`features.tiles.suffix_merge` over the
batch's partials, a backward fill over the stored rows, :func:`features.tiles.merge_pairs`), and
the values are packed by :mod:`pipelines.online_pack`, byte for byte the materialize format.
The newest ``last`` values merge by (event time, source order); lifetime records merge pairwise.

Nothing here reads Kafka or Redis: :mod:`streaming.apply` does, with the offsets of
:mod:`streaming.offsets`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from features.definitions import FeatureView
from features.errors import SUM_HINT, SumOverflowError
from features.online.codec import (
    _HEAD,
    NO_EVENT,
    VERSION,
    Codec,
    Record,
    _decode_latest,
)
from features.tiles import Input, layout, merge_pairs, suffix_merge
from pipelines import online_pack as pk
from pipelines.engine_polars import partial_aggs
from pipelines.online_expiry import expire_at
from streaming.stored import LatestColumns, StoredValues, arrow_type, row_dtype

if TYPE_CHECKING:
    import polars as pl


@dataclass
class Merged:
    """New online values of the batch's entities, in entity order."""

    window: Any  # Arrow binary per entity
    expire_us: Any  # np.int64 per entity: -1 never, else when the value stops mattering
    lifetime: Any  # Arrow binary per entity, or None (the view has no lifetime feature)
    newest: Any  # np.int64 newest event time per entity


def _columns(arr: Any, rec: Record) -> dict[str, Any]:
    """The record's partial columns (and ``col?`` presence as bool) of a structured array."""
    out = {}
    for col, null in zip(rec.columns, rec.nullable, strict=True):
        out[col] = arr[col].copy()
        if null:
            out[f"{col}?"] = arr[f"{col}?"].astype(bool)
    return out


def _fill(arr: Any, rec: Record, cols: dict[str, Any]) -> None:
    for col, null in zip(rec.columns, rec.nullable, strict=True):
        arr[col] = cols[col]
        if null:
            arr[f"{col}?"] = cols[f"{col}?"]


@cache
def _plan(view: FeatureView) -> tuple[list[pl.Expr], list[pl.Expr]]:
    """(the partial aggregations, then the expressions that turn each partial column into
    numpy-ready values: times as µs, nulls as 0 beside a ``col?`` presence column), built once
    per view: building them costs ~1 ms, a visible share of a small batch."""
    import polars as pl

    lay = layout(view)
    prep = []
    for col, dtype in lay.partial_columns():
        x = pl.col(col)
        if dtype == "timestamp":
            x = x.dt.epoch("us")
        prep.append(pl.col(col).is_not_null().alias(f"{col}?"))
        zero: Any = False if dtype == "bool" else ("" if dtype == "string" else 0)
        prep.append(x.fill_null(zero).alias(col))
    return partial_aggs(lay), prep


def _batch_columns(frame: pl.DataFrame, rec: Record) -> dict[str, Any]:
    """The record's columns of a frame prepared by :func:`_plan` (zero-copy numpy)."""
    out = {}
    for col, null in zip(rec.columns, rec.nullable, strict=True):
        out[col] = frame[col].to_numpy()
        if null:
            out[f"{col}?"] = frame[f"{col}?"].to_numpy()
    return out


def _old_latest(inp: Input, items: Sequence[tuple[Any, int, int] | None]) -> LatestColumns:
    import numpy as np
    import pyarrow as pa

    n = len(items)
    present = np.fromiter((it is not None for it in items), bool, n)
    at = np.fromiter((0 if it is None else it[1] for it in items), np.int64, n)
    seq = np.fromiter((0 if it is None else it[2] for it in items), np.int64, n)
    values = pa.array([None if it is None else it[0] for it in items], arrow_type(inp.dtype))
    return LatestColumns(present, at, seq, values)


def _batch_latest(inp: Input, per: pl.DataFrame) -> LatestColumns:
    """A ``last`` input's newest value per entity, from a frame prepared by :func:`_plan`."""
    value = per[inp.column("l")]
    return LatestColumns(per[f"{inp.column('l')}?"].to_numpy(), per[inp.column("lt")].to_numpy(),
                   per[inp.column("ls")].to_numpy(),
                   value.to_arrow().cast(arrow_type(inp.dtype)))


def _merge_latest(old: LatestColumns, new: LatestColumns) -> LatestColumns:
    """Per entity the newer of two values by (event time, source order)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    take = new.present & (~old.present | (new.at > old.at)
                          | ((new.at == old.at) & (new.seq > old.seq)))
    return LatestColumns(old.present | new.present, np.where(take, new.at, old.at),
                   np.where(take, new.seq, old.seq),
                   pc.if_else(pa.array(take), new.values, old.values))


def _pack_latest(tags: list[str], newest: Any, latest: Sequence[LatestColumns]) -> pk.Latest:
    return pk.Latest(tags, newest, [x.present for x in latest], [x.at for x in latest],
                     [x.seq for x in latest], [x.values for x in latest])


def _first_tile(cod: Codec, k: int, now_us: int) -> int:
    """The oldest tile of section ``k`` still inside a window at ``now_us``."""
    spec = cod.sections[k]
    return now_us // spec.tile_us - spec.horizon + 1


def _tiles_plan(cod: Codec, k: int, batch: pl.LazyFrame, now_us: int) -> pl.LazyFrame:
    """The batch's partials per (entity, tile) of section ``k``, prepared by :func:`_plan`."""
    import polars as pl

    size = cod.sections[k].tile_us
    aggs, prep = _plan(cod.view)
    return (batch.filter(pl.col("__ts") >= _first_tile(cod, k, now_us) * size)
            .with_columns((pl.col("__ts") // size).alias("tile"))
            .group_by(["__e", "tile"]).agg(aggs).with_columns(prep).sort(["__e", "tile"]))


def _section(cod: Codec, k: int, old_entity: Any, old_rows: Any, tiles: pl.DataFrame,
             tags: list[str], now_us: int) -> tuple[Any, pk.Section] | None:
    """One tile size: the merged suffix rows of every entity, as an online_pack Section."""
    import numpy as np

    spec = cod.sections[k]
    rec, lay = spec.record, cod.layout
    first = _first_tile(cod, k, now_us)  # tiles before it are outside every window
    keep = old_rows["tile"] >= first
    old_entity, old_rows = old_entity[keep], old_rows[keep]
    if not len(old_rows) and not tiles.height:
        return None
    new_entity = tiles["__e"].to_numpy().astype(np.int64)
    new_tile = tiles["tile"].to_numpy().astype(np.int64)
    base = first  # every kept tile is >= first
    if len(new_tile) and not 0 <= int(new_tile.max()) - base < 1 << 32:  # rejected before
        raise RuntimeError(f"tile {int(new_tile.max())} is out of the {1 << 32} tiles after "
                           f"{base} a merge can pack (an event far in the future?)")
    old_key = (old_entity << 32) | (old_rows["tile"] - base)
    new_key = (new_entity << 32) | (new_tile - base)
    # both sides are sorted already: a stable sort of the two runs is one merge pass (timsort),
    # where np.unique hashed and sorted from scratch
    keys = np.concatenate([old_key, new_key])
    keys.sort(kind="stable")
    keys = keys[np.r_[True, keys[1:] != keys[:-1]]] if len(keys) else keys
    m = len(keys)
    at_old, at_new = np.searchsorted(keys, old_key), np.searchsorted(keys, new_key)
    old_cols, new_cols = _columns(old_rows, rec), _batch_columns(tiles, rec)
    entity = keys >> 32
    starts, ends, group_end = _runs(entity)
    old_at = _first_at_or_after(old_cols, at_old, m, group_end)
    # The batch's own suffixes over its rows only (a few per entity at a steady rate, where
    # a pass over every stored row cost one numpy round per stored tile: ~60), then spread
    # like the stored ones. Zero partials are exact identities of the merge, so this equals
    # the suffix merge over all rows with zeros where the batch has none, bit for bit.
    if len(new_entity):
        new_cols = suffix_merge(lay, new_cols, _runs(new_entity)[2])
    batch_suffix = _first_at_or_after(new_cols, at_new, m, group_end)
    merged = merge_pairs(lay, old_at, batch_suffix)
    out = np.zeros(m, row_dtype(rec))
    out["tile"] = (keys & 0xFFFFFFFF) + base
    _fill(out, rec, merged)
    group_entity = entity[starts]
    return group_entity, pk.Section([tags[e] for e in group_entity], starts, ends,
                                    out["tile"].copy(), out.tobytes())


def _runs(ids: Any) -> tuple[Any, Any, Any]:
    """(first row, one past the last row) of each run of equal ``ids`` (a non-empty sorted
    array), and per row the end of its run."""
    import numpy as np

    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], len(ids)]
    return starts, ends, np.repeat(ends, ends - starts)


def _first_at_or_after(cols: dict[str, Any], at: Any, m: int, group_end: Any) -> dict[str, Any]:
    """Per row of ``m``: the values of the first of ``cols``' rows (placed at rows ``at``,
    ascending) at or after it within its group (``group_end``), zeros where there is none."""
    import numpy as np

    if not len(at):
        return {c: np.zeros(m, v.dtype) for c, v in cols.items()}
    has = np.zeros(m, bool)
    has[at] = True
    nxt = np.minimum.accumulate(np.where(has, np.arange(m), m)[::-1])[::-1]
    found = nxt < group_end
    source = np.zeros(m, np.int64)
    source[at] = np.arange(len(at))
    pick = source[np.where(found, nxt, 0)]
    return {c: np.where(found, v[pick], np.zeros(1, v.dtype)) for c, v in cols.items()}


def _lifetime(cod: Codec, blobs: Sequence[bytes | None], per: pl.DataFrame, tags: list[str],
              newest: Any) -> Any:
    """Lifetime values: stored record ⊕ the batch's per-entity partial; newest last values."""
    import numpy as np

    rec = cod.lifetime
    assert rec is not None
    n = len(blobs)
    life_newest = np.full(n, NO_EVENT, np.int64)
    items: list[list[Any]] = [[None] * n for _ in cod.lifetime_latest]
    records = []
    zero = bytes(rec.size)  # all-zero bytes: the partials of no events
    for i, blob in enumerate(blobs):
        if blob is None:
            records.append(zero)
            continue
        version, life_newest[i] = _HEAD.unpack_from(blob, 0)
        if version != VERSION:
            raise ValueError(f"online lifetime value of view {cod.view.name!r} has version "
                             f"{version}, expected {VERSION} (re-materialize)")
        records.append(blob[_HEAD.size:_HEAD.size + rec.size])
        latest, _ = _decode_latest(cod.lifetime_latest, blob, _HEAD.size + rec.size)
        for k, item in enumerate(latest):
            items[k][i] = item
    old = _columns(np.frombuffer(b"".join(records), rec.numpy_dtype()), rec)
    merged = merge_pairs(cod.layout, old, _batch_columns(per, rec))
    out = np.zeros(n, rec.numpy_dtype())
    _fill(out, rec, merged)
    latest = [_merge_latest(_old_latest(inp, items[k]), _batch_latest(inp, per))
              for k, inp in enumerate(cod.lifetime_latest)]
    life_newest = np.maximum(life_newest, newest)
    index = np.arange(n)
    return pk.join([pk.head_values(life_newest), pk.fixed(out.tobytes(), rec.size, n),
                    *pk.latest_values(cod.lifetime_latest, _pack_latest(tags, life_newest, latest),
                                      n, index)])


def merge_batch(cod: Codec, tags: list[str], window: Sequence[bytes | None],
                lifetime: Sequence[bytes | None] | None, rows: pl.DataFrame,
                now_us: int) -> Merged:
    """New online values of ``tags`` (stored values ``window``/``lifetime``, None where absent)
    after the events ``rows``: projected rows of the view (``__e`` = index into ``tags``,
    ``__ts``, ``__seq``, inputs), sorted by (``__ts``, ``__seq``), at least one per entity."""
    import numpy as np
    import polars as pl

    n = len(tags)
    aggs, prep = _plan(cod.view)
    lazy = rows.lazy()
    # one collect for every query of the batch: each Polars call has a fixed cost (~1 ms)
    try:
        per, *tiles = pl.collect_all(
            [lazy.group_by("__e").agg([*aggs, pl.col("__ts").max().alias("__newest")])
             .with_columns(prep).sort("__e"),
             *[_tiles_plan(cod, k, lazy, now_us) for k in range(len(cod.sections))]],
            engine="in-memory")
    except pl.exceptions.InvalidOperationError as e:  # an int64 sum of the batch's tiles
        raise SumOverflowError(f"feature view {cod.view.name!r}: a sum of integers leaves "
                               f"int64 in a tile of the batch ({str(e).splitlines()[0]}): "
                               f"{SUM_HINT}") from None
    if per.height != n or not bool((per["__e"].to_numpy() == np.arange(n)).all()):
        raise ValueError("merge_batch: every entity needs at least one row")
    stored = StoredValues(cod, window)
    newest = np.maximum(stored.newest, per["__newest"].to_numpy())
    placed = []
    for k in range(len(cod.sections)):
        entity, rows_k = stored.sections[k]
        section = _section(cod, k, entity, rows_k, tiles[k], tags, now_us)
        if section is not None:
            placed.append((k, section))
    latest = None
    if cod.latest:
        latest = _pack_latest(tags, newest, [
            _merge_latest(old, _batch_latest(inp, per))
            for inp, old in zip(cod.latest, stored.latest, strict=True)])
    index = np.arange(n)
    blobs = pk.window_blobs(cod, n, placed, latest, index, newest)
    expire = expire_at(cod.view, cod, placed, latest, index, n)
    life = None if lifetime is None else _lifetime(cod, lifetime, per, tags, newest)
    return Merged(blobs, expire, life, newest)


__all__ = ["Merged", "merge_batch", "row_dtype"]
