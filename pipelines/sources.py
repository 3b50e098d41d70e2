"""Finding a source's files, in the order that breaks ties (lexicographic path order)."""

from __future__ import annotations

import glob
from pathlib import Path

from features.definitions import Source
from pipelines.errors import PipelineError

SEQ_ROW_BITS = 32  # seq = file rank << 32 | row number in file: one number, comparable


def source_files(source: Source, root: Path) -> list[Path]:
    """Parquet files of a batch source, sorted by path (that order breaks event-time ties).

    ``source.path`` may be a folder (searched recursively), a glob, or one file; relative paths
    are resolved against ``root`` (the repo folder).
    """
    raw = Path(source.path)
    path = raw if raw.is_absolute() else root / raw
    if any(ch in str(path) for ch in "*?["):
        files = [Path(p) for p in glob.glob(str(path), recursive=True)]
    elif path.is_dir():
        files = list(path.rglob("*.parquet"))
    elif path.is_file():
        files = [path]
    else:
        raise PipelineError(f"source {source.name!r}: path {str(path)!r} does not exist "
                            f"(expected a folder of Parquet files, a glob or a file)")
    files = sorted((p for p in files if p.is_file() and p.suffix == ".parquet"), key=str)
    if not files:
        raise PipelineError(f"source {source.name!r}: no .parquet files under {str(path)!r}")
    return files
