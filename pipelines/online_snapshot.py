"""Online snapshots: every entity's online values, built by the batch run next to its tiles.

A batch run that commits a manifest version also writes what materialization would write for it
(:func:`pipelines.online_build.build`, as of the run's end) to one Parquet file::

    <view>/<fingerprint[:16]>/_online/<version:010d>.parquet
        tag (string), lifetime (bool), blob (binary), expire_us (int64; -1: never)
        metadata: tessera.version, tessera.now_us, tessera.partitions (the manifest's, JSON),
                  tessera.format (features.online.codec.VERSION: another one is never copied),
                  tessera.ttls (pipelines.online_expiry.ttl_signature when built)

``tessera materialize`` then copies those values into Redis instead of re-reading and merging
the tiles: the same bytes, ~4x faster (docs/benchmarks.md), one row group (``GROUP_ROWS``) at a
time (:func:`stream`). The batch run writes the file the same way: the previous snapshot's rows
a row group at a time, and new values one range of entities at a time
(:mod:`pipelines.online_parts`). This is the split Feast and
Chronon make: the batch job computes what is served, the upload only moves it.

Why the values stay right when copied later: windows slide at read time, so a value built at
``now_us`` reads exactly at any later instant (its older tiles are skipped by the read); a key
whose expiry passed meanwhile is deleted instead of written. A snapshot is used only for the
manifest version and partitions it was built from, with the TTLs it was built under, and only
by a materialization at or after its ``now_us``; otherwise materialization reads the tiles, as it
always could.

A run after the first rebuilds only the entities of the days whose partitions changed (their
events before and after, so an entity whose events were replaced away is rebuilt too) and keeps
the previous snapshot's rows for the others.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from features import offline_store
from features.definitions import FeatureView
from features.online.codec import VERSION, codec
from pipelines import online_build as ob
from pipelines import online_parts as op
from pipelines.online_expiry import ttl_signature

SNAPSHOT_DIR = "_online"
# Rows per row group (~10 MB of values at ~1 KB an entity): what materialize holds at once
GROUP_ROWS = 8_192
_META = (b"tessera.version", b"tessera.now_us", b"tessera.partitions", b"tessera.format")
_TTLS = b"tessera.ttls"  # absent from snapshots of before it: taken as other TTLs


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


@dataclass(frozen=True)
class _Footer:
    parquet: Any  # the open pyarrow ParquetFile
    version: int  # the manifest version it was built from
    now_us: int  # built as of
    partitions: dict[str, list[str]]  # the manifest's
    ttls: str | None  # pipelines.online_expiry.ttl_signature of the view then

    def serves(self, manifest: offline_store.Manifest, ttls: str) -> bool:
        """Whether its values are those of ``manifest`` under the TTLs ``ttls``."""
        return (self.version == manifest.version and self.partitions == manifest.partitions
                and self.ttls == ttls)


def _open(file: Path) -> _Footer:
    """The footer of a snapshot in this Tessera's value format, read alone (the rows are read
    only when used); raises ValueError for anything else (a file in an older format is never
    copied)."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(file)  # not read_table: it goes through pyarrow.dataset, slower
    meta = parquet.schema_arrow.metadata or {}
    if any(k not in meta for k in _META):
        raise ValueError(f"not an online snapshot (metadata {sorted(meta)})")
    if int(meta[_META[3]]) != VERSION:
        raise ValueError(f"online value format {int(meta[_META[3]])}, this Tessera writes "
                         f"{VERSION}")
    ttls = meta.get(_TTLS)
    return _Footer(parquet, int(meta[_META[0]]), int(meta[_META[1]]), json.loads(meta[_META[2]]),
                   None if ttls is None else ttls.decode())


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


class _OldUnreadable(Exception):
    """The previous snapshot's rows failed to read part-way: build them all instead."""


def _increment(view: FeatureView, base: Path, manifest: offline_store.Manifest,
               now_us: int) -> tuple[Iterator[Any], Any] | None:
    """(the previous snapshot's row groups to keep, read lazily; entities to rebuild or None for
    none), or None when everything must be built: no usable previous snapshot, or every day
    changed."""
    import pyarrow as pa
    import pyarrow.compute as pc

    previous = _newest(base, manifest.version)
    if previous is None:
        return None
    try:
        old = _open(previous[1])
    except (OSError, ValueError, KeyError, pa.ArrowException):
        return None  # unreadable: build it all (and replace it)
    parquet, old_parts = old.parquet, old.partitions
    days = ob.changed_days(manifest.partitions, old_parts)
    if old.now_us > now_us or set(manifest.days()) <= days or old.ttls != ttl_signature(view):
        return None
    try:
        entities = ob.changed_entities(ob.Reader(view, base, manifest, None), sorted(days),
                                       old_parts)
    except (ob.OldFilesGone, OSError, pa.ArrowException):
        return None  # replaced tiles collected: build it all
    wanted = (pa.array([], pa.string()) if entities is None else
              ob.entity_tag_array([entities.column(k) for k in view.join_keys]))

    def kept() -> Iterator[Any]:
        try:
            for batch in parquet.iter_batches(batch_size=GROUP_ROWS, use_threads=False):
                yield pa.Table.from_batches([batch]).filter(
                    pc.invert(pc.is_in(batch.column("tag"), value_set=wanted)))
        except (OSError, pa.ArrowException) as e:
            raise _OldUnreadable(str(e)) from e

    return kept(), entities


def write(root: Path, view: FeatureView, manifest: offline_store.Manifest,
          now_us: int | None = None) -> SnapshotSummary:
    """Build and store the snapshot of ``manifest`` (a version just committed) as of ``now_us``:
    the previous snapshot's rows still right are copied a row group at a time, and the rest
    built in ranges of entities (pipelines.online_parts), so it holds one part at a time."""
    started = time.perf_counter()
    now_us = time.time_ns() // 1000 if now_us is None else now_us
    base = offline_store.view_dir(root, view.name, view.fingerprint())
    target = path(base, manifest.version)
    target.parent.mkdir(parents=True, exist_ok=True)
    increment = _increment(view, base, manifest, now_us)
    try:
        entities, rebuilt = _write_file(target, view, base, manifest, now_us, increment)
    except _OldUnreadable:  # the previous snapshot broke part-way: build it all
        increment = None
        entities, rebuilt = _write_file(target, view, base, manifest, now_us, None)
    _collect(target.parent, manifest.version)
    return SnapshotSummary(view.name, manifest.version,
                           "full" if increment is None else "incremental", entities, rebuilt,
                           time.perf_counter() - started)


def _write_file(target: Path, view: FeatureView, base: Path, manifest: offline_store.Manifest,
                now_us: int, increment: tuple[Iterator[Any], Any] | None) -> tuple[int, int]:
    """Write the snapshot file (to a temporary file, then renamed); (entities in it, entities
    built)."""
    import itertools

    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    cod = codec(view)
    kept: Iterator[Any] = iter(())
    if increment is None:
        built = op.built(view, base, manifest, None, cod, now_us)
    else:
        kept, entities = increment
        built = (op.Parts(()) if entities is None else
                 op.built(view, base, manifest, entities, cod, now_us))
    schema = _table(None).schema.with_metadata({
        _META[0]: str(manifest.version), _META[1]: str(now_us),
        _META[2]: json.dumps(manifest.partitions), _META[3]: str(VERSION),
        _TTLS: ttl_signature(view)})
    tags = []
    pending: list[Any] = []  # rows not written yet: less than a row group
    held = 0
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    try:
        # no dictionary: the values are unique, and trying one costs ~4x the read time
        with pq.ParquetWriter(tmp, schema, compression="lz4", use_dictionary=False) as out:
            for table in itertools.chain(kept, map(_table, built)):
                expire = table.column("expire_us")
                table = table.filter(pc.or_(pc.less(expire, 0), pc.greater(expire, now_us)))
                tags.append(table.column("tag"))
                pending.append(table.replace_schema_metadata(None))
                held += table.num_rows
                if held >= GROUP_ROWS:  # whole row groups, whatever the parts' sizes
                    rows = pa.concat_tables(pending)
                    full = held - held % GROUP_ROWS
                    out.write_table(rows.slice(0, full), row_group_size=GROUP_ROWS)
                    pending, held = [rows.slice(full)], held - full
            if held:
                out.write_table(pa.concat_tables(pending), row_group_size=GROUP_ROWS)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    every = pa.chunked_array([c for t in tags for c in t.chunks], pa.string())
    return int(pc.count_distinct(every).as_py()), built.entities


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


def _rows(table: Any, mask: Any, count: int) -> Any:
    """The rows of ``table`` where ``mask`` holds (``count`` of them). A filter copies every
    blob (~1 KB an entity), and most views have one kind of row only: all or none is a slice."""
    if count == len(table):
        return table
    return table.slice(0, 0) if count == 0 else table.filter(mask)


def stream(base: Path, manifest: offline_store.Manifest, ttls: str, now_us: int,
           wanted: Any = None) -> op.Parts | None:
    """The snapshot of ``manifest`` (only the ``wanted`` entity tags, when given), or None when
    there is none usable at ``now_us`` under the TTLs ``ttls`` (``ttl_signature``): one of
    another version, other partitions (a stray file), or other TTLs is not. Its values are
    read one row group at a time as the parts are iterated, so materialize holds one group in
    memory and Redis applies a group while the next is read.

    Raises ``OSError``/``ValueError``/``pyarrow.ArrowException`` for an unreadable file, here
    or while iterating.
    """
    import pyarrow.compute as pc

    file = path(base, manifest.version)
    if not file.is_file():
        return None
    footer = _open(file)
    if not footer.serves(manifest, ttls) or footer.now_us > now_us:
        return None
    parquet = footer.parquet

    def parts() -> Iterator[ob.Values]:
        # one row group at a time: iter_batches reads ahead and held twice the memory (a
        # 49k-entity snapshot, groups of 12.5 MB of values: 28-37 MB of Arrow buffers live
        # and RSS +79 MiB, against 6-18 MB and +39 MiB; docs/benchmarks.md)
        for group in range(parquet.metadata.num_row_groups):
            table = parquet.read_row_group(group, use_threads=False)
            if wanted is not None:
                table = table.filter(pc.is_in(table.column("tag"), value_set=wanted))
            if table.num_rows:
                yield _values(table)

    return op.Parts(parts(), parquet.metadata.num_rows if wanted is None else None)


def _values(table: Any) -> ob.Values:
    """Snapshot rows as :class:`~pipelines.online_build.Values`."""
    import pyarrow.compute as pc

    life = table.column("lifetime").combine_chunks()
    lifetimes = pc.sum(life).as_py() or 0
    window = _rows(table, pc.invert(life), len(life) - lifetimes)
    lifetime = _rows(table, life, lifetimes)

    def col(t: Any, name: str) -> Any:
        # A row group read whole is one chunk: that array as it is. combine_chunks copies even
        # one chunk: a second ~8 MB of blobs per group in memory, and 7-9 ms of a 49k-entity
        # materialization's ~0.2 s of client CPU (6 groups, warm; measured on the slow VM).
        column = t.column(name)
        return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()

    return ob.Values(
        col(window, "tag"), col(window, "blob") if window.num_rows else None,
        col(window, "expire_us").to_numpy(), col(lifetime, "tag"),
        col(lifetime, "blob") if lifetime.num_rows else None)
