"""Compile the expression IR to a ``pyspark.sql.Column`` (private; use ``features.compile``).

Input frames hold int64 as ``LongType``, float64 as ``DoubleType``, bool, string and timestamp
as ``TimestampType`` with the session time zone UTC; a column read is cast to that type. The
result of every node has exactly the Spark type of its IR dtype.

Spark 4 runs in ANSI mode, where ``1 / 0``, a long overflow or a bad cast raise. Compiled
columns never raise under either setting: integer arithmetic uses ``try_add`` and friends,
division ``try_divide``, casts go through ``try_cast``, and a divisor that could raise is
nulled first.

As in :mod:`features._polars`, compiled trees stay linear in the IR tree: float results become
finite-or-null naming the value once (:meth:`_Ctx.finite`), range checks shift by the headroom
to the long range with ``try_add``, and only floor division, modulo, clip and round, which need
an operand several times, bind their operands with :meth:`_Ctx.let` (a one-element ``transform``
whose lambda reads them) when an operand is neither a column nor a literal.

Float arithmetic is Java's, IEEE 754 (``try_divide`` on doubles divides, no reciprocal), so
correctly rounded ops give Python's bits. Spark's ``floor`` and ``round`` go through a long or a
BigDecimal, which have no -0.0; :meth:`_Ctx.floor` and :func:`_round` keep the sign of a zero
as IEEE does (``floor(-0.0)`` and ``round(-0.4)`` are ``-0.0``).

Two Spark limits shaped this. Catalyst recomputes some properties of ``nanvl``, ``sort_array``
and friends recursively, so planning time doubles with each nesting level; the constructs used
here were measured linear to depth 40. And the analyzer resolves one nested lambda per pass, so
about 25 nested let-bound ops (``//``, ``%``, ``clip``, ``round`` over computed operands) is the
limit under the default ``spark.sql.analyzer.maxIterations`` (100).

PySpark is imported inside the functions: importing this module does not import PySpark.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from functools import singledispatch
from typing import TYPE_CHECKING, Any

from features.errors import UnsupportedOperationError
from features.expr import (
    TIMESTAMP_MAX_US,
    TIMESTAMP_MIN_US,
    Call,
    Col,
    Lit,
    Node,
    Op,
    TypeChecker,
    to_epoch_micros,
)

if TYPE_CHECKING:
    from pyspark.sql import Column

# Java regexes: \z is the very end (Java's $ also matches before a final line break).
INT_PATTERN = r"^[+-]?[0-9]+\z"
FLOAT_PATTERN = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?\z"
_INF = float("inf")
_NAN = float("nan")
_EXACT = 2.0**52  # every double at or beyond this magnitude is an integer

Rule = Callable[["_Ctx", Call, list["Column"]], "Column"]


def spark_type(dtype: str) -> Any:
    """The Spark SQL type of an IR dtype."""
    from pyspark.sql import types as T

    return {"int64": T.LongType(), "float64": T.DoubleType(), "bool": T.BooleanType(),
            "string": T.StringType(), "timestamp": T.TimestampType()}[dtype]


class _Ctx:
    """Compilation state: the type checker and ``pyspark.sql.functions``."""

    def __init__(self, types: TypeChecker) -> None:
        from pyspark.sql import functions

        self.F = functions
        self.types = types

    def dtype(self, node: Node) -> str:
        return self.types(node)

    def long(self, value: int) -> Column:
        return self.F.lit(value).cast("bigint")

    def null(self, dtype: str) -> Column:
        return self.F.lit(None).cast(spark_type(dtype))

    def as_float(self, node: Node, col: Column) -> Column:
        return col if self.dtype(node) == "float64" else col.cast("double")

    def finite(self, col: Column) -> Column:
        """NaN and ±inf become null, naming ``col`` once.

        ``x % inf`` is ``x`` for a finite ``x`` and NaN for ±inf; removing NaN (Spark's NaN
        equals NaN) from a one-element array and reading slot 1 gives null for it. ``nanvl``
        would be shorter but Spark generates code exponential in the nesting depth of nanvl.
        """
        F = self.F
        return F.try_element_at(F.array_remove(F.array(col % F.lit(_INF)), F.lit(_NAN)),
                                F.lit(1))

    def floor(self, col: Column) -> Column:
        """IEEE floor of a finite-or-null double, as a double. Spark's floor returns a long,
        which has no -0.0: zeros (and the integers beyond 2**52) are passed through as is."""
        F = self.F
        return F.when((F.abs(col) < F.lit(_EXACT)) & (col != F.lit(0.0)),
                      F.floor(col).cast("double")).otherwise(col)

    def in_range(self, col: Column, lo: int, hi: int) -> Column:
        """``col`` where ``lo <= col <= hi``, else null, naming ``col`` once: shifting by the
        headroom to the long range overflows (so ``try_add`` gives null) exactly outside it."""
        F, up, down = self.F, self.long(2**63 - 1 - hi), self.long(-(2**63) - lo)
        col = F.try_subtract(F.try_add(col, up), up)
        return F.try_subtract(F.try_add(col, down), down)

    def let(self, node: Call, args: list[Column], body: Callable[..., Column]) -> Column:
        """``body(*args)`` with each argument evaluated once."""
        if all(isinstance(a, (Col, Lit)) for a in node.args):
            return body(*args)
        F = self.F
        names = [f"a{i}" for i in range(len(args))]
        bound = F.array(F.struct(*[c.alias(n) for c, n in zip(args, names, strict=True)]))
        return F.transform(bound, lambda s: body(*[s[n] for n in names]))[0]


def compile_spark(node: Node, types: TypeChecker) -> Column:
    """Compile a type-checked node to a Spark column of its exact type."""
    return _compile(node, _Ctx(types))


@singledispatch
def _compile(node: Node, ctx: _Ctx) -> Column:
    raise UnsupportedOperationError(f"no spark compiler for node {node!r}")


@_compile.register(Col)
def _col(node: Col, ctx: _Ctx) -> Column:
    escaped = node.name.replace("`", "``")
    column = ctx.F.col(f"`{escaped}`").cast(spark_type(ctx.dtype(node)))
    # NaN and ±inf in the data read as null
    return ctx.finite(column) if ctx.dtype(node) == "float64" else column


@_compile.register(Lit)
def _lit(node: Lit, ctx: _Ctx) -> Column:
    F = ctx.F
    if node.value is None:
        return ctx.null(node.dtype)
    if node.dtype == "timestamp":
        return F.timestamp_micros(ctx.long(to_epoch_micros(node.value)))
    if node.dtype == "int64":
        return ctx.long(node.value)
    return F.lit(node.value)


@_compile.register(Call)
def _call(node: Call, ctx: _Ctx) -> Column:
    rule = _RULES.get(node.op)
    if rule is None:
        raise UnsupportedOperationError(f"no spark compiler for operation {node.op.value!r}")
    return rule(ctx, node, [_compile(a, ctx) for a in node.args])


# -- arithmetic ----------------------------------------------------------------------------------

def _arith(try_fn: str, fn: Callable[[Any, Any], Any]) -> Rule:
    """int64: ``try_add`` & co. (null on overflow); float64: IEEE, then finite-or-null."""
    def rule(c: _Ctx, node: Call, args: list[Column]) -> Column:
        if c.dtype(node) == "int64":
            return getattr(c.F, try_fn)(args[0], args[1])
        a, b = (c.as_float(n, e) for n, e in zip(node.args, args, strict=True))
        return c.finite(fn(a, b))
    return rule


def _neg(c: _Ctx, node: Call, args: list[Column]) -> Column:
    if c.dtype(node) == "float64":
        return -args[0]
    return c.F.try_subtract(c.long(0), args[0])


def _div(c: _Ctx, node: Call, args: list[Column]) -> Column:
    a, b = (c.as_float(n, e) for n, e in zip(node.args, args, strict=True))
    return c.finite(c.F.try_divide(a, b))


def _floordiv(c: _Ctx, node: Call, args: list[Column]) -> Column:
    F = c.F
    if c.dtype(node) == "float64":
        a, b = (c.as_float(n, e) for n, e in zip(node.args, args, strict=True))
        return c.let(node, [a, b], lambda a, b: c.floor(c.finite(F.try_divide(a, b))))

    def body(a: Column, b: Column) -> Column:
        # Spark's `div` truncates; step down when the remainder's sign differs from b's.
        # b = 0 (null) and b = -1 (MIN div -1 overflows) never reach `div` or `%`.
        safe = F.when((b != 0) & (b != -1), b)
        quotient = F.call_function("div", a, safe)
        rem = a % safe
        step = F.when((rem != 0) & ((rem < 0) != (b < 0)), c.long(1)).otherwise(c.long(0))
        return F.when(b == -1, F.try_subtract(c.long(0), a)).otherwise(quotient - step)
    return c.let(node, args, body)


def _mod(c: _Ctx, node: Call, args: list[Column]) -> Column:
    F = c.F
    if c.dtype(node) == "float64":
        a, b = (c.as_float(n, e) for n, e in zip(node.args, args, strict=True))
        return c.let(node, [a, b], lambda a, b: c.finite(
            a - b * c.floor(c.finite(F.try_divide(a, b)))))

    def body(a: Column, b: Column) -> Column:
        rem = a % F.when(b != 0, b)  # Java remainder: the sign of a; MIN % -1 is 0
        return F.when((rem != 0) & ((rem < 0) != (b < 0)), rem + b).otherwise(rem)
    return c.let(node, args, body)


# -- comparisons and logic -----------------------------------------------------------------------

def _compare(fn: Callable[[Any, Any], Any]) -> Rule:
    def rule(c: _Ctx, node: Call, args: list[Column]) -> Column:
        if {c.dtype(n) for n in node.args} == {"int64", "float64"}:
            args = [c.as_float(n, e) for n, e in zip(node.args, args, strict=True)]
        return fn(args[0], args[1])
    return rule


def _case(c: _Ctx, node: Call, args: list[Column]) -> Column:
    out = spark_type(c.dtype(node))
    chain: Any = c.F
    for cond, value in zip(args[0::2], args[1::2], strict=False):
        chain = chain.when(cond, value.cast(out))
    return chain.otherwise(args[-1].cast(out) if len(args) % 2 else c.null(c.dtype(node)))


def _coalesce(c: _Ctx, node: Call, args: list[Column]) -> Column:
    out = spark_type(c.dtype(node))
    return c.F.coalesce(*[a.cast(out) for a in args])


# -- casts ---------------------------------------------------------------------------------------

def _cast(c: _Ctx, node: Call, args: list[Column]) -> Column:
    F = c.F
    src, dst, x = c.dtype(node.args[0]), node.option("dtype"), args[0]
    if src == dst:
        return x
    if (src, dst) == ("int64", "bool"):
        return x != 0
    if (src, dst) == ("int64", "timestamp"):
        return F.timestamp_micros(c.in_range(x, TIMESTAMP_MIN_US, TIMESTAMP_MAX_US))
    if (src, dst) == ("timestamp", "int64"):
        return F.unix_micros(x)
    if (src, dst) == ("float64", "int64"):
        # try_cast truncates toward zero but saturates out of range. No double in
        # (-2**63, 2**63) lands on either end of the long range, so the ends mean "outside".
        return c.in_range(x.try_cast("bigint"), -(2**63) + 1, 2**63 - 2)
    if (src, dst) == ("string", "int64"):
        return F.regexp_extract(x, INT_PATTERN, 0).try_cast("bigint")  # no match: "" → null
    if (src, dst) == ("string", "float64"):
        return c.finite(F.regexp_extract(x, FLOAT_PATTERN, 0).try_cast("double"))
    return x.cast(spark_type(dst))  # int→float/string, bool→int/float/string: total


# -- math ----------------------------------------------------------------------------------------

def _abs(c: _Ctx, node: Call, args: list[Column]) -> Column:
    F = c.F
    if c.dtype(node) == "float64":
        return F.abs(args[0])
    # |INT64_MIN| fits decimal(20,0) but not bigint: try_cast makes it null (ANSI abs raises)
    return F.abs(args[0].cast("decimal(20,0)")).try_cast("bigint")


def _float_fn(name: str) -> Rule:
    def rule(c: _Ctx, node: Call, args: list[Column]) -> Column:
        # Spark: ln(x <= 0) and log1p(x <= -1) are null; sqrt(-1) NaN and exp(1e3) inf → null
        return c.finite(getattr(c.F, name)(c.as_float(node.args[0], args[0])))
    return rule


def _clip(c: _Ctx, node: Call, args: list[Column]) -> Column:
    F = c.F
    lo, hi = node.option("lo"), node.option("hi")
    float_out = c.dtype(node) == "float64"
    x = c.as_float(node.args[0], args[0]) if float_out else args[0]

    def bound(b: Any) -> Column:
        return F.lit(float(b)) if float_out else c.long(b)

    def body(v: Column) -> Column:
        # not greatest/least: they skip nulls (greatest(null, 0) is 0)
        out: Any = F
        if lo is not None:
            out = out.when(v < bound(lo), bound(lo))
        if hi is not None:
            out = out.when(v > bound(hi), bound(hi))
        return v if out is F else out.otherwise(v)
    return c.let(node, [x], body)


def _round(c: _Ctx, node: Call, args: list[Column]) -> Column:
    F = c.F
    if c.dtype(node) == "int64":
        return args[0]
    # Spark rounds HALF_UP on the double's shortest decimal string; for an integer target that
    # equals half-away-from-zero on the exact value. Scaling happens in float64 first. Spark's
    # round goes through a BigDecimal, which has no -0.0: |y| < 0.5 rounds to a zero with the
    # sign of y (y * 0.0), as IEEE roundToIntegralTiesToAway does. Division is IEEE in Java.
    scale = F.lit(10.0 ** node.option("decimals"))

    def body(x: Column) -> Column:
        y = x * scale
        return F.when(F.abs(y) < F.lit(0.5), y * F.lit(0.0)).otherwise(F.round(y, 0)) / scale
    return c.finite(c.let(node, [args[0]], body))


# -- strings and timestamps ----------------------------------------------------------------------

def _string(c: _Ctx, node: Call, args: list[Column]) -> Column:
    F, x, op = c.F, args[0], node.op
    if op is Op.STR_LOWER:
        return F.lower(x)
    if op is Op.STR_UPPER:
        return F.upper(x)
    if op is Op.STR_LEN:
        return F.char_length(x).cast("bigint")
    if op is Op.STR_CONTAINS:
        return x.contains(F.lit(node.option("substring")))
    if op is Op.STR_STARTS_WITH:
        return x.startswith(F.lit(node.option("prefix")))
    return x.endswith(F.lit(node.option("suffix")))


def _time(c: _Ctx, node: Call, args: list[Column]) -> Column:
    F, x = c.F, args[0]
    parts = {Op.HOUR: F.hour, Op.MINUTE: F.minute, Op.DAY_OF_MONTH: F.dayofmonth,
             Op.MONTH: F.month, Op.YEAR: F.year}
    if node.op is Op.EPOCH_SECONDS:
        return F.unix_seconds(x)  # floors toward -inf
    if node.op is Op.DAY_OF_WEEK:
        return (F.weekday(x) + 1).cast("bigint")  # weekday: Monday = 0
    return parts[node.op](x).cast("bigint")


_RULES: dict[Op, Rule] = {
    Op.ADD: _arith("try_add", operator.add),
    Op.SUB: _arith("try_subtract", operator.sub),
    Op.MUL: _arith("try_multiply", operator.mul),
    Op.NEG: _neg,
    Op.DIV: _div,
    Op.FLOORDIV: _floordiv,
    Op.MOD: _mod,
    **{op: _compare(fn) for op, fn in {
        Op.EQ: operator.eq, Op.NE: operator.ne, Op.LT: operator.lt, Op.LE: operator.le,
        Op.GT: operator.gt, Op.GE: operator.ge}.items()},
    Op.AND: lambda c, node, args: args[0] & args[1],
    Op.OR: lambda c, node, args: args[0] | args[1],
    Op.NOT: lambda c, node, args: ~args[0],
    Op.CASE: _case,
    Op.COALESCE: _coalesce,
    Op.IS_NULL: lambda c, node, args: args[0].isNull(),
    Op.IS_NOT_NULL: lambda c, node, args: args[0].isNotNull(),
    Op.CAST: _cast,
    Op.ABS: _abs,
    Op.LOG: _float_fn("ln"),
    Op.LOG1P: _float_fn("log1p"),
    Op.SQRT: _float_fn("sqrt"),
    Op.EXP: _float_fn("exp"),
    Op.CLIP: _clip,
    Op.ROUND: _round,
    **{op: _string for op in (Op.STR_LOWER, Op.STR_UPPER, Op.STR_LEN, Op.STR_CONTAINS,
                              Op.STR_STARTS_WITH, Op.STR_ENDS_WITH)},
    **{op: _time for op in (Op.HOUR, Op.MINUTE, Op.DAY_OF_WEEK, Op.DAY_OF_MONTH, Op.MONTH,
                            Op.YEAR, Op.EPOCH_SECONDS)},
}
