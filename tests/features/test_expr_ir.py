"""The IR as data: JSON round trips, fingerprints, typing errors, literals, columns()."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone

import pytest

from features.errors import ExprError, UnsupportedOperationError
from features.expr import (
    Call,
    Col,
    Lit,
    Op,
    abs_,
    coalesce,
    col,
    columns,
    day_of_week,
    fingerprint,
    from_dict,
    from_json,
    hour,
    infer_dtype,
    lit,
    log1p,
    to_dict,
    to_json,
    when,
)

SCHEMA = {"amount": "int64", "price": "float64", "currency": "string", "ts": "timestamp",
          "flag": "bool", "user_id": "int64"}

RULES = [
    col("amount") * 100,
    (col("price") / col("amount")).fill_null(0.0).round(2),
    when(col("amount") > 0).then(log1p(col("amount"))).when(col("flag")).then(-1.5).otherwise(0),
    when(col("flag")).then(col("currency").str_upper()),
    coalesce(col("price"), col("amount"), lit(None, "float64")),
    (col("ts") >= lit(datetime(1, 1, 1, tzinfo=UTC))) & ~col("flag").is_null(),
    hour(col("ts")) * 60 + col("ts").minute() - day_of_week(col("ts")),
    col("currency").str_contains('"\\é日本').cast("int64").cast("string").str_len(),
    abs_(col("price")).clip(None, 1e300).sqrt().exp(),
    col("amount").clip(-5, 5) // 2 % 3,
    lit(0.1) + lit(-0.0) + lit(1e-300) + lit(2**63 - 1).cast("float64"),
]


@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_json_round_trip_is_exact(rule: Call) -> None:
    text = to_json(rule)
    back = from_json(text)
    assert back.equals(rule)
    assert to_json(back) == text
    assert fingerprint(back) == fingerprint(rule)
    assert from_dict(json.loads(json.dumps(to_dict(rule)))).equals(rule)
    assert infer_dtype(back, SCHEMA) == infer_dtype(rule, SCHEMA)


def test_json_is_canonical() -> None:
    text = to_json(col("amount") * 100)
    assert text == ('{"args":[{"col":"amount"},{"dtype":"int64","lit":100}],"op":"mul"}')
    assert to_json(lit(datetime(2024, 1, 1, 1, tzinfo=timezone(timedelta(hours=1))))) == \
        '{"dtype":"timestamp","lit":"2024-01-01T00:00:00.000000Z"}'
    assert to_json(lit(0.1)) == '{"dtype":"float64","lit":0.1}'
    assert to_json(lit("é")) == '{"dtype":"string","lit":"\\u00e9"}'


def test_fingerprint_is_stable_and_sensitive() -> None:
    rule = (col("amount") * 100).clip(0, 10)
    assert fingerprint(rule) == fingerprint((col("amount") * 100).clip(0, 10))
    assert hash(rule) == hash((col("amount") * 100).clip(0, 10))
    # the value stored by the registry must never change for an unchanged rule
    assert fingerprint(col("amount") * 100) == (
        "da0f81dc5395394ee25b4b3f62e5b864eb07e52a3260cc6e2a6d8dbd3cec77d4")
    changed = [
        (col("amount") * 101).clip(0, 10), (col("amount") * 100).clip(0, 11),
        (col("amount") * 100).clip(0.0, 10), (col("price") * 100).clip(0, 10),
        (col("amount") + 100).clip(0, 10), (100 * col("amount")).clip(0, 10),
        (col("amount") * 100.0).clip(0, 10), (col("amount") * 100).clip(None, 10),
    ]
    prints = {fingerprint(r) for r in changed} | {fingerprint(rule)}
    assert len(prints) == len(changed) + 1


def test_fingerprint_ignores_dict_and_option_order() -> None:
    rule = col("price").clip(-1.5, 2)
    shuffled = '{"options": {"lo": -1.5, "hi": 2}, "op": "clip", "args": [ {"col": "price"} ]}'
    assert fingerprint(from_json(shuffled)) == fingerprint(rule)
    built = Call(Op.CLIP, (Col("price"),), (("lo", -1.5), ("hi", 2)))
    assert fingerprint(built) == fingerprint(rule)
    assert built.options == (("hi", 2), ("lo", -1.5))


def test_nodes_work_as_dict_keys_despite_overloaded_eq() -> None:
    table = {col("a") + 1: "x"}
    assert table[col("a") + 1] == "x"
    assert (col("a") + 2) not in table
    assert col("a") in [col("b"), col("a")]
    with pytest.raises(ExprError, match="truth value"):
        bool(col("a") > 1)
    with pytest.raises(ExprError, match="truth value"):
        _ = (col("a") > 1) and (col("b") > 1)


@pytest.mark.parametrize(("rule", "message"), [
    (col("amout") + 1,
     "unknown column 'amout' (available: amount, price, currency, ts, flag, user_id; "
     "did you mean 'amount'?)"),
    (col("currency") + 1,
     "'+' expects numeric operands, got string ('currency') and int64: (col('currency') + 1)"),
    (col("ts") < col("amount"), "'<' expects two numbers, two strings, two timestamps, got "
                                "timestamp ('ts') and int64 ('amount')"),
    (col("flag") < col("flag"), "'<' expects two numbers, two strings, two timestamps"),
    (col("amount") & col("flag"), "'&' expects bool operands, got int64 ('amount')"),
    (col("currency").log1p(), "'log1p' expects a numeric operand, got string ('currency')"),
    (col("price").str_len(), "'str_len' expects a string operand, got float64 ('price')"),
    (col("amount").hour(), "'hour' expects a timestamp operand, got int64 ('amount')"),
    (when(col("amount")).then(1), "'when' expects a bool condition, got int64 ('amount')"),
    (when(col("flag")).then(1).otherwise("x"),
     "'when/then' values must share one type (int64 and float64 mix to float64), got int64 and "
     "string"),
    (coalesce(col("ts"), col("amount")), "'coalesce' values must share one type"),
    (col("price").cast("string"), "cannot cast float64 ('price') to string (engines format "
                                  "floats differently"),
    (col("currency").cast("timestamp"), "cannot cast string ('currency') to timestamp"),
    ((col("price") * 2).cast("bool"), "cannot cast float64 ((col('price') * 2)) to bool"),
])
def test_type_errors_are_one_line_naming_the_culprit(rule: Call, message: str) -> None:
    with pytest.raises(ExprError) as info:
        infer_dtype(rule, SCHEMA)
    text = str(info.value)
    assert "\n" not in text
    assert message in text


def test_unknown_column_without_a_close_match_has_no_hint() -> None:
    with pytest.raises(ExprError, match=r"^unknown column 'zzz' \(available: a\)$"):
        infer_dtype(col("zzz"), {"a": "int64"})


def test_schema_dtypes_are_checked() -> None:
    with pytest.raises(ExprError, match="column 'a' has unsupported dtype 'int32'"):
        infer_dtype(col("a"), {"a": "int32"})


@pytest.mark.parametrize(("value", "message"), [
    (3 + 4j, r"cannot use \(3\+4j\) \(complex\) in an expression"),
    ([1], r"cannot use \[1\] \(list\)"),
    (float("nan"), "float literals must be finite"),
    (float("inf"), "float literals must be finite"),
    (2**63, "outside the int64 range"),
])
def test_literal_wrapping_rejects_bad_values(value: object, message: str) -> None:
    with pytest.raises(ExprError, match=message):
        col("a") + value  # type: ignore[operator]


def test_literal_wrapping_infers_dtypes() -> None:
    assert (col("a") + 1).args[1].equals(Lit(1, "int64"))
    assert (1.5 * col("a")).args[0].equals(Lit(1.5, "float64"))
    assert (col("b") & True).args[1].equals(Lit(True, "bool"))
    assert (col("s") == "x").args[1].equals(Lit("x", "string"))
    naive = datetime(2024, 1, 1)
    assert (col("t") < naive).args[1].equals(lit(naive.replace(tzinfo=UTC)))
    assert lit(1, "float64").value == 1.0 and isinstance(lit(1, "float64").value, float)
    with pytest.raises(ExprError, match=r"None has no dtype.*is_null"):
        col("a") == None  # noqa: B015, E711 - the builder must explain this mistake
    with pytest.raises(ExprError, match="lit\\(None\\) needs a dtype"):
        lit(None)
    with pytest.raises(ExprError, match="is not a int64 value"):
        lit("1", "int64")
    with pytest.raises(ExprError, match="is not a int64 value"):
        lit(True, "int64")


def test_invalid_trees_are_rejected_when_built_or_loaded() -> None:
    with pytest.raises(ExprError, match="unknown operation 'pow'"):
        from_json('{"op": "pow", "args": [{"col": "a"}, {"col": "b"}]}')
    with pytest.raises(ExprError, match="'\\+' takes 2 argument"):
        from_json('{"op": "add", "args": [{"col": "a"}]}')
    with pytest.raises(ExprError, match="unexpected keys"):
        from_json('{"col": "a", "extra": 1}')
    with pytest.raises(ExprError, match="int64 literal written as a float"):
        from_json('{"lit": 1.0, "dtype": "int64"}')
    with pytest.raises(ExprError, match="malformed"):
        from_json("{")
    with pytest.raises(ExprError, match="lower bound 2 is above upper bound 1"):
        col("a").clip(2, 1)
    with pytest.raises(ExprError, match="decimals"):
        col("a").round(16)
    with pytest.raises(ExprError, match="otherwise\\(\\) must follow"):
        (col("a") + 1).otherwise(0)


def test_columns_lists_every_referenced_column_once() -> None:
    rule = when(col("a") > col("b")).then(col("c").log()).otherwise(coalesce(col("a"), 1))
    assert columns(rule) == frozenset({"a", "b", "c"})
    assert columns(lit(1) + 2) == frozenset()


def test_repr_reads_like_the_builder() -> None:
    assert repr(col("amount") * 100) == "(col('amount') * 100)"
    assert str(when(col("f")).then(1).otherwise(lit(None, "int64"))) == (
        "when(col('f')).then(1).otherwise(lit(None, 'int64'))")
    assert repr(col("x").clip(0, None).round(2)) == "col('x').clip(0, None).round(2)"
    assert repr(-col("x") + (~col("b")).cast("int64")) == (
        "((-col('x')) + (~col('b')).cast('int64'))")
    assert repr(lit(datetime(2024, 1, 1, tzinfo=UTC))) == (
        "lit('2024-01-01T00:00:00.000000Z', 'timestamp')")


def test_function_and_method_forms_build_the_same_tree() -> None:
    ts = col("ts")
    assert hour(ts).equals(ts.hour())
    assert day_of_week(ts).equals(ts.day_of_week())
    assert log1p(col("a")).equals(col("a").log1p())
    assert abs_(col("a")).equals(abs(col("a")))
    assert col("a").fill_null(0).equals(coalesce(col("a"), 0))


def test_engines_are_not_imported_by_the_core() -> None:
    code = ("import sys, features.expr, features.compile, features._polars, features._spark;"
            "bad = [m for m in ('polars', 'pyspark') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_engine_is_rejected() -> None:
    from features.compile import compile_expr

    with pytest.raises(UnsupportedOperationError, match="engine 'duckdb'"):
        compile_expr(col("a"), "duckdb", {"a": "int64"})  # type: ignore[arg-type]
