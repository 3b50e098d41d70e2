"""`tessera check-consistency` on real Redis: online and offline agree for every feature of
every view after run + materialize, and a corrupted Redis value is caught (exit 1)."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from features.config import load_config
from features.online import keys as K
from features.store import FeatureStore
from features.windows import to_micros
from pipelines.consistency import check_consistency, equal
from pipelines.materialize import materialize
from tessera.cli import app
from tests.online.repo import build, make_repo, today


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> FeatureStore:
    """The example repo, ten days ending at today's midnight, materialized as of then."""
    s = build(Path(tmp_path_factory.mktemp("consistency")), redis_url, rows=10_000)
    materialize(s.config, list(s.definitions.views.values()), s.online,
                now_us=to_micros(today()), show_progress=False)
    yield s
    s.close()


def test_every_feature_of_every_view_agrees(store: FeatureStore) -> None:
    report = check_consistency(store, sample=150, seed=11, since=today())
    assert report.exit_code == 0 and report.mismatches == 0
    assert [v.view for v in report.views] == list(store.definitions.views)
    for v in report.views:
        assert v.problem is None and v.note is None
        assert v.unseen == 2 and v.instants[0] == to_micros(today())
        assert [f.feature for f in v.features] == [f.name for f in
                                                   store.definitions.views[v.view].features]
        assert all(f.compared == v.keys * len(v.instants) for f in v.features)
    # Not vacuous: short windows still hold events at some instants, long ones at most.
    by_name = {(f.view, f.feature): f for v in report.views for f in v.features}
    assert by_name["user_spend", "txn_count_1h"].nonempty > 0
    assert by_name["merchant_activity", "txn_count_10m"].nonempty > 0
    assert by_name["user_spend", "spend_eur_std_7d"].nonempty > 100
    assert by_name["user_spend", "last_country"].nonempty > 100


def test_instants_never_start_before_the_materialization(store: FeatureStore) -> None:
    """Reads before the materialization instant miss pruned tiles: `since` is clamped."""
    from datetime import timedelta

    report = check_consistency(store, ["merchant_activity"], sample=10, seed=1,
                               since=today() - timedelta(days=3))
    [view] = report.views
    assert view.instants[0] == to_micros(today())
    assert sorted(view.instants) == view.instants and report.mismatches == 0


def test_equality_rule() -> None:
    assert equal("sum", 1.0, 1.0 + 1e-12) and not equal("sum", 1.0, 1.0 + 1e-6)
    assert not equal("max", 1.0, 1.0 + 1e-12)  # min, max, last: identical
    assert not equal("sum", 3, 3.0)  # an integer sum is an integer
    assert equal("mean", None, None) and not equal("count", 0, None)


def test_cli_not_materialized_then_equal_then_corrupted(tmp_path: Path, redis_url: str) -> None:
    folder = make_repo(tmp_path / "repo", redis_url, rows=3_000, days=4)
    repo = str(folder / "feature_repo.yaml")
    code, out = invoke("run", "--repo", repo)
    assert code == 0, out
    code, out = invoke("check-consistency", "--repo", repo, "--view", "user_spend")
    assert code == 2, out
    assert "never materialized" in out and "`tessera materialize --view user_spend`" in out

    code, out = invoke("materialize", "--repo", repo)
    assert code == 0, out
    code, out = invoke("check-consistency", "--repo", repo, "--seed", "5", "--sample", "50")
    assert code == 0, out
    assert re.search(r"all [\d,]+ values equal", out) and "(seed 5)" in out, out

    # Swap the busiest user's window value for the quietest one's: a valid but wrong value.
    store = FeatureStore(config=load_config(folder))
    counts = (pl.read_parquet(folder / "data" / "transactions", hive_partitioning=False)
              .group_by("user_id").len().sort(["len", "user_id"]))
    quiet, busy = counts["user_id"][0], counts["user_id"][-1]
    view = store.definitions.views["user_spend"]
    key = {u: K.window_key(store.config.project, view.name, view.fingerprint(),
                           K.entity_tag([u])) for u in (quiet, busy)}
    client = store.online.client
    client.set(key[busy], client.get(key[quiet]))
    store.close()
    code, out = invoke("check-consistency", "--repo", repo, "--view", "user_spend",
                       "--sample", "100000", "--seed", "5")  # every key
    assert code == 1, out
    assert re.search(r"txn_count_7d\s+│ count\s+│\s+[\d,]+ │\s+[\d,]+ │\s+[1-9]", out), out
    assert re.search(rf"user_spend:txn_count_7d\s+│ {busy}\s", out), out
    assert "values differ" in out

    # A state key that is not materialize's (not UTF-8, not JSON): cannot check, exit 2
    store = FeatureStore(config=load_config(folder))
    state = K.state_key(store.config.project, view.name, view.fingerprint())
    for junk in (b"\xaf\xff\x00", b"garbage"):
        store.online.client.set(state, junk)
        code, out = invoke("check-consistency", "--repo", repo, "--view", "user_spend")
        assert code == 2 and f"state key {state} unreadable (not JSON" in out, out
        assert "Traceback" not in out
    store.close()
