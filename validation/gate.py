"""The batch gate: a source's expectations checked by Great Expectations before a run publishes.

``tessera run`` hands each view's batch (the source rows of the run's days) to a
:class:`BatchGate` before its engine computes anything. When an expectation of severity error
fails, the batch goes to ``validation.quarantine_path/<source>/<stamp>/`` with its validation
result, the run raises :class:`BatchRejected` (exit 1, a readable summary) and nothing of it is
written offline or online: the previous offline version stays what readers see. Warn-only
failures are reported and let through. Views sharing a source share one check per run.

When the batch passes (``mostly`` below 1 lets some failing rows through), the engines drop the
rows that fail a row-level error expectation, exactly as the stream sends them to its dead-letter
topic (see ``features.expect``), so both stores receive the same rows.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.config import RepoConfig
from features.definitions import FeatureView, Source
from features.errors import TesseraError
from features.expect import Expectation
from features.windows import from_micros
from validation.gx_runner import Outcome, validate

if TYPE_CHECKING:
    import polars as pl


class BatchRejected(TesseraError):
    """A batch failed an expectation of severity error; it was quarantined, not published."""


@dataclass(frozen=True)
class GateReport:
    """The expectations of one source checked on one batch."""

    source: str
    start_us: int | None
    end_us: int | None
    rows: int
    outcomes: tuple[Outcome, ...]
    seconds: float
    quarantine: Path | None = None

    @property
    def blocking(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.blocking]

    @property
    def warnings(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.success and not o.blocking]

    def span(self) -> str:
        return f"{_iso(self.start_us)}..{_iso(self.end_us)}"

    def warning_lines(self) -> list[str]:
        return [f"source {self.source!r}: warning: expectation {o.expectation.name!r}: "
                f"{o.describe()}" for o in self.warnings]

    def rejection(self) -> str:
        """The multi-line message of a rejected batch: each failed expectation, the folder."""
        head = (f"source {self.source!r}: batch {self.span()} ({self.rows:,} rows) failed "
                f"{len(self.blocking)} of {len(self.outcomes)} expectations; nothing was "
                f"published")
        lines = [head]
        lines += [f"  {o.expectation.name} [{o.expectation.kind}"
                  f"{'' if o.expectation.column is None else ' on ' + o.expectation.column}]: "
                  f"{o.describe()}" for o in self.blocking]
        lines += ["  " + w for w in self.warning_lines()]
        if self.quarantine is not None:
            lines.append(f"  quarantined in {self.quarantine} (validation_result.json, "
                         f"summary.json, batch.parquet, failing_rows.parquet)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "start": _iso(self.start_us), "end": _iso(self.end_us),
            "rows": self.rows, "seconds": round(self.seconds, 3),
            "success": not self.blocking,
            "expectations": [{
                "name": o.expectation.name, "definition": o.expectation.to_dict(),
                "success": o.success, "blocking": o.blocking, "checked": o.checked,
                "failing": o.failing, "examples": [_jsonable(v) for v in o.examples],
                "observed": _jsonable(o.observed), "error": o.error,
            } for o in self.outcomes],
        }


def _iso(us: int | None) -> str:
    if us is None:
        return "(open)"
    return from_micros(us).isoformat().replace("+00:00", "Z")


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, bool | int | float | str):
        return v
    if hasattr(v, "isoformat"):
        return v.isoformat()
    if hasattr(v, "item"):  # numpy scalars
        return v.item()
    return str(v)


def columns_of(source: Source) -> list[tuple[Expectation, str | None]]:
    """Each expectation with the column it reads (``fresh`` defaults to the event time)."""
    return [(e, source.timestamp_field if e.kind == "fresh" and e.column is None else e.column)
            for e in source.expectations]


def check(source: Source, events: pl.LazyFrame, start_us: int | None, end_us: int | None,
          examples: int = 5) -> GateReport:
    """Run the source's expectations on its rows in ``events`` (Great Expectations, pandas)."""
    import pandas as pd

    began = time.perf_counter()
    pairs = columns_of(source)
    needed = sorted({c for _e, c in pairs if c is not None})
    frame = events.select(needed).collect(engine="in-memory") if needed else None
    rows = frame.height if frame is not None else _count(events)
    data = frame.to_pandas() if frame is not None else pd.DataFrame(index=range(rows))
    end = pd.Timestamp(end_us if end_us is not None else _now_us(), unit="us", tz="UTC")
    outcomes = validate(data, pairs, end, examples)
    return GateReport(source.name, start_us, end_us, rows, tuple(outcomes),
                      time.perf_counter() - began)


def _count(events: pl.LazyFrame) -> int:
    import polars as pl

    return int(events.select(pl.len()).collect(engine="in-memory").item())


def _now_us() -> int:
    return int(time.time() * 1_000_000)


def quarantine(cfg: RepoConfig, view: FeatureView, events: pl.LazyFrame, report: GateReport,
               files: Sequence[Path]) -> Path:
    """Write a rejected batch and its validation result to a new quarantine folder."""
    import polars as pl

    from features.compile import compile_expr

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = (cfg.resolve(cfg.validation.quarantine_path) / view.source.name
              / f"{stamp}-{uuid.uuid4().hex[:8]}")
    folder.mkdir(parents=True, exist_ok=False)
    batch = events.drop("__seq", strict=False)
    batch.sink_parquet(folder / "batch.parquet")
    schema = dict(view.source.schema)
    checks = [e for e in view.source.expectations if e.row_level]
    if checks:
        fails = [pl.when(~compile_expr(e.row_check(), "polars", schema).fill_null(False))
                 .then(pl.lit(e.name)) for e in checks]
        failed = pl.concat_list(fails).list.drop_nulls().alias("__failed")
        (batch.with_columns(failed).filter(pl.col("__failed").list.len() > 0)
         .sink_parquet(folder / "failing_rows.parquet"))
    (folder / "validation_result.json").write_text(json.dumps(
        [o.gx for o in report.outcomes], indent=1, default=str), encoding="utf-8")
    (folder / "files.txt").write_text("".join(f"{p}\n" for p in files), encoding="utf-8")
    kept = replace(report, quarantine=folder)
    (folder / "summary.json").write_text(json.dumps(kept.to_dict(), indent=1), encoding="utf-8")
    (folder / "summary.txt").write_text(kept.rejection() + "\n", encoding="utf-8")
    return folder


class BatchGate:
    """What ``tessera run`` calls before computing a view: validate, quarantine, or pass.

    Called as ``gate(view, events, start_us, end_us, files)`` with the batch's rows (a lazy
    frame); returns the warning lines to show, or raises :class:`BatchRejected`. A source is
    checked once per range, whichever of its views comes first.
    """

    def __init__(self, cfg: RepoConfig) -> None:
        self.cfg = cfg
        self.reports: dict[tuple[str, int | None, int | None], GateReport] = {}

    def __call__(self, view: FeatureView, events: pl.LazyFrame, start_us: int | None,
                 end_us: int | None, files: Sequence[Path]) -> list[str]:
        key = (view.source.name, start_us, end_us)
        report = self.reports.get(key)
        if report is None:
            report = check(view.source, events, start_us, end_us, self.cfg.validation.examples)
            if report.blocking:
                folder = quarantine(self.cfg, view, events, report, files)
                report = replace(report, quarantine=folder)
            self.reports[key] = report
        if report.blocking:
            raise BatchRejected(report.rejection())
        return report.warning_lines()
