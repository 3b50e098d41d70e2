"""`tessera online gc` on real Redis (and the local cluster): after a rule change, the old
fingerprint's keys (lifetime values, which never expire, included) are reported, then deleted;
current state, other projects' keys and keys outside the layout are left byte for byte."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from features.config import load_config
from features.online import keys as K
from features.online.codec import VERSION
from features.store import FeatureStore
from features.windows import to_micros
from pipelines.batch import run
from pipelines.materialize import materialize
from pipelines.online_gc import collect
from tessera.cli import app
from tests.online.repo import build, today

NOW = to_micros(today())


def _materialize(store: FeatureStore) -> None:
    materialize(store.config, list(store.definitions.views.values()), store.online, now_us=NOW,
                show_progress=False)


def _keys(store: FeatureStore, pattern: str) -> dict[bytes, bytes]:
    client = store.online.client
    kwargs = {"target_nodes": client.PRIMARIES} if store.online.cluster else {}
    return {k: client.get(k) for k in client.scan_iter(match=pattern, count=1000, **kwargs)}


def _rule_change(store: FeatureStore) -> FeatureStore:
    """The repo with a new USD rate, so both views have new rules (fingerprints), run and
    materialized."""
    folder = store.config.root
    path = folder / "example" / "card_features.py"
    path.write_text(path.read_text().replace('.then(0.92)', '.then(0.93)'))
    changed = FeatureStore(config=load_config(folder))
    run(changed.config, list(changed.definitions.views.values()), "polars", show_progress=False)
    _materialize(changed)
    return changed


def _scenario(store: FeatureStore) -> None:
    project = store.config.project
    client = store.online.client
    _materialize(store)
    names = list(store.definitions.views)
    old_fps = {v: store.definitions.views[v].fingerprint()[:K.FINGERPRINT_CHARS] for v in names}
    old = {v: _keys(store, f"{project}:*{v}:{old_fps[v]}:*") for v in names}
    some_window = next(k for k in old["user_spend"] if k.endswith(b":v%d" % VERSION)).decode()
    # an older byte format, a view since removed, a key outside the layout, another project
    planted = {
        some_window[:-len(f":v{VERSION}")] + f":v{VERSION - 1}": b"old format",
        K.lifetime_key(project, "gone_view", "f" * 64, "7"): b"removed view",
        f"{project}:notes": b"not ours",
        K.lifetime_key(project + "x", "user_spend", old_fps["user_spend"], "7"): b"other",
        some_window[:-len(f":v{VERSION}")] + f":v{VERSION + 1}": b"newer format",
    }
    for key, value in planted.items():
        client.set(key, value)

    changed = _rule_change(store)
    new_fp = changed.definitions.views["user_spend"].fingerprint()[:K.FINGERPRINT_CHARS]
    assert all(changed.definitions.views[v].fingerprint()[:K.FINGERPRINT_CHARS] != old_fps[v]
               for v in names)
    everything = _keys(store, f"{project}*")
    users = [{"user_id": int(k.split(b"{")[1].split(b"}")[0])}
             for k in list(_keys(store, f"{project}:*user_spend:{new_fp}:v*"))[:200]
             if b"_materialized" not in k]
    refs = [f"user_spend:{f.name}" for f in changed.definitions.views["user_spend"].features]
    before = changed.get_online_features(refs, users, now=NOW)

    report = collect(project, dict(changed.definitions.views), changed.online, delete=False)
    assert _keys(store, f"{project}*") == everything  # a report deletes nothing
    by_why = {(s.view, s.why): s for s in report.stale}
    assert set(by_why) == {("user_spend", "rules changed"), ("merchant_activity", "rules changed"),
                           ("user_spend", "old format"), ("gone_view", "view removed")}
    for v in names:
        ruled = by_why[(v, "rules changed")]
        assert ruled.fingerprint == old_fps[v] and ruled.total == len(old[v])
        assert ruled.keys["window"] > 0 and ruled.keys["state"] == 1
    # lifetime values, which never expire: what the command is for
    assert by_why[("merchant_activity", "rules changed")].keys["lifetime"] > 0
    assert by_why[("user_spend", "old format")].total == 1
    assert by_why[("gone_view", "view removed")].keys == {"lifetime": 1}
    assert report.other == 2  # project:notes, and the newer Tessera's key
    stale = sum(len(o) for o in old.values()) + 2
    assert report.stale_keys == stale and report.deleted == 0
    assert report.current + report.other + stale == report.scanned
    assert report.scanned == len(everything) - 1  # the other project's key is not scanned

    done = collect(project, dict(changed.definitions.views), changed.online, delete=True)
    assert done.deleted == stale
    left = _keys(store, f"{project}*")
    gone = {k for o in old.values() for k in o} | {k.encode() for k in list(planted)[:2]}
    assert left == {k: v for k, v in everything.items() if k not in gone}
    assert client.get(f"{project}:notes") == b"not ours"
    assert client.get(list(planted)[3]) == b"other"
    assert client.get(list(planted)[4]) == b"newer format"  # never deleted by an older gc
    after = changed.get_online_features(refs, users, now=NOW)
    assert after.to_dict() == before.to_dict() and after.status_dict() == before.status_dict()
    assert "PRESENT" in after.status_dict()["txn_count_7d"]
    again = collect(project, dict(changed.definitions.views), changed.online, delete=True)
    assert again.stale == [] and again.deleted == 0
    client.delete(list(planted)[3])
    changed.close()


def test_gc_reports_then_deletes_only_stale_state(tmp_path: Path, redis_url: str) -> None:
    store = build(tmp_path / "repo", redis_url, rows=5_000, days=8)
    _scenario(store)
    store.close()


def test_gc_on_a_cluster_scans_every_master(tmp_path: Path, redis_cluster_url: str) -> None:
    store = build(tmp_path / "repo", redis_cluster_url, rows=5_000, days=8, cluster=True)
    _scenario(store)
    store.close()


def test_the_cli_reports_then_deletes_with_yes(tmp_path: Path, redis_url: str) -> None:
    store = build(tmp_path / "repo", redis_url, rows=2_000, days=4)
    _materialize(store)
    changed = _rule_change(store)
    repo = str(changed.config.root / "feature_repo.yaml")
    runner = CliRunner()
    result = runner.invoke(app, ["online", "gc", "--repo", repo], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "rules changed" in result.output and "run again with --delete" in result.output
    result = runner.invoke(app, ["online", "gc", "--repo", repo, "--delete"],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "deleted" in result.output, result.output
    result = runner.invoke(app, ["online", "gc", "--repo", repo], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "nothing stale" in result.output, result.output
    changed.close()
    store.close()


def test_every_key_the_layout_builds_parses_back() -> None:
    """``keys.parse`` is the inverse of the key builders (gc's only way to tell our keys):
    int and string entities (escaped ``,``, ``}``, a ``:`` inside), every kind."""
    fp = "0123456789abcdef" * 4
    for values in ([1000003], ["a:b}c,d\\"], [7, "x"]):
        tag = K.entity_tag(values)
        window = K.window_key("proj", "user_spend", fp, tag)
        assert K.parse("proj", window) == ("user_spend", fp[:16], VERSION, "window")
        assert K.parse("proj", K.lifetime_key("proj", "user_spend", fp, tag)) == (
            "user_spend", fp[:16], VERSION, "lifetime")
        assert K.parse("proj", window + K.OFFSETS) == ("user_spend", fp[:16], VERSION,
                                                       "offsets")
        assert K.parse("other", window) is None and K.parse("pro", window) is None
    assert K.parse("proj", K.state_key("proj", "v", fp)) == ("v", fp[:16], VERSION, "state")
    for foreign in ("proj:notes", "proj:{1}:v:0123:v3", "proj:{1}:v:" + fp[:16] + ":v3:X",
                    "proj:{_materialized}:v:" + fp[:16] + ":v3:L", "proj:{1"):
        assert K.parse("proj", foreign) is None, foreign
