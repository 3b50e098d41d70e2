"""Expectations: data-quality rules on a source's events, as data (like the feature rules).

    from features import expect
    transactions = Source(..., expectations=[
        expect.not_null("user_id", "event_ts"),
        expect.between("amount", min=0, max=50_000, strict_min=True),
        expect.in_set("currency", ["EUR", "USD", "GBP"]),
        expect.unique("transaction_id"),
        expect.row_count(min=1_000),
        expect.fresh(max_age="1d"),
        expect.in_set("channel", ["pos", "online"], mostly=0.99, severity="warn"),
    ])

Each expectation is a frozen value with a canonical dict (registered by ``tessera apply``).
``tessera run`` checks a batch with Great Expectations before it writes anything (see
``validation/gate.py``); ``tessera stream`` checks the **row-level** ones (``not_null``,
``between``, ``in_set``) on every micro-batch. Row-level checks are also expression trees of
:mod:`features.expr` (:meth:`Expectation.row_check`), so the batch engines and the stream drop
exactly the same rows.

Semantics (those of Great Expectations): ``between`` and ``in_set`` pass null values (pair them
with ``not_null``); ``mostly`` is the share of non-null rows that must pass; ``severity="warn"``
reports and lets the batch through. ``fresh`` checks that the newest event of a batch is at most
``max_age`` before the batch's end (a run of ``[start, end)`` days: before ``end``), so a source
that stopped delivering is caught. ``row_count`` bounds the rows of one batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from features import expr as ex
from features.errors import DefinitionError
from features.names import did_you_mean
from features.windows import format_duration, parse_duration

Kind = Literal["not_null", "between", "in_set", "unique", "row_count", "fresh"]
KINDS: tuple[str, ...] = ("not_null", "between", "in_set", "unique", "row_count", "fresh")
ROW_LEVEL: tuple[str, ...] = ("not_null", "between", "in_set")
Severity = Literal["error", "warn"]
Bound = int | float | datetime | None


@dataclass(frozen=True, kw_only=True, slots=True)
class Expectation:
    """One check of a source's events. Build it with the functions of this module."""

    kind: Kind
    column: str | None = None          # None for row_count; fresh: None = the timestamp field
    min: Bound = None
    max: Bound = None
    strict_min: bool = False
    strict_max: bool = False
    values: tuple[Any, ...] | None = None
    max_age_us: int | None = None
    mostly: float = 1.0
    severity: Severity = "error"

    @property
    def row_level(self) -> bool:
        """Decided row by row (the stream can check it on each event)."""
        return self.kind in ROW_LEVEL

    @property
    def name(self) -> str:
        """A short readable name, unique within a source: ``amount between 0 and 50000``."""
        c = self.column
        if self.kind == "not_null":
            text = f"{c} not null"
        elif self.kind == "between":
            text = self._bounded(str(c))
        elif self.kind == "in_set":
            shown = ", ".join(_show(v) for v in (self.values or ())[:6])
            more = ", ..." if len(self.values or ()) > 6 else ""
            text = f"{c} in {{{shown}{more}}}"
        elif self.kind == "unique":
            text = f"{c} unique"
        elif self.kind == "row_count":
            text = self._bounded("rows")
        else:
            text = f"{c or 'event time'} fresh within {format_duration(self.max_age_us or 0)}"
        return text if self.mostly == 1.0 else f"{text} (mostly {self.mostly:g})"

    def _bounded(self, what: str) -> str:
        """``0 < amount <= 50000``: ``what`` between the bounds that are set."""
        lo = "" if self.min is None else f"{_show(self.min)} {'<' if self.strict_min else '<='} "
        hi = "" if self.max is None else f" {'<' if self.strict_max else '<='} {_show(self.max)}"
        return f"{lo}{what}{hi}"

    def to_dict(self) -> dict[str, Any]:
        """The canonical form the registry stores (only what is set)."""
        out: dict[str, Any] = {"kind": self.kind}
        for key in ("column", "min", "max", "values"):
            value = getattr(self, key)
            if value is not None:
                out[key] = ([_json(v) for v in value] if key == "values" else _json(value))
        if self.strict_min:
            out["strict_min"] = True
        if self.strict_max:
            out["strict_max"] = True
        if self.max_age_us is not None:
            out["max_age"] = format_duration(self.max_age_us)
        if self.mostly != 1.0:
            out["mostly"] = self.mostly
        out["severity"] = self.severity
        return out

    def row_check(self) -> ex.Node:
        """An expression true for the rows that pass (row-level kinds only; nulls pass
        ``between`` and ``in_set``, as in Great Expectations)."""
        x = ex.col(self.column or "")
        if self.kind == "not_null":
            return x.is_not_null()
        if self.kind == "between":
            node: ex.Node | None = None
            if self.min is not None:
                node = (x > self.min) if self.strict_min else (x >= self.min)
            if self.max is not None:
                upper = (x < self.max) if self.strict_max else (x <= self.max)
                node = upper if node is None else node & upper
            return x.is_null() | node  # type: ignore[operator]
        if self.kind == "in_set":
            node = x.is_null()
            for v in self.values or ():
                node = node | (x == v)
            return node
        raise DefinitionError(f"expectation {self.name!r} is not row-level: it has no row check")

    def problems(self, source: str, schema: dict[str, str], timestamp_field: str) -> list[str]:
        """What is wrong with this expectation on a source with ``schema`` (empty: valid)."""
        where = f"source {source!r}: expectation {self.kind}"
        out: list[str] = []
        column = self.column
        if self.kind == "fresh":
            column = column or timestamp_field
        if self.kind != "row_count":
            if not column:
                return [f"{where}: needs a column"]
            if column not in schema:
                return [f"{where}: no column {column!r} in the source's schema"
                        f"{did_you_mean(column, schema)}"]
        dtype = schema.get(column or "", "")
        if not (0 < self.mostly <= 1):
            out.append(f"{where} on {column!r}: mostly={self.mostly!r} must be in (0, 1]")
        if self.kind == "between":
            if self.min is None and self.max is None:
                out.append(f"{where} on {column!r}: give min=, max= or both")
            if dtype not in ("int64", "float64", "timestamp"):
                out.append(f"{where} on {column!r}: the column is {dtype}; between needs a "
                           f"number or a timestamp")
            elif any(not _fits(b, dtype) for b in (self.min, self.max) if b is not None):
                out.append(f"{where} on {column!r}: bounds must be {_kind_of(dtype)} for a "
                           f"{dtype} column, got min={self.min!r}, max={self.max!r}")
            elif self.min is not None and self.max is not None and self.min > self.max:  # type: ignore[operator]
                out.append(f"{where} on {column!r}: min {self.min!r} is above max {self.max!r}")
        if self.kind == "in_set":
            if not self.values:
                out.append(f"{where} on {column!r}: the set of values is empty")
            elif dtype == "timestamp" or any(not _fits(v, dtype) for v in self.values):
                bad = next((v for v in self.values if not _fits(v, dtype)), None)
                out.append(f"{where} on {column!r}: value {bad!r} is not {_kind_of(dtype)} "
                           f"(the column is {dtype})")
        if self.kind == "fresh" and dtype != "timestamp":
            out.append(f"{where} on {column!r}: the column is {dtype}; fresh needs a timestamp")
        if self.kind == "row_count":
            for b in (self.min, self.max):
                if b is not None and (not isinstance(b, int) or isinstance(b, bool) or b < 0):
                    out.append(f"{where}: bounds must be whole numbers >= 0, got {b!r}")
            if self.min is None and self.max is None:
                out.append(f"{where}: give min=, max= or both")
            elif (isinstance(self.min, int) and isinstance(self.max, int)
                  and self.min > self.max):
                out.append(f"{where}: min {self.min} is above max {self.max}")
        return out


def _show(v: Any) -> str:
    if isinstance(v, datetime):
        return v.isoformat()
    return repr(v) if isinstance(v, str) else f"{v:g}" if isinstance(v, float) else str(v)


def _json(v: Any) -> Any:
    return v.isoformat() if isinstance(v, datetime) else v


def _kind_of(dtype: str) -> str:
    return {"int64": "whole numbers", "float64": "numbers", "string": "strings",
            "bool": "True or False", "timestamp": "datetimes"}.get(dtype, dtype)


def _fits(v: Any, dtype: str) -> bool:
    if dtype == "int64":
        return isinstance(v, int) and not isinstance(v, bool)
    if dtype == "float64":
        return (isinstance(v, int | float) and not isinstance(v, bool)
                and not (isinstance(v, float) and math.isnan(v)))
    if dtype == "string":
        return isinstance(v, str)
    if dtype == "bool":
        return isinstance(v, bool)
    if dtype == "timestamp":
        return isinstance(v, datetime)
    return False


def _severity(severity: str) -> Severity:
    if severity not in ("error", "warn"):
        raise DefinitionError(f"severity={severity!r}: expected 'error' or 'warn'")
    return severity  # type: ignore[return-value]


def not_null(*columns: str, mostly: float = 1.0, severity: Severity = "error"
             ) -> tuple[Expectation, ...]:
    """Each column has a value in every row (or in ``mostly`` of them)."""
    if not columns:
        raise DefinitionError("expect.not_null(): name at least one column")
    return tuple(Expectation(kind="not_null", column=c, mostly=mostly,
                             severity=_severity(severity)) for c in columns)


def between(column: str, *, min: Bound = None, max: Bound = None,
            strict_min: bool = False, strict_max: bool = False, mostly: float = 1.0,
            severity: Severity = "error") -> Expectation:
    """Values within ``[min, max]`` (``strict_*``: the bound itself fails); nulls pass."""
    return Expectation(kind="between", column=column, min=min, max=max, strict_min=strict_min,
                       strict_max=strict_max, mostly=mostly, severity=_severity(severity))


def in_set(column: str, values: Iterable[Any], *, mostly: float = 1.0,
           severity: Severity = "error") -> Expectation:
    """Values among ``values``; nulls pass."""
    return Expectation(kind="in_set", column=column, values=tuple(values), mostly=mostly,
                       severity=_severity(severity))


def unique(column: str, *, mostly: float = 1.0, severity: Severity = "error") -> Expectation:
    """No value appears twice within one batch."""
    return Expectation(kind="unique", column=column, mostly=mostly, severity=_severity(severity))


def row_count(*, min: int | None = None, max: int | None = None,
              severity: Severity = "error") -> Expectation:
    """A batch holds between ``min`` and ``max`` rows."""
    return Expectation(kind="row_count", min=min, max=max, severity=_severity(severity))


def fresh(*, max_age: str | timedelta, column: str | None = None,
          severity: Severity = "error") -> Expectation:
    """The newest event of a batch is at most ``max_age`` before the batch's end."""
    return Expectation(kind="fresh", column=column, max_age_us=parse_duration(max_age),
                       severity=_severity(severity))


def flatten(items: Iterable[Expectation | Sequence[Expectation]] | None,
            where: str) -> tuple[Expectation, ...]:
    """``expectations=[...]`` as one tuple (``not_null`` gives several); anything else is an
    error naming ``where``."""
    out: list[Expectation] = []
    for item in items or ():
        if isinstance(item, Expectation):
            out.append(item)
        elif isinstance(item, tuple | list) and all(isinstance(i, Expectation) for i in item):
            out.extend(item)
        else:
            raise DefinitionError(f"{where}: expectations must be built with features.expect "
                                  f"(expect.not_null(...), expect.between(...)), got {item!r}")
    return tuple(out)
