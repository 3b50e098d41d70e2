"""The offline store's layout and its atomic commit: Parquet files plus versioned manifests.

Layout under ``offline.path``::

    <view>/<fingerprint[:16]>/
        data/<run_id>/_RUNNING                                 # heartbeat while the run works
        data/<run_id>/_COMMITTED                               # written once its manifest is live
        data/<run_id>/tile_us=<s>/day=<YYYY-MM-DD>/*.parquet   # partial rows, never rewritten
        _manifest/<version:010d>.json                          # which files are live
        _online/<version:010d>.parquet                         # online values (derived, see
                                                               # pipelines.online_snapshot)

A run stages its files under a fresh ``data/<run_id>/`` (:class:`Staging`) and then commits: the
next manifest version is created with ``os.link`` (create-if-absent, atomic), replacing the
(tile size, day) partitions the run computed. Readers read only files the newest manifest lists,
so a killed run leaves the previous data readable, and rerunning a range replaces it exactly.
Two concurrent commits cannot both win a version: the loser re-reads and retries, so no
interleaving of writers loses a committed partition.

Garbage collection never deletes what someone may still use:

- a run folder that any kept manifest references stays;
- an uncommitted run folder stays while its heartbeat is fresh (the run is still working): only
  a folder whose writer died (heartbeat older than ``STALE_RUN_S``) is removed;
- a superseded manifest (and the files only it lists) stays for ``READER_GRACE_S`` after it was
  superseded, and the newest ``KEEP_VERSIONS`` always stay, so a reader that started on an
  older version can finish.

Each manifest also records **coverage**: the UTC days the fingerprint's rules have computed
(``[start, end)`` intervals; ``start`` is null when a run began at or before the source's first
event, so everything earlier is known to be empty). Reads over days outside the coverage are an
error by default: "never computed" must not read like "no activity".
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from features.errors import OfflineStoreError

KEEP_VERSIONS = 3
READER_GRACE_S = 3600.0
STALE_RUN_S = 600.0
HEARTBEAT_S = 20.0
RUNNING, COMMITTED = "_RUNNING", "_COMMITTED"
_MAX_COMMIT_TRIES = 50
_SAFE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FINGERPRINT = re.compile(r"^[0-9a-f]{16,64}$")

Interval = tuple[date | None, date]  # [start, end) in whole UTC days; start None: the beginning


@dataclass(frozen=True)
class Manifest:
    """One committed state of a view's offline data."""

    version: int
    view: str
    fingerprint: str
    partitions: dict[str, list[str]] = field(default_factory=dict)  # "tile_us/day" -> files
    coverage: list[list[str | None]] = field(default_factory=list)  # [[start|None, end), ...]
    runs: list[dict[str, Any]] = field(default_factory=list)

    def files(self, tile_us: int) -> list[str]:
        """Paths (relative to the view's folder) of every live file of one tile size."""
        prefix = f"{tile_us}/"
        return sorted(f for key, fs in self.partitions.items() if key.startswith(prefix)
                      for f in fs)

    def days(self) -> list[str]:
        return sorted({key.split("/", 1)[1] for key in self.partitions})

    def intervals(self) -> list[Interval]:
        """The covered days as sorted, disjoint ``[start, end)`` intervals."""
        return [(None if s is None else date.fromisoformat(s), date.fromisoformat(e))
                for s, e in self.coverage]

    def gaps(self, first: date, last: date) -> list[tuple[date, date]]:
        """Days in ``[first, last]`` (inclusive) never computed, as ``[start, end)`` ranges."""
        return coverage_gaps(self.intervals(), first, last)


def coverage_gaps(intervals: Sequence[Interval], first: date, last: date) -> list[tuple[date, date]]:
    """The parts of ``[first, last]`` (whole days, inclusive) outside ``intervals``."""
    out: list[tuple[date, date]] = []
    cursor, stop = first, last + timedelta(days=1)
    for start, end in intervals:
        if end <= cursor:
            continue
        if start is not None and start > cursor:
            out.append((cursor, min(start, stop)))
        cursor = max(cursor, end)
        if cursor >= stop:
            break
    if cursor < stop:
        out.append((cursor, stop))
    return [(a, b) for a, b in out if a < b]


def add_coverage(intervals: Sequence[Interval], days: Iterable[date],
                 from_start: bool = False) -> list[Interval]:
    """``intervals`` plus whole ``days`` (and everything before them when ``from_start``)."""
    spans: list[Interval] = list(intervals)
    day_list = sorted(set(days))
    spans += [(d, d + timedelta(days=1)) for d in day_list]
    if from_start and day_list:
        spans.append((None, day_list[0] + timedelta(days=1)))
    spans.sort(key=lambda iv: (iv[0] is not None, iv[0] or date.min))
    merged: list[Interval] = []
    for start, end in spans:
        if merged and (start is None or start <= merged[-1][1]):
            prev_start, prev_end = merged[-1]
            merged[-1] = (prev_start, max(prev_end, end))
        else:
            merged.append((start, end))
    return merged


def view_dir(root: Path, view: str, fingerprint: str) -> Path:
    """``root/<view>/<fingerprint[:16]>``; refuses names that could leave ``root``."""
    if not _SAFE_NAME.match(view):
        raise OfflineStoreError(f"feature view name {view!r} is not an identifier (letters, "
                                f"digits and _, not starting with a digit); refusing to use it "
                                f"as a folder under {root}")
    if not _FINGERPRINT.match(fingerprint):
        raise OfflineStoreError(f"feature view {view!r}: {fingerprint!r} is not a rule "
                                f"fingerprint (hex)")
    return Path(root) / view / fingerprint[:16]


def new_run_id() -> str:
    now = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{now}-{uuid.uuid4().hex[:8]}"


def run_dir(root: Path, view: str, fingerprint: str, run_id: str) -> Path:
    return view_dir(root, view, fingerprint) / "data" / run_id


class Staging:
    """A run's private folder, kept alive by a heartbeat until the run commits or fails.

    ``with Staging(root, view, fp) as stage:`` creates ``data/<run_id>/`` with a ``_RUNNING``
    file whose modification time a background thread refreshes every ``HEARTBEAT_S``, so no
    other writer's garbage collection takes the folder while this run works, however long it
    runs. An exception inside the block removes the folder (nothing of a failed run stays).
    """

    def __init__(self, root: Path, view: str, fingerprint: str, run_id: str | None = None,
                 heartbeat_s: float = HEARTBEAT_S) -> None:
        self.run_id = run_id or new_run_id()
        self.path = run_dir(root, view, fingerprint, self.run_id)
        self._heartbeat_s = heartbeat_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Staging:
        self.path.mkdir(parents=True, exist_ok=False)
        (self.path / RUNNING).write_text(json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.now(UTC).isoformat()}))
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{self.run_id}",
                                        daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            try:
                os.utime(self.path / RUNNING)
            except OSError:  # the folder is gone: the commit will notice and fail loudly
                return

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)

    def partition_files(self, tile_us: int, day: date) -> list[str]:
        """Parquet files the run wrote for one (tile size, day), relative to the view folder."""
        folder = self.path / f"tile_us={tile_us}" / f"day={day.isoformat()}"
        if not folder.is_dir():
            return []
        base = self.path.parent.parent
        return sorted(str(p.relative_to(base)) for p in folder.glob("*.parquet"))

    def mark_committed(self) -> None:
        (self.path / COMMITTED).write_text(datetime.now(UTC).isoformat())
        (self.path / RUNNING).unlink(missing_ok=True)


def latest(root: Path, view: str, fingerprint: str) -> Manifest | None:
    """The newest manifest of a view's rules, or None if nothing was committed."""
    folder = view_dir(root, view, fingerprint) / "_manifest"
    for _ in range(_MAX_COMMIT_TRIES):
        versions = _versions(folder)
        if not versions:
            return None
        try:
            return _read(folder / f"{versions[-1]:010d}.json")
        except FileNotFoundError:  # collected between listing and reading: list again
            continue
    raise OfflineStoreError(f"{folder}: manifests keep changing under the reader")


def at_version(root: Path, view: str, fingerprint: str, version: int) -> Manifest:
    """A given manifest version (what an export read), or a clear error if it was collected."""
    path = view_dir(root, view, fingerprint) / "_manifest" / f"{version:010d}.json"
    try:
        return _read(path)
    except FileNotFoundError:
        newest = latest(root, view, fingerprint)
        raise OfflineStoreError(
            f"feature view {view!r}: offline manifest version {version} (fingerprint "
            f"{fingerprint[:16]}) is gone from {path.parent} (garbage-collected; the newest is "
            f"{'none' if newest is None else newest.version}); the exact inputs cannot be "
            f"read again") from None


def _read(path: Path) -> Manifest:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise OfflineStoreError(f"{path}: unreadable manifest ({e})") from e
    try:
        if "coverage" not in data:  # written before coverage was recorded: the runs' days
            spans = [(date.fromisoformat(r["days"][0]), date.fromisoformat(r["days"][1]))
                     for r in data.get("runs", []) if r.get("days")]
            days = [a + timedelta(days=i) for a, b in spans for i in range((b - a).days + 1)]
            data["coverage"] = _dump_coverage(add_coverage([], days))
        manifest = Manifest(**data)
    except (TypeError, KeyError, ValueError, AttributeError) as e:  # JSON of another shape
        raise OfflineStoreError(f"{path}: not a manifest ({type(e).__name__}: {e})") from None
    if not (isinstance(manifest.version, int) and isinstance(manifest.partitions, dict)):
        raise OfflineStoreError(f"{path}: not a manifest (version {manifest.version!r}, "
                                f"partitions of type {type(manifest.partitions).__name__})")
    return manifest


def _dump_coverage(intervals: Sequence[Interval]) -> list[list[str | None]]:
    return [[None if s is None else s.isoformat(), e.isoformat()] for s, e in intervals]


def commit(root: Path, view: str, fingerprint: str, run_id: str, *,
           files: Mapping[tuple[int, date], Sequence[str]], cover_from_start: bool = False,
           info: dict[str, Any] | None = None, now: float | None = None) -> Manifest:
    """Make a run's files live, replacing exactly the partitions in ``files`` atomically.

    Args:
        files: every (tile size, day) the run replaces → its files, relative to the view's
            folder. An empty list means the run computed that day and found no events. Days
            that are not keys keep whatever was stored.
        cover_from_start: the run began at or before the source's first event, so every day
            before it is known to be empty (coverage starts at the beginning of time).
        info: what to record about the run (engine, counts).

    Raises:
        OfflineStoreError: a listed file is missing (nothing is committed then), or the commit
            lost the race for a version too many times.
    """
    base = view_dir(root, view, fingerprint)
    missing = [f for fs in files.values() for f in fs if not (base / f).is_file()]
    if missing:
        raise OfflineStoreError(
            f"feature view {view!r}: run {run_id} lost {len(missing)} of its files before its "
            f"commit (first: {base / missing[0]}); nothing was committed, the stored data is "
            f"unchanged — rerun it")
    folder = base / "_manifest"
    folder.mkdir(parents=True, exist_ok=True)
    days = sorted({d for _, d in files})
    new_parts = {f"{tile}/{d.isoformat()}": sorted(fs) for (tile, d), fs in files.items()}
    for _ in range(_MAX_COMMIT_TRIES):
        current = latest(root, view, fingerprint)
        version = 1 if current is None else current.version + 1
        partitions = {} if current is None else dict(current.partitions)
        for key, fs in new_parts.items():
            if fs:
                partitions[key] = fs
            else:
                partitions.pop(key, None)
        coverage = add_coverage([] if current is None else current.intervals(), days,
                                from_start=cover_from_start)
        runs = [*([] if current is None else current.runs)[-20:],
                {"run_id": run_id,
                 "days": [days[0].isoformat(), days[-1].isoformat()] if days else [],
                 "committed": datetime.now(UTC).isoformat(), **(info or {})}]
        manifest = Manifest(version, view, fingerprint, dict(sorted(partitions.items())),
                            _dump_coverage(coverage), runs)
        tmp = folder / f".{version:010d}.{uuid.uuid4().hex}.tmp"
        tmp.write_text(json.dumps(manifest.__dict__, indent=1, sort_keys=True))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        try:
            os.link(tmp, folder / f"{version:010d}.json")  # fails if another writer won
        except FileExistsError:
            continue
        finally:
            tmp.unlink(missing_ok=True)
        collect_garbage(base, now=now)
        return manifest
    raise OfflineStoreError(f"{folder}: could not commit after {_MAX_COMMIT_TRIES} tries "
                            f"(too many concurrent writers?)")


def _versions(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(p.stem) for p in folder.glob("*.json") if p.stem.isdigit())


def collect_garbage(base: Path, now: float | None = None) -> list[str]:
    """Remove manifests and run folders nobody can use any more; returns what was removed.

    See the module docstring for what is kept. Safe to run from several processes at once.
    """
    now = time.time() if now is None else now
    folder = base / "_manifest"
    versions = _versions(folder)
    keep: list[int] = []
    for i, v in enumerate(versions):
        newest = i >= len(versions) - KEEP_VERSIONS
        successor = folder / f"{versions[i + 1]:010d}.json" if i + 1 < len(versions) else None
        if newest or successor is None or now - _mtime(successor, now) < READER_GRACE_S:
            keep.append(v)
    live_runs: set[str] = set()
    for v in keep:
        try:
            data = json.loads((folder / f"{v:010d}.json").read_text())
        except FileNotFoundError:  # another collector took it: it was not needed
            continue
        for fs in data["partitions"].values():
            live_runs.update(Path(f).parts[1] for f in fs)
    removed: list[str] = []
    for v in versions:
        if v not in keep:
            (folder / f"{v:010d}.json").unlink(missing_ok=True)
            removed.append(f"_manifest/{v:010d}.json")
    data_dir = base / "data"
    if data_dir.is_dir():
        for run in data_dir.iterdir():
            if run.name in live_runs or not _finished(run, now):
                continue
            shutil.rmtree(run, ignore_errors=True)
            removed.append(f"data/{run.name}")
    return removed


def _finished(run: Path, now: float) -> bool:
    """A run folder whose run committed (and was since superseded) or whose writer died."""
    if (run / COMMITTED).exists():
        return True
    beat = _mtime(run / RUNNING, None)
    if beat is None:  # no heartbeat file at all: judge by the folder's own age
        beat = _mtime(run, now)
    return now - beat > STALE_RUN_S


def _mtime(path: Path, default: float | None) -> Any:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return default
