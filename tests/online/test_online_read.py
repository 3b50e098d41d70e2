"""Online reads from real Redis equal the point-in-time read at the same instant, for every
feature of the example, with windows merged at request time; bad requests fail in one line."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from features.errors import OnlineRequestError
from features.online import keys as K
from features.store import FeatureStore
from features.windows import to_micros
from pipelines.materialize import materialize
from tests.online.repo import REPO_ROOT, build, equal, historical, ids, today

ORPHAN = 987654321  # a merchant id with only a lifetime value


@pytest.mark.parametrize("after", [timedelta(minutes=10), timedelta(hours=1, minutes=5),
                                   timedelta(days=1, hours=3), timedelta(days=8),
                                   timedelta(days=31)])
@pytest.mark.parametrize(("view", "key"), [("user_spend", "user_id"),
                                           ("merchant_activity", "merchant_id")])
def test_online_equals_historical_for_every_feature(materialized: FeatureStore, view: str,
                                                     key: str, after: timedelta) -> None:
    at = today() + after  # every event is before today's midnight
    keys = ids(materialized, key)
    fv = materialized.definitions.views[view]
    feats = [f"{view}:{f.name}" for f in fv.features]
    online = materialized.get_online_features(feats, [{key: k} for k in keys], now=at)
    got = online.to_dict()
    want = historical(materialized, view, key, keys, at)
    mismatches = [(f.name, k, got[f.name][i], want[f.name][i])
                  for f in fv.features for i, k in enumerate(keys)
                  if not equal(f.function, got[f.name][i], want[f.name][i])]
    assert mismatches == [], mismatches[:5]
    statuses = online.status_dict()
    assert all(statuses[f.name][-1] == "NOT_FOUND" for f in fv.features)
    assert all(s != "NOT_FOUND" for s in statuses[fv.features[0].name][:-1])


def test_a_quiet_key_reads_zero_an_hour_later_without_any_write(
        materialized: FeatureStore) -> None:
    at = today() + timedelta(minutes=1)
    keys = ids(materialized, "user_id", 400)
    feats = ["user_spend:txn_count_1h", "user_spend:txn_count_1d"]
    before = materialized.get_online_features(feats, {"user_id": keys}, now=at).to_dict()
    active = [i for i, c in enumerate(before["txn_count_1h"]) if c]
    assert active, "some user must have an event in the last hour before midnight"
    later = materialized.get_online_features(feats, {"user_id": keys},
                                             now=at + timedelta(hours=1)).to_dict()
    assert all(later["txn_count_1h"][i] == 0 for i in active)
    assert any(later["txn_count_1d"][i] for i in active)


def test_plain_feature_past_its_ttl_is_outside_max_age(materialized: FeatureStore) -> None:
    [user] = ids(materialized, "user_id", 2)[:1]
    feats = ["user_spend:last_country", "user_spend:txn_count_7d"]
    fresh = materialized.get_online_features(feats, [{"user_id": user}], now=today())
    assert fresh.status_dict()["last_country"] == ["PRESENT"]
    assert isinstance(fresh.to_dict()["last_country"][0], str)
    stale = materialized.get_online_features(feats, [{"user_id": user}],
                                             now=today() + timedelta(days=31))
    assert stale.status_dict()["last_country"] == ["OUTSIDE_MAX_AGE"]
    assert stale.to_dict()["last_country"] == [None]
    assert stale.to_dict()["txn_count_7d"] == [0]


def test_feature_service_full_names_and_output_shapes(materialized: FeatureStore) -> None:
    [user] = ids(materialized, "user_id", 2)[:1]
    [merchant] = ids(materialized, "merchant_id", 2)[:1]
    resp = materialized.get_online_features(
        feature_service="fraud_model_v1", entity_rows=[{"user_id": user, "merchant_id": merchant}],
        full_feature_names=True)
    service = materialized.definitions.services["fraud_model_v1"]
    assert resp.feature_names == [ref.replace(":", "__") for ref in service.features]
    out = resp.to_dict(include_event_timestamps=True)
    assert out["user_id"] == [user] and out["merchant_id"] == [merchant]
    assert out["user_spend__txn_count_7d__ts"][0] > 0 and out["user_id__ts"] == [0]
    table = resp.to_arrow()
    assert table.num_rows == 1
    assert str(table.schema.field("user_spend__spend_eur_7d").type) == "double"
    assert str(table.schema.field("merchant_activity__txn_count_lifetime").type) == "int64"
    assert list(resp.to_df().columns) == list(table.column_names)


@pytest.mark.parametrize("after", [timedelta(minutes=10), timedelta(days=1, hours=3),
                                   timedelta(days=31)])
def test_one_entity_reads_as_it_does_among_many(materialized: FeatureStore,
                                                after: timedelta) -> None:
    """A one-entity read (evaluated without per-entity columns, the usual call of a model)
    gives every value, status and event time a many-entity read gives that entity: every
    feature of both views (windows, lifetime, last within a window, a plain TTL feature, fresh
    and past its TTL), keys known, never seen and null."""
    users = ids(materialized, "user_id", 6)
    merchants = ids(materialized, "merchant_id", 6)
    rows = [{"user_id": u, "merchant_id": m} for u, m in zip(users, merchants, strict=True)]
    rows += [{"user_id": None, "merchant_id": merchants[0]},
             {"user_id": users[0], "merchant_id": None},
             {"user_id": users[0], "merchant_id": ORPHAN}]  # a lifetime value, no window value
    view = materialized.definitions.views["merchant_activity"]
    head, tail = K.prefix(materialized.config.project, view.name, view.fingerprint())
    client = materialized.online.client
    client.set(f"{head}{ORPHAN}{tail}{K.LIFETIME}",
               client.get(f"{head}{merchants[0]}{tail}{K.LIFETIME}"))
    try:
        _one_by_one_equals_many(materialized, rows, today() + after)
    finally:
        client.delete(f"{head}{ORPHAN}{tail}{K.LIFETIME}")


def _one_by_one_equals_many(materialized: FeatureStore, rows: list[dict], at: datetime) -> None:
    """Each row read alone gives its row of the many-row read, by values, statuses and times."""
    many = materialized.get_online_features(feature_service="fraud_model_v1",
                                            entity_rows=rows, full_feature_names=True, now=at)
    want, want_status = many.to_dict(include_event_timestamps=True), many.status_dict()
    assert {"PRESENT", "NOT_FOUND"} <= {s for c in want_status.values() for s in c}
    assert want["merchant_activity__txn_count_lifetime__ts"][-1] > 0  # the orphan's
    for i, row in enumerate(rows):
        one = materialized.get_online_features(feature_service="fraud_model_v1",
                                               entity_rows=[row], full_feature_names=True,
                                               now=at)
        assert one.to_dict(include_event_timestamps=True) == {
            k: [v[i]] for k, v in want.items()}, row
        assert one.status_dict() == {k: [v[i]] for k, v in want_status.items()}, row
        assert one.event_times_us == [[c[i]] for c in many.event_times_us], row
    spend = materialized.definitions.views["user_spend"]  # one view: its features in any order
    feats = [f"user_spend:{f.name}" for f in reversed(spend.features)]
    many = materialized.get_online_features(feats, rows[:3], now=at)
    for i, row in enumerate(rows[:3]):
        one = materialized.get_online_features(feats, [row], now=at)
        assert one.to_dict() == {k: [v[i]] for k, v in many.to_dict().items()}
        assert one.status_dict() == {k: [v[i]] for k, v in many.status_dict().items()}


def test_entity_rows_of_any_mapping_or_int_type_read_alike(materialized: FeatureStore) -> None:
    """Rows as plain dicts, as other mappings, and keys as numpy ints read the same, few or
    many (many rows take C-level loops first); numpy keys are echoed as Python ints, as Feast
    does, so the response goes to JSON as it is, and the caller's own list is left alone."""
    import json
    from types import MappingProxyType

    import numpy as np

    users = ids(materialized, "user_id", 8)
    feats = ["user_spend:txn_count_7d", "user_spend:spend_eur_7d"]
    want = materialized.get_online_features(feats, [{"user_id": u} for u in users]).to_dict()
    assert want["txn_count_7d"][0] > 0
    for rows in ([MappingProxyType({"user_id": u}) for u in users],
                 [{"user_id": np.int64(u)} for u in users],
                 [{"user_id": u, "other": "x"} for u in users]):
        got = materialized.get_online_features(feats, rows).to_dict()
        assert got["txn_count_7d"] == want["txn_count_7d"]
        assert got["spend_eur_7d"] == want["spend_eur_7d"]
        assert got["user_id"] == users
        assert [type(u) for u in got["user_id"]] == [int] * len(users)
        json.dumps(got)  # TypeError on a numpy int
    for few in (1, 8):  # one entity takes the plain loop, eight the C-level checks first
        given = np.array(users[:few])
        column = list(given)
        got = materialized.get_online_features(feats, {"user_id": column}).to_dict()
        assert [type(u) for u in got["user_id"]] == [int] * few
        assert got["txn_count_7d"] == want["txn_count_7d"][:few]
        assert [type(u) for u in column] == [np.int64] * few  # not rewritten in place


def test_entity_rows_as_a_data_frame_read_as_its_columns(materialized: FeatureStore) -> None:
    """pandas, Polars and pyarrow frames read as their columns (as get_historical_features
    takes them), their nulls as null keys (NOT_FOUND), the keys echoed as Python values."""
    import pandas as pd
    import polars as pl
    import pyarrow as pa

    users = ids(materialized, "user_id", 5)
    feats = ["user_spend:txn_count_7d", "user_spend:spend_eur_7d"]
    want = materialized.get_online_features(feats, {"user_id": [*users, None]})
    assert want.status_dict()["txn_count_7d"][-1] == "NOT_FOUND"
    frames = [pd.DataFrame({"user_id": pd.array([*users, None], dtype="Int64"), "x": 1.5}),
              pl.DataFrame({"user_id": [*users, None], "x": [1.5] * 6}),
              pa.table({"user_id": [*users, None], "x": [1.5] * 6})]
    for frame in frames:
        got = materialized.get_online_features(feats, frame)
        assert got.to_dict() == want.to_dict(), type(frame)
        assert got.status_dict() == want.status_dict()
        assert [type(u) for u in got.to_dict()["user_id"][:-1]] == [int] * 5
    with pytest.raises(OnlineRequestError, match=r"entity row 0: join key 'user_id' is float "
                                                 r"1\.0; feature view 'user_spend' expects int64"):
        materialized.get_online_features(feats, pd.DataFrame({"user_id": [1.0, 2.0]}))
    with pytest.raises(OnlineRequestError, match=r"polars LazyFrame; expected a DataFrame "
                                                 r"\(call \.collect\(\)\)"):
        materialized.get_online_features(feats, pl.DataFrame({"user_id": users}).lazy())


def test_null_key_reads_not_found(materialized: FeatureStore) -> None:
    resp = materialized.get_online_features(["user_spend:txn_count_7d", "user_spend:spend_eur_7d"],
                                            [{"user_id": None}])
    assert resp.to_dict()["txn_count_7d"] == [0]
    assert resp.status_dict()["txn_count_7d"] == ["NOT_FOUND"]
    # typed by the entity's declared dtype, not inferred from the values (all null here)
    assert str(resp.to_arrow().schema.field("user_id").type) == "int64"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"features": ["user_spend:txn_count_7"]}, r"no feature 'txn_count_7' \(did you mean "
                                               r"'txn_count_7d'"),
    ({"features": ["user_spnd:txn_count_7d"]}, r"unknown feature view 'user_spnd'.*'user_spend'"),
    ({"features": ["txn_count_7d"]}, r"'txn_count_7d' is not 'view:feature'"),
    ({"feature_service": "fraud_model"}, r"unknown feature service 'fraud_model'.*fraud_model_v1"),
    ({"features": ["user_spend:txn_count_7d"], "entity_rows": [{"user": 1}]},
     r"entity row 0 has no join key 'user_id'"),
    ({"features": ["user_spend:txn_count_7d"], "entity_rows": [{"user_id": 1}, {"user_id": "2"}]},
     r"entity row 1: join key 'user_id' is str '2'; feature view 'user_spend' expects int64"),
    ({"features": ["user_spend:txn_count_7d"], "entity_rows": [{"user_id": True}]},
     r"entity row 0: join key 'user_id' is bool"),
    ({"features": ["user_spend:txn_count_7d"], "entity_rows": [{"user_id": -(2**63) - 1}]},
     r"entity row 0: join key 'user_id' is -9223372036854775809, outside int64"),
    # many rows (checked by C-level loops first): the same errors, naming the same row
    ({"features": ["user_spend:txn_count_7d"],
      "entity_rows": {"user_id": [*range(7), None, 2**63, 5]}},
     r"entity row 8: join key 'user_id' is 9223372036854775808, outside int64 \(feature view "
     r"'user_spend' keys are -2\*\*63 \.\. 2\*\*63-1\)"),
    ({"features": ["user_spend:txn_count_7d"],
      "entity_rows": [{"user_id": i} for i in range(7)] + [{"user": 1}, {"user_id": 9}]},
     r"entity row 7 has no join key 'user_id' \(feature view 'user_spend' needs it; the row "
     r"has: user\)"),
    ({"features": ["user_spend:txn_count_7d"],
      "entity_rows": [{"user_id": i} for i in range(7)] + [{"user_id": False}]},
     r"entity row 7: join key 'user_id' is bool False"),
    ({"features": ["user_spend:txn_count_7d"],
      "entity_rows": {"user_id": [*range(9), 2.0]}},
     r"entity row 9: join key 'user_id' is float 2.0"),
    # arguments of the wrong kind: the one line names the argument, never a bare TypeError
    ({"features": [["user_spend:txn_count_7d"]]},
     r"feature reference \['user_spend:txn_count_7d'\] is not 'view:feature'"),
    ({"features": 5}, r"^features is int 5; expected a list of 'view:feature' strings"),
    ({"feature_service": ["fraud_model_v1"]},
     r"^feature_service is list \['fraud_model_v1'\]; expected a feature service's name"),
    ({"features": ["user_spend:txn_count_7d"], "full_feature_names": "no"},
     r"^full_feature_names is str 'no'; expected True or False"),
    ({"features": ["user_spend:txn_count_7d"], "entity_rows": None},
     r"^entity rows are NoneType None; expected a list of dicts, a dict of columns or a data"),
    ({"features": ["user_spend:txn_count_7d"], "entity_rows": 5}, r"^entity rows are int 5"),
])
def test_bad_requests_fail_in_one_line(materialized: FeatureStore, kwargs: dict,
                                       message: str) -> None:
    kwargs.setdefault("entity_rows", [{"user_id": 1}])
    with pytest.raises(OnlineRequestError, match=message) as e:
        materialized.get_online_features(**kwargs)
    assert "\n" not in str(e.value)


def test_a_features_status_depends_on_its_own_value_only(materialized: FeatureStore) -> None:
    """A merchant with a lifetime value and no window value (its windows emptied): its
    windowed features are NOT_FOUND whether or not the request also names a lifetime feature
    (which is PRESENT), for one entity and among several."""
    [merchant] = ids(materialized, "merchant_id", 2)[:1]
    view = materialized.definitions.views["merchant_activity"]
    head, tail = K.prefix(materialized.config.project, view.name, view.fingerprint())
    client = materialized.online.client
    client.set(f"{head}{ORPHAN}{tail}{K.LIFETIME}",
               client.get(f"{head}{merchant}{tail}{K.LIFETIME}"))
    windowed = ["merchant_activity:txn_count_1d", "merchant_activity:amount_eur_mean_7d"]
    try:
        for rows in ([{"merchant_id": ORPHAN}],
                     [{"merchant_id": ORPHAN}, {"merchant_id": merchant}]):
            alone = materialized.get_online_features(windowed, rows).status_dict()
            mixed = materialized.get_online_features(
                [*windowed, "merchant_activity:txn_count_lifetime"], rows).status_dict()
            assert alone["txn_count_1d"][0] == alone["amount_eur_mean_7d"][0] == "NOT_FOUND"
            assert {f: mixed[f] for f in alone} == alone, len(rows)
            assert mixed["txn_count_lifetime"][0] == "PRESENT"
    finally:
        client.delete(f"{head}{ORPHAN}{tail}{K.LIFETIME}")


def test_a_feature_service_object_reads_as_its_name(materialized: FeatureStore) -> None:
    """As Feast's SDK takes it: ``feature_service=store.get_feature_service(...)``'s object."""
    rows = [{"user_id": ids(materialized, "user_id", 2)[0], "merchant_id": ORPHAN}]
    service = materialized.definitions.services["fraud_model_v1"]
    by_name = materialized.get_online_features(feature_service="fraud_model_v1",
                                               entity_rows=rows, full_feature_names=True)
    by_object = materialized.get_online_features(feature_service=service, entity_rows=rows,
                                                 full_feature_names=True)
    assert by_object.to_dict() == by_name.to_dict()


def test_nan_and_pandas_nulls_are_null_keys(materialized: FeatureStore) -> None:
    """A key pandas or numpy marks missing (``pd.NA``, ``NaN``) reads NOT_FOUND, as None does,
    in rows of dicts, in columns, and among many rows (the C-level checks' path)."""
    import numpy as np
    import pandas as pd

    [user] = ids(materialized, "user_id", 2)[:1]
    feats = ["user_spend:txn_count_7d", "user_spend:spend_eur_7d"]
    want = materialized.get_online_features(feats, [{"user_id": user}, {"user_id": None}])
    for null in (pd.NA, np.nan, float("nan"), np.float32("nan")):
        got = materialized.get_online_features(feats, [{"user_id": user}, {"user_id": null}])
        assert got.to_dict() == want.to_dict(), repr(null)
        assert got.status_dict()["txn_count_7d"] == ["PRESENT", "NOT_FOUND"]
        many = materialized.get_online_features(feats, {"user_id": [user] * 7 + [null]})
        assert many.to_dict()["user_id"][-1] is None
        assert many.status_dict()["spend_eur_7d"][-1] == "NOT_FOUND"


def test_a_frame_is_read_by_its_join_keys_only(materialized: FeatureStore) -> None:
    """Labels and other columns of a data frame are not read (whatever they hold); a join key
    given twice is an error naming it."""
    import pandas as pd
    import pyarrow as pa

    users = ids(materialized, "user_id", 3)
    feats = ["user_spend:txn_count_7d"]
    want = materialized.get_online_features(feats, {"user_id": users}).to_dict()
    frame = pd.DataFrame({"label": [{"a": 1}, "x", 2.5], "user_id": users})
    assert materialized.get_online_features(feats, frame).to_dict() == want
    twice = pd.DataFrame([[u, u] for u in users], columns=["user_id", "user_id"])
    with pytest.raises(OnlineRequestError, match=r"^entity rows: column 'user_id' appears 2 "
                                                 r"times; give each column once$"):
        materialized.get_online_features(feats, twice)
    table = pa.Table.from_arrays([pa.array(users), pa.array(users)], ["user_id", "user_id"])
    with pytest.raises(OnlineRequestError, match=r"column 'user_id' appears 2 times"):
        materialized.get_online_features(feats, table)


def test_a_huge_name_or_value_is_cut_in_the_message(materialized: FeatureStore) -> None:
    """What a caller gave is echoed cut, with its length: the line stays readable."""
    huge = "x" * 100_000
    cases = [({"features": [f"user_spend:{huge}"]}, "(100,002 characters)"),
             ({"features": [f"{huge}:txn_count_7d"]}, "(100,002 characters)"),
             ({"features": ["user_spend:txn_count_7d"], "entity_rows": [{"user_id": huge}]},
              "(100,002 characters); feature view 'user_spend' expects int64"),
             ({"features": ["user_spend:txn_count_7d"], "entity_rows": {huge: [1]}},
              "given: xxxxx")]
    for kwargs, fragment in cases:
        kwargs.setdefault("entity_rows", [{"user_id": 1}])
        with pytest.raises(OnlineRequestError) as e:
            materialized.get_online_features(**kwargs)
        assert fragment in str(e.value) and len(str(e.value)) < 400, str(e.value)[:500]


def test_now_accepts_datetime_or_micros(materialized: FeatureStore) -> None:
    """``now`` as a datetime (naive: UTC), a pandas Timestamp, an ISO 8601 string, a numpy
    datetime64 or µs (int or numpy int) reads the same instant; anything else is one line."""
    import numpy as np
    import pandas as pd

    user = ids(materialized, "user_id", 2)[0]
    feats = ["user_spend:spend_eur_7d", "user_spend:txn_count_1h"]
    at = today() + timedelta(hours=2)
    want = materialized.get_online_features(feats, [{"user_id": user}], now=at).to_dict()
    assert want["spend_eur_7d"][0] > 0
    for now in (to_micros(at), np.int64(to_micros(at)), at.replace(tzinfo=None),
                pd.Timestamp(at).tz_convert("Europe/Paris"), at.isoformat(),
                at.strftime("%Y-%m-%dT%H:%M:%SZ"), np.datetime64(to_micros(at), "us")):
        got = materialized.get_online_features(feats, [{"user_id": user}], now=now)
        assert got.to_dict() == want, repr(now)
    for now, shown in ((at.date(), "date"), (1.7e15, "float"), (True, "bool"),
                       ("an hour ago", "str 'an hour ago'"), (pd.NaT, "NaTType")):
        with pytest.raises(OnlineRequestError, match=rf"^now is {shown}.*; expected a "
                                                     r"datetime, an ISO 8601 string or µs"):
            materialized.get_online_features(feats, [{"user_id": user}], now=now)


def test_timestamp_and_bool_features_round_trip(tmp_path: Path, redis_url: str) -> None:
    """last() of a timestamp or a bool, max() of a timestamp: online equals offline."""
    text = (REPO_ROOT / "example" / "card_features.py").read_text()
    extra = ('agg.last(col("event_ts"), name="last_seen"),\n'
             '        agg.last(col("card_present"), name="last_card_present"),\n'
             '        agg.max(col("event_ts"), windows=["7d"], name="latest_event"),\n'
             '        agg.last(col("channel"), name="last_channel"),')
    store = build(tmp_path / "repo", redis_url, rows=3_000, days=5,
                  definitions=text.replace('agg.last(col("channel"), name="last_channel"),',
                                           extra))
    materialize(store.config, [store.definitions.views["user_spend"]], store.online,
                now_us=to_micros(today()), show_progress=False)
    keys = ids(store, "user_id", 40)
    feats = ["user_spend:last_seen", "user_spend:last_card_present", "user_spend:latest_event_7d"]
    at = today() + timedelta(hours=3)
    got = store.get_online_features(feats, {"user_id": keys}, now=at).to_dict()
    want = historical(store, "user_spend", "user_id", keys, at)
    for name in ("last_seen", "last_card_present", "latest_event_7d"):
        assert got[name] == want[name], name
    assert isinstance(got["last_seen"][0], datetime) and isinstance(got["last_card_present"][0],
                                                                    bool)
    store.close()


@pytest.mark.parametrize(("rows", "message"), [
    ({"user_id": 5}, r"entities\['user_id'\] is int; expected a list"),
    ({"user_id": "5"}, r"entities\['user_id'\] is str; expected a list"),
    ([{"user_id": 1}, 5], r"entity row 1 is int, expected a dict"),
    ([{"user_id": 1}] * 8 + [[("user_id", 1)]], r"entity row 8 is list, expected a dict"),
])
def test_malformed_entity_shapes_fail_in_one_line(materialized: FeatureStore, rows,
                                                  message: str) -> None:
    with pytest.raises(OnlineRequestError, match=message):
        materialized.get_online_features(["user_spend:txn_count_7d"], rows)


def test_a_large_read_in_parts_equals_one_mget(materialized: FeatureStore,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A read past READ_PART entities is sent as several pipelined MGETs: the same values,
    statuses, event times and entities as one MGET, with null keys and unknown entities
    anywhere, a part of null keys only (no MGET for it), and both views' keys."""
    import features.store as fs

    part = fs.READ_PART
    users, merchants = ids(materialized, "user_id"), ids(materialized, "merchant_id")
    rows = [{"user_id": users[i % len(users)], "merchant_id": merchants[i % len(merchants)]}
            for i in range(3 * part)]
    rows[3]["user_id"] = None
    rows[part]["merchant_id"] = None  # the first row of a part
    rows[-1]["user_id"] = 777777777  # never seen
    rows += [{"user_id": None, "merchant_id": None} for _ in range(part)]  # nulls only
    feats = [f"user_spend:{f.name}" for f in materialized.definitions.views["user_spend"].features]
    feats += ["merchant_activity:txn_count_lifetime", "merchant_activity:txn_count_1h"]
    plan = materialized.plan(feats, full_feature_names=True)
    n, columns = plan.entity_columns(rows)
    now = to_micros(today() + timedelta(hours=2))
    keys, spans = fs._keys(plan, columns)
    whole = fs._respond(plan, columns, spans, materialized.online.get(keys), now)

    sent: list[int] = []
    real = materialized.online.get_pipelined

    def counted(key_lists):  # type: ignore[no-untyped-def]
        def each():  # type: ignore[no-untyped-def]
            for keys in key_lists:
                sent.append(len(keys))
                yield keys
        return real(each())

    monkeypatch.setattr(materialized.online, "get_pipelined", counted)
    parts = fs.read(materialized.online, plan, n, columns, now)
    assert len(sent) == 4 and sent[3] == 0 and sum(sent) == len(keys)
    assert parts.to_dict(include_event_timestamps=True) == whole.to_dict(
        include_event_timestamps=True)
    assert parts.statuses == whole.statuses and parts.event_times_us == whole.event_times_us
    assert parts.entities == {"user_id": [r["user_id"] for r in rows],
                              "merchant_id": [r["merchant_id"] for r in rows]}
    assert {"PRESENT", "NOT_FOUND"} <= {s for column in parts.statuses for s in column}
