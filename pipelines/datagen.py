"""Seeded, realistic, fast card-transaction events: the example data of Tessera.

One event is one card transaction. Users have a home country, a spending level and a
heavy-tailed activity; merchants have a country, a category (MCC) and a typical amount. Events
follow daily and weekly seasonality (UTC), a small share of them are fraud, and on request the
distributions drift from an instant on and a share of rows is deliberately malformed. See
``docs/datagen.md`` for the exact model.

Example:
    >>> from datetime import datetime, UTC
    >>> from pipelines.datagen import GenSpec, generate
    >>> df = generate(GenSpec(rows=1_000, start=datetime(2025, 1, 6, tzinfo=UTC), days=7))
    >>> df.height, df.columns[:3]
    (1000, ['transaction_id', 'user_id', 'merchant_id'])

The same spec always gives the same rows, byte for byte, whether generated in memory
(:func:`generate`) or written day by day and chunk by chunk (:func:`write_parquet`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from features.windows import parse_instant
from pipelines import _datagen_events as ev
from pipelines import _datagen_model as model
from pipelines.errors import PipelineError

if TYPE_CHECKING:
    from rich.text import Text

__all__ = [
    "CHANNELS",
    "COUNTRIES",
    "CURRENCIES",
    "FX_PER_EUR",
    "MALFORMED_KINDS",
    "MCCS",
    "SCHEMA",
    "GenSpec",
    "GenSummary",
    "GenerateArgumentError",
    "generate",
    "generate_cli",
    "malformed_kind",
    "write_parquet",
]

#: Column names and dtypes of every frame and file, in this order.
SCHEMA: dict[str, pl.DataType] = {
    "transaction_id": pl.Int64(),
    "user_id": pl.Int64(),
    "merchant_id": pl.Int64(),
    "amount": pl.Float64(),
    "currency": pl.String(),
    "country": pl.String(),
    "channel": pl.String(),
    "card_present": pl.Boolean(),
    "mcc": pl.String(),
    "is_fraud": pl.Boolean(),
    "event_ts": pl.Datetime("us", "UTC"),
}
COUNTRIES = model.COUNTRIES
CURRENCIES = model.CURRENCIES
CHANNELS = model.CHANNELS
MCCS = model.MCCS
FX_PER_EUR = model.FX_PER_EUR
MALFORMED_KINDS = ev.MALFORMED_KINDS
DEFAULT_START = datetime(2025, 1, 6, tzinfo=UTC)  # a Monday
DEFAULT_CHUNK_ROWS = 400_000
_STRINGS = ("currency", "country", "channel", "mcc")
# String columns go to Parquet as dictionaries straight from their codes. Without the Arrow
# schema in the file, readers see plain STRING columns (and a UTC-adjusted µs TIMESTAMP).
_DICT_SCHEMA = pa.schema([
    pa.field(f.name, pa.dictionary(pa.int8(), pa.string())) if f.name in _STRINGS else f
    for f in ev.ARROW_SCHEMA
])
_PARQUET_OPTIONS: dict[str, object] = {
    "compression": "zstd",
    "use_dictionary": list(_STRINGS),
    "column_encoding": {"transaction_id": "DELTA_BINARY_PACKED", "event_ts": "DELTA_BINARY_PACKED"},
    "write_statistics": ["transaction_id", "event_ts"],
    "store_schema": False,
}


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


@dataclass(frozen=True)
class GenSpec:
    """What to generate. Naive datetimes are read as UTC; aware ones are converted to UTC.

    Attributes:
        rows: Total number of events.
        start: First instant (inclusive) of the time range.
        days: Length of the range ``[start, start + days)``.
        users: Number of users; default ``max(50, rows // 40)``.
        merchants: Number of merchants; default ``max(20, rows // 400)``.
        seed: Seed of every random choice (non-negative).
        drift_from: From this instant on, distributions shift (see ``docs/datagen.md``).
        drift_strength: 0 leaves the data exactly as without drift; 1 is clearly detectable.
        malformed_rate: Expected share of rows corrupted on purpose, one fault kind each.
    """

    rows: int
    start: datetime
    days: int = 28
    users: int | None = None
    merchants: int | None = None
    seed: int = 7
    drift_from: datetime | None = None
    drift_strength: float = 1.0
    malformed_rate: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", _utc(self.start))
        if self.drift_from is not None:
            object.__setattr__(self, "drift_from", _utc(self.drift_from))
        problems = [
            f"{name} must be {rule}, got {value!r}"
            for name, value, ok, rule in [
                ("rows", self.rows, self.rows >= 0, ">= 0"),
                ("days", self.days, self.days >= 1, ">= 1"),
                ("users", self.users, self.users is None or self.users >= 1, ">= 1"),
                ("merchants", self.merchants, self.merchants is None or self.merchants >= 1, ">= 1"),
                ("seed", self.seed, 0 <= self.seed < 2**63, "in [0, 2**63)"),
                ("drift_strength", self.drift_strength, self.drift_strength >= 0, ">= 0"),
                ("malformed_rate", self.malformed_rate, 0 <= self.malformed_rate <= 1, "in [0, 1]"),
            ]
            if not ok
        ]
        if problems:
            raise ValueError("invalid GenSpec: " + "; ".join(problems))

    @property
    def end(self) -> datetime:
        """First instant after the range (exclusive)."""
        return self.start + timedelta(days=self.days)

    @property
    def n_users(self) -> int:
        """Number of users, defaults applied."""
        return self.users if self.users is not None else max(50, self.rows // 40)

    @property
    def n_merchants(self) -> int:
        """Number of merchants, defaults applied."""
        return self.merchants if self.merchants is not None else max(20, self.rows // 400)


@dataclass(frozen=True)
class GenSummary:
    """What :func:`write_parquet` wrote."""

    rows: int
    files: int
    malformed_rows: int
    malformed_by_kind: dict[str, int]  # every kind of MALFORMED_KINDS, zero when absent
    bytes: int
    seconds: float
    out_dir: Path
    paths: tuple[Path, ...] = field(default=(), repr=False)

    @property
    def rows_per_second(self) -> float:
        """Rows written per wall-clock second."""
        return self.rows / self.seconds if self.seconds > 0 else float("inf")

    def __rich__(self) -> Text:
        """Render as :meth:`format` (plain text, no markup) when printed by a rich console."""
        from rich.text import Text

        return Text(self.format())

    def format(self) -> str:
        """A few human-readable lines, for a CLI to print."""
        kinds = ", ".join(f"{k}={v}" for k, v in self.malformed_by_kind.items() if v)
        return (
            f"{self.rows:,} rows in {self.files} files under {self.out_dir / 'transactions'}\n"
            f"{self.bytes / 2**20:,.1f} MiB in {self.seconds:.1f} s "
            f"({self.rows_per_second:,.0f} rows/s)\n"
            f"malformed rows: {self.malformed_rows:,}" + (f" ({kinds})" if kinds else "")
        )


def _chunks(spec: GenSpec, chunk_rows: int) -> Iterator[tuple[date, ev.Chunk]]:
    """Every chunk of ``spec`` in time order with its UTC date; each date at least once."""
    plan = ev.Plan.build(spec)
    pop = model.Population.build(spec.n_users, spec.n_merchants, spec.seed)
    for lo, hi in plan.chunks(chunk_rows):
        day = date(1970, 1, 1) + timedelta(days=int(plan.slot_day[lo]))
        yield day, ev.chunk(spec, pop, plan, lo, hi)


def generate(spec: GenSpec) -> pl.DataFrame:
    """All events of ``spec`` in memory, sorted by ``event_ts`` (ties in a seeded order).

    Rows with a malformed ``event_ts`` (null or +10 years) stay where they were generated.
    The frame holds one memory chunk per UTC day; ``.rechunk()`` it if contiguity matters.

    Example:
        >>> df = generate(GenSpec(rows=500, start=datetime(2025, 1, 6), days=2, seed=1))
        >>> dict(df.schema) == SCHEMA
        True
    """
    frames = []
    for _, chunk in _chunks(spec, DEFAULT_CHUNK_ROWS):
        frame = pl.from_arrow(chunk.table())
        assert isinstance(frame, pl.DataFrame)
        frames.append(frame)
    # One memory chunk per UTC day (or per chunk_rows): no second copy of a large frame.
    return pl.concat(frames, how="vertical", rechunk=False)


def malformed_kind(df: pl.DataFrame, spec: GenSpec) -> pl.Series:
    """The fault kind of each row of a frame of ``spec`` (null for clean rows).

    Recognises the faults :func:`generate` injects; clean generated rows never match.
    """
    end = ev.to_us(spec.end)
    ts_us = pl.col("event_ts").dt.epoch("us")
    expr = (
        pl.when(pl.col("user_id").is_null()).then(pl.lit("null_user_id"))
        .when(pl.col("amount") <= 0).then(pl.lit("nonpositive_amount"))
        .when(pl.col("amount") >= ev.ABSURD_AMOUNT).then(pl.lit("absurd_amount"))
        .when(~pl.col("currency").is_in(list(CURRENCIES))).then(pl.lit("unknown_currency"))
        .when(pl.col("event_ts").is_null()).then(pl.lit("null_event_ts"))
        .when(pl.col("channel").is_null() | ~pl.col("channel").is_in(list(CHANNELS)))
        .then(pl.lit("bad_channel"))
        .when(ts_us >= end).then(pl.lit("future_event_ts"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )
    return df.select(expr.alias("malformed_kind")).to_series()


def write_parquet(spec: GenSpec, out_dir: Path, progress: bool = True, *,
                  chunk_rows: int = DEFAULT_CHUNK_ROWS, overwrite: bool = False) -> GenSummary:
    """Write ``spec`` as ``out_dir/transactions/date=YYYY-MM-DD/part-0000.parquet``.

    One file per UTC day of the range (also for a day without events), rows sorted by
    ``event_ts`` with ties in a seeded order; reading the files in path order gives exactly
    ``generate(spec)``. At most ``chunk_rows`` rows (or one UTC hour) are in memory at a time,
    and each chunk becomes one row group. Files appear atomically (written then renamed).

    Args:
        spec: What to generate.
        out_dir: Root folder; the dataset goes to its ``transactions`` sub-folder.
        progress: Show a rich progress bar on stderr.
        chunk_rows: Rows per chunk (memory bound); does not change the data.
        overwrite: Replace existing ``part-*.parquet`` files; otherwise refuse to mix datasets.

    Raises:
        FileExistsError: ``out_dir/transactions`` already holds part files and not ``overwrite``.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    t0 = time.perf_counter()
    root = Path(out_dir) / "transactions"
    old = sorted(root.glob("date=*/part-*.parquet")) if root.exists() else []
    if old and not overwrite:
        raise FileExistsError(f"{root} already holds {len(old)} part files; pass overwrite=True")
    for path in old + (sorted(root.glob("date=*/.part-*.parquet.tmp")) if root.exists() else []):
        path.unlink()
    for folder in sorted(root.glob("date=*")) if root.exists() else []:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()

    paths: list[Path] = []
    faults = np.zeros(len(MALFORMED_KINDS), dtype=np.int64)
    rows = 0
    writer: pq.ParquetWriter | None = None
    current: date | None = None
    tmp = final = Path()
    bar = Progress(TextColumn("[bold]datagen[/] {task.description}"), BarColumn(),
                   MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                   console=Console(stderr=True), disable=not progress)
    with bar:
        task = bar.add_task("", total=spec.rows)
        for day, chunk in _chunks(spec, chunk_rows):
            if day != current:
                if writer is not None:
                    writer.close()
                    os.replace(tmp, final)
                current = day
                final = root / f"date={day.isoformat()}" / "part-0000.parquet"
                tmp = final.with_name(".part-0000.parquet.tmp")
                final.parent.mkdir(parents=True, exist_ok=True)
                writer = pq.ParquetWriter(tmp, _DICT_SCHEMA, **_PARQUET_OPTIONS)
                paths.append(final)
                bar.update(task, description=day.isoformat())
            assert writer is not None
            writer.write_table(chunk.table(dictionary=True), row_group_size=max(chunk.rows, 1))
            rows += chunk.rows
            faults += chunk.faults
            bar.advance(task, chunk.rows)
        if writer is not None:
            writer.close()
            os.replace(tmp, final)
    by_kind = {k: int(v) for k, v in zip(MALFORMED_KINDS, faults, strict=True)}
    return GenSummary(
        rows=rows, files=len(paths), malformed_rows=sum(by_kind.values()),
        malformed_by_kind=by_kind, bytes=sum(p.stat().st_size for p in paths),
        seconds=time.perf_counter() - t0, out_dir=Path(out_dir), paths=tuple(paths),
    )


class GenerateArgumentError(PipelineError, ValueError):
    """An argument of ``tessera generate`` (:func:`generate_cli`) is out of range.

    Also a ValueError, as :func:`generate_cli` raised before it said which option was wrong.
    """


def _parse_ts(value: datetime | date | str | None, name: str) -> datetime | None:
    try:
        return parse_instant(value)
    except ValueError as e:
        raise GenerateArgumentError(f"{name}: {e}") from None


def _check_args(rows: int, out: Path, start: datetime, days: int, seed: int,
                malformed_rate: float) -> None:
    """Raise GenerateArgumentError naming the first bad ``tessera generate`` option."""
    checks = [
        ("--rows", rows, rows >= 1, "a whole number >= 1"),
        ("--days", days, days >= 1, "a whole number >= 1"),
        ("--seed", seed, 0 <= seed < 2**63, "a whole number in [0, 2**63)"),
        ("--malformed-rate", malformed_rate, 0 <= malformed_rate <= 1, "a fraction in [0, 1]"),
    ]
    for option, value, ok, expected in checks:
        if not ok:
            raise GenerateArgumentError(f"{option}: expected {expected}, got {value!r}")
    try:
        _utc(start) + timedelta(days=days)
    except OverflowError:
        raise GenerateArgumentError(
            f"--days: {days} days from --start {start.isoformat()} end after the year 9999 "
            f"(expected a smaller --days or an earlier --start)") from None
    for path in (out, out / "transactions"):
        if path.exists() and not path.is_dir():
            raise GenerateArgumentError(
                f"--out: {str(path)!r} is a file (expected a folder, or a path that does not "
                f"exist yet, for transactions/date=.../part-0000.parquet)")


def generate_cli(rows: int, out: Path | str, start: datetime | date | str = DEFAULT_START,
                 days: int = 28, seed: int = 7, drift_from: datetime | date | str | None = None,
                 malformed_rate: float = 0.0, *, drift_strength: float = 1.0,
                 progress: bool = True, overwrite: bool = True) -> GenSummary:
    """Everything a ``tessera generate`` command does: parse, check, build the spec, write Parquet.

    Dates may be ISO strings (``2025-01-06``, ``2025-01-27T12:00:00Z``); naive means UTC.
    Unlike :func:`write_parquet`, re-running into the same folder replaces the previous
    dataset (only its ``transactions/date=*/part-*.parquet`` files) by default.

    Returns:
        The summary of :func:`write_parquet`; ``summary.format()`` is ready to print.

    Raises:
        GenerateArgumentError: A bad argument (a PipelineError and a ValueError), one line
            naming the option and the expected value.
        PipelineError: ``out`` cannot be written.
    """
    start_ts = _parse_ts(start, "start") or DEFAULT_START
    out_dir = Path(out)
    _check_args(rows, out_dir, start_ts, days, seed, malformed_rate)
    try:
        spec = GenSpec(rows=rows, start=start_ts, days=days, seed=seed,
                       drift_from=_parse_ts(drift_from, "drift_from"),
                       drift_strength=drift_strength, malformed_rate=malformed_rate)
    except ValueError as e:  # what _check_args does not cover (drift_strength)
        raise GenerateArgumentError(str(e)) from None
    try:
        return write_parquet(spec, out_dir, progress=progress, overwrite=overwrite)
    except OSError as e:
        where = e.filename if e.filename is not None else out_dir
        raise PipelineError(f"--out {str(out_dir)!r}: cannot write {str(where)!r}: "
                            f"{e.strerror or e}") from None
