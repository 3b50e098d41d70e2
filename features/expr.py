"""The row-expression IR: a transformation rule is a value, not a callable.

A rule is a small typed tree of :class:`Col`, :class:`Lit` and :class:`Call` nodes, built with
a builder API and compiled to every engine by :func:`features.compile.compile_expr`::

    >>> from features.expr import col, when, to_json
    >>> rule = when(col("amount") > 0).then((col("amount") * 100).log1p()).otherwise(0.0)
    >>> rule
    when((col('amount') > 0)).then((col('amount') * 100).log1p()).otherwise(0.0)
    >>> infer_dtype(rule, {"amount": "int64"})
    'float64'

Every operation is row-wise (elementwise): it reads one row and needs no state, so the batch
engines and the streaming path can apply it to any slice of the data. Its meaning is fixed in
``docs/expressions.md``; the compilers and ``tests/reference/expr_eval.py`` implement exactly
that table. The module imports no engine.

This module is the entry point: it holds the builder functions and re-exports the rest, so
``from features.expr import X`` names everything. The parts live in :mod:`features.expr_vocab`
(dtypes, operations, literal checks), :mod:`features.expr_nodes` (the nodes, :func:`lit`,
rendering), :mod:`features.expr_types` (:class:`TypeChecker`, :func:`infer_dtype`) and
:mod:`features.expr_json` (serialisation, :func:`fingerprint`, :func:`walk`, :func:`columns`).
"""

from __future__ import annotations

from features.expr_json import (
    columns,
    fingerprint,
    from_dict,
    from_epoch_micros,
    from_json,
    to_dict,
    to_epoch_micros,
    to_json,
    walk,
)
from features.expr_nodes import Call, Col, IntoExpr, Lit, Node, When, _into, as_node, lit
from features.expr_types import TypeChecker, infer_dtype
from features.expr_vocab import (
    DTYPES,
    INT64_MAX,
    INT64_MIN,
    TIMESTAMP_MAX_US,
    TIMESTAMP_MIN_US,
    DType,
    Op,
)
from features.expr_vocab import MAX_ROUND_DECIMALS as MAX_ROUND_DECIMALS
from features.expr_vocab import UTC as UTC

__all__ = [
    "DTYPES", "INT64_MAX", "INT64_MIN", "TIMESTAMP_MAX_US", "TIMESTAMP_MIN_US", "Call", "Col",
    "DType", "IntoExpr", "Lit", "Node", "Op", "TypeChecker", "When", "abs_", "as_node", "clip", "coalesce",
    "col", "columns", "day_of_month", "day_of_week", "epoch_seconds", "exp", "fingerprint",
    "from_dict", "from_epoch_micros", "from_json", "hour", "infer_dtype", "lit", "log", "log1p", "minute", "month",
    "round_", "sqrt", "to_dict", "to_epoch_micros", "to_json", "walk", "when", "year",
]


# --------------------------------------------------------------------------------------------
# Builder functions
# --------------------------------------------------------------------------------------------

def col(name: str) -> Col:
    """A column reference: ``col("amount") * 100``."""
    return Col(name)


def when(condition: IntoExpr) -> When:
    """Start a conditional: ``when(c1).then(x).when(c2).then(y).otherwise(z)``.

    A null condition counts as false. Without ``otherwise`` the result is null when no
    condition holds.
    """
    return When((), _into(condition))


def coalesce(*values: IntoExpr) -> Call:
    """The first non-null value, left to right."""
    return Call(Op.COALESCE, tuple(_into(v) for v in values))


def abs_(x: IntoExpr) -> Call:
    """Function form of ``x.abs()``."""
    return Call(Op.ABS, (_into(x),))


def log(x: IntoExpr) -> Call:
    """Function form of ``x.log()``."""
    return Call(Op.LOG, (_into(x),))


def log1p(x: IntoExpr) -> Call:
    """Function form of ``x.log1p()``."""
    return Call(Op.LOG1P, (_into(x),))


def sqrt(x: IntoExpr) -> Call:
    """Function form of ``x.sqrt()``."""
    return Call(Op.SQRT, (_into(x),))


def exp(x: IntoExpr) -> Call:
    """Function form of ``x.exp()``."""
    return Call(Op.EXP, (_into(x),))


def hour(x: IntoExpr) -> Call:
    """Function form of ``x.hour()``."""
    return Call(Op.HOUR, (_into(x),))


def minute(x: IntoExpr) -> Call:
    """Function form of ``x.minute()``."""
    return Call(Op.MINUTE, (_into(x),))


def day_of_week(x: IntoExpr) -> Call:
    """Function form of ``x.day_of_week()``."""
    return Call(Op.DAY_OF_WEEK, (_into(x),))


def day_of_month(x: IntoExpr) -> Call:
    """Function form of ``x.day_of_month()``."""
    return Call(Op.DAY_OF_MONTH, (_into(x),))


def month(x: IntoExpr) -> Call:
    """Function form of ``x.month()``."""
    return Call(Op.MONTH, (_into(x),))


def year(x: IntoExpr) -> Call:
    """Function form of ``x.year()``."""
    return Call(Op.YEAR, (_into(x),))


def epoch_seconds(x: IntoExpr) -> Call:
    """Function form of ``x.epoch_seconds()``."""
    return Call(Op.EPOCH_SECONDS, (_into(x),))


def clip(x: IntoExpr, lo: float | None = None, hi: float | None = None) -> Call:
    """Function form of ``x.clip(lo, hi)``."""
    return _into(x).clip(lo, hi)


def round_(x: IntoExpr, decimals: int = 0) -> Call:
    """Function form of ``x.round(decimals)``."""
    return _into(x).round(decimals)
