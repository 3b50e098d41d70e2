"""Training sets: point-in-time features for entity rows, written with a manifest that reproduces them.

``tessera export --entities rows.parquet --features v:f,... --out train.parquet`` (or
``FeatureStore.get_historical_features(...).to_parquet(path)``) writes

- ``train.parquet``: the entity rows, in their order, with all their columns (labels too) and
  one column per feature, by DuckDB out of core (``offline.memory_limit``, spilling to
  ``offline.spill_path``), to a temporary name then renamed, so an interrupted export leaves no
  partial file;
- ``train.manifest.json`` beside it: the features with their rule fingerprints, the feature
  service, the offline manifest version read per view, the entity rows' file and hash, the time
  range, row and null counts, the Tessera version and the command.

``tessera export --manifest train.manifest.json --out again.parquet`` reads the same entity rows
and the same offline manifest versions, and writes the same bytes (checked by a test). The
validation and drift jobs read this manifest as the training reference.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.config import RepoConfig
from features.errors import OfflineStoreError
from features.historical import PointInTimeRead, plan_read
from features.online.request import resolve
from features.repo import Definitions
from features.sql import quote
from features.windows import from_micros

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

MANIFEST_FORMAT = "tessera.export/1"


class ExportError(OfflineStoreError):
    """An export that cannot run as asked (bad manifest, changed inputs)."""


def manifest_path(out: Path) -> Path:
    """``train.parquet`` → ``train.manifest.json``."""
    return out.with_name(f"{out.stem}.manifest.json")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tessera")
    except PackageNotFoundError:  # pragma: no cover - running from a plain checkout
        return "unknown"


@dataclass
class ExportSummary:
    out: Path
    manifest: Path
    rows: int
    features: int
    nulls: dict[str, int]
    seconds: float


@dataclass
class RetrievalJob:
    """A planned training-set read: nothing runs until ``to_arrow``, ``to_df`` or ``to_parquet``."""

    config: RepoConfig
    read: PointInTimeRead
    feature_service: str | None
    full_feature_names: bool
    allow_uncovered: bool
    timestamp_field: str
    entities_file: Path | None

    @classmethod
    def plan(cls, cfg: RepoConfig, defs: Definitions, entity_rows: Any, *,
             features: Sequence[str] | None = None, feature_service: str | None = None,
             full_feature_names: bool = False, allow_uncovered: bool = False,
             timestamp_field: str | None = None,
             versions: dict[str, int] | None = None) -> RetrievalJob:
        pairs = resolve(defs, features, feature_service)
        views = list({v.name: v for v, _ in pairs}.values())
        read = plan_read(views, entity_rows, cfg.resolve(cfg.offline.path),
                         timestamp_field=timestamp_field, full_feature_names=full_feature_names,
                         allow_uncovered=allow_uncovered, versions=versions,
                         only=[(v.name, f.name) for v, f in pairs],
                         memory_limit=cfg.offline.memory_limit,
                         temp_directory=cfg.resolve(cfg.offline.spill_path))
        entities_file = Path(entity_rows).resolve() if isinstance(entity_rows, str | Path) else None
        return cls(cfg, read, feature_service, full_feature_names, allow_uncovered,
                   read.timestamp_field, entities_file)

    @property
    def refs(self) -> list[str]:
        """``view:feature`` of each output column, in order."""
        return [f"{view.name}:{f.name}" for view, f, _ in self.read.outputs]

    def to_arrow(self) -> pa.Table:
        return self.read.to_arrow()

    def to_df(self) -> pd.DataFrame:
        return self.to_arrow().to_pandas()

    def to_parquet(self, out: str | os.PathLike[str], *, command: str | None = None,
                   ) -> ExportSummary:
        """Write the training set and its manifest; an interruption leaves neither half-done."""
        import time

        began = time.perf_counter()
        out = Path(out).resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
        man = manifest_path(out)
        man_tmp = man.with_name(f".{man.name}.{uuid.uuid4().hex}.tmp")
        try:
            self.read.to_parquet(tmp)
            nulls = self._null_counts(tmp)
            _fsync(tmp)
            doc = self.manifest(out, tmp, nulls, command)
            man_tmp.write_text(json.dumps(doc, indent=2) + "\n")
            _fsync(man_tmp)
            os.replace(tmp, out)
            os.replace(man_tmp, man)
        finally:
            tmp.unlink(missing_ok=True)
            man_tmp.unlink(missing_ok=True)
        return ExportSummary(out, man, self.read.rows, len(self.refs), nulls,
                             time.perf_counter() - began)

    def _null_counts(self, path: Path) -> dict[str, int]:
        cols = [out for _, _, out in self.read.outputs]
        if not cols:
            return {}
        quoted = [quote(c) for c in cols]
        target = str(path).replace("'", "''")
        row = self.read.con.execute(
            f"SELECT {', '.join(f'count(*) - count({q})' for q in quoted)} "
            f"FROM read_parquet('{target}')").fetchall()[0]
        return dict(zip(cols, (int(x) for x in row), strict=True))

    def manifest(self, out: Path, written: Path, nulls: dict[str, int],
                 command: str | None) -> dict[str, Any]:
        read = self.read
        span = read.time_range_us
        ents: dict[str, Any] = {"path": None if self.entities_file is None
                                else str(self.entities_file),
                                "sha256": None if self.entities_file is None
                                else _sha256(self.entities_file),
                                "timestamp_field": self.timestamp_field, "rows": read.rows}
        return {
            "format": MANIFEST_FORMAT,
            "tessera_version": _version(),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": command,
            "project": self.config.project,
            "entities": ents,
            "features": [
                {"ref": ref, "column": column, "view": view.name, "function": f.function,
                 "window": None if f.window is None else f.window.name,
                 "dtype": view.output_dtype(f), "fingerprint": view.feature_fingerprint(f),
                 "view_fingerprint": view.fingerprint(),
                 "nulls": nulls.get(column, 0)}
                for ref, (view, f, column) in zip(self.refs, read.outputs, strict=True)],
            "feature_service": self.feature_service,
            "full_feature_names": self.full_feature_names,
            "allow_uncovered": self.allow_uncovered,
            "offline": {
                "path": str(self.config.resolve(self.config.offline.path)),
                "views": {name: {"fingerprint": m.fingerprint, "manifest_version": m.version,
                                 "coverage": m.coverage}
                          for name, m in read.manifests.items()}},
            "time_range": None if span is None else {
                "first": from_micros(span[0]).isoformat(), "last": from_micros(span[1]).isoformat()},
            "rows": read.rows,
            "output": {"path": str(out), "bytes": written.stat().st_size,
                       "sha256": _sha256(written)},
        }


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_manifest(path: Path) -> dict[str, Any]:
    """An export manifest, checked enough to be re-run."""
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ExportError(f"--manifest {str(path)!r}: no such file") from None
    except (OSError, ValueError) as e:
        raise ExportError(f"--manifest {str(path)!r}: not a readable JSON file ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        raise ExportError(f"--manifest {str(path)!r}: not a Tessera export manifest (expected "
                          f"\"format\": \"{MANIFEST_FORMAT}\")")
    return doc


def reproduce(cfg: RepoConfig, defs: Definitions, manifest_file: Path) -> RetrievalJob:
    """The job that re-creates a manifest's export: same rows, features and offline versions."""
    doc = load_manifest(manifest_file)
    ents = doc["entities"]
    if not ents.get("path"):
        raise ExportError(f"--manifest {str(manifest_file)!r}: its entity rows were a frame in "
                          f"memory, not a file; save them to Parquet and export from the file")
    source = Path(ents["path"])
    if not source.is_file():
        raise ExportError(f"--manifest {str(manifest_file)!r}: its entity rows file {str(source)!r}"
                          f" is gone")
    if _sha256(source) != ents["sha256"]:
        raise ExportError(f"--manifest {str(manifest_file)!r}: entity rows file {str(source)!r} "
                          f"changed since the export (sha256 differs)")
    views = doc["offline"]["views"]
    for name, info in views.items():
        view = defs.views.get(name)
        if view is None:
            raise ExportError(f"--manifest: feature view {name!r} is no longer defined")
        if view.fingerprint() != info["fingerprint"]:
            raise ExportError(f"--manifest: feature view {name!r} has other rules now "
                              f"(fingerprint {info['fingerprint'][:16]} at export, "
                              f"{view.fingerprint()[:16]} now); the export cannot be re-run")
    refs = [f["ref"] for f in doc["features"]]
    job = RetrievalJob.plan(
        cfg, defs, source, features=refs, full_feature_names=doc["full_feature_names"],
        allow_uncovered=doc["allow_uncovered"], timestamp_field=ents["timestamp_field"],
        versions={name: int(info["manifest_version"]) for name, info in views.items()})
    job.feature_service = doc.get("feature_service")
    return job
