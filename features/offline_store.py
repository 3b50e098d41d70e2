"""The offline store's layout and its atomic commit: Parquet files plus versioned manifests.

Layout under ``offline.path``::

    <view>/<fingerprint[:16]>/
        data/<run_id>/tile_us=<s>/day=<YYYY-MM-DD>/*.parquet   # partial rows, never rewritten
        _manifest/<version:010d>.json                          # which files are live

A run writes its files under a fresh ``data/<run_id>/`` and then commits: the next manifest
version is created with ``os.link`` (create-if-absent, atomic), replacing every (tile size, day)
of the run's range. Readers read only files that the newest manifest lists, so a killed run
leaves the previous data readable, and rerunning a range replaces it exactly. Two concurrent
commits cannot both win a version: the loser re-reads and retries. Old files stay for
``KEEP_VERSIONS`` versions so a reader that started earlier can finish.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from features.errors import OfflineStoreError

KEEP_VERSIONS = 3
_MAX_COMMIT_TRIES = 20


@dataclass(frozen=True)
class Manifest:
    """One committed state of a view's offline data."""

    version: int
    view: str
    fingerprint: str
    partitions: dict[str, list[str]] = field(default_factory=dict)  # "tile_us/day" -> files
    runs: list[dict[str, Any]] = field(default_factory=list)

    def files(self, tile_us: int) -> list[str]:
        """Paths (relative to the view's folder) of every live file of one tile size."""
        prefix = f"{tile_us}/"
        return sorted(f for key, fs in self.partitions.items() if key.startswith(prefix)
                      for f in fs)

    def days(self) -> list[str]:
        return sorted({key.split("/", 1)[1] for key in self.partitions})


def view_dir(root: Path, view: str, fingerprint: str) -> Path:
    return Path(root) / view / fingerprint[:16]


def new_run_id() -> str:
    now = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{now}-{uuid.uuid4().hex[:8]}"


def run_dir(root: Path, view: str, fingerprint: str, run_id: str) -> Path:
    return view_dir(root, view, fingerprint) / "data" / run_id


def latest(root: Path, view: str, fingerprint: str) -> Manifest | None:
    """The newest manifest of a view's rules, or None if nothing was committed."""
    folder = view_dir(root, view, fingerprint) / "_manifest"
    versions = _versions(folder)
    if not versions:
        return None
    path = folder / f"{versions[-1]:010d}.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise OfflineStoreError(f"{path}: unreadable manifest ({e})") from e
    return Manifest(**data)


def commit(root: Path, view: str, fingerprint: str, run_id: str, days: Iterable[date],
           tile_sizes: Iterable[int], info: dict[str, Any] | None = None) -> Manifest:
    """Make a run's files live, replacing every (tile size, day) in ``days`` atomically.

    Files are found under ``data/<run_id>/tile_us=<s>/day=<d>/``; a (tile size, day) the run
    covers but wrote no file for (no events that day) becomes empty.
    """
    base = view_dir(root, view, fingerprint)
    folder = base / "_manifest"
    folder.mkdir(parents=True, exist_ok=True)
    new_parts: dict[str, list[str]] = {}
    day_keys = [d.isoformat() for d in days]
    for tile_us in tile_sizes:
        for day in day_keys:
            part = base / "data" / run_id / f"tile_us={tile_us}" / f"day={day}"
            files = sorted(str(p.relative_to(base)) for p in part.glob("*.parquet")) \
                if part.is_dir() else []
            new_parts[f"{tile_us}/{day}"] = files
    for _ in range(_MAX_COMMIT_TRIES):
        current = latest(root, view, fingerprint)
        version = 1 if current is None else current.version + 1
        partitions = {} if current is None else dict(current.partitions)
        for key, files in new_parts.items():
            if files:
                partitions[key] = files
            else:
                partitions.pop(key, None)
        runs = [*([] if current is None else current.runs)[-20:],
                {"run_id": run_id, "days": [day_keys[0], day_keys[-1]] if day_keys else [],
                 **(info or {})}]
        manifest = Manifest(version, view, fingerprint, dict(sorted(partitions.items())), runs)
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
        _collect_garbage(base, folder)
        return manifest
    raise OfflineStoreError(f"{folder}: could not commit after {_MAX_COMMIT_TRIES} tries "
                            f"(too many concurrent writers?)")


def _versions(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(p.stem) for p in folder.glob("*.json") if p.stem.isdigit())


def _collect_garbage(base: Path, folder: Path) -> None:
    """Drop manifests beyond the newest few, and run folders none of those reference."""
    versions = _versions(folder)
    keep = versions[-KEEP_VERSIONS:]
    live_runs: set[str] = set()
    for v in keep:
        data = json.loads((folder / f"{v:010d}.json").read_text())
        for files in data["partitions"].values():
            live_runs.update(Path(f).parts[1] for f in files)
        live_runs.update(r["run_id"] for r in data["runs"][-1:])
    for v in versions[:-KEEP_VERSIONS]:
        (folder / f"{v:010d}.json").unlink(missing_ok=True)
    data_dir = base / "data"
    if data_dir.is_dir():
        for run in data_dir.iterdir():
            # A run folder newer than the newest manifest may belong to a run in progress.
            if run.name not in live_runs and run.name < (max(live_runs) if live_runs else ""):
                shutil.rmtree(run, ignore_errors=True)
