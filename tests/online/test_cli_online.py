"""`tessera run --materialize` and `tessera materialize` through the CLI, on real Redis."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from features.config import load_config
from features.online.keys import state_key
from features.store import FeatureStore
from tessera.cli import app
from tests.online.repo import make_repo


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.output


def test_run_then_materialize_then_incremental(tmp_path: Path, redis_url: str) -> None:
    folder = make_repo(tmp_path / "repo", redis_url, rows=3_000, days=4)
    repo = str(folder / "feature_repo.yaml")
    code, out = invoke("run", "--repo", repo, "--materialize")
    assert code == 0, out
    assert "materialized into" in out and "full" in out
    store = FeatureStore(config=load_config(folder))
    view = store.definitions.views["user_spend"]
    assert store.online.get_text(state_key(store.config.project, view.name, view.fingerprint()))
    code, out = invoke("materialize", "--repo", repo)
    assert code == 0 and out.count("up to date") == 2, out
    code, out = invoke("materialize", "--repo", repo, "--view", "user_spend", "--start",
                       "2000-01-01", "--end", "2100-01-01")
    assert code == 0 and "incremental" in out, out
    code, out = invoke("materialize", "--repo", repo, "--view", "user_spnd")
    assert code == 1 and "no feature view 'user_spnd'" in out, out
    # Bad days fail before any work: one line, no progress bar, the state untouched.
    key = state_key(store.config.project, view.name, view.fingerprint())
    state = store.online.get_text(key)
    for days, message in (
            (("--start", "2026-12-05", "--end", "2026-12-01"),
             "error: --start 2026-12-05 is not before --end 2026-12-01 (the end day is excluded)"
             ": no day to rewrite"),
            (("--start", "2026-12-01", "--end", "2026-12-01"), "is not before --end 2026-12-01"),
            (("--end", "12/01/2026"), "error: --end '12/01/2026': expected a day like 2026-01-05")):
        code, out = invoke("materialize", "--repo", repo, *days)
        assert code == 1 and message in out and "entities" not in out, out
        assert len(out.strip().splitlines()) == 1, out
    assert store.online.get_text(key) == state
    store.close()


def test_a_view_that_fails_does_not_stop_the_others(tmp_path: Path, redis_url: str) -> None:
    """user_spend's rules changed and not run yet: merchant_activity is still materialized, the
    table shows both, and the command fails naming the view and what to do."""
    folder = make_repo(tmp_path / "repo", redis_url, rows=2_000, days=3)
    repo = str(folder / "feature_repo.yaml")
    code, out = invoke("run", "--repo", repo)
    assert code == 0, out
    source = folder / "example" / "card_features.py"
    source.write_text(source.read_text().replace('filter=col("amount") > 0,',
                                                 'filter=col("amount") > 1,'))
    code, out = invoke("materialize", "--repo", repo)
    assert code == 1, out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if "│" in line}
    assert " failed " in rows["user_spend"] and " full " in rows["merchant_activity"], out
    assert ("error: feature view 'user_spend': nothing in the offline store for its current "
            "rules") in out and "run `tessera run --view user_spend` first" in out
    store = FeatureStore(config=load_config(folder))
    merchants = store.definitions.views["merchant_activity"]
    assert store.online.get_text(state_key(store.config.project, merchants.name,
                                           merchants.fingerprint()))
    store.close()
