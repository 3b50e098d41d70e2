"""A pure-Python evaluator of the expression IR, written from docs/expressions.md alone.

It is the truth the engine compilers are compared with, so it favours being obviously right
over being fast: one small function per operation, Python ints (unbounded, then range-checked),
floats, str, bool, aware UTC datetimes and None.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from features.expr import (
    INT64_MAX,
    INT64_MIN,
    TIMESTAMP_MAX_US,
    TIMESTAMP_MIN_US,
    Call,
    Col,
    IntoExpr,
    Lit,
    Node,
    Op,
    TypeChecker,
    as_node,
    from_epoch_micros,
    to_epoch_micros,
    walk,
)

INT_RE = re.compile(r"[+-]?[0-9]+")
FLOAT_RE = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


#: Ops whose float result IEEE 754 does not pin down: each engine calls its own libm (Rust's,
#: Java's ``StrictMath``/``Math``, the platform's through CPython), and they may differ in the
#: last bit. Every other op is exact (neg, abs, clip, floor, round's trunc, selections) or
#: correctly rounded (+ - * /, sqrt, int -> float, string -> float), so it has one right answer.
LIBM_OPS = frozenset({Op.LOG, Op.LOG1P, Op.EXP})


def uses_libm(node: IntoExpr) -> bool:
    """Whether ``node`` computes a libm function anywhere in its tree."""
    return any(isinstance(n, Call) and n.op in LIBM_OPS for n in walk(node))


def same_bits(a: float, b: float) -> bool:
    """Bit-for-bit float equality: ``-0.0`` is not ``0.0`` (NaN never occurs: it reads as null)."""
    return struct.pack("<d", a) == struct.pack("<d", b)


def same_float(node: IntoExpr, actual: Any, expected: float | None) -> bool:
    """An engine's float64 value of ``node`` against the reference's.

    Bit for bit, unless ``node`` computes log, log1p or exp (:data:`LIBM_OPS`): then within a
    relative 1e-12, the libm differences between Rust, Java and Python allowed there.
    """
    if actual is None or expected is None:
        return actual is None and expected is None
    if not isinstance(actual, float):
        return False
    if uses_libm(node):
        return math.isclose(actual, expected, rel_tol=1e-12, abs_tol=1e-300)
    return same_bits(actual, expected)


def eval_expr(node: IntoExpr, row: Mapping[str, Any],
              schema: Mapping[str, str] | None = None) -> Any:
    """Evaluate ``node`` on one row.

    Args:
        node: the expression.
        row: column name → Python value (None is null).
        schema: column dtypes; by default taken from the Python types of the row's values.
    """
    node = as_node(node)
    if schema is None:
        schema = {k: _dtype_of(v) for k, v in row.items() if v is not None}
    return _Eval(TypeChecker(schema), row).value(node)


def _dtype_of(value: Any) -> str:
    for kind, name in ((bool, "bool"), (int, "int64"), (float, "float64"), (str, "string"),
                       (datetime, "timestamp")):
        if isinstance(value, kind):
            return name
    raise TypeError(f"no dtype for {value!r}")


def int64(value: int) -> int | None:
    """An exact integer result, or null when it does not fit int64."""
    return value if INT64_MIN <= value <= INT64_MAX else None


def finite(value: float) -> float | None:
    """A float result, or null when it is NaN or ±inf."""
    return value if math.isfinite(value) else None


def coerce(value: Any, dtype: str) -> Any:
    """Normalise a value to its dtype (int64 and float64 mix to float64)."""
    if value is None:
        return None
    if dtype == "float64":
        return finite(float(value))  # float columns: NaN/inf read as null
    if dtype == "timestamp" and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def ieee_floor(x: float) -> float:
    """IEEE 754 floor of a finite float: exact, and a zero keeps its sign (``floor(-0.0)`` is
    ``-0.0``; ``math.floor`` returns an int, which has no negative zero)."""
    return math.copysign(float(math.floor(x)), x)


def ieee_trunc(x: float) -> float:
    """IEEE 754 truncation toward zero of a finite float; ``trunc(-0.4)`` is ``-0.0``."""
    return math.copysign(float(math.trunc(x)), x)


def half_away(y: float) -> float:
    """Round half away from zero, exactly (``y - trunc(y)`` is exact in float64); a zero result
    keeps the sign of ``y`` (``-0.4`` → ``-0.0``), like IEEE roundToIntegralTiesToAway."""
    t = ieee_trunc(y)
    frac = y - t
    if frac >= 0.5:
        return t + 1.0
    if frac <= -0.5:
        return t - 1.0
    return t


class _Eval:
    def __init__(self, types: TypeChecker, row: Mapping[str, Any]) -> None:
        self.types = types
        self.row = row

    def value(self, node: Node) -> Any:
        dtype = self.types(node)
        if isinstance(node, Col):
            return coerce(self.row.get(node.name), dtype)
        if isinstance(node, Lit):
            return node.value
        assert isinstance(node, Call)
        if node.op is Op.CASE:  # lazy: only the chosen branch matters
            args = node.args
            for cond, val in zip(args[0::2], args[1::2], strict=False):
                if self.value(cond) is True:
                    return coerce(self.value(val), dtype)
            return coerce(self.value(args[-1]), dtype) if len(args) % 2 else None
        values = [self.value(a) for a in node.args]
        kinds = [self.types(a) for a in node.args]
        if node.op in (Op.IS_NULL, Op.IS_NOT_NULL, Op.COALESCE, Op.AND, Op.OR):
            return coerce(NULL_AWARE[node.op](values), dtype)
        if any(v is None for v in values):
            return None  # every other op is null when an input is null
        return coerce(STRICT[node.op](node, values, kinds, dtype), dtype)


# -- ops that see nulls --------------------------------------------------------------------------

def _and(v: list[Any]) -> bool | None:
    if v[0] is False or v[1] is False:
        return False
    return None if None in v else True


def _or(v: list[Any]) -> bool | None:
    if v[0] is True or v[1] is True:
        return True
    return None if None in v else False


NULL_AWARE: dict[Op, Callable[[list[Any]], Any]] = {
    Op.IS_NULL: lambda v: v[0] is None,
    Op.IS_NOT_NULL: lambda v: v[0] is not None,
    Op.COALESCE: lambda v: next((x for x in v if x is not None), None),
    Op.AND: _and,
    Op.OR: _or,
}


# -- null in, null out ---------------------------------------------------------------------------

def _arith(int_fn: Callable[[int, int], int], float_fn: Callable[[float, float], float]
           ) -> Callable[..., Any]:
    def op(node: Call, v: list[Any], kinds: list[str], dtype: str) -> Any:
        if dtype == "int64":
            return int64(int_fn(v[0], v[1]))
        return finite(float_fn(float(v[0]), float(v[1])))
    return op


def _div(node: Call, v: list[Any], kinds: list[str], dtype: str) -> Any:
    a, b = float(v[0]), float(v[1])
    return None if b == 0 else finite(a / b)


def _float_floordiv(a: float, b: float) -> float | None:
    if b == 0:
        return None
    q = a / b
    return ieee_floor(q) if math.isfinite(q) else None


def _floordiv(node: Call, v: list[Any], kinds: list[str], dtype: str) -> Any:
    if dtype == "int64":
        return None if v[1] == 0 else int64(v[0] // v[1])  # Python floors toward -inf
    return _float_floordiv(float(v[0]), float(v[1]))


def _mod(node: Call, v: list[Any], kinds: list[str], dtype: str) -> Any:
    if dtype == "int64":
        return None if v[1] == 0 else v[0] % v[1]  # Python: the sign of the divisor
    a, b = float(v[0]), float(v[1])
    q = _float_floordiv(a, b)
    return None if q is None else finite(a - b * q)


def _compare(fn: Callable[[Any, Any], bool]) -> Callable[..., Any]:
    def op(node: Call, v: list[Any], kinds: list[str], dtype: str) -> Any:
        a, b = v
        if set(kinds) == {"int64", "float64"}:
            a, b = float(a), float(b)
        return fn(a, b)
    return op


def _cast(node: Call, v: list[Any], kinds: list[str], dtype: str) -> Any:
    x, src, dst = v[0], kinds[0], node.option("dtype")
    if src == dst:
        return x
    if dst == "float64":
        if src == "string":
            return finite(float(x)) if FLOAT_RE.fullmatch(x) else None
        return float(x)
    if dst == "int64":
        if src == "float64":
            return math.trunc(x) if -(2.0**63) < x < 2.0**63 else None
        if src == "string":
            return int64(int(x)) if INT_RE.fullmatch(x) else None
        if src == "timestamp":
            return to_epoch_micros(x)
        return int(x)  # bool
    if dst == "string":
        return ("true" if x else "false") if src == "bool" else str(x)
    if dst == "bool":
        return x != 0
    if dst == "timestamp":
        return from_epoch_micros(x) if TIMESTAMP_MIN_US <= x <= TIMESTAMP_MAX_US else None
    raise AssertionError(f"cast {src} -> {dst} passed the type checker")


def _partial_math(fn: Callable[[float], float], domain: Callable[[float], bool]
                  ) -> Callable[..., Any]:
    def op(node: Call, v: list[Any], kinds: list[str], dtype: str) -> Any:
        x = float(v[0])
        if not domain(x):
            return None
        try:
            return finite(fn(x))
        except OverflowError:
            return None
    return op


def _abs(node: Call, v: list[Any], kinds: list[str], dtype: str) -> Any:
    return int64(abs(v[0])) if dtype == "int64" else abs(v[0])


def _clip(node: Call, v: list[Any], kinds: list[str], dtype: str) -> Any:
    x, lo, hi = v[0], node.option("lo"), node.option("hi")
    if dtype == "float64":  # like the engines: compare as float64
        x = float(x)
    if lo is not None and x < lo:
        x = lo
    if hi is not None and x > hi:
        x = hi
    return x


def _round(node: Call, v: list[Any], kinds: list[str], dtype: str) -> Any:
    x = v[0]
    if dtype == "int64":
        return x
    scale = 10.0 ** node.option("decimals")
    y = x * scale  # float64 steps: scale, round half away from zero, unscale
    return finite(half_away(y) / scale) if math.isfinite(y) else None


def _unary(fn: Callable[[Any], Any]) -> Callable[..., Any]:
    return lambda node, v, kinds, dtype: fn(v[0])


STRICT: dict[Op, Callable[..., Any]] = {
    Op.ADD: _arith(lambda a, b: a + b, lambda a, b: a + b),
    Op.SUB: _arith(lambda a, b: a - b, lambda a, b: a - b),
    Op.MUL: _arith(lambda a, b: a * b, lambda a, b: a * b),
    Op.NEG: lambda node, v, kinds, dtype: int64(-v[0]) if dtype == "int64" else -v[0],
    Op.DIV: _div,
    Op.FLOORDIV: _floordiv,
    Op.MOD: _mod,
    Op.EQ: _compare(lambda a, b: a == b),
    Op.NE: _compare(lambda a, b: a != b),
    Op.LT: _compare(lambda a, b: a < b),
    Op.LE: _compare(lambda a, b: a <= b),
    Op.GT: _compare(lambda a, b: a > b),
    Op.GE: _compare(lambda a, b: a >= b),
    Op.NOT: _unary(lambda x: not x),
    Op.CAST: _cast,
    Op.ABS: _abs,
    Op.LOG: _partial_math(math.log, lambda x: x > 0),
    Op.LOG1P: _partial_math(math.log1p, lambda x: x > -1),
    Op.SQRT: _partial_math(math.sqrt, lambda x: x >= 0),
    Op.EXP: _partial_math(math.exp, lambda x: True),
    Op.CLIP: _clip,
    Op.ROUND: _round,
    Op.STR_LOWER: _unary(str.lower),
    Op.STR_UPPER: _unary(str.upper),
    Op.STR_LEN: _unary(len),
    Op.STR_CONTAINS: lambda node, v, kinds, dtype: node.option("substring") in v[0],
    Op.STR_STARTS_WITH: lambda node, v, kinds, dtype: v[0].startswith(node.option("prefix")),
    Op.STR_ENDS_WITH: lambda node, v, kinds, dtype: v[0].endswith(node.option("suffix")),
    Op.HOUR: _unary(lambda t: t.hour),
    Op.MINUTE: _unary(lambda t: t.minute),
    Op.DAY_OF_WEEK: _unary(lambda t: t.isoweekday()),
    Op.DAY_OF_MONTH: _unary(lambda t: t.day),
    Op.MONTH: _unary(lambda t: t.month),
    Op.YEAR: _unary(lambda t: t.year),
    Op.EPOCH_SECONDS: _unary(lambda t: to_epoch_micros(t) // 1_000_000),
}
