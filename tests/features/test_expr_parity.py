"""Every operation, on every engine, against the reference evaluator.

Each case is one expression and a small table of edge rows with the values docs/expressions.md
promises for them. The tests check, per case:

1. the reference evaluator gives those documented values (so the reference is not taken on
   faith);
2. each engine gives the reference's value on *every* row of *every* case (one batch per
   engine, so a Spark job is paid once), with the engine dtype of the IR dtype.

Float results are compared bit for bit (``-0.0`` is not ``0.0``): every op is exact or
correctly rounded by IEEE 754, so it has one right answer. Only expressions computing log,
log1p or exp keep a relative tolerance of 1e-12: engines call different libms (Rust, Java,
CPython's platform libm), which may differ in the last bit (``same_float``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from features.compile import engine_dtype
from features.expr import (
    INT64_MAX,
    INT64_MIN,
    TIMESTAMP_MAX_US,
    TIMESTAMP_MIN_US,
    Call,
    Node,
    Op,
    coalesce,
    col,
    infer_dtype,
    lit,
    walk,
    when,
)
from tests.features.conftest import ENGINE_PARAMS, EngineResult, runner_for, same_value
from tests.reference.expr_eval import eval_expr, same_bits, same_float

SCHEMA = {"i": "int64", "j": "int64", "f": "float64", "g": "float64", "b": "bool", "c": "bool",
          "s": "string", "s2": "string", "ts": "timestamp", "ts2": "timestamp"}
NAN, INF = float("nan"), float("inf")


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@dataclass(frozen=True)
class Case:
    """One expression, its edge rows, and the documented result for each row."""

    id: str
    expr: Node
    rows: list[dict[str, Any]]
    expected: list[Any]
    # engine → exception type: a declared engine gap, run as a strict xfail.
    gaps: dict[str, type[BaseException]] = field(default_factory=dict)


def case(id: str, expr: Node, cols: str, table: list[tuple[Any, ...]]) -> Case:
    """Rows are tuples of the named columns (``cols``, space-separated) plus the expected value."""
    names = cols.split()
    rows = [dict(zip(names, r[:-1], strict=True)) for r in table]
    return Case(id, expr, rows, [r[-1] for r in table])


I, J, F, G, B, C, S, S2, T, T2 = (col(n) for n in SCHEMA)  # noqa: E741 - short names keep the table readable
EPOCH = ts("1970-01-01T00:00:00")
JUST_BEFORE_EPOCH = ts("1969-12-31T23:59:59.999999")
FIRST, LAST = ts("0001-01-01T00:00:00"), ts("9999-12-31T23:59:59.999999")

CASES = [
    # -- arithmetic ------------------------------------------------------------------------------
    case("add-int", I + J, "i j", [(1, 2, 3), (-5, 3, -2), (None, 1, None),
                                   (INT64_MAX, 1, None), (INT64_MIN, -1, None),
                                   (INT64_MIN, 0, INT64_MIN)]),
    case("add-int-float", I + F, "i f", [(1, 0.5, 1.5), (2**53 + 1, 0.0, 2.0**53),
                                         (None, 1.0, None), (3, None, None)]),
    case("add-float-overflow", F + G, "f g", [(1e308, 1e308, None), (0.1, 0.2, 0.1 + 0.2),
                                              (-0.0, 0.0, 0.0), (-0.0, -0.0, -0.0),
                                              (2.0**53, 1.0, 2.0**53)]),  # a tie: to even
    # Polars' kernels for a scalar operand return x for x + 0.0 and -x for 0.0 - x: not IEEE
    # for x = -0.0 (resp. 0.0), whose sum (difference) is 0.0
    case("add-zero-literal", F + 0.0, "f", [(-0.0, 0.0), (0.0, 0.0), (-1.5, -1.5), (None, None)]),
    case("sub-from-zero-literal", lit(0.0) - F, "f", [(0.0, 0.0), (-0.0, 0.0), (2.0, -2.0)]),
    case("sub-negative-zero-literal", F - lit(-0.0), "f", [(-0.0, 0.0), (0.0, 0.0), (1.0, 1.0)]),
    case("sub-int", I - J, "i j", [(INT64_MIN, 1, None), (5, 7, -2), (0, INT64_MIN, None),
                                   (-1, INT64_MIN, INT64_MAX)]),
    case("sub-float", F - 1, "f", [(1.5, 0.5), (-1.7976931348623157e308, -1.7976931348623157e308),
                                   (None, None)]),
    case("mul-int", I * J, "i j", [(3, -4, -12), (2**32, 2**31, None), (INT64_MIN, -1, None),
                                   (INT64_MIN, 1, INT64_MIN), (None, 0, None)]),
    case("mul-float", F * G, "f g", [(1e200, 1e200, None), (1.5, -2.0, -3.0), (1e200, -1e200, None)]),
    case("neg-int", -I, "i", [(5, -5), (INT64_MIN, None), (0, 0), (None, None)]),
    case("neg-float", -F, "f", [(1.5, -1.5), (None, None)]),
    case("div-int", I / J, "i j", [(7, 2, 3.5), (1, 0, None), (0, 0, None), (-7, 2, -3.5),
                                   (5, None, None), (1, 3, 1 / 3)]),
    case("div-float", F / G, "f g", [(1.0, 0.0, None), (1.0, -0.0, None), (1e300, 1e-300, None),
                                     (-1.0, 4.0, -0.25)]),
    # Polars divides by a scalar as x * (1 / c), one ulp off here (2.875 * (1/60) is ...666)
    case("div-literal", F / 60.0, "f", [(2.875, 0.04791666666666667), (-5.75, -0.09583333333333334),
                                        (60.0, 1.0), (None, None), (-0.0, -0.0)]),
    case("div-int-literal", I / 100, "i", [(35, 0.35), (-41, -0.41), (7, 0.07)]),
    case("floordiv-int", I // J, "i j", [(7, 2, 3), (-7, 2, -4), (7, -2, -4), (-7, -2, 3),
                                         (7, 0, None), (INT64_MIN, -1, None),
                                         (INT64_MIN, 1, INT64_MIN), (INT64_MIN, 2, -(2**62)),
                                         (0, 5, 0), (5, -1, -5), (INT64_MAX, INT64_MIN, -1)]),
    case("floordiv-float", F // G, "f g", [(7.5, 2.0, 3.0), (-7.5, 2.0, -4.0), (1.0, 0.1, 10.0),
                                           (1.0, 0.0, None), (1e308, 1e-10, None),
                                           (-0.5, 1e300, -1.0), (1e20, 3.0, 3.3333333333333332e19),
                                           (-0.0, 5.0, -0.0), (1e-320, -1e10, -0.0),
                                           (0.5, 2.0, 0.0)]),
    # 0.3 / 0.1 is 2.9999999999999996 (floor 2), but 0.3 * (1 / 0.1) is 3.0
    case("floordiv-literal", F // 0.1, "f", [(0.3, 2.0), (0.7, 6.0), (-0.3, -3.0),
                                             (1.0, 10.0)]),
    case("floordiv-int-float", I // F, "i f", [(7, 2.0, 3.0), (-7, 2.0, -4.0)]),
    case("mod-int", I % J, "i j", [(7, 3, 1), (-7, 3, 2), (7, -3, -2), (-7, -3, -1), (7, 0, None),
                                   (INT64_MIN, -1, 0), (INT64_MIN, 3, 1),
                                   (INT64_MAX, INT64_MIN, -1), (0, -5, 0)]),
    case("mod-float", F % G, "f g", [(-7.5, 2.0, 0.5), (7.5, -2.0, -0.5), (1.0, 0.1, 0.0),
                                     (5.0, 0.0, None), (-1e-20, 1.0, 1.0), (5.5, 1e300, 5.5),
                                     (-0.0, 5.0, 0.0)]),
    # with x * (1 / 0.1), 0.3 % 0.1 would be -5.551115123125783e-17: negative for a positive b
    case("mod-literal", F % 0.1, "f", [(0.3, 0.09999999999999998), (0.7, 0.09999999999999987),
                                       (1.0, 0.0)]),
    # -- comparisons -----------------------------------------------------------------------------
    case("eq-int", I == J, "i j", [(1, 1, True), (1, 2, False), (None, 1, None)]),
    case("eq-int-float", I == F, "i f", [(1, 1.0, True), (2**53 + 1, 2.0**53, True),
                                         (1, 1.5, False), (None, 1.0, None)]),
    case("ne-string", S != "é", "s", [("é", False), ("e\u0301", True), (None, None)]),
    case("lt-string", S < S2, "s s2", [("a", "b", True), ("b", "a", False), ("Z", "a", True),
                                       ("é", "z", False), ("", "a", True), ("日本", "é", False),
                                       ("a", None, None)]),
    case("le-timestamp", T <= T2, "ts ts2", [(EPOCH, EPOCH, True), (JUST_BEFORE_EPOCH, EPOCH, True),
                                             (LAST, FIRST, False), (None, EPOCH, None)]),
    case("gt-float", F > G, "f g", [(-0.0, 0.0, False), (1.5, 1.0, True), (None, 0.0, None)]),
    case("ge-int-float", I >= F, "i f", [(2, 1.5, True), (1, 1.0, True), (1, 1.5, False)]),
    case("eq-bool", B == C, "b c", [(True, True, True), (True, False, False), (None, True, None)]),
    # -- boolean (Kleene) ------------------------------------------------------------------------
    case("and", B & C, "b c", [(True, True, True), (True, False, False), (True, None, None),
                               (False, True, False), (False, False, False), (False, None, False),
                               (None, True, None), (None, False, False), (None, None, None)]),
    case("or", B | C, "b c", [(True, True, True), (True, False, True), (True, None, True),
                              (False, True, True), (False, False, False), (False, None, None),
                              (None, True, True), (None, False, None), (None, None, None)]),
    case("not", ~B, "b", [(True, False), (False, True), (None, None)]),
    # -- conditionals and nulls ------------------------------------------------------------------
    case("case-chain", when(I > 0).then("pos").when(I < 0).then("neg").otherwise("zero"), "i",
         [(5, "pos"), (-3, "neg"), (0, "zero"), (None, "zero")]),
    case("case-no-otherwise", when(B).then(I), "b i", [(True, 1, 1), (False, 1, None),
                                                       (None, 1, None)]),
    case("case-int-float", when(B).then(I).otherwise(F), "b i f", [(True, 2, 0.5, 2.0),
                                                                   (False, 2, 0.5, 0.5)]),
    case("case-timestamp", when(B).then(T).otherwise(T2), "b ts ts2",
         [(True, FIRST, LAST, FIRST), (None, FIRST, LAST, LAST)]),
    case("coalesce", coalesce(I, J, 0), "i j", [(None, None, 0), (None, 5, 5), (1, 5, 1)]),
    case("coalesce-int-float", coalesce(F, I), "f i", [(None, 3, 3.0), (NAN, 3, 3.0),
                                                       (INF, 3, 3.0), (1.5, 3, 1.5)]),
    case("fill-null", S.fill_null("?"), "s", [(None, "?"), ("a", "a")]),
    case("is-null", F.is_null(), "f", [(None, True), (1.0, False), (NAN, True), (-INF, True)]),
    case("is-not-null", S.is_not_null(), "s", [(None, False), ("", True)]),
    # -- casts -----------------------------------------------------------------------------------
    case("cast-int-float", I.cast("float64"), "i", [(2**53 + 1, 2.0**53), (-3, -3.0),
                                                    (INT64_MAX, 9.223372036854776e18)]),
    case("cast-float-int", F.cast("int64"), "f", [(2.9, 2), (-2.9, -2), (-0.5, 0), (9.3e18, None),
                                                  (-(2.0**63), None), (-(2.0**63) + 1024, -(2**63) + 1024),
                                                  (2.0**63, None),
                                                  (1e300, None), (9.2e18, 9200000000000000000)]),
    case("cast-int-string", I.cast("string"), "i", [(-5, "-5"), (INT64_MIN, str(INT64_MIN)),
                                                    (0, "0")]),
    case("cast-string-int", S.cast("int64"), "s", [
        ("12", 12), ("+3", 3), ("-0", 0), ("007", 7), (" 4", None), ("4 ", None),
        ("1_000", None), ("1.5", None), ("9223372036854775808", None),
        ("-9223372036854775808", INT64_MIN), ("١٢", None), ("", None), ("12\n", None),
        ("abc", None)]),
    case("cast-string-float", S.cast("float64"), "s", [
        ("1.5", 1.5), ("1e3", 1000.0), (".5", 0.5), ("5.", 5.0), ("-2.5E-3", -0.0025),
        ("+.5", 0.5), ("inf", None), ("nan", None), ("1e999", None), (" 1", None),
        ("1.5d", None), ("0x10", None), ("0.1000000000000000055511151231257827", 0.1),
        ("12\n", None)]),
    case("cast-bool-int", B.cast("int64"), "b", [(True, 1), (False, 0), (None, None)]),
    case("cast-bool-float", B.cast("float64"), "b", [(True, 1.0), (False, 0.0)]),
    case("cast-bool-string", B.cast("string"), "b", [(True, "true"), (False, "false")]),
    case("cast-int-bool", I.cast("bool"), "i", [(0, False), (-3, True), (INT64_MIN, True)]),
    case("cast-timestamp-int", T.cast("int64"), "ts", [(EPOCH, 0), (JUST_BEFORE_EPOCH, -1),
                                                       (FIRST, TIMESTAMP_MIN_US),
                                                       (LAST, TIMESTAMP_MAX_US)]),
    case("cast-int-timestamp", I.cast("timestamp"), "i", [
        (0, EPOCH), (-1, JUST_BEFORE_EPOCH), (TIMESTAMP_MAX_US, LAST),
        (TIMESTAMP_MAX_US + 1, None), (TIMESTAMP_MIN_US, FIRST), (TIMESTAMP_MIN_US - 1, None),
        (INT64_MIN, None)]),
    case("cast-identity", S.cast("string"), "s", [("x", "x"), (None, None)]),
    # -- math ------------------------------------------------------------------------------------
    case("abs-int", I.abs(), "i", [(INT64_MIN, None), (-5, 5), (INT64_MAX, INT64_MAX)]),
    case("abs-float", F.abs(), "f", [(-0.0, 0.0), (-1.5, 1.5)]),
    case("log", F.log(), "f", [(1.0, 0.0), (0.0, None), (-0.0, None), (-1.0, None),
                               (2.718281828459045, 1.0), (1e-300, -690.7755278982137)]),
    case("log-int", I.log(), "i", [(1, 0.0), (0, None), (-3, None)]),
    case("log1p", F.log1p(), "f", [(-1.0, None), (-2.0, None), (1e-20, 1e-20),
                                   (-0.5, -0.6931471805599453)]),
    case("sqrt", F.sqrt(), "f", [(4.0, 2.0), (-1.0, None), (-0.0, -0.0), (2.0, 1.4142135623730951)]),
    case("exp", F.exp(), "f", [(0.0, 1.0), (710.0, None), (-1000.0, 0.0), (1.0, 2.718281828459045)]),
    case("clip-float", F.clip(0.0, 1.0), "f", [(-0.5, 0.0), (0.5, 0.5), (2.0, 1.0), (None, None)]),
    case("clip-int-hi", I.clip(None, 10), "i", [(11, 10), (-100, -100), (None, None)]),
    case("clip-int-float-bound", I.clip(0.5, None), "i", [(0, 0.5), (3, 3.0)]),
    case("round-0", F.round(), "f", [
        (0.5, 1.0), (1.5, 2.0), (2.5, 3.0), (-0.5, -1.0), (-2.5, -3.0),
        (0.49999999999999994, 0.0), (4503599627370495.5, 4503599627370496.0), (1e300, 1e300),
        (-0.4, -0.0), (-0.0, -0.0), (0.4, 0.0)]),
    # the last step divides by 100.0: 35 * (1 / 100) would be 0.35000000000000003
    case("round-2", F.round(2), "f", [(2.675, 2.68), (1.005, 1.0), (0.125, 0.13), (-0.125, -0.13),
                                      (1e300, 1e300), (1.234567, 1.23), (None, None),
                                      (1.7e308, None), (-2.5e-3, -0.0), (0.35, 0.35),
                                      (0.4101, 0.41), (-0.47, -0.47)]),
    case("round-int", I.round(3), "i", [(7, 7), (INT64_MIN, INT64_MIN)]),
    # -- strings ---------------------------------------------------------------------------------
    case("lower", S.str_lower(), "s", [("ÉCOLE", "école"), ("ΟΔΟΣ", "οδος"), ("İ", "i̇"),
                                       ("ẞ", "ß"), ("日本", "日本"), (None, None)]),
    case("upper", S.str_upper(), "s", [("straße", "STRASSE"), ("é", "É"), ("ﬁ", "FI")]),
    case("len", S.str_len(), "s", [("é", 1), ("e\u0301", 2), ("日本", 2), ("", 0), ("😀", 1),
                                   (None, None)]),
    case("contains", S.str_contains("a.c"), "s", [("a.c", True), ("abc", False), (None, None),
                                                  ("xa.cx", True)]),
    case("contains-empty", S.str_contains(""), "s", [("", True), ("x", True)]),
    case("starts-with", S.str_starts_with("日"), "s", [("日本", True), ("本日", False)]),
    case("ends-with", S.str_ends_with("é"), "s", [("café", True), ("cafe\u0301", False)]),
    # -- timestamps (UTC) ------------------------------------------------------------------------
    case("hour", T.hour(), "ts", [(ts("2024-03-10T23:59:59.999999"), 23),
                                  (JUST_BEFORE_EPOCH, 23), (EPOCH, 0), (FIRST, 0)]),
    case("minute", T.minute(), "ts", [(JUST_BEFORE_EPOCH, 59), (ts("2024-03-31T01:30:00"), 30)]),
    case("day-of-week", T.day_of_week(), "ts", [
        (ts("2024-01-01T00:00:00"), 1), (ts("2024-01-07T23:59:59"), 7), (EPOCH, 4),
        (JUST_BEFORE_EPOCH, 3), (FIRST, 1), (LAST, 5)]),
    case("day-of-month", T.day_of_month(), "ts", [(ts("2024-02-29T12:00:00"), 29),
                                                  (JUST_BEFORE_EPOCH, 31)]),
    case("month", T.month(), "ts", [(JUST_BEFORE_EPOCH, 12), (EPOCH, 1)]),
    case("year", T.year(), "ts", [(FIRST, 1), (LAST, 9999), (JUST_BEFORE_EPOCH, 1969)]),
    case("epoch-seconds", T.epoch_seconds(), "ts", [
        (EPOCH, 0), (JUST_BEFORE_EPOCH, -1), (ts("1969-12-31T23:59:58.500000"), -2),
        (ts("2024-01-01T00:00:00"), 1_704_067_200), (None, None)]),
    # -- literals ---------------------------------------------------------------------------------
    case("typed-null-literal", coalesce(lit(None, "timestamp"), T), "ts", [(EPOCH, EPOCH)]),
    case("timestamp-literal", lit("2000-01-01T00:00:00Z", "timestamp") > T, "ts",
         [(JUST_BEFORE_EPOCH, True), (LAST, False)]),
]
ALL_ROWS = [row for c in CASES for row in c.rows]


def test_every_op_has_a_parity_case() -> None:
    covered = {n.op for c in CASES for n in walk(c.expr) if isinstance(n, Call)}
    missing = sorted(op.value for op in Op if op not in covered)
    assert not missing, f"operations without a parity case: {missing}"


def test_case_ids_are_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_reference_gives_documented_values(c: Case) -> None:
    got = [eval_expr(c.expr, row, SCHEMA) for row in c.rows]
    dtype = infer_dtype(c.expr, SCHEMA)
    bad = [(row, g, e) for row, g, e in zip(c.rows, got, c.expected, strict=True)
           if not _same_python(g, e, dtype)]
    assert not bad, f"{c.expr!r}: (row, reference, documented): {bad}"


def _same_python(got: Any, expected: Any, dtype: str) -> bool:
    if dtype == "timestamp":
        return got == expected
    if dtype == "float64" and got is not None and expected is not None:
        return same_bits(got, expected)  # documented values are exact, signed zeros included
    return same_value(got, expected, dtype)


def agrees(node: Node, actual: Any, expected: Any, dtype: str) -> bool:
    """Engine value vs reference value: floats bit for bit, but for libm ops (``same_float``)."""
    return same_float(node, actual, expected) if dtype == "float64" else \
        same_value(actual, expected, dtype)


@pytest.fixture(scope="module", params=ENGINE_PARAMS)
def batch(request: pytest.FixtureRequest) -> tuple[str, dict[str, EngineResult | Exception]]:
    """All cases on one engine over all rows: one frame, one job. On failure, case by case."""
    engine = request.param
    run = runner_for(engine, request)
    try:
        result = run([c.expr for c in CASES], ALL_ROWS, SCHEMA)
        return engine, {c.id: EngineResult([result.dtypes[k]], [result.values[k]])
                        for k, c in enumerate(CASES)}
    except Exception:  # find the culprit: each case alone, keeping its exception
        out: dict[str, EngineResult | Exception] = {}
        for c in CASES:
            try:
                out[c.id] = run([c.expr], ALL_ROWS, SCHEMA)
            except Exception as exc:
                out[c.id] = exc
        return engine, out


@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_engine_matches_reference(c: Case, batch: tuple[str, dict[str, Any]],
                                  request: pytest.FixtureRequest) -> None:
    engine, results = batch
    if engine in c.gaps:
        request.applymarker(pytest.mark.xfail(strict=True, raises=c.gaps[engine],
                                              reason=f"declared {engine} gap"))
    result = results[c.id]
    if isinstance(result, Exception):
        raise result
    dtype = infer_dtype(c.expr, SCHEMA)
    assert result.dtypes[0] == engine_dtype(dtype, engine)  # type: ignore[arg-type]
    expected = [eval_expr(c.expr, row, SCHEMA) for row in ALL_ROWS]
    bad = [(row, got, want) for row, got, want in zip(ALL_ROWS, result.values[0], expected,
                                                      strict=True)
           if not agrees(c.expr, got, want, dtype)]
    assert not bad, f"{engine} {c.expr!r}: {len(bad)} rows differ, e.g. {bad[:3]}"


DEPTH = 12
# Each chain nests one kind of op DEPTH times (naming its operand once). A compiled guard that
# named its operand twice would double the tree per level: 2**12 times the work, which no engine finishes in
# time; Spark also plans some constructs (nanvl, sort_array) in time doubling with depth.
DEEP_CHAINS = {
    "add-mul-float": lambda x: (x + 1.5) * 0.5,
    "div": lambda x: x / 1.0,
    "floordiv-float": lambda x: (x // 1.0) + 0.25,
    "mod-float": lambda x: x % 1e9,
    "floordiv-int": lambda x: x.cast("int64") // 1,
    "mod-int": lambda x: x.cast("int64") % 1_000_000_007,
    "clip": lambda x: x.clip(-1e12, 1e12),
    "round": lambda x: x.round(1),
    "cast-float-int": lambda x: x.cast("int64").cast("float64"),
    "abs-int": lambda x: x.cast("int64").abs(),
    "cast-timestamp": lambda x: x.cast("int64").cast("timestamp").cast("int64"),
    "log-exp": lambda x: x.log1p().exp() - 1.0,
    "case": lambda x: when(col("f") > 100.0).then(-1.0).otherwise(x * 1.0),
    "coalesce": lambda x: coalesce(x * 2.0, lit(1.0)) / 2.0,
    "compare-cast": lambda x: ((x < 1e9) & lit(True)).cast("float64"),
    "string": lambda x: x.cast("int64").cast("string").str_len().cast("float64"),
}


@pytest.mark.timeout(300)
def test_deep_rules_compile_linearly(engine: str, request: pytest.FixtureRequest) -> None:
    run = runner_for(engine, request)
    schema = {"f": "float64"}
    chains: list[Node] = []
    for step in DEEP_CHAINS.values():
        node: Node = col("f")
        for _ in range(DEPTH):
            node = step(node)
        chains.append(node)
    rows = [{"f": 0.5}, {"f": None}, {"f": -3.0}]
    started = time.monotonic()
    result = run(chains, rows, schema)
    assert time.monotonic() - started < 60
    for name, node, got in zip(DEEP_CHAINS, chains, result.values, strict=True):
        dtype = infer_dtype(node, schema)
        want = [eval_expr(node, row, schema) for row in rows]
        assert all(agrees(node, g, w, dtype) for g, w in zip(got, want, strict=True)), \
            (name, got, want)
