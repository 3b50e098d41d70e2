"""The expression IR's closed vocabulary: the dtypes and their value ranges, the operations
with their arity and options, and the checks that a literal or an option value is valid.

Only data and checks on plain values live here; the nodes built from them are in
:mod:`features.expr_nodes`. The module imports no engine.
"""

from __future__ import annotations

import datetime as _dt
import enum
import math
import numbers
from typing import Any, Literal, TypeAlias, get_args

from features.errors import ExprError

DType: TypeAlias = Literal["int64", "float64", "bool", "string", "timestamp"]
DTYPES: tuple[DType, ...] = get_args(DType)

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
UTC = _dt.UTC
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


# How a timestamp literal is written, in JSON and in repr (what _check_literal parses back).
def _ts_to_json(v: _dt.datetime) -> str:
    return (f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}"
            f".{v.microsecond:06d}Z")
