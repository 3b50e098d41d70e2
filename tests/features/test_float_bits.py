"""Correctly rounded float ops give Python's IEEE 754 bits on every engine, not values "close".

IEEE 754 rounds + - * /, sqrt and the conversions int -> float and decimal string -> float
correctly: each has one right answer, so Polars, Spark and Python must agree bit for bit
(docs/expressions.md, "Float results"). Found on real data: Polars divided by a literal as
``x * (1 / c)``, one ulp off for ~9% of values when ``c = 60.0``, and the error reached
``round``, ``//`` and ``%``. The values are seeded random floats of every magnitude (±1e6,
subnormal, near the overflow threshold, random bit patterns) and ties (exact halves, sums and
integers half way between two doubles, decimal strings at the exact midpoint).
"""

from __future__ import annotations

import decimal
import math
import random
import struct
from collections.abc import Callable
from typing import Any

import pytest

from features.compile import compile_expr
from features.expr import col, lit, when
from tests.features.conftest import RunExprs
from tests.reference.expr_eval import eval_expr, half_away, ieee_floor, same_bits

N = 3000
SCHEMA = {"f": "float64", "g": "float64", "i": "int64", "s": "string"}
F, G, I, S = col("f"), col("g"), col("i"), col("s")  # noqa: E741


def _random_double(r: random.Random) -> float:
    while True:
        v = struct.unpack("<d", r.getrandbits(64).to_bytes(8, "little"))[0]
        if math.isfinite(v):
            return v


def _float(r: random.Random, k: int) -> float:
    kind = k % 6
    if kind == 0:
        return r.uniform(-1e6, 1e6)
    if kind == 1:
        return r.uniform(-1, 1) * 10.0 ** r.randint(-323, -290)  # tiny, often subnormal
    if kind == 2:
        return r.uniform(-1, 1) * 10.0 ** r.randint(290, 308)  # huge
    if kind == 3:
        return _random_double(r)
    if kind == 4:
        return r.randint(-2**20, 2**20) + 0.5  # exact halves: ties for round
    return r.uniform(-1e6, 1e6) * 2.0 ** r.randint(-8, 8)


def _tie_addend(r: random.Random, a: float) -> float:
    """A b for which a + b is exactly half way between two doubles (ties to even)."""
    return math.copysign(math.ulp(a) / 2, r.choice([1.0, -1.0])) if abs(a) < 1e300 else 1.0


def _tie_int(r: random.Random) -> int:
    """An int64 half way between two doubles: 2**e * m + 2**(e - 1), m of 53 bits."""
    e = r.randint(1, 10)
    return r.choice([1, -1]) * ((r.randrange(2**52, 2**53) << e) + (1 << (e - 1)))


def _midpoint_string(x: float) -> str:
    """The exact decimal midpoint between |x| and the next double up."""
    x = abs(x)
    if not math.isfinite(math.nextafter(x, math.inf)):
        return repr(x)
    with decimal.localcontext() as ctx:
        ctx.prec = 1200
        mid = (decimal.Decimal(x) + decimal.Decimal(math.nextafter(x, math.inf))) / 2
    return format(mid, "E").replace("E", "e")


def _rows() -> list[dict[str, Any]]:
    r = random.Random(20240601)
    rows = []
    for k in range(N):
        f = _float(r, k)
        g = _tie_addend(r, f) if k % 4 == 0 else _float(r, k + r.randint(0, 5))
        i = _tie_int(r) if k % 2 else r.randint(-2**63, 2**63 - 1)
        s = _midpoint_string(f) if k % 3 == 0 else (repr(f) if k % 3 == 1 else f"{f:.17e}")
        rows.append({"f": f, "g": g, "i": i, "s": s})
    for f in (0.0, -0.0):  # signed zeros meet literal zeros
        rows += [{"f": f, "g": g, "i": 0, "s": "-0.0"} for g in (0.0, -0.0, 60.0)]
    return rows


ROWS = _rows()


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _div(a: float, b: float) -> float | None:
    return None if b == 0 else _finite(a / b)


def _then(v: float | None, fn: Callable[[float], float | None]) -> float | None:
    return None if v is None else fn(v)


def _round(x: float, d: int) -> float | None:
    y = x * 10.0**d
    return _finite(half_away(y) / 10.0**d) if math.isfinite(y) else None


# Division by a literal, alone and inside round, // and %: Python's IEEE result for each row.
BY_LITERAL: dict[str, tuple[Any, Callable[[dict[str, Any]], float | None]]] = {
    "f / 60.0": (F / 60.0, lambda r: r["f"] / 60.0),
    "f / 7.0": (F / 7.0, lambda r: r["f"] / 7.0),
    "f / 0.1": (F / 0.1, lambda r: _div(r["f"], 0.1)),
    "i / 60": (I / 60, lambda r: float(r["i"]) / 60.0),
    "f / (6.0 * 10.0)": (F / (lit(6.0) * 10.0), lambda r: r["f"] / 60.0),
    "f / when(...)": (F / when(G.is_null()).then(1.0).otherwise(60.0), lambda r: r["f"] / 60.0),
    "(f * 2.0) / 60.0": (F * 2.0 / 60.0, lambda r: _then(_finite(r["f"] * 2.0),
                                                        lambda y: y / 60.0)),
    "60.0 / f": (lit(60.0) / F, lambda r: _div(60.0, r["f"])),
    "f // 60.0": (F // 60.0, lambda r: ieee_floor(r["f"] / 60.0)),
    "f // 0.1": (F // 0.1, lambda r: _then(_finite(r["f"] / 0.1), ieee_floor)),
    "f % 60.0": (F % 60.0, lambda r: _finite(r["f"] - 60.0 * ieee_floor(r["f"] / 60.0))),
    "f % 0.1": (F % 0.1, lambda r: _then(_finite(r["f"] / 0.1),
                                         lambda q: r["f"] - 0.1 * ieee_floor(q))),
    "round(f, 1)": (F.round(1), lambda r: _round(r["f"], 1)),
    "round(f, 2)": (F.round(2), lambda r: _round(r["f"], 2)),
    "round(f, 4)": (F.round(4), lambda r: _round(r["f"], 4)),
}

# The other correctly rounded (or exact) ops, on columns and with literal (zero) operands.
CORRECTLY_ROUNDED: dict[str, tuple[Any, Callable[[dict[str, Any]], float | None]]] = {
    "f + g": (F + G, lambda r: _finite(r["f"] + r["g"])),
    "f - g": (F - G, lambda r: _finite(r["f"] - r["g"])),
    "f * g": (F * G, lambda r: _finite(r["f"] * r["g"])),
    "f / g": (F / G, lambda r: _div(r["f"], r["g"])),
    "f + 0.0": (F + 0.0, lambda r: r["f"] + 0.0),
    "0.0 - f": (lit(0.0) - F, lambda r: 0.0 - r["f"]),
    "f - (-0.0)": (F - lit(-0.0), lambda r: r["f"] - -0.0),
    "f * 60.0": (F * 60.0, lambda r: _finite(r["f"] * 60.0)),
    "-f": (-F, lambda r: -r["f"]),
    "round(f)": (F.round(), lambda r: half_away(r["f"])),
    "i + f": (I + F, lambda r: _finite(float(r["i"]) + r["f"])),
    "sqrt(f)": (F.sqrt(), lambda r: math.sqrt(r["f"]) if r["f"] >= 0 else None),
    "int -> float": (I.cast("float64"), lambda r: float(r["i"])),
    "string -> float": (S.cast("float64"), lambda r: _finite(float(r["s"]))),
}


def _mismatches(run: RunExprs, exprs: dict[str, tuple[Any, Callable[..., Any]]]
                ) -> dict[str, tuple[int, Any]]:
    result = run([node for node, _ in exprs.values()], ROWS, SCHEMA)
    bad: dict[str, tuple[int, Any]] = {}
    for (name, (_, python)), got in zip(exprs.items(), result.values, strict=True):
        diffs = [(row, g, w) for row, g in zip(ROWS, got, strict=True)
                 for w in [python(row)]
                 if not (g is None and w is None) and (g is None or w is None
                                                       or not same_bits(g, w))]
        if diffs:
            bad[name] = (len(diffs), diffs[0])
    return bad


def test_the_rows_exercise_the_reciprocal_rewrite() -> None:
    """Guard: on these rows x * (1 / c) is not x / c often, so the tests below can fail."""
    for c in (60.0, 7.0, 0.1):
        assert sum(not same_bits(r["f"] * (1 / c), r["f"] / c) for r in ROWS) > N // 20
    assert sum(r["f"] - math.floor(r["f"]) == 0.5 for r in ROWS) > N // 10  # ties for round
    assert sum(abs(r["g"]) == math.ulp(r["f"]) / 2 for r in ROWS) > N // 5  # ties for f + g


def test_division_by_a_literal_is_ieee(run_exprs: RunExprs) -> None:
    assert _mismatches(run_exprs, BY_LITERAL) == {}


def test_correctly_rounded_ops_are_ieee(run_exprs: RunExprs) -> None:
    assert _mismatches(run_exprs, CORRECTLY_ROUNDED) == {}


def test_polars_divides_by_a_broadcast_column_as_ieee() -> None:
    """A divisor column holding one broadcast value (``with_columns(d=pl.lit(60.0))``), in a
    select and in ``group_by().agg()``: Polars takes its scalar kernel for it too."""
    import polars as pl

    xs = [r["f"] for r in ROWS]
    frame = pl.DataFrame({"x": xs, "k": [k % 7 for k in range(len(xs))]}).with_columns(
        d=pl.lit(60.0))
    expr = compile_expr(col("x") / col("d"), "polars", {"x": "float64", "d": "float64"})
    want = [_finite(x / 60.0) for x in xs]

    def same(got: list[Any], expected: list[Any]) -> bool:
        return len(got) == len(expected) and all(
            (g is None and w is None) or (g is not None and w is not None and same_bits(g, w))
            for g, w in zip(got, expected, strict=True))

    assert same(frame.select(expr.alias("q"))["q"].to_list(), want)
    grouped = frame.lazy().group_by("k").agg(pl.col("x"), expr.alias("q")).collect()
    for x_group, q_group in zip(grouped["x"].to_list(), grouped["q"].to_list(), strict=True):
        assert same(q_group, [_finite(x / 60.0) for x in x_group])


@pytest.mark.parametrize("node", [lit(2.875) / lit(60.0), (lit(1.0) + lit(2.0)) % lit(0.3),
                                  (lit(0.35) * 1.0).round(2), lit(0.0) - lit(0.0)], ids=repr)
def test_constant_rules_are_ieee_on_every_row(run_exprs: RunExprs, node: Any) -> None:
    """Rules of literals only; a struct of scalars alone is mis-sized by Polars' streaming
    engine (two rows, or "zip node received non-equal length inputs")."""
    rows = ROWS[:5]
    result = run_exprs([node, node.cast("int64")], rows, SCHEMA)
    want = eval_expr(node, rows[0], SCHEMA)
    assert all(v is not None and same_bits(v, want) for v in result.values[0])
    assert result.values[1] == [eval_expr(node.cast("int64"), rows[0], SCHEMA)] * len(rows)
