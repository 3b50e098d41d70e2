"""``tessera run``: read a view's batch source, apply its rules, write offline tiles atomically.

A run covers whole UTC days ``[start, end)``. Its files go to a fresh run folder; the commit then
replaces exactly those days of every tile size in one manifest version (see
:mod:`features.offline_store`). A run killed at any point leaves the previous data readable.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal

from features import offline_store
from features.config import RepoConfig
from features.definitions import FeatureView
from features.tiles import EXACT_TILE_US
from features.windows import to_micros
from pipelines.errors import PipelineError
from pipelines.sources import source_files

Engine = Literal["polars", "spark"]


@dataclass(frozen=True)
class RunSummary:
    """What one view's run read, rejected and wrote."""

    view: str
    engine: str
    run_id: str
    days: int
    files: int
    rows_read: int
    rows_rejected: int
    rows_filtered: int
    partial_rows_written: int
    manifest_version: int
    seconds: float


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


def _midnight_us(d: date) -> int:
    return to_micros(datetime(d.year, d.month, d.day, tzinfo=UTC))


def run_view(cfg: RepoConfig, view: FeatureView, engine: Engine, start: date,
             end: date) -> RunSummary:
    """Run one view over ``[start, end)`` on ``engine`` and commit its tiles."""
    began = time.perf_counter()
    days = day_range(start, end)
    root = cfg.resolve(cfg.offline.path)
    files = source_files(view.source, cfg.root)
    fp = view.fingerprint()
    run_id = offline_store.new_run_id()
    out_dir = offline_store.run_dir(root, view.name, fp, run_id)
    lo, hi = _midnight_us(start), _midnight_us(end)
    if engine == "polars":
        from pipelines import engine_polars as eng

        projected = eng.project(view, eng.read_events(view, files, lo, hi))
        written = eng.write_tiles(eng.tile_frames(view, projected.frame), out_dir)
        read, rejected, filtered = (projected.rows_read, projected.rows_rejected,
                                    projected.rows_filtered)
    elif engine == "spark":
        from pipelines import engine_spark as eng_s
        from pipelines.spark_session import get_spark

        spark = get_spark(cfg.spark.master, cfg.spark.app_name, cfg.spark.conf)
        events, counts = eng_s.project(view, eng_s.read_events(spark, view, files, lo, hi))
        written = eng_s.write_tiles(view, events, out_dir)
        row = counts.collect()[0]
        read, rejected, filtered = int(row["read"]), int(row["rejected"] or 0), \
            int(row["filtered"] or 0)
    else:
        raise PipelineError(f"unknown engine {engine!r}: expected 'polars' or 'spark'")
    summary_info = {"engine": engine, "rows_read": read, "rows_rejected": rejected}
    manifest = offline_store.commit(root, view.name, fp, run_id, days,
                                    (EXACT_TILE_US, *view.tile_sizes()), summary_info)
    return RunSummary(view.name, engine, run_id, len(days), len(files), read, rejected, filtered,
                      written, manifest.version, time.perf_counter() - began)


def run(cfg: RepoConfig, views: Sequence[FeatureView], engine: Engine,
        start: date | datetime | str, end: date | datetime | str,
        show_progress: bool = True) -> list[RunSummary]:
    """Run every view over the whole days ``[start, end)``, with a progress bar."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    first, last = as_day(start, "--start"), as_day(end, "--end")
    day_range(first, last)  # fail early on an empty range
    summaries = []
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} views"),
                  TimeElapsedColumn(), disable=not show_progress, transient=False) as bar:
        task = bar.add_task(f"{engine} run {first}..{last}", total=len(views))
        for view in views:
            bar.update(task, description=f"{engine}: {view.name}")
            summaries.append(run_view(cfg, view, engine, first, last))
            bar.advance(task)
    return summaries
