"""The expression IR's nodes: :class:`Col`, :class:`Lit` and :class:`Call` with their
operator and method builders, the pending :class:`When`, how a Python value becomes a node
(:func:`lit`, :func:`as_node`), and how a node renders (its ``repr`` reads like the builder).

The dtypes and operations are in :mod:`features.expr_vocab`; :meth:`Node.equals` and hashing
use :mod:`features.expr_json`, imported when first called (it imports this module). The module
imports no engine.
"""

from __future__ import annotations

import datetime as _dt
import numbers
from dataclasses import dataclass
from typing import Any, TypeAlias

from features.errors import ExprError
from features.expr_vocab import (
    _ARITY,
    _OPTIONS,
    _SYMBOLS,
    _UNARY_SYMBOLS,
    _VARIADIC,
    DType,
    Op,
    _check_literal,
    _check_option,
    _ts_to_json,
)

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
        from features.expr_json import fingerprint  # lazy: expr_json imports this module

        return int(fingerprint(self)[:16], 16)

    def __bool__(self) -> bool:
        raise ExprError(f"the truth value of {self!r} is unknown until it runs on data; combine "
                        "conditions with & | ~ (not and/or/not) and compare nodes with .equals()")

    def __repr__(self) -> str:
        return _render(self)

    def equals(self, other: object) -> bool:
        """Structural equality: same kinds, ops, options and literal values (``1 != 1.0``)."""
        from features.expr_json import to_json  # lazy: expr_json imports this module

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


# --------------------------------------------------------------------------------------------
# Python values as nodes
# --------------------------------------------------------------------------------------------

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
