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
"""

from __future__ import annotations

import datetime as _dt
import difflib
import enum
import hashlib
import json
import math
import numbers
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias, get_args

from features.errors import ExprError

__all__ = [
    "DTYPES", "INT64_MAX", "INT64_MIN", "TIMESTAMP_MAX_US", "TIMESTAMP_MIN_US", "Call", "Col",
    "DType", "IntoExpr", "Lit", "Node", "Op", "TypeChecker", "When", "abs_", "as_node", "clip", "coalesce",
    "col", "columns", "day_of_month", "day_of_week", "epoch_seconds", "exp", "fingerprint",
    "from_dict", "from_epoch_micros", "from_json", "hour", "infer_dtype", "lit", "log", "log1p", "minute", "month",
    "round_", "sqrt", "to_dict", "to_epoch_micros", "to_json", "walk", "when", "year",
]

DType: TypeAlias = Literal["int64", "float64", "bool", "string", "timestamp"]
DTYPES: tuple[DType, ...] = get_args(DType)
_NUMERIC = frozenset({"int64", "float64"})

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
UTC = _dt.UTC
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=UTC)
#: Timestamps span what every engine (and Python) can represent: 0001-01-01 .. 9999-12-31 UTC.
TIMESTAMP_MIN_US = -62_135_596_800_000_000
TIMESTAMP_MAX_US = 253_402_300_799_999_999


class Op(enum.Enum):
    """The closed set of operations. Each has one meaning on every engine (docs/expressions.md).

    All operations are elementwise. ``CASE`` takes ``(cond1, value1, cond2, value2, ...)`` and,
    when its arity is odd, a final ``otherwise`` value.
    """

    ADD = "add"
    SUB = "sub"
    MUL = "mul"
    NEG = "neg"
    DIV = "div"
    FLOORDIV = "floordiv"
    MOD = "mod"
    EQ = "eq"
    NE = "ne"
    LT = "lt"
    LE = "le"
    GT = "gt"
    GE = "ge"
    AND = "and"
    OR = "or"
    NOT = "not"
    CASE = "case"
    COALESCE = "coalesce"
    IS_NULL = "is_null"
    IS_NOT_NULL = "is_not_null"
    CAST = "cast"
    ABS = "abs"
    LOG = "log"
    LOG1P = "log1p"
    SQRT = "sqrt"
    EXP = "exp"
    CLIP = "clip"
    ROUND = "round"
    STR_LOWER = "str_lower"
    STR_UPPER = "str_upper"
    STR_LEN = "str_len"
    STR_CONTAINS = "str_contains"
    STR_STARTS_WITH = "str_starts_with"
    STR_ENDS_WITH = "str_ends_with"
    HOUR = "hour"
    MINUTE = "minute"
    DAY_OF_WEEK = "day_of_week"
    DAY_OF_MONTH = "day_of_month"
    MONTH = "month"
    YEAR = "year"
    EPOCH_SECONDS = "epoch_seconds"

    @property
    def label(self) -> str:
        """How the operation is written in the builder: ``'+'``, ``'log1p'``, ``'when/then'``."""
        return _SYMBOLS.get(self) or _UNARY_SYMBOLS.get(self) or _LABELS.get(self, self.value)


_SYMBOLS = {Op.ADD: "+", Op.SUB: "-", Op.MUL: "*", Op.DIV: "/", Op.FLOORDIV: "//", Op.MOD: "%",
            Op.EQ: "==", Op.NE: "!=", Op.LT: "<", Op.LE: "<=", Op.GT: ">", Op.GE: ">=",
            Op.AND: "&", Op.OR: "|"}
_UNARY_SYMBOLS = {Op.NEG: "-", Op.NOT: "~"}
_LABELS = {Op.CASE: "when/then"}
_VARIADIC = {Op.CASE: 2, Op.COALESCE: 1}  # minimum arity; every other op has a fixed arity
_ARITY = {op: (2 if op in _SYMBOLS else 1) for op in Op if op not in _VARIADIC}
_OPTIONS: dict[Op, tuple[str, ...]] = {
    Op.CAST: ("dtype",), Op.CLIP: ("hi", "lo"), Op.ROUND: ("decimals",),
    Op.STR_CONTAINS: ("substring",), Op.STR_STARTS_WITH: ("prefix",),
    Op.STR_ENDS_WITH: ("suffix",),
}
MAX_ROUND_DECIMALS = 15


# --------------------------------------------------------------------------------------------
# Nodes
# --------------------------------------------------------------------------------------------

class Node:
    """Base of the three node kinds. Operators and methods build new nodes; nodes never change.

    ``==`` builds an equality node (``col("a") == 1``); use :meth:`equals` for structural
    equality. Hashing uses the fingerprint, so equal trees hash alike.
    """

    __slots__ = ()

    # -- arithmetic ---------------------------------------------------------------------------
    def __add__(self, other: IntoExpr) -> Call: return Call(Op.ADD, (self, _into(other)))
    def __radd__(self, other: IntoExpr) -> Call: return Call(Op.ADD, (_into(other), self))
    def __sub__(self, other: IntoExpr) -> Call: return Call(Op.SUB, (self, _into(other)))
    def __rsub__(self, other: IntoExpr) -> Call: return Call(Op.SUB, (_into(other), self))
    def __mul__(self, other: IntoExpr) -> Call: return Call(Op.MUL, (self, _into(other)))
    def __rmul__(self, other: IntoExpr) -> Call: return Call(Op.MUL, (_into(other), self))
    def __truediv__(self, other: IntoExpr) -> Call: return Call(Op.DIV, (self, _into(other)))
    def __rtruediv__(self, other: IntoExpr) -> Call: return Call(Op.DIV, (_into(other), self))
    def __floordiv__(self, other: IntoExpr) -> Call: return Call(Op.FLOORDIV, (self, _into(other)))
    def __rfloordiv__(self, other: IntoExpr) -> Call: return Call(Op.FLOORDIV, (_into(other), self))
    def __mod__(self, other: IntoExpr) -> Call: return Call(Op.MOD, (self, _into(other)))
    def __rmod__(self, other: IntoExpr) -> Call: return Call(Op.MOD, (_into(other), self))
    def __neg__(self) -> Call: return Call(Op.NEG, (self,))
    def __abs__(self) -> Call: return Call(Op.ABS, (self,))

    # -- comparisons (reflected automatically by Python: ``1 < col`` is ``col > 1``) -----------
    def __eq__(self, other: IntoExpr) -> Call: return Call(Op.EQ, (self, _into(other, "==")))  # type: ignore[override]
    def __ne__(self, other: IntoExpr) -> Call: return Call(Op.NE, (self, _into(other, "!=")))  # type: ignore[override]
    def __lt__(self, other: IntoExpr) -> Call: return Call(Op.LT, (self, _into(other)))
    def __le__(self, other: IntoExpr) -> Call: return Call(Op.LE, (self, _into(other)))
    def __gt__(self, other: IntoExpr) -> Call: return Call(Op.GT, (self, _into(other)))
    def __ge__(self, other: IntoExpr) -> Call: return Call(Op.GE, (self, _into(other)))

    # -- boolean (Kleene) ----------------------------------------------------------------------
    def __and__(self, other: IntoExpr) -> Call: return Call(Op.AND, (self, _into(other)))
    def __rand__(self, other: IntoExpr) -> Call: return Call(Op.AND, (_into(other), self))
    def __or__(self, other: IntoExpr) -> Call: return Call(Op.OR, (self, _into(other)))
    def __ror__(self, other: IntoExpr) -> Call: return Call(Op.OR, (_into(other), self))
    def __invert__(self) -> Call: return Call(Op.NOT, (self,))

    def __hash__(self) -> int:
        return int(fingerprint(self)[:16], 16)

    def __bool__(self) -> bool:
        raise ExprError(f"the truth value of {self!r} is unknown until it runs on data; combine "
                        "conditions with & | ~ (not and/or/not) and compare nodes with .equals()")

    def __repr__(self) -> str:
        return _render(self)

    def equals(self, other: object) -> bool:
        """Structural equality: same kinds, ops, options and literal values (``1 != 1.0``)."""
        return isinstance(other, Node) and to_json(self) == to_json(other)

    # -- null handling -------------------------------------------------------------------------
    def is_null(self) -> Call:
        """True where the value is null (never null itself)."""
        return Call(Op.IS_NULL, (self,))

    def is_not_null(self) -> Call:
        """True where the value is not null (never null itself)."""
        return Call(Op.IS_NOT_NULL, (self,))

    def fill_null(self, value: IntoExpr) -> Call:
        """``coalesce(self, value)``."""
        return Call(Op.COALESCE, (self, _into(value)))

    def cast(self, dtype: DType) -> Call:
        """Convert to ``dtype``; an impossible value becomes null, never an error."""
        return Call(Op.CAST, (self,), (("dtype", dtype),))

    # -- math ----------------------------------------------------------------------------------
    def abs(self) -> Call:
        """Absolute value (``abs(INT64_MIN)`` is null: it does not fit)."""
        return Call(Op.ABS, (self,))

    def log(self) -> Call:
        """Natural logarithm as float64; null for ``x <= 0``."""
        return Call(Op.LOG, (self,))

    def log1p(self) -> Call:
        """``log(1 + x)`` as float64, accurate near 0; null for ``x <= -1``."""
        return Call(Op.LOG1P, (self,))

    def sqrt(self) -> Call:
        """Square root as float64; null for ``x < 0``."""
        return Call(Op.SQRT, (self,))

    def exp(self) -> Call:
        """``e ** x`` as float64; null where it overflows float64."""
        return Call(Op.EXP, (self,))

    def clip(self, lo: float | None = None, hi: float | None = None) -> Call:
        """Limit to ``[lo, hi]``; either bound may be None (unbounded)."""
        return Call(Op.CLIP, (self,), (("hi", hi), ("lo", lo)))

    def round(self, decimals: int = 0) -> Call:
        """Round half away from zero at ``decimals`` places (see docs/expressions.md)."""
        return Call(Op.ROUND, (self,), (("decimals", decimals),))

    # -- strings -------------------------------------------------------------------------------
    def str_lower(self) -> Call:
        """Unicode lower case."""
        return Call(Op.STR_LOWER, (self,))

    def str_upper(self) -> Call:
        """Unicode upper case (``'ß'`` becomes ``'SS'``)."""
        return Call(Op.STR_UPPER, (self,))

    def str_len(self) -> Call:
        """Length in Unicode code points (not bytes)."""
        return Call(Op.STR_LEN, (self,))

    def str_contains(self, substring: str) -> Call:
        """True where the literal ``substring`` occurs (no regex)."""
        return Call(Op.STR_CONTAINS, (self,), (("substring", substring),))

    def str_starts_with(self, prefix: str) -> Call:
        """True where the string starts with the literal ``prefix``."""
        return Call(Op.STR_STARTS_WITH, (self,), (("prefix", prefix),))

    def str_ends_with(self, suffix: str) -> Call:
        """True where the string ends with the literal ``suffix``."""
        return Call(Op.STR_ENDS_WITH, (self,), (("suffix", suffix),))

    # -- timestamps (UTC) ----------------------------------------------------------------------
    def hour(self) -> Call:
        """Hour of the day, 0..23 (UTC)."""
        return Call(Op.HOUR, (self,))

    def minute(self) -> Call:
        """Minute of the hour, 0..59."""
        return Call(Op.MINUTE, (self,))

    def day_of_week(self) -> Call:
        """ISO day of the week: Monday = 1 … Sunday = 7."""
        return Call(Op.DAY_OF_WEEK, (self,))

    def day_of_month(self) -> Call:
        """Day of the month, 1..31."""
        return Call(Op.DAY_OF_MONTH, (self,))

    def month(self) -> Call:
        """Month, 1..12."""
        return Call(Op.MONTH, (self,))

    def year(self) -> Call:
        """Year (proleptic Gregorian)."""
        return Call(Op.YEAR, (self,))

    def epoch_seconds(self) -> Call:
        """Whole seconds since 1970-01-01T00:00:00Z, floored (int64)."""
        return Call(Op.EPOCH_SECONDS, (self,))


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Col(Node):
    """A reference to an input column by name."""

    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ExprError(f"a column name must be a non-empty string, got {self.name!r}")


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Lit(Node):
    """A constant of a given dtype; ``value=None`` is a typed null.

    Values are normalised: float64 holds a finite ``float``, timestamp an aware UTC
    ``datetime`` (a naive one is read as UTC; an ISO string is parsed).
    """

    value: Any
    dtype: DType

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", _check_literal(self.value, self.dtype))


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Call(Node):
    """An operation applied to argument nodes, with literal options (sorted by key)."""

    op: Op
    args: tuple[Node, ...]
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.op, Op):
            raise ExprError(f"unknown operation {self.op!r}")
        args = tuple(self.args)
        if not all(isinstance(a, Node) for a in args):
            raise ExprError(f"arguments of {self.op.label!r} must be nodes, got {args!r}")
        lo = _VARIADIC.get(self.op)
        if (lo is None and len(args) != _ARITY[self.op]) or (lo is not None and len(args) < lo):
            want = f"at least {lo}" if lo is not None else str(_ARITY[self.op])
            raise ExprError(f"{self.op.label!r} takes {want} argument(s), got {len(args)}")
        options = tuple(sorted((str(k), v) for k, v in self.options))
        expected = _OPTIONS.get(self.op, ())
        if tuple(k for k, _ in options) != expected:
            raise ExprError(f"{self.op.label!r} takes options {list(expected)}, "
                            f"got {[k for k, _ in options]}")
        for key, value in options:
            _check_option(self.op, key, value)
        if self.op is Op.CLIP:
            lo_, hi_ = dict(options)["lo"], dict(options)["hi"]
            if lo_ is not None and hi_ is not None and lo_ > hi_:
                raise ExprError(f"clip: lower bound {lo_!r} is above upper bound {hi_!r}")
        object.__setattr__(self, "args", args)
        object.__setattr__(self, "options", options)

    def option(self, key: str) -> Any:
        """The value of option ``key`` (KeyError if the op has no such option)."""
        return dict(self.options)[key]

    def __bool__(self) -> bool:
        # Lets nodes live in sets, dicts and ``in`` tests even though ``==`` builds a node.
        if self.op in (Op.EQ, Op.NE) and len(self.args) == 2:
            same = self.args[0].equals(self.args[1])
            return same if self.op is Op.EQ else not same
        return Node.__bool__(self)

    def when(self, condition: IntoExpr) -> When:
        """Add a branch to ``when(...).then(...)``."""
        if self.op is not Op.CASE or len(self.args) % 2:
            raise ExprError(f".when() must follow when(...).then(...), not {self!r}")
        return When(self.args, _into(condition))

    def otherwise(self, value: IntoExpr) -> Call:
        """Close ``when(...).then(...)`` with the value used when no condition is true."""
        if self.op is not Op.CASE or len(self.args) % 2:
            raise ExprError(f".otherwise() must follow when(...).then(...), not {self!r}")
        return Call(Op.CASE, (*self.args, _into(value)))


class When:
    """A pending ``when(condition)``, waiting for ``.then(value)``. Not a node."""

    __slots__ = ("_branches", "_condition")

    def __init__(self, branches: tuple[Node, ...], condition: Node) -> None:
        self._branches = branches
        self._condition = condition

    def then(self, value: IntoExpr) -> Call:
        """The value where the condition is true; returns a node (null when no branch holds)."""
        return Call(Op.CASE, (*self._branches, self._condition, _into(value)))


IntoExpr: TypeAlias = "Node | int | float | bool | str | _dt.datetime"


def _check_literal(value: Any, dtype: str) -> Any:
    if dtype not in DTYPES:
        raise ExprError(f"unknown dtype {dtype!r} (expected one of {', '.join(DTYPES)})")
    if value is None:
        return None
    bad = ExprError(f"lit({value!r}, {dtype!r}): a {type(value).__name__} is not a {dtype} value")
    if dtype == "bool":
        if not isinstance(value, bool):
            raise bad
        return value
    if dtype == "int64":
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise bad
        if not INT64_MIN <= int(value) <= INT64_MAX:
            raise ExprError(f"lit({value!r}): outside the int64 range")
        return int(value)
    if dtype == "float64":
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise bad
        if not math.isfinite(float(value)):
            raise ExprError(f"lit({value!r}): float literals must be finite; use "
                            "lit(None, 'float64') for a missing value")
        return float(value)
    if dtype == "string":
        if not isinstance(value, str):
            raise bad
        return value
    if isinstance(value, str):
        try:
            value = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ExprError(f"lit({value!r}, 'timestamp'): not an ISO-8601 timestamp") from None
    if not isinstance(value, _dt.datetime):
        raise bad
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _check_option(op: Op, key: str, value: Any) -> None:
    if key == "dtype":
        ok = value in DTYPES
    elif key in ("lo", "hi"):
        ok = value is None or (isinstance(value, float) and math.isfinite(value)) or (
            isinstance(value, int) and not isinstance(value, bool)
            and INT64_MIN <= value <= INT64_MAX)
    elif key == "decimals":
        ok = (isinstance(value, int) and not isinstance(value, bool)
              and 0 <= value <= MAX_ROUND_DECIMALS)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ExprError(f"{op.label!r}: invalid option {key}={value!r}"
                        + (f" (expected an int in 0..{MAX_ROUND_DECIMALS})" if key == "decimals"
                           else f" (expected one of {', '.join(DTYPES)})" if key == "dtype"
                           else ""))


def as_node(value: IntoExpr) -> Node:
    """``value`` as a node: nodes pass through, Python values become literals (see :func:`lit`)."""
    return _into(value)


def _into(value: Any, op: str | None = None) -> Node:
    """Wrap a Python value as a literal node (nodes pass through)."""
    if isinstance(value, Node):
        return value
    if value is None:
        hint = " (use .is_null() to test for null)" if op in ("==", "!=") else ""
        raise ExprError(f"None has no dtype: write lit(None, 'int64') (or another dtype){hint}")
    return lit(value)


# --------------------------------------------------------------------------------------------
# Builder functions
# --------------------------------------------------------------------------------------------

def col(name: str) -> Col:
    """A column reference: ``col("amount") * 100``."""
    return Col(name)


def lit(value: Any, dtype: DType | None = None) -> Lit:
    """A literal. Without ``dtype``: int → int64, float → float64, bool → bool, str → string,
    datetime → timestamp (naive read as UTC). ``lit(None, dtype)`` is a typed null."""
    if isinstance(value, Node):
        raise ExprError(f"lit() takes a Python value, got the node {value!r}")
    if dtype is not None:
        return Lit(value, dtype)
    if isinstance(value, bool):
        return Lit(value, "bool")
    if isinstance(value, numbers.Integral):
        return Lit(int(value), "int64")
    if isinstance(value, numbers.Real):
        return Lit(float(value), "float64")
    if isinstance(value, str):
        return Lit(value, "string")
    if isinstance(value, _dt.datetime):
        return Lit(value, "timestamp")
    if value is None:
        raise ExprError("lit(None) needs a dtype: lit(None, 'int64')")
    raise ExprError(f"cannot use {value!r} ({type(value).__name__}) in an expression; expected "
                    "a node such as col('x'), or an int, float, bool, str or datetime")


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


# --------------------------------------------------------------------------------------------
# Typing
# --------------------------------------------------------------------------------------------

_CASTS: dict[str, frozenset[str]] = {
    "int64": frozenset({"int64", "float64", "string", "bool", "timestamp"}),
    "float64": frozenset({"float64", "int64"}),
    "bool": frozenset({"bool", "int64", "float64", "string"}),
    "string": frozenset({"string", "int64", "float64"}),
    "timestamp": frozenset({"timestamp", "int64"}),
}
_CAST_HINTS = {
    ("float64", "string"): "engines format floats differently; round() and cast to int64, "
                           "or keep the number",
    ("string", "timestamp"): "parse timestamps when reading the source",
    ("timestamp", "string"): "use year(), month(), ... or epoch_seconds()",
}
_MATH_FLOAT = {Op.LOG, Op.LOG1P, Op.SQRT, Op.EXP}
_STRING_OPS = {Op.STR_LOWER: "string", Op.STR_UPPER: "string", Op.STR_LEN: "int64",
               Op.STR_CONTAINS: "bool", Op.STR_STARTS_WITH: "bool", Op.STR_ENDS_WITH: "bool"}
_TIME_OPS = {Op.HOUR, Op.MINUTE, Op.DAY_OF_WEEK, Op.DAY_OF_MONTH, Op.MONTH, Op.YEAR,
             Op.EPOCH_SECONDS}


class TypeChecker:
    """Infers and checks dtypes against a schema, memoising per node.

    Args:
        schema: column name → dtype name (one of :data:`DTYPES`).

    Raises:
        ExprError: when a schema dtype is unknown (at construction) or a node is ill-typed
            (when called), with one line naming the column or operation.
    """

    def __init__(self, schema: Mapping[str, str]) -> None:
        for name, dtype in schema.items():
            if dtype not in DTYPES:
                raise ExprError(f"column {name!r} has unsupported dtype {dtype!r} "
                                f"(expected one of {', '.join(DTYPES)})")
        self.schema: dict[str, DType] = dict(schema)  # type: ignore[arg-type]
        self._memo: dict[int, tuple[Node, DType]] = {}

    def __call__(self, node: Node) -> DType:
        hit = self._memo.get(id(node))
        if hit is not None and hit[0] is node:
            return hit[1]
        dtype = self._infer(node)
        self._memo[id(node)] = (node, dtype)  # keeping the node alive keeps its id unique
        return dtype

    def _infer(self, node: Node) -> DType:
        if isinstance(node, Col):
            if node.name not in self.schema:
                raise ExprError(_unknown_column(node.name, list(self.schema)))
            return self.schema[node.name]
        if isinstance(node, Lit):
            return node.dtype
        if not isinstance(node, Call):
            raise ExprError(f"not an expression node: {node!r}")
        return self._infer_call(node, [self(a) for a in node.args])

    def _infer_call(self, node: Call, types: list[DType]) -> DType:
        op = node.op

        def fail(expected: str) -> ExprError:
            got = " and ".join(_describe(a, t) for a, t in zip(node.args, types, strict=True))
            return ExprError(f"{op.label!r} expects {expected}, got {got}: {_short(node)}")

        if op in (Op.ADD, Op.SUB, Op.MUL, Op.FLOORDIV, Op.MOD, Op.DIV):
            if not set(types) <= _NUMERIC:
                raise fail("numeric operands")
            return "float64" if op is Op.DIV or "float64" in types else "int64"
        if op in (Op.NEG, Op.ABS, Op.ROUND) or op in _MATH_FLOAT:
            if types[0] not in _NUMERIC:
                raise fail("a numeric operand")
            return "float64" if op in _MATH_FLOAT else types[0]
        if op is Op.CLIP:
            if types[0] not in _NUMERIC:
                raise fail("a numeric operand")
            bounds = [v for _, v in node.options if v is not None]
            return "int64" if types[0] == "int64" and all(isinstance(b, int) for b in bounds) \
                else "float64"
        if op in (Op.EQ, Op.NE, Op.LT, Op.LE, Op.GT, Op.GE):
            a, b = types
            same = a == b and (a in ("string", "timestamp") or (a == "bool" and op in (Op.EQ, Op.NE)))
            if not (same or {a, b} <= _NUMERIC):
                what = "two numbers, two strings, two timestamps" + (
                    " or two bools" if op in (Op.EQ, Op.NE) else "")
                raise fail(what)
            return "bool"
        if op in (Op.AND, Op.OR, Op.NOT):
            if any(t != "bool" for t in types):
                raise fail("bool operands")
            return "bool"
        if op in (Op.IS_NULL, Op.IS_NOT_NULL):
            return "bool"
        if op is Op.COALESCE:
            return _unify(node, node.args, types)
        if op is Op.CASE:
            n_pairs, has_else = divmod(len(node.args), 2)
            for cond, t in zip(node.args[0:2 * n_pairs:2], types[0:2 * n_pairs:2], strict=True):
                if t != "bool":
                    raise ExprError(f"'when' expects a bool condition, got {_describe(cond, t)}: "
                                    f"{_short(node)}")
            picks = [2 * k + 1 for k in range(n_pairs)] + ([len(node.args) - 1] if has_else else [])
            return _unify(node, [node.args[i] for i in picks], [types[i] for i in picks])
        if op is Op.CAST:
            src, dst = types[0], node.option("dtype")
            if dst not in _CASTS[src]:
                hint = _CAST_HINTS.get((src, dst), f"allowed from {src}: "
                                       + ", ".join(sorted(_CASTS[src])))
                raise ExprError(f"cannot cast {_describe(node.args[0], src)} to {dst} ({hint}): "
                                f"{_short(node)}")
            return dst
        if op in _STRING_OPS:
            if types[0] != "string":
                raise fail("a string operand")
            return _STRING_OPS[op]  # type: ignore[return-value]
        if op in _TIME_OPS:
            if types[0] != "timestamp":
                raise fail("a timestamp operand")
            return "int64"
        raise ExprError(f"no typing rule for {op.label!r}")  # unreachable: Op is closed


def _unify(node: Call, args: Any, types: list[DType]) -> DType:
    distinct = set(types)
    if len(distinct) == 1:
        return types[0]
    if distinct <= _NUMERIC:
        return "float64"
    got = " and ".join(_describe(a, t) for a, t in zip(args, types, strict=True))
    raise ExprError(f"{node.op.label!r} values must share one type (int64 and float64 mix to "
                    f"float64), got {got}: {_short(node)}")


def _describe(node: Node, dtype: str) -> str:
    if isinstance(node, Col):
        return f"{dtype} ({node.name!r})"
    if isinstance(node, Lit):
        return dtype
    return f"{dtype} ({_short(node)})"


def _short(node: Node, limit: int = 120) -> str:
    text = _render(node)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unknown_column(name: str, available: list[str]) -> str:
    shown = ", ".join(available[:12]) + (", ..." if len(available) > 12 else "")
    close = difflib.get_close_matches(name, available, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown column {name!r} (available: {shown or 'none'}{hint})"


def infer_dtype(node: IntoExpr, schema: Mapping[str, str]) -> DType:
    """The dtype of ``node`` over ``schema``.

    Raises:
        ExprError: one line naming the column or operation at fault, e.g.
            ``unknown column 'amout' (available: amount, user_id; did you mean 'amount'?)``.
    """
    return TypeChecker(schema)(_into(node))


# --------------------------------------------------------------------------------------------
# Serialisation, fingerprint, traversal
# --------------------------------------------------------------------------------------------

def _ts_to_json(v: _dt.datetime) -> str:
    return (f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}"
            f".{v.microsecond:06d}Z")


def to_dict(node: IntoExpr) -> dict[str, Any]:
    """The JSON-ready dict of a node, for embedding in larger documents.

    Shapes: ``{"col": name}``, ``{"lit": value, "dtype": dtype}`` (timestamps as
    ``"YYYY-MM-DDTHH:MM:SS.ffffffZ"``), ``{"op": name, "args": [...], "options": {...}}``
    (``options`` only when the op has some).
    """
    node = _into(node)
    if isinstance(node, Col):
        return {"col": node.name}
    if isinstance(node, Lit):
        value = node.value
        if node.dtype == "timestamp" and value is not None:
            value = _ts_to_json(value)
        return {"lit": value, "dtype": node.dtype}
    if isinstance(node, Call):
        out: dict[str, Any] = {"op": node.op.value, "args": [to_dict(a) for a in node.args]}
        if node.options:
            out["options"] = dict(node.options)
        return out
    raise ExprError(f"not an expression node: {node!r}")


def from_dict(data: Mapping[str, Any]) -> Node:
    """Rebuild a node from :func:`to_dict` output, validating every field.

    Raises:
        ExprError: on an unknown op, an unexpected key, or an invalid literal or option.
    """
    if not isinstance(data, Mapping):
        raise ExprError(f"an expression must be a JSON object, got {data!r}")
    keys = set(data)
    if keys == {"col"}:
        return Col(data["col"])
    if keys == {"lit", "dtype"}:
        if data["dtype"] == "int64" and isinstance(data["lit"], float):
            raise ExprError(f"int64 literal written as a float: {data['lit']!r}")
        return Lit(data["lit"], data["dtype"])
    if keys in ({"op", "args"}, {"op", "args", "options"}):
        try:
            op = Op(data["op"])
        except ValueError:
            raise ExprError(f"unknown operation {data['op']!r} (known: "
                            f"{', '.join(sorted(o.value for o in Op))})") from None
        if not isinstance(data["args"], list):
            raise ExprError(f"'args' of {op.value!r} must be a list, got {data['args']!r}")
        options = data.get("options", {})
        if not isinstance(options, Mapping):
            raise ExprError(f"'options' of {op.value!r} must be an object, got {options!r}")
        return Call(op, tuple(from_dict(a) for a in data["args"]), tuple(options.items()))
    raise ExprError(f"not an expression node (unexpected keys {sorted(keys)}): {dict(data)!r}")


def to_json(node: IntoExpr) -> str:
    """Canonical JSON: sorted keys, no whitespace, ASCII, floats that round-trip exactly."""
    return json.dumps(to_dict(node), sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)


def from_json(text: str) -> Node:
    """Parse :func:`to_json` output (any key order or whitespace is accepted)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExprError(f"expression JSON is malformed: {exc}") from None
    return from_dict(data)


def fingerprint(node: IntoExpr) -> str:
    """SHA-256 hex digest of the canonical JSON: the rule's identity in stores and manifests."""
    return hashlib.sha256(to_json(node).encode("ascii")).hexdigest()


def to_epoch_micros(value: _dt.datetime) -> int:
    """Microseconds since 1970-01-01T00:00:00Z of a datetime (naive read as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_epoch_micros(micros: int) -> _dt.datetime:
    """The aware UTC datetime ``micros`` microseconds after the Unix epoch."""
    return _EPOCH + _dt.timedelta(microseconds=micros)


def walk(node: IntoExpr) -> Iterator[Node]:
    """Every node of the tree, parents before children."""
    stack = [_into(node)]
    while stack:
        current = stack.pop()
        yield current
        if isinstance(current, Call):
            stack.extend(reversed(current.args))


def columns(node: IntoExpr) -> frozenset[str]:
    """Names of the columns the expression reads."""
    return frozenset(n.name for n in walk(node) if isinstance(n, Col))


# --------------------------------------------------------------------------------------------
# Rendering (reads like the builder)
# --------------------------------------------------------------------------------------------

def _render_lit(node: Lit, bare: bool) -> str:
    if node.value is None:
        return f"lit(None, {node.dtype!r})"
    if node.dtype == "timestamp":
        return f"lit({_ts_to_json(node.value)!r}, 'timestamp')"
    return repr(node.value) if bare else f"lit({node.value!r})"


def _render(node: Node, operand: bool = False) -> str:
    if isinstance(node, Col):
        return f"col({node.name!r})"
    if isinstance(node, Lit):
        return _render_lit(node, operand)
    if not isinstance(node, Call):
        return object.__repr__(node)
    op, args = node.op, node.args
    if op in _SYMBOLS:
        return f"({_render(args[0], True)} {_SYMBOLS[op]} {_render(args[1], True)})"
    if op in _UNARY_SYMBOLS:
        return f"({_UNARY_SYMBOLS[op]}{_render(args[0])})"
    if op is Op.COALESCE:
        return "coalesce(" + ", ".join(_render(a, True) for a in args) + ")"
    if op is Op.CASE:
        parts = [f"when({_render(c, True)}).then({_render(v, True)})"
                 for c, v in zip(args[0::2], args[1::2], strict=False)]
        text = ".".join(parts)
        return text + (f".otherwise({_render(args[-1], True)})" if len(args) % 2 else "")
    opts = dict(node.options)
    params = {Op.CLIP: lambda: f"{opts['lo']!r}, {opts['hi']!r}"}.get(op, lambda: ", ".join(
        repr(v) for _, v in node.options))()
    return f"{_render(args[0])}.{op.value}({params})"
