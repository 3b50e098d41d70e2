"""A plain feature carries its own TTL, and one window length can come in two tile sizes under
names the user picks: both read exactly as the reference evaluator says."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from features import agg, col
from features.definitions import Entity, FeatureView, Source
from features.errors import DefinitionError
from features.validate import view_problems
from tests.pipelines.window_harness import materialize, mismatches, read_back
from tests.reference.window_eval import reference_features

T0 = datetime(2026, 3, 2, tzinfo=UTC)
SCHEMA = {"user_id": "int64", "amount": "float64", "country": "string",
          "event_ts": "timestamp"}
SOURCE = Source(name="events", path="unused", schema=SCHEMA, timestamp_field="event_ts")
USER = Entity(name="user", join_key="user_id")


def options_view(src: Source) -> FeatureView:
    return FeatureView(
        name="opts", entities=[USER], source=src, ttl="30d",
        features=[
            agg.last(col("country"), name="country_3d", ttl="3d"),
            agg.last(col("amount"), name="amount_1d", ttl="1d"),
            agg.last(col("amount"), name="amount_view_ttl"),  # the view's 30 days
            agg.count(windows={"7d": "n_7d", "7d/1d": "n_7d_daily"}),
            agg.sum(col("amount"), windows={"7d/1h": "spend_7d_hourly"}),
        ])


def test_own_ttls_and_named_tile_sizes_match_the_reference(tmp_path: Path) -> None:
    rows = [{"user_id": 1, "amount": float(i), "country": c, "event_ts": T0 + timedelta(hours=h)}
            for i, (h, c) in enumerate([(0, "FR"), (5, "DE"), (30, None), (50, "IT"),
                                        (51, None), (140, "ES"), (200, None)])]
    view, cfg = materialize("polars", options_view, SOURCE, rows, tmp_path)
    requests = [((1,), T0 + timedelta(hours=h, minutes=m)) for h in (0, 6, 29, 31, 49, 52, 75,
                                                                   100, 139, 141, 170, 220, 400)
                for m in (0, 59)] + [((2,), T0)]
    got = read_back(view, cfg, requests)
    want = reference_features(view, rows, requests)
    assert not mismatches(got, want, requests)
    # The TTLs and tile sizes really differ in effect on these requests.
    assert any(g["country_3d"] != g["amount_view_ttl"] for g in got)
    assert any(g["n_7d"] != g["n_7d_daily"] for g in got)
    assert any(w["amount_1d"] is None and w["amount_view_ttl"] is not None for w in want)


def test_ttl_belongs_to_plain_features_only() -> None:
    with pytest.raises(DefinitionError, match="ttl= is for a plain last"):
        agg.last(col("amount"), windows=["1h"], name="a", ttl="1d")
    view = FeatureView(name="no_ttl", entities=[USER], source=SOURCE,
                       features=[agg.last(col("amount"), name="own", ttl="1d"),
                                 agg.last(col("amount"), name="none")])
    problems = view_problems(view)
    assert len(problems) == 1 and "feature 'none': a plain last() needs a ttl" in problems[0]


def test_a_feature_ttl_changes_the_fingerprint_of_that_feature_only() -> None:
    """Its meaning changes (drift references say so), not the view's stored tiles: the view's
    fingerprint, which names them, stays (a TTL change needs no batch re-run)."""
    a = options_view(SOURCE)
    b = FeatureView(name="opts", entities=[USER], source=SOURCE, ttl="30d",
                    features=[agg.last(col("country"), name="country_3d", ttl="4d"),
                              *a.features[1:]])
    assert a.fingerprint() == b.fingerprint()
    assert a.feature_fingerprint(a.features[0]) != b.feature_fingerprint(b.features[0])
    assert a.feature_fingerprint(a.features[1]) == b.feature_fingerprint(b.features[1])
