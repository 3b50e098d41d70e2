"""Compile the expression IR to a ``polars.Expr`` (private; use ``features.compile``).

Input frames hold int64 as ``Int64``, float64 as ``Float64``, bool as ``Boolean``, string as
``String`` and timestamp as ``Datetime("us", "UTC")``; a column read is cast to that dtype. The
result of every node has exactly the engine dtype of its IR dtype.

Two rules keep compiled trees linear in the size of the IR tree (a guard that names its operand
twice doubles the tree at every level, and Polars plans it exponentially):

- float results are made finite-or-null with ``replace`` (one reference);
- an op that needs an operand more than once binds its operands first with :meth:`_Ctx.let`,
  a ``struct`` whose fields the body reads with ``pl.field``, unless every operand is a column
  or a literal (cheap to repeat).

Float ``/`` (and so ``//``, ``%`` and ``round``), ``+`` and ``-`` always bind their operands
(:meth:`_Ctx.elementwise`): against a broadcast scalar Polars uses kernels that are not IEEE
operations (``x / c`` is computed as ``x * (1 / c)``), and these ops must give the same bits
as Spark and Python.

Polars is imported inside the functions: importing this module does not import Polars.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from functools import singledispatch
from typing import TYPE_CHECKING, Any

from features.errors import UnsupportedOperationError
from features.expr import (
    INT64_MIN,
    TIMESTAMP_MAX_US,
    TIMESTAMP_MIN_US,
    Call,
    Col,
    Lit,
    Node,
    Op,
    TypeChecker,
    columns,
    to_epoch_micros,
)

if TYPE_CHECKING:
    import polars as pl

INT_PATTERN = r"^[+-]?[0-9]+$"
FLOAT_PATTERN = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_INF = float("inf")

Rule = Callable[["_Ctx", Call, list["pl.Expr"]], "pl.Expr"]


def polars_dtype(dtype: str) -> Any:
    """The Polars dtype of an IR dtype."""
    import polars as pl

    return {"int64": pl.Int64, "float64": pl.Float64, "bool": pl.Boolean, "string": pl.String,
            "timestamp": pl.Datetime("us", "UTC")}[dtype]


class _Ctx:
    """Compilation state: the type checker and the Polars module."""

    def __init__(self, types: TypeChecker) -> None:
        import polars

        self.pl = polars
        self.types = types

    def dtype(self, node: Node) -> str:
        return self.types(node)

    def as_float(self, node: Node, expr: pl.Expr) -> pl.Expr:
        return expr if self.dtype(node) == "float64" else expr.cast(self.pl.Float64)

    def finite(self, expr: pl.Expr) -> pl.Expr:
        """NaN and ±inf become null."""
        return expr.replace([float("nan"), _INF, -_INF], None)

    def bind(self, node: Call, args: list[pl.Expr], body: Callable[..., pl.Expr]) -> pl.Expr:
        """``body(*args)`` over a struct holding ``args``: each is evaluated once, and the body
        reads them with ``pl.field`` as full-length columns.

        ``node`` is the IR node being compiled, whose arguments ``args`` are computed from. When
        none of them reads a column every field would be a scalar, and Polars' streaming engine
        then gives ``struct.with_fields`` a wrong length (2 rows, or "zip node received
        non-equal length inputs"): a row index field keeps the struct at frame length.
        """
        pl = self.pl
        names = [f"a{i}" for i in range(len(args))]
        fields = [e.alias(n) for e, n in zip(args, names, strict=True)]
        if not any(columns(a) for a in node.args):
            fields.append(pl.int_range(pl.len()).alias("row"))
        result = body(*[pl.field(n) for n in names]).alias("result")
        return pl.struct(fields).struct.with_fields(result).struct.field("result")

    def let(self, node: Call, args: list[pl.Expr], body: Callable[..., pl.Expr]) -> pl.Expr:
        """``body(*args)`` with each argument evaluated once (:meth:`bind`), unless every
        argument is a column or a literal, cheap to repeat."""
        if all(isinstance(a, (Col, Lit)) for a in node.args):
            return body(*args)
        return self.bind(node, args, body)

    def elementwise(self, node: Call, fn: Callable[..., pl.Expr], *args: pl.Expr) -> pl.Expr:
        """``fn(*args)`` computed row by row as IEEE 754 prescribes, whatever the operands are.

        When an operand is a broadcast scalar (a literal, an expression of literals, a constant
        ``when/then``, ``pl.repeat``, a column made by ``with_columns(x=pl.lit(...))``; in
        ``select``, ``with_columns`` and ``group_by().agg()`` alike) Polars runs scalar kernels
        that are not IEEE operations: ``x / c`` is computed as ``x * (1 / c)``, one ulp off for
        about 9% of values when ``c = 60.0``; ``x + 0.0`` and ``x - (-0.0)`` return ``x``
        unchanged and ``0.0 - x`` returns ``-x``, so ``-0.0 + 0.0`` gives ``-0.0``. The fields
        of a struct are always materialised at full length, so ``fn`` over the fields runs the
        elementwise kernels, correctly rounded: the bits Spark (Java) and Python compute. This
        is why even column and literal operands are bound here, unlike :meth:`let`.
        """
        return self.bind(node, list(args), fn)

    def true_div(self, node: Call, a: pl.Expr, b: pl.Expr) -> pl.Expr:
        """``a / b`` in float64, correctly rounded even when ``b`` is a literal
        (:meth:`elementwise`); ``x / 0`` is ±inf or NaN, for :meth:`finite` to null."""
        return self.elementwise(node, operator.truediv, a, b)


def compile_polars(node: Node, types: TypeChecker) -> pl.Expr:
    """Compile a type-checked node to a Polars expression of its exact dtype."""
    return _compile(node, _Ctx(types))


@singledispatch
def _compile(node: Node, ctx: _Ctx) -> pl.Expr:
    raise UnsupportedOperationError(f"no polars compiler for node {node!r}")


@_compile.register(Col)
def _col(node: Col, ctx: _Ctx) -> pl.Expr:
    pl = ctx.pl
    expr = pl.col(node.name).cast(polars_dtype(ctx.dtype(node)))
    if ctx.dtype(node) == "float64":  # NaN and ±inf in the data read as null
        expr = pl.when(expr.is_finite()).then(expr)
    return expr


@_compile.register(Lit)
def _lit(node: Lit, ctx: _Ctx) -> pl.Expr:
    pl = ctx.pl
    dtype = polars_dtype(node.dtype)
    if node.value is None:
        return pl.lit(None, dtype=dtype)
    if node.dtype == "timestamp":
        return pl.lit(to_epoch_micros(node.value), dtype=pl.Int64).cast(dtype)
    return pl.lit(node.value, dtype=dtype)


@_compile.register(Call)
def _call(node: Call, ctx: _Ctx) -> pl.Expr:
    rule = _RULES.get(node.op)
    if rule is None:
        raise UnsupportedOperationError(f"no polars compiler for operation {node.op.value!r}")
    return rule(ctx, node, [_compile(a, ctx) for a in node.args])


# -- arithmetic --------------------------------------------------------------------------------

def _nonzero_lit(node: Node) -> bool:
    return isinstance(node, Lit) and node.value is not None and node.value != 0


def _int_arith(fn: Callable[[Any, Any], Any]) -> Rule:
    """Exact int64 arithmetic in Int128; a result outside int64 is null. Float ``+`` and ``-``
    are elementwise unless an operand is a non-zero literal: Polars' scalar kernels skip adding
    a zero (:meth:`_Ctx.elementwise`) but are IEEE otherwise; ``*`` by a scalar is always IEEE."""
    def rule(c: _Ctx, node: Call, args: list[pl.Expr]) -> pl.Expr:
        pl = c.pl
        if c.dtype(node) == "float64":
            a, b = (c.as_float(n, e) for n, e in zip(node.args, args, strict=True))
            if fn is operator.mul or any(_nonzero_lit(n) for n in node.args):
                return c.finite(fn(a, b))
            return c.finite(c.elementwise(node, fn, a, b))
        a, b = (e.cast(pl.Int128) for e in args)
        return fn(a, b).cast(pl.Int64, strict=False)
    return rule


def _neg(c: _Ctx, node: Call, args: list[pl.Expr]) -> pl.Expr:
    pl = c.pl
    if c.dtype(node) == "float64":
        return -args[0]
    return (pl.lit(0, dtype=pl.Int128) - args[0].cast(pl.Int128)).cast(pl.Int64, strict=False)


def _div(c: _Ctx, node: Call, args: list[pl.Expr]) -> pl.Expr:
    a, b = (c.as_float(n, e) for n, e in zip(node.args, args, strict=True))
    return c.finite(c.true_div(node, a, b))  # x/0 is ±inf or NaN, so it becomes null here


def _floordiv(c: _Ctx, node: Call, args: list[pl.Expr]) -> pl.Expr:
    pl = c.pl
    if c.dtype(node) == "int64":  # Polars floors integer division and yields null for x // 0
        return (args[0].cast(pl.Int128) // args[1].cast(pl.Int128)).cast(pl.Int64, strict=False)
    a, b = (c.as_float(n, e) for n, e in zip(node.args, args, strict=True))
    return c.finite(c.true_div(node, a, b).floor())


def _mod(c: _Ctx, node: Call, args: list[pl.Expr]) -> pl.Expr:
    if c.dtype(node) == "int64":  # Polars: Python sign rule, x % 0 is null, MIN % -1 is 0
        return args[0] % args[1]
    a, b = (c.as_float(n, e) for n, e in zip(node.args, args, strict=True))
    # elementwise binds both operands once and keeps every step IEEE (even `0.0 - x`)
    return c.finite(c.elementwise(node, lambda a, b: a - b * (a / b).floor(), a, b))


# -- comparisons and logic ---------------------------------------------------------------------

def _compare(fn: Callable[[Any, Any], Any]) -> Rule:
    def rule(c: _Ctx, node: Call, args: list[pl.Expr]) -> pl.Expr:
        kinds = {c.dtype(n) for n in node.args}
        if kinds == {"int64", "float64"}:
            args = [c.as_float(n, e) for n, e in zip(node.args, args, strict=True)]
        return fn(args[0], args[1])
    return rule


def _case(c: _Ctx, node: Call, args: list[pl.Expr]) -> pl.Expr:
    pl = c.pl
    out = polars_dtype(c.dtype(node))
    chain: Any = pl
    for cond, value in zip(args[0::2], args[1::2], strict=False):
        chain = chain.when(cond).then(value.cast(out))
    fallback = args[-1].cast(out) if len(args) % 2 else pl.lit(None, dtype=out)
    return chain.otherwise(fallback)


def _coalesce(c: _Ctx, node: Call, args: list[pl.Expr]) -> pl.Expr:
    out = polars_dtype(c.dtype(node))
    return c.pl.coalesce([a.cast(out) for a in args])


# -- casts ---------------------------------------------------------------------------------------

def _cast(c: _Ctx, node: Call, args: list[pl.Expr]) -> pl.Expr:
    pl = c.pl
    src, dst, x = c.dtype(node.args[0]), node.option("dtype"), args[0]
    if src == dst:
        return x
    if (src, dst) == ("int64", "bool"):
        return x != 0
    if (src, dst) == ("int64", "timestamp"):
        return c.let(node, [x], lambda v: pl.when(v.is_between(TIMESTAMP_MIN_US, TIMESTAMP_MAX_US))
                     .then(v).cast(polars_dtype("timestamp")))
    if (src, dst) == ("timestamp", "int64"):
        return x.dt.epoch("us")
    if (src, dst) == ("string", "int64"):
        return x.str.extract(INT_PATTERN, 0).cast(pl.Int64, strict=False)
    if (src, dst) == ("string", "float64"):
        return c.finite(x.str.extract(FLOAT_PATTERN, 0).cast(pl.Float64, strict=False))
    if (src, dst) == ("float64", "int64"):
        # truncates; null outside (-2**63, 2**63): -2**63 itself is the only double that
        # lands on INT64_MIN, and it is excluded so the range is symmetric (as on Spark)
        return x.cast(pl.Int64, strict=False).replace(INT64_MIN, None)
    return x.cast(polars_dtype(dst))  # int→float/string, bool→int/float/string: total


# -- math ----------------------------------------------------------------------------------------

def _abs(c: _Ctx, node: Call, args: list[pl.Expr]) -> pl.Expr:
    pl = c.pl
    if c.dtype(node) == "float64":
        return args[0].abs()
    return args[0].cast(pl.Int128).abs().cast(pl.Int64, strict=False)


def _float_fn(method: str) -> Rule:
    def rule(c: _Ctx, node: Call, args: list[pl.Expr]) -> pl.Expr:
        # log(0) = -inf, log(-1) = NaN, sqrt(-1) = NaN, exp(1e3) = inf: all become null
        return c.finite(getattr(c.as_float(node.args[0], args[0]), method)())
    return rule


def _clip(c: _Ctx, node: Call, args: list[pl.Expr]) -> pl.Expr:
    lo, hi = node.option("lo"), node.option("hi")
    if c.dtype(node) == "float64":
        x = c.as_float(node.args[0], args[0])
        lo, hi = (None if v is None else float(v) for v in (lo, hi))
    else:
        x = args[0]
    return x.clip(lo, hi)


def _round(c: _Ctx, node: Call, args: list[pl.Expr]) -> pl.Expr:
    pl = c.pl
    if c.dtype(node) == "int64":
        return args[0]
    decimals = node.option("decimals")
    if decimals == 0:
        return args[0].round(0, mode="half_away_from_zero")
    # Polars' own round(decimals) scales differently (2.675 → 2.68 but 1.005 → 1.0 for other
    # reasons); scale in float64 explicitly so every engine computes the same IEEE steps.
    scale = pl.lit(10.0**decimals)
    return c.finite(c.true_div(node, (args[0] * scale).round(0, mode="half_away_from_zero"),
                               scale))


# -- strings and timestamps ----------------------------------------------------------------------

def _string(c: _Ctx, node: Call, args: list[pl.Expr]) -> pl.Expr:
    pl, x, op = c.pl, args[0].str, node.op
    if op is Op.STR_LOWER:
        return x.to_lowercase()
    if op is Op.STR_UPPER:
        return x.to_uppercase()
    if op is Op.STR_LEN:
        return x.len_chars().cast(pl.Int64)
    if op is Op.STR_CONTAINS:
        return x.contains(node.option("substring"), literal=True)
    if op is Op.STR_STARTS_WITH:
        return x.starts_with(node.option("prefix"))
    return x.ends_with(node.option("suffix"))


_TIME_PARTS = {Op.HOUR: "hour", Op.MINUTE: "minute", Op.DAY_OF_WEEK: "weekday",
               Op.DAY_OF_MONTH: "day", Op.MONTH: "month", Op.YEAR: "year"}


def _time(c: _Ctx, node: Call, args: list[pl.Expr]) -> pl.Expr:
    if node.op is Op.EPOCH_SECONDS:
        return args[0].dt.epoch("s")  # floors toward -inf
    return getattr(args[0].dt, _TIME_PARTS[node.op])().cast(c.pl.Int64)


_RULES: dict[Op, Rule] = {
    Op.ADD: _int_arith(operator.add),
    Op.SUB: _int_arith(operator.sub),
    Op.MUL: _int_arith(operator.mul),
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
    Op.IS_NULL: lambda c, node, args: args[0].is_null(),
    Op.IS_NOT_NULL: lambda c, node, args: args[0].is_not_null(),
    Op.CAST: _cast,
    Op.ABS: _abs,
    Op.LOG: _float_fn("log"),
    Op.LOG1P: _float_fn("log1p"),
    Op.SQRT: _float_fn("sqrt"),
    Op.EXP: _float_fn("exp"),
    Op.CLIP: _clip,
    Op.ROUND: _round,
    **{op: _string for op in (Op.STR_LOWER, Op.STR_UPPER, Op.STR_LEN, Op.STR_CONTAINS,
                              Op.STR_STARTS_WITH, Op.STR_ENDS_WITH)},
    **{op: _time for op in (*_TIME_PARTS, Op.EPOCH_SECONDS)},
}
