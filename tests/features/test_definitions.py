"""Definitions and `tessera apply` validation: every mistake is one line naming view and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from features import Entity, FeatureService, FeatureView, Source, agg, col
from features.errors import DefinitionError
from features.repo import Definitions
from features.validate import validate, view_problems

SCHEMA = {"user_id": "int64", "amount": "float64", "currency": "string", "ts": "timestamp"}
SRC = Source(name="txns", path="x", schema=SCHEMA, timestamp_field="ts")
USER = Entity(name="user", join_key="user_id")


def view(**kw) -> FeatureView:
    args = dict(name="spend", entities=[USER], source=SRC, ttl="1d",
                features=[agg.sum(col("amount"), windows=["1h"], name="amount_sum")])
    args.update(kw)
    return FeatureView(**args)


def only_problem(v: FeatureView) -> str:
    problems = view_problems(v)
    assert len(problems) == 1, problems
    assert "\n" not in problems[0]
    return problems[0]


def test_builders_name_one_feature_per_window() -> None:
    v = view(features=[agg.count(windows=["1h", "7d/1h", "lifetime"], name="n"),
                       agg.last(col("currency"), name="last_currency")])
    assert [f.name for f in v.features] == ["n_1h", "n_7d", "n_lifetime", "last_currency"]
    assert v.feature("last_currency").plain
    assert view_problems(v) == []


def test_unknown_column_names_view_feature_and_suggests() -> None:
    msg = only_problem(view(features=[agg.sum(col("amout"), windows=["1h"], name="s")]))
    assert msg.startswith("feature view 'spend', feature 's_1h': unknown column 'amout'")
    assert "'amount'" in msg


def test_type_mismatch_names_the_function_and_type() -> None:
    msg = only_problem(view(features=[agg.sum(col("currency"), windows=["1h"], name="s")]))
    assert msg == ("feature view 'spend', feature 's_1h': sum expects int64 or float64, "
                   "got string (col('currency'))")


def test_duplicate_feature_name() -> None:
    msg = only_problem(view(features=[agg.count(windows=["1h"], name="n"),
                                      agg.count(windows=["1h"], name="n")]))
    assert msg == "feature view 'spend', feature 'n_1h': duplicate feature name"


def test_window_not_divisible_by_its_tile() -> None:
    msg = only_problem(view(features=[agg.count(windows=["1h/7m"], name="n")]))
    assert msg == "feature view 'spend', feature 'n_1h': window '1h' is not divisible by its tile '7m'"


def test_missing_entity_key_and_wrong_key_type() -> None:
    v = view(entities=[Entity(name="card", join_key="card_id")])
    assert "entity 'card': join key 'card_id' is not a column of source 'txns'" in only_problem(v)
    v = view(entities=[Entity(name="cur", join_key="currency", dtype="int64")])
    assert "join key 'currency' is string in the source, but the entity says int64" in only_problem(v)


def test_filter_must_be_bool_and_plain_last_needs_a_ttl() -> None:
    assert "filter: must be a bool expression, got float64" in only_problem(
        view(filter=col("amount") * 2))
    msg = only_problem(view(ttl=None, features=[agg.last(col("amount"), name="last_amount")]))
    assert msg == ("feature view 'spend', feature 'last_amount': a plain last() needs a ttl: "
                   "the view's (ttl='30d') or its own (agg.last(..., ttl='3d'))")


def test_derived_column_errors_and_shadowing() -> None:
    assert "derived column 'x': unknown column 'nope'" in only_problem(
        view(derived={"x": col("nope") + 1}))
    assert "derived column 'amount': shadows a source column" in only_problem(
        view(derived={"amount": col("amount") * 2}))


def test_only_last_may_be_plain() -> None:
    with pytest.raises(DefinitionError, match="sum needs windows"):
        agg.sum(col("amount"), windows=[], name="s")


def test_validate_reports_every_problem_and_unknown_service_features() -> None:
    bad = view(features=[agg.sum(col("currency"), windows=["1h/7m"], name="s")])
    defs = Definitions(views={"spend": bad}, services={
        "svc": FeatureService(name="svc", features=["spend:nope"])})
    with pytest.raises(DefinitionError) as info:
        validate(defs)
    lines = str(info.value).splitlines()
    assert len(lines) == 3
    assert lines[-1] == "feature service 'svc': unknown feature 'spend:nope' (expected 'view:feature')"


def test_fingerprint_follows_the_rules_not_the_description() -> None:
    a, b = view(), view(description="other words", owner="someone")
    assert a.fingerprint() == b.fingerprint()
    c = view(filter=col("amount") > 0)
    assert c.fingerprint() != a.fingerprint()
    d = view(features=[agg.sum(col("amount"), windows=["1h/10m"], name="amount_sum")])
    assert d.fingerprint() != a.fingerprint()  # another tile size is another state


def test_the_example_repo_is_valid(repo_config) -> None:
    from features.repo import load_definitions

    defs = load_definitions(repo_config)
    validate(defs)
    assert set(defs.views) == {"user_spend", "merchant_activity"}
    assert "fraud_model_v1" in defs.services


def test_a_definitions_file_error_names_the_file(tmp_path: Path) -> None:
    from features.config import load_config
    from features.repo import load_definitions

    (tmp_path / "defs.py").write_text("from features import lit\nx = lit(None)\n")
    (tmp_path / "feature_repo.yaml").write_text("project: t\ndefinitions: [defs.py]\n")
    with pytest.raises(DefinitionError, match=r"defs\.py:2: lit\(None\) needs a dtype"):
        load_definitions(load_config(tmp_path / "feature_repo.yaml", environ={}))


def test_a_view_needs_at_least_one_feature() -> None:
    msg = only_problem(view(features=[]))
    assert msg.startswith("feature view 'spend': needs at least one feature")


@pytest.mark.parametrize("dtype", ["float64", "bool", "timestamp"])
def test_an_entity_key_must_be_int64_or_string(dtype: str) -> None:
    schema = {**SCHEMA, "key": dtype}
    src = Source(name="txns", path="x", schema=schema, timestamp_field="ts")
    entity = Entity(name="thing", join_key="key", dtype=dtype)  # type: ignore[arg-type]
    msg = only_problem(view(source=src, entities=[entity]))
    assert msg == (f"feature view 'spend', entity 'thing': dtype {dtype!r} cannot be a join key "
                   f"(expected int64 or string)")


IDENT = "is not an identifier (expected ASCII letters, digits and _, not starting with a digit)"


@pytest.mark.parametrize("name", ["../evil", "a/b", "a..b", "two words", "view:x", "1st", "",
                                  "naïve", "x\n"])
def test_a_view_name_must_be_an_identifier(name: str) -> None:
    assert only_problem(view(name=name)) == f"feature view {name!r} {IDENT}"


def test_every_other_name_must_be_an_identifier_too() -> None:
    src = Source(name="raw/txns", path="x", schema={**SCHEMA, "user id": "int64"},
                 timestamp_field="ts")
    v = view(source=src, entities=[Entity(name="the user", join_key="user id")],
             derived={"amount-eur": col("amount") * 2},
             features=[agg.sum(col("amount"), windows=["1h"], name="amount sum")])
    assert view_problems(v) == [
        f"feature view 'spend', source 'raw/txns' {IDENT}",
        f"feature view 'spend', entity 'the user' {IDENT}",
        f"feature view 'spend', entity 'the user': join key 'user id' {IDENT}",
        f"feature view 'spend', derived column 'amount-eur' {IDENT}",
        f"feature view 'spend', feature 'amount sum_1h' {IDENT}",
    ]


def test_source_columns_may_be_named_anything() -> None:
    src = Source(name="txns", path="x", schema={**SCHEMA, "amount (EUR)": "float64"},
                 timestamp_field="ts")
    assert view_problems(view(source=src, features=[
        agg.sum(col("amount (EUR)"), windows=["1h"], name="amount_sum")])) == []


def test_validate_reports_unused_entities_sources_and_services_once() -> None:
    odd = Entity(name="odd", join_key="k", dtype="bool")  # type: ignore[arg-type]
    unused = Source(name="../raw", path="x", schema=SCHEMA, timestamp_field="ts")
    v = view(name="../evil", features=[])
    defs = Definitions(entities={"user": USER, "odd": odd}, sources={"txns": SRC, "../raw": unused},
                       views={"../evil": v},
                       services={"a b": FeatureService(name="a b", features=[])})
    with pytest.raises(DefinitionError) as info:
        validate(defs)
    assert str(info.value).splitlines() == [
        f"feature view '../evil' {IDENT}",
        "feature view '../evil': needs at least one feature (e.g. agg.count(windows=['1d'], "
        "name='events'))",
        "entity 'odd': dtype 'bool' cannot be a join key (expected int64 or string)",
        f"source '../raw' {IDENT}",
        f"feature service 'a b' {IDENT}",
    ]


def test_check_identifier_is_reusable() -> None:
    from features.names import IDENTIFIER_PATTERN, check_identifier, is_identifier

    assert IDENTIFIER_PATTERN == r"^[A-Za-z_][A-Za-z0-9_]*$"
    assert check_identifier("feature view", "user_spend_7d") is None
    assert check_identifier("feature view", "../evil") == f"feature view '../evil' {IDENT}"
    assert check_identifier("entity", None) == "entity None is a NoneType, expected a str identifier"
    assert not is_identifier("ok\n") and is_identifier("_private2")
