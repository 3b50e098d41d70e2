"""``tessera run``: read a view's batch source, apply its rules, write offline tiles atomically.

A run covers whole UTC days ``[start, end)`` (without dates: every day of the source). Its files
go to a private staging folder kept alive by a heartbeat; the commit then replaces, in one
manifest version, exactly the days the run found source events for (see
:mod:`features.offline_store`). A day without any source event is never replaced by an empty
one — the source's files for it may simply be missing — unless the caller says such days are
truly empty (``allow_empty_days``); the run reports those days. A run killed at any point leaves
the previous data readable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from features import offline_store
from features.config import RepoConfig
from features.definitions import FeatureView
from features.tiles import EXACT_TILE_US
from pipelines import online_snapshot
from pipelines.counts import Counts
from pipelines.errors import PipelineError
from pipelines.sources import SourceScan, day_of, landing_root, scan_source

Engine = Literal["polars", "spark"]
# Checks a view's batch before anything is computed: (view, the batch's source rows, start µs,
# end µs, files) -> warning lines, or raises (validation.gate.BatchGate; wired by the CLI).
Gate = Callable[[FeatureView, Any, int, int, Sequence[Path]], list[str]]
ENGINES = ("polars", "spark")


@dataclass(frozen=True)
class RunSummary:
    """What one view's run read, rejected and wrote, and what it left alone."""

    view: str
    engine: str
    run_id: str
    first_day: date
    last_day: date
    days: int
    files: int                 # files opened
    files_total: int           # files in the source
    rows_read: int
    rows_rejected: int
    rows_filtered: int
    rows_outside: int          # source rows whose event time is outside the run's days
    partial_rows_written: int
    manifest_version: int | None
    seconds: float
    days_replaced: int
    empty_days: tuple[date, ...] = ()      # days in range without a source event, left as stored
    skipped_files: tuple[str, ...] = ()    # unreadable files whose date partition is far away
    notes: tuple[str, ...] = field(default=())
    snapshot: online_snapshot.SnapshotSummary | None = None  # the online snapshot written (None: none)

    def warnings(self) -> list[str]:
        """What a person running this should know (empty when all went as expected)."""
        out = []
        if self.empty_days:
            out.append(f"{self.view}: no source events on {format_days(self.empty_days)}: "
                       f"those days were not computed and keep what was stored (if they truly "
                       f"had no events, rerun with --allow-empty-days)")
        out.extend(f"{self.view}: skipped unreadable file {f} (its date partition is outside "
                   f"the run)" for f in self.skipped_files)
        out.extend(self.notes)
        return out


def format_days(days: Sequence[date]) -> str:
    """``2026-01-03..2026-01-05, 2026-01-09`` (runs of consecutive days joined)."""
    spans: list[list[date]] = []
    for d in sorted(days):
        if spans and spans[-1][1] + timedelta(days=1) == d:
            spans[-1][1] = d
        else:
            spans.append([d, d])
    text = ", ".join(a.isoformat() if a == b else f"{a.isoformat()}..{b.isoformat()}"
                     for a, b in spans[:6])
    return text + (f" and {len(spans) - 6} more ranges" if len(spans) > 6 else "")


def day_range(start: date, end: date) -> list[date]:
    if end <= start:
        raise PipelineError(f"--end {end.isoformat()} must be after --start {start.isoformat()}")
    return [start + timedelta(days=i) for i in range((end - start).days)]


def as_day(value: date | datetime | str, flag: str) -> date:
    """A whole UTC day: ``2026-01-31``; a datetime must be at midnight UTC."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise PipelineError(f"{flag} {value!r}: expected a date like 2026-01-31") from None
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        if value.time() != datetime.min.time():
            raise PipelineError(f"{flag} {value.isoformat()!r}: runs cover whole UTC days; "
                                f"give a date like {value.date().isoformat()}")
        return value.date()
    return value


def source_days(view: FeatureView, scan: SourceScan) -> tuple[date, date]:
    """``[first, end)``: every UTC day with an event in the source (for a run without dates)."""
    span = scan.span_us()
    if span is None:  # a footer without statistics: read the time column of those files
        import polars as pl

        ts = view.source.timestamp_field
        lows, highs = [], []
        for f in scan.files:
            if f.error is not None or f.timeless:
                continue
            if f.lo_us is not None and f.hi_us is not None:
                lows.append(f.lo_us)
                highs.append(f.hi_us)
                continue
            col = pl.col(ts).cast(pl.Datetime("us")).dt.epoch("us")
            lo, hi = pl.scan_parquet(f.path).select(col.min(), col.max().alias("hi")).collect().row(0)
            if lo is not None:
                lows.append(lo)
                highs.append(hi)
        span = (min(lows), max(highs)) if lows else None
    if span is None:
        raise PipelineError(f"source {view.source.name!r}: no events with an event time in "
                            f"{len(scan.files)} file(s); nothing to run")
    return day_of(span[0]), day_of(span[1]) + timedelta(days=1)


def run_view(cfg: RepoConfig, view: FeatureView, engine: Engine, start: date | None = None,
             end: date | None = None, *, allow_empty_days: bool = False,
             scan: SourceScan | None = None,
             progress: Callable[[int, int], None] | None = None,
             gate: Gate | None = None, now_us: int | None = None) -> RunSummary:
    """Run one view over ``[start, end)`` (default: all the source's days) and commit its tiles.

    Args:
        allow_empty_days: days without any source event are computed as empty (and replace
            what was stored). By default they are left alone and reported.
        scan: the source's footers, if already read (several views share a source).
        progress: called as ``progress(done, total)`` in the engine's own units (days for
            Polars, layers for Spark).
        gate: validates the batch first (the source's expectations); it raises to stop the
            run before anything is staged, or returns warnings for the summary.
        now_us: the instant the online snapshot is built as of (default: when the run ends).
    """
    if engine not in ENGINES:
        raise PipelineError(f"unknown engine {engine!r}: expected 'polars' or 'spark'")
    began = time.perf_counter()
    scan = scan or scan_source(view.source, cfg.root, _landed(cfg, view))
    if start is None or end is None:
        first, stop = source_days(view, scan)
        start, end = start or first, end or stop
    days = day_range(start, end)
    lo, hi = _midnight_us(start), _midnight_us(end)
    opened, skipped = scan.select(lo, hi)
    root = cfg.resolve(cfg.offline.path)
    fp = view.fingerprint()
    sizes = (EXACT_TILE_US, *view.tile_sizes())
    warnings: list[str] = []
    if gate is not None and view.source.expectations:
        from pipelines.engine_polars import read_events

        warnings = gate(view, read_events(view, opened, lo, hi, opened), lo, hi,
                        [f.path for f in opened])
    with offline_store.Staging(root, view.name, fp) as stage:
        counts = _run_engine(cfg, view, engine, opened, days, stage, progress)
        replace = [d for d in days if allow_empty_days or counts.per_day.get(d, 0) > 0]
        files = {(size, d): stage.partition_files(size, d) for size in sizes for d in replace}
        lost = [(s, d) for (s, d), fs in files.items() if not fs and d in counts.output_days]
        if lost:
            raise PipelineError(f"feature view {view.name!r}: run {stage.run_id} wrote no file "
                                f"for tile size {lost[0][0]} µs on {lost[0][1]} although it had "
                                f"events; nothing was committed")
        span = scan.span_us()
        # Nothing in the source before this run's first day (or nothing at all): the days
        # before it are known to hold no events, so a lifetime read may start from here.
        from_start = span is None or start <= day_of(span[0])
        manifest = None
        if replace:
            manifest = offline_store.commit(
                root, view.name, fp, stage.run_id, files=files, cover_from_start=from_start,
                info={"engine": engine, "rows_read": counts.read,
                      "rows_rejected": counts.rejected, "range": [start.isoformat(),
                                                                  end.isoformat()]})
            stage.mark_committed()
    snapshot = None
    if manifest is not None and cfg.offline.online_snapshot:
        snapshot, note = _snapshot(root, view, manifest, now_us)
        warnings += [note] if note else []
    source_first = day_of(span[0]) if span is not None else None
    empty = tuple(d for d in days if d not in replace
                  and (source_first is None or d >= source_first))
    return RunSummary(
        view=view.name, engine=engine, run_id=stage.run_id, first_day=start,
        last_day=end - timedelta(days=1), days=len(days), files=len(opened),
        files_total=len(scan.files), rows_read=counts.read, rows_rejected=counts.rejected,
        rows_filtered=counts.filtered, rows_outside=max(scan.rows - counts.read, 0),
        partial_rows_written=counts.written,
        manifest_version=None if manifest is None else manifest.version,
        seconds=time.perf_counter() - began, days_replaced=len(replace), empty_days=empty,
        skipped_files=tuple(str(f.path) for f in skipped), notes=tuple(warnings),
        snapshot=snapshot)


def _snapshot(root: Path, view: FeatureView, manifest: offline_store.Manifest,
              now_us: int | None) -> tuple[online_snapshot.SnapshotSummary | None, str]:
    """Write the online snapshot of a committed version; a failure is a warning, not a failed
    run: the tiles are committed, and materialize builds from them without a snapshot."""
    try:
        return online_snapshot.write(root, view, manifest, now_us), ""
    except Exception as e:  # any failure leaves the run's tiles valid
        return None, (f"{view.name}: online snapshot of version {manifest.version} not "
                      f"written ({type(e).__name__}: {e}); materialize will build from the "
                      f"tiles")


def _run_engine(cfg: RepoConfig, view: FeatureView, engine: Engine, opened: list,
                days: list[date], stage: offline_store.Staging,
                progress: Callable[[int, int], None] | None) -> Counts:
    done = [0]

    def advance_by(total: int) -> Callable[[int], None]:
        def advance(n: int) -> None:
            done[0] += n
            if progress is not None:
                progress(done[0], total)
        return advance

    if engine == "polars":
        from pipelines import engine_polars

        advance = advance_by(len(days))
        advance(0)
        return engine_polars.run(view, opened, days, stage.path, advance)
    from pipelines import engine_spark
    from pipelines.spark_session import get_spark

    spark = get_spark(cfg.spark.master, cfg.spark.app_name, cfg.spark.conf)
    advance = advance_by(len(view.tile_sizes()) + 2)
    advance(0)
    return engine_spark.run(spark, view, opened, days, stage.path, advance)


def _midnight_us(d: date) -> int:
    return (d - date(1970, 1, 1)).days * 86_400_000_000


def run(cfg: RepoConfig, views: Sequence[FeatureView], engine: Engine,
        start: date | datetime | str | None = None, end: date | datetime | str | None = None,
        show_progress: bool = True, allow_empty_days: bool = False,
        gate: Gate | None = None, now_us: int | None = None) -> list[RunSummary]:
    """Run every view over the whole days ``[start, end)`` (default: all the source's days).

    A rich progress bar shows each view's days (Polars) or layers (Spark) as they finish.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    first = None if start is None else as_day(start, "--start")
    last = None if end is None else as_day(end, "--end")
    if first is not None and last is not None:
        day_range(first, last)  # fail early on an empty range
    unit = "days" if engine == "polars" else "layers"
    summaries = []
    scans: dict[str, SourceScan] = {}
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn(unit), TimeElapsedColumn(), disable=not show_progress,
                  console=Console(stderr=True), transient=False) as bar:
        for view in views:
            task = bar.add_task(f"{engine}: {view.name}", total=None)

            def progress(done: int, total: int, task: Any = task) -> None:
                bar.update(task, completed=done, total=total)

            if view.source.name not in scans:
                scans[view.source.name] = scan_source(view.source, cfg.root, _landed(cfg, view))
            summaries.append(run_view(cfg, view, engine, first, last,
                                      allow_empty_days=allow_empty_days,
                                      scan=scans[view.source.name], progress=progress,
                                      gate=gate, now_us=now_us))
    return summaries


def _landed(cfg: RepoConfig, view: FeatureView) -> Path:
    """The folder the stream lands this view's source events in."""
    return landing_root(cfg.resolve(cfg.offline.path), view.source)
