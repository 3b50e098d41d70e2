"""Code written for Feast's SDK runs unchanged: its positional arguments, a FeatureService
passed as ``features``, ``get_feature_service``, the join keys echoed in the caller's order
(any of the repo's, needed or not), and ``__ts`` columns as Feast gives them."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest

from features.errors import OnlineRequestError
from features.store import FeatureStore
from tests.online.repo import ids, today


@pytest.fixture(scope="module")
def keys(materialized: FeatureStore) -> tuple[list[int], list[int]]:
    return ids(materialized, "user_id", 12)[:6], ids(materialized, "merchant_id", 12)[:6]


def test_feasts_call_shapes_give_the_same_answer(materialized: FeatureStore, keys) -> None:
    users, merchants = keys
    rows = [{"user_id": u, "merchant_id": m} for u, m in zip(users, merchants, strict=True)]
    at = today() + timedelta(hours=2)
    want = materialized.get_online_features(feature_service="fraud_model_v1", entity_rows=rows,
                                            full_feature_names=True, now=at)
    service = materialized.get_feature_service("fraud_model_v1")
    # Feast: get_online_features(features, entity_rows, full_feature_names, version_metadata)
    got = materialized.get_online_features(service, rows, True, False, now=at)
    assert got.to_dict() == want.to_dict() and got.statuses == want.statuses
    flagged = materialized.get_online_features(service, rows, True,
                                               include_feature_view_version_metadata=True,
                                               now=at)
    assert flagged.to_dict() == want.to_dict()
    assert [v.name for v in materialized.list_feature_views()] == list(
        materialized.definitions.views)
    assert materialized.get_feature_view("user_spend").name == "user_spend"
    assert [s.name for s in materialized.list_feature_services()] == ["fraud_model_v1"]


@pytest.mark.parametrize(("call", "message"), [
    (lambda s: s.get_feature_service("fraud_model"),
     r"^unknown feature service 'fraud_model' \(did you mean 'fraud_model_v1'\?\); defined: "
     r"fraud_model_v1$"),
    (lambda s: s.get_feature_view("user_spnd"),
     r"^unknown feature view 'user_spnd' \(did you mean 'user_spend'\?\)"),
    (lambda s: s.get_online_features(s.get_feature_service("fraud_model_v1"), [{"user_id": 1}],
                                     feature_service="fraud_model_v1"),
     r"^features is a FeatureService and feature_service is given too"),
    (lambda s: s.get_online_features(["user_spend:txn_count_7d"], [{"user_id": 1}], False,
                                     "yes"),
     r"^include_feature_view_version_metadata is str 'yes'; expected True or False$"),
])
def test_feast_shaped_mistakes_are_one_line(materialized: FeatureStore, call,
                                            message: str) -> None:
    with pytest.raises(OnlineRequestError, match=message):
        call(materialized)


@pytest.mark.parametrize("shape", ["rows", "columns", "pandas"])
@pytest.mark.parametrize("n", [1, 6])  # one entity, and past the C-level row path's threshold
def test_join_keys_are_echoed_as_given_in_the_callers_order(materialized: FeatureStore, keys,
                                                            shape: str, n: int) -> None:
    """As Feast answers: the join keys come in the rows' column order, whatever the order of
    the features; a join key of the repo that no requested view needs is echoed too; other
    columns (a label) are not."""
    users, merchants = keys
    columns = {"merchant_id": merchants[:n], "label": list(range(n)), "user_id": users[:n]}
    given = {"rows": [dict(zip(columns, r, strict=True)) for r in zip(*columns.values(),
                                                                        strict=True)],
             "columns": columns, "pandas": pd.DataFrame(columns)}[shape]
    at = today() + timedelta(hours=2)
    resp = materialized.get_online_features(["user_spend:txn_count_7d"], given, now=at)
    assert list(resp.to_dict()) == ["merchant_id", "user_id", "txn_count_7d"]
    assert resp.to_dict()["merchant_id"] == merchants[:n]
    alone = materialized.get_online_features(["user_spend:txn_count_7d"],
                                             {"user_id": users[:n]}, now=at)
    assert resp.to_dict()["txn_count_7d"] == alone.to_dict()["txn_count_7d"]
    both = materialized.get_online_features(
        ["merchant_activity:txn_count_1d", "user_spend:txn_count_7d"], given, now=at)
    assert list(both.to_dict())[:2] == ["merchant_id", "user_id"]
    assert str(both.to_arrow().schema.field("merchant_id").type) == "int64"


def test_event_timestamps_as_feast_gives_them(materialized: FeatureStore, keys) -> None:
    """``__ts`` after every column, join keys included (0), in whole seconds since the epoch
    (0 for none), in to_dict, to_df and to_arrow alike."""
    users, merchants = keys
    rows = [{"user_id": users[0], "merchant_id": merchants[0]},
            {"user_id": 424242424, "merchant_id": merchants[1]}]  # a user never seen
    feats = ["user_spend:txn_count_7d", "merchant_activity:txn_count_1d"]
    resp = materialized.get_online_features(feats, rows, now=today() + timedelta(hours=2))
    out = resp.to_dict(include_event_timestamps=True)
    assert list(out) == ["user_id", "user_id__ts", "merchant_id", "merchant_id__ts",
                         "txn_count_7d", "txn_count_7d__ts", "txn_count_1d", "txn_count_1d__ts"]
    assert out["user_id__ts"] == out["merchant_id__ts"] == [0, 0]
    newest = resp.event_times_us[0][0]
    assert newest is not None and resp.event_times_us[0][1] is None
    assert out["txn_count_7d__ts"] == [newest // 1_000_000, 0]
    frame = resp.to_df(include_event_timestamps=True)
    assert list(frame.columns) == list(out)
    assert frame.to_dict("list") == out
    table = resp.to_arrow(include_event_timestamps=True)
    assert table.to_pydict() == out and str(table.schema.field("user_id__ts").type) == "int64"
    assert list(resp.to_df().columns) == ["user_id", "merchant_id", "txn_count_7d",
                                          "txn_count_1d"]


def test_a_feast_training_call_runs_as_it_is(materialized: FeatureStore, keys) -> None:
    """Feast's get_historical_features(entity_df, service, full_feature_names) with Feast's
    event_timestamp column: the rows of the call with names, and the service's name kept for
    the manifest."""
    users, merchants = keys
    at = today() - timedelta(hours=5)
    frame = pd.DataFrame({"user_id": users, "merchant_id": merchants,
                          "event_timestamp": [at] * len(users)})
    service = materialized.get_feature_service("fraud_model_v1")
    job = materialized.get_historical_features(frame, service, True)
    want = materialized.get_historical_features(frame, feature_service="fraud_model_v1",
                                                full_feature_names=True,
                                                timestamp_field="event_timestamp")
    assert job.feature_service == "fraud_model_v1" and job.timestamp_field == "event_timestamp"
    got = job.to_df()
    assert list(got.columns) == list(want.to_df().columns)
    assert got.equals(want.to_df())
    assert got["user_spend__txn_count_7d"].sum() > 0
