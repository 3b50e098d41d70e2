"""Online snapshots: every entity's online values, built by the batch run next to its tiles.

A batch run that commits a manifest version also writes what materialization would write for it
(:func:`pipelines.online_build.build`, as of the run's end) to one Parquet file::

    <view>/<fingerprint[:16]>/_online/<version:010d>.parquet
        tag (string), lifetime (bool), blob (binary), expire_us (int64; -1: never)
        metadata: tessera.version, tessera.now_us, tessera.partitions (the manifest's, JSON),
                  tessera.format (features.online.codec.VERSION: another one is never copied)

``tessera materialize`` then copies those values into Redis instead of re-reading and merging
the tiles: the same bytes, ~4x faster (docs/benchmarks.md), one row group (``GROUP_ROWS``) at a
time (:func:`stream`). This is the split Feast and
Chronon make: the batch job computes what is served, the upload only moves it.

Why the values stay right when copied later: windows slide at read time, so a value built at
``now_us`` reads exactly at any later instant (its older tiles are skipped by the read); a key
whose expiry passed meanwhile is deleted instead of written. A snapshot is used only for the
manifest version it was built from and only by a materialization at or after its ``now_us``;
otherwise materialization reads the tiles, as it always could.

A run after the first rebuilds only the entities of the days whose partitions changed (their
events before and after, so an entity whose events were replaced away is rebuilt too) and keeps
the previous snapshot's rows for the others.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from features import offline_store
from features.definitions import FeatureView
from features.online.codec import VERSION, codec
from pipelines import online_build as ob

SNAPSHOT_DIR = "_online"
# Rows per row group (~10 MB of values at ~1 KB an entity): what materialize holds at once
GROUP_ROWS = 8_192
_META = (b"tessera.version", b"tessera.now_us", b"tessera.partitions", b"tessera.format")


@dataclass(frozen=True)
class SnapshotSummary:
    view: str
    version: int
    mode: str  # "full" or "incremental"
    entities: int  # entities in the snapshot
    rebuilt: int  # entities whose values this run built
    seconds: float


def path(base: Path, version: int) -> Path:
    return base / SNAPSHOT_DIR / f"{version:010d}.parquet"


def _newest(base: Path, below: int) -> tuple[int, Path] | None:
    folder = base / SNAPSHOT_DIR
    if not folder.is_dir():
        return None
    found = sorted((int(p.stem), p) for p in folder.glob("*.parquet")
                   if p.stem.isdigit() and int(p.stem) < below)
    return found[-1] if found else None


def _open(file: Path) -> tuple[Any, int, int, dict[str, list[str]]]:
    """(the open file, manifest version, built at µs, partitions) of a snapshot in this
    Tessera's value format, from its footer alone (the rows are read only when used); raises
    ValueError for anything else (a file in an older format is never copied)."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(file)  # not read_table: it goes through pyarrow.dataset, slower
    meta = parquet.schema_arrow.metadata or {}
    if any(k not in meta for k in _META):
        raise ValueError(f"not an online snapshot (metadata {sorted(meta)})")
    if int(meta[_META[3]]) != VERSION:
        raise ValueError(f"online value format {int(meta[_META[3]])}, this Tessera writes "
                         f"{VERSION}")
    return (parquet, int(meta[_META[0]]), int(meta[_META[1]]), json.loads(meta[_META[2]]))


def _table(values: ob.Values | None) -> Any:
    """The snapshot's rows of ``values`` (None: no rows)."""
    import numpy as np
    import pyarrow as pa

    parts = []
    if values is not None and values.window_blobs is not None:
        n = len(values.window_tags)
        parts.append(pa.table({"tag": values.window_tags.cast(pa.string()),
                               "lifetime": pa.array(np.zeros(n, bool)),
                               "blob": values.window_blobs.cast(pa.large_binary()),
                               "expire_us": pa.array(values.expire_us, pa.int64())}))
    if values is not None and values.lifetime_blobs is not None:
        n = len(values.lifetime_tags)
        parts.append(pa.table({"tag": values.lifetime_tags.cast(pa.string()),
                               "lifetime": pa.array(np.ones(n, bool)),
                               "blob": values.lifetime_blobs.cast(pa.large_binary()),
                               "expire_us": pa.array(np.full(n, -1, np.int64))}))
    if not parts:
        return pa.table({"tag": pa.array([], pa.string()), "lifetime": pa.array([], pa.bool_()),
                         "blob": pa.array([], pa.large_binary()),
                         "expire_us": pa.array([], pa.int64())})
    return pa.concat_tables(parts)


def _increment(view: FeatureView, base: Path, manifest: offline_store.Manifest,
               now_us: int) -> tuple[Any, Any] | None:
    """(rows of the previous snapshot to keep, entities to rebuild or None for none), or None
    when everything must be built: no usable previous snapshot, or every day changed."""
    import pyarrow as pa
    import pyarrow.compute as pc

    previous = _newest(base, manifest.version)
    if previous is None:
        return None
    try:
        parquet, _, old_now, old_parts = _open(previous[1])
    except (OSError, ValueError, KeyError, pa.ArrowException):
        return None  # unreadable: build it all (and replace it)
    days = ob.changed_days(manifest.partitions, old_parts)
    if old_now > now_us or set(manifest.days()) <= days:
        return None
    try:
        entities = ob.changed_entities(ob.Reader(view, base, manifest, None), sorted(days),
                                       old_parts)
        old = parquet.read()
    except (ob.OldFilesGone, OSError, pa.ArrowException):
        return None  # replaced tiles collected, or rows unreadable: build it all
    wanted = (pa.array([], pa.string()) if entities is None else
              ob.entity_tag_array([entities.column(k) for k in view.join_keys]))
    kept = old.filter(pc.invert(pc.is_in(old.column("tag"), value_set=wanted)))
    return kept.replace_schema_metadata(None), entities


def write(root: Path, view: FeatureView, manifest: offline_store.Manifest,
          now_us: int | None = None) -> SnapshotSummary:
    """Build and store the snapshot of ``manifest`` (a version just committed) as of ``now_us``."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    started = time.perf_counter()
    now_us = time.time_ns() // 1000 if now_us is None else now_us
    base = offline_store.view_dir(root, view.name, view.fingerprint())
    increment = _increment(view, base, manifest, now_us)
    if increment is None:
        table = rebuilt = _table(ob.build(ob.Reader(view, base, manifest, None), codec(view),
                                          now_us))
    else:
        kept, entities = increment
        rebuilt = _table(None if entities is None else ob.build(
            ob.Reader(view, base, manifest, entities), codec(view), now_us))
        table = pa.concat_tables([kept, rebuilt])
    expire = table.column("expire_us")
    table = table.filter(pc.or_(pc.less(expire, 0), pc.greater(expire, now_us)))
    table = table.replace_schema_metadata({
        _META[0]: str(manifest.version), _META[1]: str(now_us),
        _META[2]: json.dumps(manifest.partitions), _META[3]: str(VERSION)})
    target = path(base, manifest.version)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    try:
        # no dictionary: the values are unique, and trying one costs ~4x the read time
        pq.write_table(table, tmp, compression="lz4", use_dictionary=False,
                       row_group_size=GROUP_ROWS)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    _collect(target.parent, manifest.version)
    return SnapshotSummary(view.name, manifest.version,
                           "full" if increment is None else "incremental", _count(table),
                           _count(rebuilt), time.perf_counter() - started)


def _collect(folder: Path, version: int) -> None:
    """Remove older snapshots (only the newest is ever read) and the temporary files of
    writers killed mid-write (older than offline_store.STALE_RUN_S; a live writer's is newer)."""
    stale = time.time() - offline_store.STALE_RUN_S
    for p in folder.iterdir():
        try:
            if ((p.suffix == ".parquet" and p.stem.isdigit() and int(p.stem) < version)
                    or (p.name.startswith(".") and p.name.endswith(".tmp")
                        and p.stat().st_mtime < stale)):
                p.unlink()
        except FileNotFoundError:  # another writer collected it
            pass


def _count(table: Any) -> int:
    """Distinct entities of snapshot rows (an entity with lifetime features has two rows)."""
    import pyarrow.compute as pc

    return int(pc.count_distinct(table.column("tag")).as_py())


def _rows(table: Any, mask: Any, count: int) -> Any:
    """The rows of ``table`` where ``mask`` holds (``count`` of them). A filter copies every
    blob (~1 KB an entity), and most views have one kind of row only: all or none is a slice."""
    if count == len(table):
        return table
    return table.slice(0, 0) if count == 0 else table.filter(mask)


def stream(base: Path, version: int, now_us: int, wanted: Any = None) -> ob.Parts | None:
    """The snapshot of manifest ``version`` (only the ``wanted`` entity tags, when given), or
    None when there is none usable at ``now_us``. Its tags are read first (a small column);
    its values are read one row group at a time as the parts are iterated, so materialize
    holds one group in memory and Redis applies a group while the next is read.

    Raises ``OSError``/``ValueError``/``pyarrow.ArrowException`` for an unreadable file, here
    or while iterating.
    """
    import pyarrow.compute as pc

    file = path(base, version)
    if not file.is_file():
        return None
    parquet, version_in, built_us, _ = _open(file)
    if version_in != version or built_us > now_us:
        return None
    index = parquet.read(columns=["tag", "lifetime"])
    if wanted is not None:
        index = index.filter(pc.is_in(index.column("tag"), value_set=wanted))
    tags = index.column("tag").combine_chunks()
    life = index.column("lifetime").combine_chunks()

    def parts() -> Any:
        import pyarrow as pa

        for batch in parquet.iter_batches(batch_size=GROUP_ROWS, use_threads=False):
            table = pa.Table.from_batches([batch])
            if wanted is not None:
                table = table.filter(pc.is_in(table.column("tag"), value_set=wanted))
            if table.num_rows:
                yield _values(table)

    return ob.Parts(tags.filter(pc.invert(life)), tags.filter(life), parts())


def _values(table: Any) -> ob.Values:
    """Snapshot rows as :class:`~pipelines.online_build.Values`."""
    import pyarrow.compute as pc

    life = table.column("lifetime").combine_chunks()
    lifetimes = pc.sum(life).as_py() or 0
    window = _rows(table, pc.invert(life), len(life) - lifetimes)
    lifetime = _rows(table, life, lifetimes)

    def col(t: Any, name: str) -> Any:
        return t.column(name).combine_chunks()

    return ob.Values(
        col(window, "tag"), col(window, "blob") if window.num_rows else None,
        col(window, "expire_us").to_numpy(), col(lifetime, "tag"),
        col(lifetime, "blob") if lifetime.num_rows else None)
