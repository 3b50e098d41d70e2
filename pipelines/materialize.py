"""Materialization: online values into Redis, idempotent and incremental.

The values of a view come from the batch run's online snapshot of the current manifest when
there is a usable one (:mod:`pipelines.online_snapshot`), else they are built from the tiles
(:mod:`pipelines.online_build`, in ranges of entities: :mod:`pipelines.online_parts`): the same
bytes either way. They are written as pipelined ``SET ... PXAT`` commands packed with Arrow
kernels, one part (a snapshot row group or a range) after the other.

- **Idempotent**: a value is always rebuilt whole from the offline store and ``SET``, never
  incremented, so re-running (after a kill, or twice) gives the same state.
- **Incremental**: Redis keeps, per view and fingerprint, the offline partitions last written.
  The next run rewrites only the entities of the days whose partitions changed (those with
  events there before or after); the others' values stay right, since windows slide at read
  time. ``--start/--end`` forces days.
- **Rule changes**: the fingerprint names the keys, so new rules start from an empty state key
  and are materialized in full; old keys expire (lifetime keys of old rules stay until
  ``tessera online gc --delete``, :mod:`pipelines.online_gc`).
- **TTL changes**: a plain ``last``'s TTL decides which entities are written and when keys
  expire, but not the offline tiles, so it is not in the fingerprint: the state key records it
  (``ttl_signature``), and a change rewrites every entity from the tiles.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from features import offline_store
from features.config import RepoConfig
from features.definitions import FeatureView
from features.errors import OfflineStoreError, OnlineUnavailableError, SumOverflowError
from features.online import keys as K
from features.online.codec import Codec, codec
from features.online.redis_store import RedisOnline
from pipelines import online_build as ob
from pipelines import online_pack as pk
from pipelines import online_parts as op
from pipelines import online_snapshot
from pipelines.errors import PipelineError
from pipelines.online_expiry import ttl_signature
from pipelines.online_state import (
    WAIT_S,
    ViewLease,
    check_evictions,
    evictions,
    read_state,
    save_state,
)

Progress = Callable[[int, int | None], None]  # (entity rows done, total or estimate; None: none yet)


@dataclass
class MaterializeSummary:
    view: str
    fingerprint: str
    mode: str  # "full", "incremental", "up to date", "failed" (the reason in note)
    days: list[str] = field(default_factory=list)  # days whose entities were rewritten
    entities: int = 0
    keys_written: int = 0
    keys_deleted: int = 0
    seconds: float = 0.0
    manifest_version: int = 0
    source: str = "tiles"  # "snapshot": copied from the batch run's online snapshot
    note: str = ""

    @property
    def rate(self) -> float:
        return self.entities / self.seconds if self.seconds else 0.0


def _as_day(value: Any, flag: str) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise PipelineError(f"{flag} {value!r}: expected a day like 2026-01-05") from None


def _day_range(start: Any, end: Any) -> tuple[date, date] | None:
    """The days ``[start, end)`` to rewrite (an open side: ``date.min``/``date.max``); None
    when neither is given. Raises PipelineError for a malformed day or an empty range."""
    if start is None and end is None:
        return None
    first = _as_day(start, "--start") if start is not None else date.min
    last = _as_day(end, "--end") if end is not None else date.max
    if first >= last:
        raise PipelineError(f"--start {first} is not before --end {last} (the end day is "
                            f"excluded): no day to rewrite")
    return first, last


_UNREADABLE = (OSError, ValueError, KeyError)  # and pyarrow.ArrowException (imported lazily)


def _snapshot(cfg: RepoConfig, base: Any, manifest: offline_store.Manifest, ttls: str,
              now_us: int, wanted: Any, summary: MaterializeSummary) -> op.Parts | None:
    """The batch run's snapshot of this manifest, if usable (see pipelines.online_snapshot)."""
    import pyarrow as pa

    if not cfg.offline.online_snapshot:
        return None
    try:
        parts = online_snapshot.stream(base, manifest, ttls, now_us, wanted)
    except (*_UNREADABLE, pa.ArrowException) as e:
        summary.note = _unreadable(base, manifest.version, e)
        return None
    if parts is not None:
        summary.source = "snapshot"
    return parts


def _unreadable(base: Any, version: int, error: BaseException) -> str:
    return (f"{online_snapshot.path(base, version)} unreadable ({error}); built from the "
            f"tiles")


def materialize_view(cfg: RepoConfig, view: FeatureView, online: RedisOnline, *,
                     start: Any = None, end: Any = None, now_us: int | None = None,
                     progress: Progress | None = None, lock_wait_s: float = WAIT_S,
                     on_wait: Callable[[str], None] | None = None) -> MaterializeSummary:
    """Write one view's online values (see the module docstring), holding the view's lease
    (another materialization of it waits up to ``lock_wait_s``, after ``on_wait(holder)``).
    An offline file that cannot be read (truncated, removed by hand) is a PipelineError naming
    it, and a sum that leaves int64 where tiles merge a SumOverflowError naming the view; what
    Redis holds stays as it was or is rewritten whole, never half-built."""
    import duckdb

    try:
        with ViewLease(online, cfg.project, view.name, wait_s=lock_wait_s,
                       on_wait=on_wait) as lease:
            return _materialize_view(cfg, view, online, start, end, now_us, progress, lease)
    except (duckdb.IOException, duckdb.InvalidInputException) as e:  # a file, not our SQL
        raise PipelineError(f"feature view {view.name!r}: offline tiles unreadable "
                            f"({str(e).splitlines()[0]}); rebuild the days they hold with "
                            f"`tessera run --view {view.name} --start D --end D`") from None
    except SumOverflowError as e:  # from features.tiles' merge, which knows no view
        raise SumOverflowError(f"feature view {view.name!r}: {e}") from None


def _materialize_view(cfg: RepoConfig, view: FeatureView, online: RedisOnline, start: Any,
                      end: Any, now_us: int | None, progress: Progress | None,
                      lease: ViewLease) -> MaterializeSummary:
    started = time.perf_counter()
    now_us = time.time_ns() // 1000 if now_us is None else now_us
    root = cfg.resolve(cfg.offline.path)
    fp = view.fingerprint()
    manifest = offline_store.latest(root, view.name, fp)
    if manifest is None:
        raise PipelineError(f"feature view {view.name!r}: nothing in the offline store for its "
                            f"current rules (fingerprint {fp[:16]}); run `tessera run --view "
                            f"{view.name}` first")
    project = cfg.project
    state_key = K.state_key(project, view.name, fp)
    days = _day_range(start, end)
    state, problem = read_state(online, state_key)
    ttls = ttl_signature(view)
    before = state["partitions"] if state else None
    # A full rewrite over values written before (state lost, TTLs changed, replaced tiles
    # collected) also deletes the keys of entities left with no value: Redis is scanned for them.
    rescan = bool(problem)
    if state and state.get("ttls") != ttls:  # values built under other TTLs: rewrite them all
        before, rescan = None, True
        problem = ("the TTLs of plain last features changed" if "ttls" in state else
                   "the last materialization recorded no TTLs (an older Tessera)")
    notes = [f"{problem}: rewrote every entity"] if problem else []
    # Values are exact for reads at or after the latest instant any run pruned tiles at
    # (pipelines.consistency reads it): the max of every run's now.
    at_us = max(now_us, (state or {}).get("at_us", now_us))
    forced: set[str] = set()
    if days is not None:
        first, last = days[0].isoformat(), days[1].isoformat()
        forced = {d for d in manifest.days() if first <= d < last}
        if not forced:
            held = manifest.days()
            notes.append(f"no day of the offline store is in [{start or 'the first'}, "
                         f"{end or 'the last'}) (it holds {min(held, default='none')}.."
                         f"{max(held, default='none')}): nothing forced")
    summary = MaterializeSummary(view.name, fp, "full", manifest_version=manifest.version,
                                 note="; ".join(notes))
    base = offline_store.view_dir(root, view.name, fp)
    entities = None
    if before is not None:
        changed = ob.changed_days(manifest.partitions, before) | forced
        summary.days = sorted(changed)
        summary.mode = "incremental"
        if not changed:
            summary.mode = "up to date"
            summary.seconds = time.perf_counter() - started
            return summary
        try:
            entities = ob.changed_entities(ob.Reader(view, base, manifest, None), summary.days,
                                           before)
        except ob.OldFilesGone as e:  # which entities the replaced tiles held is unknown
            summary.mode, summary.note, rescan = "full", f"{e}: rewrote every entity", True
        if summary.mode == "incremental" and (entities is None or entities.num_rows == 0):
            save_state(online, state_key, manifest, at_us, ttls, lease)
            summary.seconds = time.perf_counter() - started
            return summary
    elif forced:
        summary.days = sorted(forced)
    cod = codec(view)
    wanted = (None if entities is None else
              ob.entity_tag_array([entities.column(k) for k in view.join_keys]))
    held = _present(online, project, view, fp) if rescan else wanted
    import pyarrow as pa

    def tiles() -> op.Parts:
        return op.built(view, base, manifest, entities, cod, now_us)

    parts = _snapshot(cfg, base, manifest, ttls, now_us, wanted, summary) or tiles()
    try:
        written, deleted = _write(online, project, view, fp, cod, parts, held, now_us,
                                  progress)
    except (*_UNREADABLE, pa.ArrowException) as e:
        if summary.source != "snapshot":
            raise
        # a row group of the snapshot failed to read part-way: what was written is right
        # (values are SET whole), and the tiles give every value again
        summary.source, summary.note = "tiles", _unreadable(base, manifest.version, e)
        parts = tiles()
        written, deleted = _write(online, project, view, fp, cod, parts, held, now_us,
                                  progress)
    save_state(online, state_key, manifest, at_us, ttls, lease)
    summary.entities = parts.entities
    summary.keys_written, summary.keys_deleted = written, deleted
    summary.seconds = time.perf_counter() - started
    return summary


def _present(online: RedisOnline, project: str, view: FeatureView, fp: str) -> Any:
    """The entity tags of the view's window and lifetime keys in Redis now (a ``SCAN``)."""
    import pyarrow as pa

    from pipelines.online_gc import entity_tags

    return pa.array(sorted(set(entity_tags(online, project, view.name, fp))), pa.string())


def _ms(us: Any) -> Any:
    return -((-us) // 1000)  # ceil, for ints and numpy arrays


WRITE_CHUNK = 5_000  # commands per send (environment: TESSERA_MATERIALIZE_CHUNK)


def _chunks(rows: int) -> Any:
    """(lo, hi) row ranges of one send each."""
    size = int(os.environ.get("TESSERA_MATERIALIZE_CHUNK", WRITE_CHUNK))
    for lo in range(0, rows, size):
        yield lo, min(lo + size, rows)


def _write(online: RedisOnline, project: str, view: FeatureView, fp: str, cod: Codec,
           parts: op.Parts, wanted: Any, now_us: int, progress: Progress | None
           ) -> tuple[int, int]:
    """SET every entity's values, part after part, in pipelined chunks; then DEL the window
    values that expired by ``now_us`` and, of the ``wanted`` entities (an incremental run),
    the window and lifetime values of those left with none."""
    import pyarrow as pa
    import pyarrow.compute as pc

    head, tail = K.prefix(project, view.name, fp)
    pool = pa.default_memory_pool()
    deletes: list[str] = []  # a window value that expired goes; its lifetime value stays
    done = 0

    def batches() -> Iterator[tuple[Any, Any, Any]]:
        """(keys, blobs, expire ms; -1 never) of each part, as the parts are read."""
        for values in parts:
            yield from _sets(head, tail, cod, values, now_us, deletes)
            # the part's buffers are free: hand them back, or Arrow's allocator (mimalloc)
            # keeps them and the peak grows part after part
            pool.release_unused()

    def counted(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, parts.expected())

    written = 0
    if online.cluster:
        for keys, blobs, expire_ms in batches():
            items = zip(keys.to_pylist(), blobs.to_pylist(),
                        [None if e < 0 else int(e) for e in expire_ms.tolist()], strict=True)
            written += online.write(items)
            counted(len(keys))
    else:
        def sent() -> Iterator[tuple[memoryview, int]]:
            """Each chunk packed just before it is sent, each part read just before it is
            packed: Redis applies what was sent meanwhile, on its own core."""
            for keys, blobs, expire_ms in batches():
                for lo, hi in _chunks(len(keys)):
                    resp = pk.resp_set(keys.slice(lo, hi - lo), blobs.slice(lo, hi - lo),
                                       expire_ms[lo:hi])
                    yield pk.span(resp, 0, hi - lo), hi - lo
                    counted(hi - lo)

        written = online.write_packed(sent())
    if wanted is not None:
        def missing(tags: Any) -> list[str]:
            return wanted.filter(pc.invert(pc.is_in(wanted, value_set=tags))).to_pylist()

        deletes += [head + t + tail for t in missing(parts.window_tags)]
        if cod.lifetime is not None:
            deletes += [head + t + tail + K.LIFETIME for t in missing(parts.lifetime_tags)]
    removed = online.delete(deletes) if deletes else 0
    if progress is not None:
        progress(done, done)
    return written, removed


def _sets(head: str, tail: str, cod: Codec, values: ob.Values, now_us: int,
          deletes: list[str]) -> Iterator[tuple[Any, Any, Any]]:
    """(keys, blobs, expire ms; -1 never) of one part's window and lifetime values; the keys
    of window values that expired by ``now_us`` go to ``deletes`` instead."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if values.window_blobs is not None:
        keys = pc.binary_join_element_wise(head, values.window_tags, tail, "")
        expire = values.expire_us
        alive = (expire < 0) | (expire > now_us)
        dead = np.flatnonzero(~alive)
        blobs = values.window_blobs
        if len(dead):  # a filter copies every blob: only when some value has expired
            deletes += keys.take(pa.array(dead)).to_pylist()
            keep = pa.array(alive)
            keys, blobs, expire = keys.filter(keep), blobs.filter(keep), expire[alive]
        yield keys, blobs, np.where(expire < 0, -1, _ms(expire))
    if values.lifetime_blobs is not None:
        yield (pc.binary_join_element_wise(head, values.lifetime_tags, tail + K.LIFETIME, ""),
               values.lifetime_blobs, np.full(len(values.lifetime_tags), -1, np.int64))


def materialize(cfg: RepoConfig, views: Sequence[FeatureView], online: RedisOnline, *,
                start: Any = None, end: Any = None, now_us: int | None = None,
                show_progress: bool = True, lock_wait_s: float = WAIT_S
                ) -> list[MaterializeSummary]:
    """Materialize ``views`` with a rich progress bar (keys written per view). A view that
    fails (no offline data for its rules, unreadable tiles, another materialization holding it
    past ``lock_wait_s``, a write Redis refused) does not stop the others: a
    :class:`MaterializeError` after them all names it and carries every view's summary."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    _day_range(start, end)  # checked before any work or progress bar
    evicted, setting = evictions(online)
    out = []
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("keys"), TimeElapsedColumn(), disable=not show_progress,
                  console=Console(stderr=True)) as bar:
        for view in views:
            task = bar.add_task(f"materialize {view.name}", total=None)

            def progress(done: int, total: int | None, task: Any = task,
                         name: str = f"materialize {view.name}") -> None:
                bar.update(task, completed=done, total=total, description=name)

            def waiting(holder: str, task: Any = task, name: str = view.name) -> None:
                bar.update(task, description=f"materialize {name}: waiting for another "
                                             f"materialization ({holder})")

            try:
                out.append(materialize_view(cfg, view, online, start=start, end=end,
                                            now_us=now_us, progress=progress,
                                            lock_wait_s=lock_wait_s, on_wait=waiting))
            except (PipelineError, OfflineStoreError) as e:  # the next view may be fine: go on
                out.append(MaterializeSummary(view.name, view.fingerprint(), "failed",
                                              note=str(e)))
            except OnlineUnavailableError as e:  # a refused write (OOM), Redis away: the same
                out.append(MaterializeSummary(view.name, view.fingerprint(), "failed",
                                              note=f"feature view {view.name!r}: {e}"))
    check_evictions(online, cfg.project, out, evicted, setting)
    failed = [m for m in out if m.mode == "failed"]
    if failed:
        raise MaterializeError(out, "; ".join(m.note for m in failed))
    return out


class MaterializeError(PipelineError):
    """Some views failed to materialize (``summaries`` has every view's, mode ``failed`` for
    those, the reason in their ``note``); the others were written."""

    def __init__(self, summaries: list[MaterializeSummary], message: str) -> None:
        super().__init__(message)
        self.summaries = summaries


__all__ = ["MaterializeError", "MaterializeSummary", "materialize", "materialize_view"]
