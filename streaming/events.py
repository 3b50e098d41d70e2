"""Events for a topic: read from Parquet or generated, put in event-time order, encoded.

The wire format (one JSON object per event, a key per entity) is described in
:mod:`streaming.produce`, which sends what this module prepares; the streaming consumer's
:class:`streaming.decode.JsonDecoder` reads it back.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from features.errors import TesseraError

if TYPE_CHECKING:
    import polars as pl

    from features.definitions import Source

#: How a ``timestamp`` field is written: ISO-8601, UTC, microseconds, ``Z``.
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S%.6fZ"
DEFAULT_DAYS = 7


class ProduceError(TesseraError):
    """Events could not be read, encoded or written to Kafka; the message says which and why."""


class ProduceWarning(UserWarning):
    """Events were produced, but something about them deserves a look (e.g. NaN as null)."""


def _pl_type(kind: str) -> pl.DataType:
    import polars as pl

    return {"int64": pl.Int64(), "float64": pl.Float64(), "bool": pl.Boolean(),
            "string": pl.String(), "timestamp": pl.Datetime("us", "UTC")}[kind]


def _cast(name: str, kind: str, got: pl.DataType) -> pl.Expr | None:
    """The expression giving column ``name`` its schema type, or None when it cannot.

    The same widenings as the batch engines: any integer to int64, any number to float64,
    categoricals to string, a naive datetime read as UTC, an aware one converted to UTC, a date
    as its UTC midnight, every datetime at microsecond precision.
    """
    import polars as pl

    col = pl.col(name)
    if got == pl.Null:  # a column of nulls only
        return col.cast(_pl_type(kind))
    if kind == "int64" and got.is_integer():
        return col.cast(pl.Int64)
    if kind == "float64" and got.is_numeric():
        return col.cast(pl.Float64)
    if kind == "bool" and got == pl.Boolean:
        return col
    if kind == "string" and (got == pl.String or isinstance(got, pl.Categorical | pl.Enum)):
        return col.cast(pl.String)
    if kind == "timestamp" and isinstance(got, pl.Datetime):
        utc = (col.dt.replace_time_zone("UTC") if got.time_zone is None
               else col.dt.convert_time_zone("UTC"))
        return utc.dt.cast_time_unit("us")
    if kind == "timestamp" and got == pl.Date:
        return col.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    return None


def conform(df: pl.DataFrame, source: Source, where: str = "the events") -> pl.DataFrame:
    """The source schema's columns of ``df``, in schema order, each of its schema type.

    Extra columns are dropped. ``where`` names the data in errors (``"file 'x.parquet'"``).

    Raises:
        ProduceError: a schema column is missing, or its type cannot become the schema's.
    """
    import polars as pl

    missing = [name for name in source.schema if name not in df.columns]
    if missing:
        raise ProduceError(
            f"{where} has no {_columns(missing)} of source {source.name!r} "
            f"(it has: {', '.join(df.columns) or 'no columns'})")
    exprs = []
    for name, kind in source.schema.items():
        expr = _cast(name, kind, df.schema[name])
        if expr is None:
            raise ProduceError(f"{where}: column {name!r} is {df.schema[name]}, but source "
                               f"{source.name!r} declares it {kind}")
        exprs.append(expr.alias(name))
    try:
        return df.select(exprs)
    except pl.exceptions.PolarsError as e:  # e.g. a UInt64 beyond the int64 range
        raise ProduceError(f"{where}: cannot convert to the schema of source "
                           f"{source.name!r}: {_first_line(e)}") from None


def _columns(names: Sequence[str]) -> str:
    """``column 'a'`` or ``columns 'a', 'b'``."""
    return ("column " if len(names) == 1 else "columns ") + ", ".join(map(repr, names))


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def encode_events(df: pl.DataFrame, source: Source) -> list[bytes]:
    """One UTF-8 JSON object per row of ``df``: the source schema's fields (module docstring).

    Vectorised (Polars writes the JSON): about half a million events per second on one core.
    Non-finite floats (NaN, ±inf), which JSON cannot hold, become ``null`` with a
    :class:`ProduceWarning` saying how many and where.

    Raises:
        ProduceError: ``df`` lacks a schema column or has one of an incompatible type.
    """
    import io

    import polars as pl

    frame = conform(df, source)
    floats = [name for name, kind in source.schema.items() if kind == "float64"]
    if floats and frame.height:
        bad = frame.select([(~pl.col(c).is_finite()).sum().alias(c) for c in floats]).row(0)
        found = {c: n for c, n in zip(floats, bad, strict=True) if n}
        if found:
            where = ", ".join(f"{n:,} in {c!r}" for c, n in found.items())
            warnings.warn(f"{sum(found.values()):,} NaN or infinite values ({where}) are sent "
                          f"as JSON null: JSON has no such numbers", ProduceWarning,
                          stacklevel=2)
    stamps = [name for name, kind in source.schema.items() if kind == "timestamp"]
    if stamps:
        frame = frame.with_columns(pl.col(stamps).dt.strftime(TIMESTAMP_FORMAT))
    if not frame.height:
        return []
    buffer = io.BytesIO()
    frame.write_ndjson(buffer)
    lines = buffer.getvalue().split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    if len(lines) != frame.height:  # a raw newline inside a value would break this: never
        raise ProduceError(f"encoding gave {len(lines)} lines for {frame.height} events")
    return lines


def encode_keys(df: pl.DataFrame, field: str) -> list[bytes | None]:
    """Each row's message key: the value of ``field`` as text, UTF-8 (None where null).

    Raises:
        ProduceError: ``field`` is not a column, or neither an integer nor a string column.
    """
    import polars as pl

    if field not in df.columns:
        raise ProduceError(f"key field {field!r} is not a column of the events "
                           f"(columns: {', '.join(df.columns)})")
    column = df.get_column(field)
    if not (column.dtype.is_integer() or column.dtype == pl.String
            or isinstance(column.dtype, pl.Categorical | pl.Enum)):
        raise ProduceError(f"key field {field!r} is {column.dtype}: expected an integer or a "
                           f"string column (an entity join key)")
    return column.cast(pl.String).cast(pl.Binary).to_list()


def event_order(df: pl.DataFrame, timestamp_field: str) -> pl.DataFrame:
    """``df`` sorted by event time, stably: ties keep their order (the source order).

    A row with a null event time stays right after the row it followed (leading ones first),
    the way such a row would arrive in a live stream.
    """
    import polars as pl

    key = pl.col(timestamp_field).forward_fill()
    return df.sort(key, nulls_last=False, maintain_order=True, multithreaded=True)


def read_events_file(path: Path | str, source: Source) -> pl.DataFrame:
    """The events of a Parquet file, or of every ``*.parquet`` below a folder, conformed.

    Files of a folder are read in lexicographic path order (the source order); names starting
    with ``.`` or ``_`` are skipped, like the batch source reader does. Hive partition folders
    (``date=…``) add no column.

    Raises:
        ProduceError: no such file, nothing to read, a file Polars cannot read as Parquet, or a
            file lacking a schema column (the message names the file and the column).
    """
    import polars as pl

    root = Path(path)
    if root.is_dir():
        files = sorted(p for p in root.rglob("*.parquet")
                       if not any(part.startswith((".", "_"))
                                  for part in p.relative_to(root).parts))
        if not files:
            raise ProduceError(f"--file {str(root)!r}: the folder holds no *.parquet file")
    elif root.is_file():
        files = [root]
    else:
        raise ProduceError(f"--file {str(root)!r}: no such file or folder")
    frames = []
    for file in files:
        where = f"file {str(file)!r}"
        try:
            columns = pl.read_parquet_schema(file)
        except Exception as e:  # polars raises ComputeError/OSError on what is not Parquet
            raise ProduceError(f"{where}: cannot read it as Parquet ({_first_line(e)})") from None
        missing = [name for name in source.schema if name not in columns]
        if missing:
            raise ProduceError(f"{where} has no {_columns(missing)} of source "
                               f"{source.name!r} (it has: {', '.join(columns)})")
        try:
            frame = pl.read_parquet(file, columns=list(source.schema), hive_partitioning=False)
        except Exception as e:
            raise ProduceError(f"{where}: cannot read it as Parquet ({_first_line(e)})") from None
        frames.append(conform(frame, source, where))
    return pl.concat(frames, how="vertical") if len(frames) > 1 else frames[0]


def generated_events(events: int, *, days: int = DEFAULT_DAYS, seed: int = 7,
                     start: datetime | None = None, malformed_rate: float = 0.0,
                     now: datetime | None = None) -> pl.DataFrame:
    """``events`` generated card transactions over the ``days`` before ``now`` (or from
    ``start``), in the generator's order: event time, faulty rows where they were made.

    The generator's malformed rows (``malformed_rate``) are kept: a stream has them too.
    """
    from pipelines.datagen import GenSpec, generate

    if events < 1:
        raise ProduceError(f"--events: expected a whole number >= 1, got {events!r}")
    if days < 1:
        raise ProduceError(f"--days: expected a whole number >= 1, got {days!r}")
    if not 0 <= seed < 2**63:
        raise ProduceError(f"--seed: expected a whole number in [0, 2**63), got {seed!r}")
    if not 0 <= malformed_rate <= 1:  # also refuses NaN
        raise ProduceError(f"--malformed-rate: expected a fraction in [0, 1], got "
                           f"{malformed_rate!r}")
    if start is None:
        start = (now or datetime.now(UTC)) - timedelta(days=days)
    try:
        spec = GenSpec(rows=events, start=start, days=days, seed=seed,
                       malformed_rate=malformed_rate)
    except ValueError as e:
        raise ProduceError(str(e)) from None
    return generate(spec).rechunk()



__all__ = ["DEFAULT_DAYS", "TIMESTAMP_FORMAT", "ProduceError", "ProduceWarning", "conform",
           "encode_events", "encode_keys", "event_order", "generated_events",
           "read_events_file"]
