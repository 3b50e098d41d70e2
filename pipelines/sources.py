"""A batch source's files: which are read, in what order, and what their footers say.

Which files a source reads (docs/sources.md):

- ``path`` is a folder (searched recursively), a glob, or one file; relative to the repo folder.
- Only ``*.parquet`` files. Like Hive and Spark, any file or folder below the source's root
  whose name starts with ``_`` or ``.`` is ignored: ``_temporary/``, ``_SUCCESS``,
  ``.part-0.parquet.crc``, a half-written ``.part-*`` copy. A file named directly is read.
- Files are read in lexicographic path order; that order breaks ties in event time.

Each file's Parquet footer is read first (metadata only): its row count and the min/max
statistics of the event-time column tell which files a run over ``[start, end)`` must open, so a
run never opens a file whose events all lie outside its days, and ``tessera run`` without dates
knows the source's span. A file whose footer cannot be read is an error naming it — unless its
path has a date partition (``date=``, ``dt=``, ``day=``) more than a day outside the run, in
which case the run warns and leaves it alone.
"""

from __future__ import annotations

import glob
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from features.definitions import Source
from features.windows import US_PER_UNIT
from pipelines.errors import PipelineError, SourceSchemaError

SEQ_ROW_BITS = 32  # seq = file rank << 32 | row number in file: one number, comparable
DAY_US = US_PER_UNIT["d"]
_UNIT_US = {"milliseconds": (1000, 1), "microseconds": (1, 1), "nanoseconds": (1, 1000)}
_DATE_PART = re.compile(r"^(?:date|dt|day|event_date)=(\d{4}-\d{2}-\d{2})$")


def _hidden(parts: Sequence[str]) -> bool:
    return any(p.startswith(("_", ".")) for p in parts)


def landing_root(offline_root: Path, source: Source) -> Path:
    """Where the Kafka stream lands a source's events (see :mod:`streaming.landing`)."""
    return offline_root / "landed" / source.name


def _landed(folder: Path | None) -> list[Path]:
    if folder is None or not folder.is_dir():
        return []
    return [p for p in folder.rglob("*.parquet") if not _hidden(p.relative_to(folder).parts)]


def source_files(source: Source, root: Path, landed: Path | None = None) -> list[Path]:
    """Parquet files of a batch source, sorted by path (that order breaks event-time ties).

    ``source.path`` may be a folder (searched recursively), a glob, or one file; relative paths
    are resolved against ``root`` (the repo folder). Names starting with ``_`` or ``.`` below
    the source's root are skipped (see the module docstring). Files the stream landed under
    ``landed`` (:func:`landing_root`) are the source's too.
    """
    raw = Path(source.path)
    path = raw if raw.is_absolute() else root / raw
    streamed = _landed(landed)
    if streamed and not any(ch in str(path) for ch in "*?[") and not path.exists():
        files = []  # a source fed only by its Kafka topic so far
    elif any(ch in str(path) for ch in "*?["):
        static = Path(*[p for p in path.parts[:next(
            i for i, p in enumerate(path.parts) if any(ch in p for ch in "*?["))]])
        files = [Path(p) for p in glob.glob(str(path), recursive=True)]
        files = [p for p in files if not _hidden(p.relative_to(static).parts)]
    elif path.is_dir():
        files = [p for p in path.rglob("*.parquet") if not _hidden(p.relative_to(path).parts)]
    elif path.is_file():
        files = [path]
    else:
        raise PipelineError(f"source {source.name!r}: path {str(path)!r} does not exist "
                            f"(expected a folder of Parquet files, a glob or a file)")
    files = sorted((p for p in [*files, *streamed] if p.is_file() and p.suffix == ".parquet"),
                   key=str)
    if not files:
        raise PipelineError(f"source {source.name!r}: no .parquet files under {str(path)!r} "
                            f"(names starting with _ or . are ignored)")
    return files


@dataclass(frozen=True)
class SourceFile:
    """One Parquet file of a source and what its footer says."""

    path: Path
    rank: int                     # position in path order (source order for ties)
    rows: int | None              # None: the footer could not be read
    lo_us: int | None             # earliest event time in the file (None: unknown)
    hi_us: int | None             # latest event time in the file (None: unknown)
    partition_day: date | None    # a date=/dt=/day= folder in its path
    error: str | None = None      # why the footer could not be read
    timeless: bool = False        # no row has an event time (empty, or only nulls)

    @property
    def known(self) -> bool:
        """Whether the footer tells the file's time range (or that it has no times)."""
        return self.timeless or (self.lo_us is not None and self.hi_us is not None)

    def may_overlap(self, start_us: int | None, end_us: int | None) -> bool:
        """Whether events in ``[start_us, end_us)`` may be in this file."""
        if self.timeless:
            return self.rows is None or self.rows > 0  # its null times count as rejected
        if self.lo_us is None or self.hi_us is None:
            return True
        return ((end_us is None or self.lo_us < end_us)
                and (start_us is None or self.hi_us >= start_us))


@dataclass(frozen=True)
class SourceScan:
    """Every file of a source with its footer facts, in source order."""

    source: Source
    files: tuple[SourceFile, ...]

    @property
    def rows(self) -> int:
        return sum(f.rows or 0 for f in self.files)

    def span_us(self) -> tuple[int, int] | None:
        """(first, last) event time over all files, or None if a footer lacks statistics (or
        no file has an event time)."""
        if any(not f.known for f in self.files if f.error is None):
            return None
        timed = [f for f in self.files if f.error is None and not f.timeless]
        if not timed:
            return None
        return (min(f.lo_us for f in timed if f.lo_us is not None),
                max(f.hi_us for f in timed if f.hi_us is not None))

    def select(self, start_us: int | None, end_us: int | None) -> tuple[list[SourceFile],
                                                                         list[SourceFile]]:
        """(files a run over ``[start_us, end_us)`` must open, unreadable files it skips).

        Raises:
            PipelineError: a file the run may need has an unreadable footer (named).
        """
        opened, skipped = [], []
        for f in self.files:
            if f.error is not None:
                if f.partition_day is not None and not _day_near(f.partition_day, start_us,
                                                                 end_us):
                    skipped.append(f)
                    continue
                raise PipelineError(f"source {self.source.name!r}: {f.path}: not a readable "
                                    f"Parquet file ({f.error})")
            if f.may_overlap(start_us, end_us):
                opened.append(f)
        return opened, skipped


def _day_near(day: date, start_us: int | None, end_us: int | None) -> bool:
    """Whether a date partition is within a day of ``[start_us, end_us)`` (late/early slack)."""
    lo = (day - date(1970, 1, 1)).days * DAY_US
    return ((end_us is None or lo - DAY_US < end_us)
            and (start_us is None or lo + 2 * DAY_US > start_us))


def scan_source(source: Source, root: Path, landed: Path | None = None) -> SourceScan:
    """Read the footer of every file of a source (metadata only, no data pages)."""
    import pyarrow.parquet as pq

    out = []
    for rank, path in enumerate(source_files(source, root, landed)):
        part_day = None
        for part in path.parts:
            if m := _DATE_PART.match(part):
                try:
                    part_day = date.fromisoformat(m.group(1))
                except ValueError:
                    part_day = None
        try:
            meta = pq.read_metadata(path)
        except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for a bad file
            out.append(SourceFile(path, rank, None, None, None, part_day,
                                  error=str(e).splitlines()[0]))
            continue
        lo, hi, timeless = _time_range(meta, source.timestamp_field)
        out.append(SourceFile(path, rank, meta.num_rows, lo, hi, part_day, timeless=timeless))
    return SourceScan(source, tuple(out))


def _time_range(meta: object, column: str) -> tuple[int | None, int | None, bool]:
    """(min, max, timeless) of a timestamp (or date) column from row-group statistics, in µs.

    ``timeless``: no row has a time (no rows, or only nulls). (None, None, False): unknown.
    """
    schema = meta.schema  # type: ignore[attr-defined]
    try:
        index = schema.names.index(column)
    except ValueError:
        return None, None, False
    lows, highs = [], []
    for g in range(meta.num_row_groups):  # type: ignore[attr-defined]
        group = meta.row_group(g)  # type: ignore[attr-defined]
        if group.num_rows == 0:
            continue
        stats = group.column(index).statistics
        if stats is None or not stats.has_min_max:
            if stats is not None and stats.null_count == group.num_rows:
                continue  # only null times in this group: they bound nothing
            return None, None, False
        kind = json.loads(stats.logical_type.to_json())
        if kind.get("Type") == "Date":
            lows.append(int(stats.min_raw) * DAY_US)
            highs.append((int(stats.max_raw) + 1) * DAY_US - 1)
        elif kind.get("Type") == "Timestamp" and kind.get("timeUnit") in _UNIT_US:
            mul, div = _UNIT_US[kind["timeUnit"]]
            lows.append(int(stats.min_raw) * mul // div)           # floor
            highs.append(-(-int(stats.max_raw) * mul // div))      # ceiling
        else:  # INT96 or no logical type: unknown
            return None, None, False
    if not lows:
        return None, None, True
    return min(lows), max(highs), False


def day_of(us: int) -> date:
    return date(1970, 1, 1) + timedelta(days=us // DAY_US)


def unreadable(source: Source, path: Path, error: BaseException) -> SourceSchemaError:
    """The error for a file an engine failed to read: names the file and the first line."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return SourceSchemaError(f"source {source.name!r}: {path}: cannot read it as Parquet "
                             f"({first})")


def find_unreadable(source: Source, files: Sequence[SourceFile], error: BaseException) -> Exception:
    """Name the file a failed read came from (each is re-read on its own); else ``error``."""
    import pyarrow.parquet as pq

    for f in files:
        try:
            pq.read_table(f.path, columns=list(source.schema))
        except Exception as e:
            return unreadable(source, f.path, e)
    return error if isinstance(error, Exception) else RuntimeError(str(error))
