"""Type checking of the expression IR: :class:`TypeChecker` infers every node's dtype over a
schema and rejects an ill-typed tree with one line naming the column or operation at fault;
:func:`infer_dtype` is its one-call form. The rules are those of docs/expressions.md. The module
imports no engine.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from features.errors import ExprError
from features.expr_nodes import Call, Col, IntoExpr, Lit, Node, _into, _render
from features.expr_vocab import DTYPES, DType, Op

_NUMERIC = frozenset({"int64", "float64"})

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
