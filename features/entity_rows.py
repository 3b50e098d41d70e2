"""Entity rows for a point-in-time read: the shapes accepted, the types checked, one error each.

Accepted: a pyarrow Table or RecordBatch, a Polars or pandas DataFrame, a list of dicts
(``[{"user_id": 1, "event_ts": ...}]``), a dict of lists, or the path of a Parquet or CSV file.

The timestamp column may be a timestamp of any unit, with or without a time zone (naive means
UTC), or ISO-8601 strings (``2026-01-05T09:00:00Z``, ``2026-01-05 09:00:00+01:00``; without an
offset: UTC). Epoch numbers are refused (seconds or milliseconds? the number does not say), and
so are dates (the start or the end of the day?). Times finer than a microsecond are floored to
the microsecond, so nothing after the row's instant is read.

Join keys must have the entity's type: any integer type for an ``int64`` entity (a float column
is refused: pandas turns integers with missing values into floats), text for a ``string``
entity. Nothing is cast silently: ``"01"`` never matches user 1. A null key reads like an
entity never seen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.errors import EntityRowsError

if TYPE_CHECKING:
    import pyarrow as pa

_UNIT_TO_US = {"s": (1_000_000, 1), "ms": (1000, 1), "us": (1, 1), "ns": (1, 1000)}


@dataclass(frozen=True)
class EntityRows:
    """Checked entity rows: the user's table (as given) and each row's instant in µs."""

    table: pa.Table
    times_us: pa.Array  # int64, never null
    timestamp_field: str  # the column they were read from


def to_table(rows: Any) -> pa.Table:
    """The rows as a pyarrow Table (see the module docstring for the accepted shapes)."""
    import pyarrow as pa

    if isinstance(rows, pa.Table):
        check_unique(rows.column_names)
        return rows
    if isinstance(rows, pa.RecordBatch):
        check_unique(rows.schema.names)
        return pa.Table.from_batches([rows])
    if isinstance(rows, str | Path):
        return _read_file(Path(rows))
    module = type(rows).__module__.split(".")[0]
    if module == "polars":
        if type(rows).__name__ == "LazyFrame":
            rows = rows.collect()
        return rows.to_arrow()
    if module == "pandas":
        check_unique([str(c) for c in rows.columns])
        return _from_columns({str(c): rows[c] for c in rows.columns}, pandas=True)
    if isinstance(rows, Mapping):
        return _from_columns({str(k): v for k, v in rows.items()})
    if isinstance(rows, Sequence) and all(isinstance(r, Mapping) for r in rows):
        names = list(dict.fromkeys(k for r in rows for k in r))
        return _from_columns({n: [r.get(n) for r in rows] for n in names})
    raise EntityRowsError(f"entity rows: expected a pandas or Polars DataFrame, a pyarrow Table, "
                          f"a list of dicts, a dict of lists or a Parquet/CSV path, got "
                          f"{type(rows).__name__}")


def check_unique(names: Sequence[str]) -> None:
    """The error naming a column that repeats (a pandas frame or an Arrow table may repeat
    one: which of the two would be the key?)."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise EntityRowsError(f"entity rows: column {name!r} appears {names.count(name)} "
                                  f"times; give each column once")
        seen.add(name)


def _from_columns(columns: Mapping[str, Any], pandas: bool = False) -> pa.Table:
    import pyarrow as pa

    arrays = {}
    for name, values in columns.items():
        try:
            arrays[name] = (pa.Array.from_pandas(values) if pandas else pa.array(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
            raise EntityRowsError(f"entity rows: column {name!r} mixes types or holds values "
                                  f"Arrow cannot store ({str(e).splitlines()[0]})") from None
    if len({len(a) for a in arrays.values()}) > 1:
        lengths = ", ".join(f"{n}: {len(a)}" for n, a in arrays.items())
        raise EntityRowsError(f"entity rows: columns have different lengths ({lengths})")
    return pa.table(arrays)


def _read_file(path: Path) -> pa.Table:
    import pyarrow as pa

    if not path.is_file():
        raise EntityRowsError(f"entity rows: {path}: no such file")
    try:
        if path.suffix == ".csv":
            import pyarrow.csv as csv

            return csv.read_csv(path)
        import pyarrow.parquet as pq

        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise EntityRowsError(f"entity rows: {path}: cannot read it "
                              f"({str(e).splitlines()[0]})") from None


def time_column(table: pa.Table, given: str | None) -> str:
    """The column holding each row's instant: ``given``; else ``event_ts``, else Feast's
    ``event_timestamp``, else the table's only timestamp column."""
    import pyarrow as pa

    names = table.column_names
    if given is None:
        stamps = [f.name for f in table.schema if pa.types.is_timestamp(f.type)]
        for name in ("event_ts", "event_timestamp"):
            if name in names:
                return name
        if len(stamps) == 1:
            return stamps[0]
        why = (f"several timestamp columns ({', '.join(stamps)})" if stamps
               else "no timestamp column")
        raise EntityRowsError(f"entity rows: {why} and none named event_ts or event_timestamp "
                              f"(columns: {', '.join(names) or 'none'}); pass "
                              f"timestamp_field= to name it")
    if given not in names:
        raise EntityRowsError(f"entity rows: no timestamp column {given!r} (columns: "
                              f"{', '.join(names) or 'none'}); pass timestamp_field= to name it")
    return given


def check(rows: Any, *, timestamp_field: str | None, keys: Mapping[str, tuple[str, str]],
          outputs: Sequence[str] = ()) -> EntityRows:
    """Check entity rows for a read and compute each row's instant.

    Args:
        rows: see :func:`to_table`.
        timestamp_field: the column holding each row's instant (None: :func:`time_column`).
        keys: join key → (entity dtype ``"int64"`` or ``"string"``, what needs it, for errors).
        outputs: the names of the feature columns the read adds (must not exist already).

    Raises:
        EntityRowsError: one line naming the column and what was expected.
    """
    import pyarrow as pa

    table = to_table(rows)
    names = table.column_names
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise EntityRowsError(f"entity rows: column {dupes[0]!r} appears more than once")
    timestamp_field = time_column(table, timestamp_field)
    for key, (dtype, who) in keys.items():
        if key not in names:
            raise EntityRowsError(f"entity rows: {who} needs join key column {key!r} (columns: "
                                  f"{', '.join(names)})")
        _check_key(table.column(key).type, key, dtype, who, table.column(key))
    clash = [o for o in outputs if o in names]
    if clash:
        raise EntityRowsError(f"entity rows: column {clash[0]!r} has the name of a feature the "
                              f"read adds; rename the column, or pass full_feature_names=True")
    times = instants_us(table.column(timestamp_field), timestamp_field)
    return EntityRows(table, pa.array(times, pa.int64()), timestamp_field)


def _check_key(got: pa.DataType, key: str, dtype: str, who: str, column: Any) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_null(got):
        return
    if pa.types.is_dictionary(got):
        got = got.value_type
    if dtype == "int64" and pa.types.is_integer(got):
        if pa.types.is_uint64(got) and (pc.max(column).as_py() or 0) > 2**63 - 1:
            raise EntityRowsError(f"entity rows: join key {key!r} holds values above the int64 "
                                  f"range")
        return
    if dtype == "string" and (pa.types.is_string(got) or pa.types.is_large_string(got)):
        return
    hint = ""
    if dtype == "int64" and pa.types.is_floating(got):
        hint = (" (pandas stores integers with missing values as float64: use the nullable "
                "'Int64' dtype)")
    elif dtype == "int64" and (pa.types.is_string(got) or pa.types.is_large_string(got)):
        hint = " (keys are never parsed from text: '01' and '1' are different strings)"
    want = "an integer" if dtype == "int64" else "a string"
    raise EntityRowsError(f"entity rows: join key {key!r} is {got}, but {who} has {dtype} keys: "
                          f"expected {want} column{hint}")


def instants_us(column: Any, name: str) -> Any:
    """Each value of a timestamp or ISO-string column as µs since the epoch (floored), as an
    int64 numpy array."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.cast(kind.value_type), kind.value_type
    if column.null_count:
        first = pc.index(pc.is_null(column), True).as_py()
        raise EntityRowsError(f"entity rows: {name!r} is null in row {first}; every row needs "
                              f"the instant to read its features at")
    if pa.types.is_timestamp(kind):
        mul, div = _UNIT_TO_US[kind.unit]
        raw = column.cast(pa.int64()).to_numpy()
        return (raw * mul) // div if div > 1 else raw * mul
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return _parse_iso(column, name)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        raise EntityRowsError(f"entity rows: {name!r} holds numbers ({kind}); an epoch number "
                              f"does not say its unit: convert it, e.g. pd.to_datetime(df[{name!r}]"
                              f", unit='s', utc=True) or pl.from_epoch({name!r}, time_unit='ms')")
    if pa.types.is_date(kind):
        raise EntityRowsError(f"entity rows: {name!r} holds dates ({kind}); a date does not say "
                              f"which instant of the day: give a timestamp")
    raise EntityRowsError(f"entity rows: {name!r} is {kind}; expected a timestamp (any unit or "
                          f"time zone) or ISO-8601 strings")


def _parse_iso(column: Any, name: str) -> Any:
    import pandas as pd

    values = column.to_pandas()
    try:
        parsed = pd.to_datetime(values, utc=True, format="ISO8601")
    except (ValueError, TypeError, OverflowError):
        bad = next((v for v in values if not _iso_ok(v)), None)
        raise EntityRowsError(f"entity rows: {name!r} has {bad!r}, which is not an ISO-8601 "
                              f"timestamp (like '2026-01-05T09:00:00Z')") from None
    return parsed.astype("int64").to_numpy() // 1000


def _iso_ok(value: str) -> bool:
    from datetime import datetime

    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
        return True
    except (ValueError, AttributeError):
        return False
