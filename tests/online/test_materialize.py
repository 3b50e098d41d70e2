"""Materialization into real Redis: idempotent, incremental, a fresh state per rule change, a
killed run completed by the next, and reads surviving a Redis restart."""

from __future__ import annotations

import json
import shutil
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from features import offline_store
from features.config import load_config
from features.errors import OfflineStoreError, OnlineUnavailableError
from features.online import keys as K
from features.online.redis_store import RedisOnline
from features.store import FeatureStore
from features.tiles import EXACT_TILE_US
from features.windows import to_micros
from pipelines import materialize as mat
from pipelines.batch import run
from tests.online.private_redis import PrivateRedis
from tests.online.repo import build, equal, historical, ids, today


def state(store: FeatureStore) -> dict[str, tuple[bytes, bool]]:
    """Every online key of the repo: its value and whether it expires."""
    client = store.online.client
    out = {}
    for key in client.scan_iter(f"{store.config.project}:*", count=1000):
        if b"{_materialized}" in key:
            continue
        out[key.decode()] = (client.get(key), client.pttl(key) > 0)
    return out


def views(store: FeatureStore) -> list:
    return list(store.definitions.views.values())


NOW = to_micros(today())


def materialize(store: FeatureStore, online: Any = None, **kwargs) -> list[mat.MaterializeSummary]:
    return mat.materialize(store.config, views(store), online or store.online, now_us=NOW,
                           show_progress=False, **kwargs)


@pytest.fixture
def fresh(tmp_path: Path, redis_url: str) -> FeatureStore:
    s = build(tmp_path / "repo", redis_url, rows=8_000, days=10)
    yield s
    s.close()


def test_rerunning_gives_the_same_state_and_nothing_changed_is_up_to_date(
        fresh: FeatureStore) -> None:
    first = materialize(fresh)
    assert [m.mode for m in first] == ["full", "full"]
    assert all(m.entities > 0 for m in first)
    before = state(fresh)
    assert any(key.endswith(":L") and not expires for key, (_, expires) in before.items())
    assert all(expires for key, (_, expires) in before.items() if not key.endswith(":L"))
    again = materialize(fresh)
    assert [m.mode for m in again] == ["up to date", "up to date"]
    forced = materialize(fresh, start="2000-01-01", end="2100-01-01")
    assert [m.mode for m in forced] == ["incremental", "incremental"]
    assert state(fresh) == before


def test_a_rerun_day_rewrites_only_its_entities(fresh: FeatureStore) -> None:
    materialize(fresh)
    before = state(fresh)
    day = today().date().fromordinal(today().toordinal() - 3)
    run(fresh.config, views(fresh), "polars", day, day.fromordinal(day.toordinal() + 1),
        show_progress=False)
    second = materialize(fresh)
    users = (pl.read_parquet(fresh.config.resolve(Path("data/transactions")),
                             hive_partitioning=False)
             .filter(pl.col("event_ts").dt.date() == day)["user_id"].n_unique())
    spend = second[0]
    assert (spend.mode, spend.days, spend.entities) == ("incremental", [day.isoformat()], users)
    assert spend.entities < first_entities(before, "user_spend")
    assert state(fresh) == before  # same events, same values


def first_entities(st: dict, view: str) -> int:
    return sum(1 for key in st if f":{view}:" in key and not key.endswith(":L"))


def test_a_rule_change_materializes_under_the_new_fingerprint(fresh: FeatureStore,
                                                               tmp_path: Path) -> None:
    materialize(fresh)
    before = state(fresh)
    folder = fresh.config.root
    text = (folder / "example" / "card_features.py").read_text()
    (folder / "example" / "card_features.py").write_text(
        text.replace('filter=col("amount") > 0,', 'filter=col("amount") > 5,'))
    changed = FeatureStore(config=load_config(folder))
    run(changed.config, views(changed), "polars", show_progress=False)
    new_fp = changed.definitions.views["user_spend"].fingerprint()
    assert new_fp != fresh.definitions.views["user_spend"].fingerprint()
    summaries = materialize(changed)
    assert summaries[0].mode == "full" and summaries[1].mode == "incremental"  # re-run days
    after = state(changed)
    assert {k: v for k, v in after.items() if k in before} == before  # old state untouched
    assert any(new_fp[:16] in k for k in after)
    user = int(next(k for k in after if new_fp[:16] in k).split("{")[1].split("}")[0])
    old = fresh.get_online_features(["user_spend:txn_count_7d"], [{"user_id": user}], now=NOW)
    new = changed.get_online_features(["user_spend:txn_count_7d"], [{"user_id": user}], now=NOW)
    assert new.to_dict()["txn_count_7d"][0] <= old.to_dict()["txn_count_7d"][0]
    changed.close()


class _Dies(RedisOnline):
    """A real Redis connection whose process 'dies' after some writes."""

    def __init__(self, url: str, after: int) -> None:
        super().__init__(url)
        self.left = after

    def _tick(self) -> None:
        if self.left == 0:
            raise KeyboardInterrupt("killed mid-run")
        self.left -= 1

    def write(self, sets, deletes=()):
        self._tick()
        return super().write(sets, deletes)

    def write_packed(self, chunks):
        def ticking():  # dies between two chunks of one pipelined write
            for chunk in chunks:
                self._tick()
                yield chunk

        return super().write_packed(ticking())


def test_an_interrupted_run_is_completed_by_the_next(fresh: FeatureStore, tmp_path: Path,
                                               redis_url: str, monkeypatch) -> None:
    clean_copy = tmp_path / "clean"
    shutil.copytree(fresh.config.root, clean_copy)
    monkeypatch.setattr(mat, "WRITE_CHUNK", 100)
    with pytest.raises(KeyboardInterrupt):
        materialize(fresh, _Dies(redis_url, after=1))
    deadline = time.monotonic() + 5  # the sent chunk is applied after its sender is gone
    while not (partial := state(fresh)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert partial, "some values were written before the kill"
    resumed = materialize(fresh)
    assert resumed[0].mode == "full"  # the killed run never recorded its state
    # The same repo materialized without a kill, under its own project, gives the same values.
    text = (clean_copy / "feature_repo.yaml").read_text()
    (clean_copy / "feature_repo.yaml").write_text(
        text.replace(fresh.config.project, fresh.config.project + "c"))
    clean = FeatureStore(config=load_config(clean_copy))
    materialize(clean)
    rename = {k.replace(fresh.config.project, clean.config.project, 1): v
              for k, v in state(fresh).items()}
    assert rename == state(clean)
    clean.close()


def test_reads_work_after_redis_restarts_between_calls(tmp_path: Path) -> None:
    redis = PrivateRedis(tmp_path / "redis")
    redis.start()
    try:
        store = build(tmp_path / "repo", redis.url, rows=4_000, days=5)
        materialize(store)
        feats = ["user_spend:txn_count_7d", "merchant_activity:txn_count_lifetime"]
        rows = [{"user_id": u, "merchant_id": m} for u, m in
                zip(range(1000000, 1000050), range(2000000, 2000050), strict=True)]
        before = store.get_online_features(feats, rows, now=NOW).to_dict()
        assert any(before["txn_count_7d"])
        redis.stop(save=True)
        redis.start()
        after = store.get_online_features(feats, rows, now=NOW).to_dict()
        assert after == before
        store.close()
    finally:
        redis.stop(save=False)


SLOW_WRITES = '''
import time
from features.online import redis_store

_write_packed = redis_store.RedisOnline.write_packed


def _slow(self, chunks):  # widen the window a kill can land in; the writes stay real
    def slowly():
        for chunk in chunks:
            time.sleep(0.05)
            yield chunk

    return _write_packed(self, slowly())


redis_store.RedisOnline.write_packed = _slow
'''


def test_kill_9_mid_run_then_a_rerun_gives_the_clean_state(tmp_path: Path) -> None:
    """A real `tessera materialize` process SIGKILLed between two of its Redis writes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import redis as redis_py

    from tests.online.repo import REPO_ROOT

    server = PrivateRedis(tmp_path / "redis")
    server.start()
    try:
        store = build(tmp_path / "repo", server.url, rows=12_000, days=6)
        hooks = tmp_path / "hooks"
        hooks.mkdir()
        (hooks / "sitecustomize.py").write_text(SLOW_WRITES)
        env = {**os.environ, "PYTHONPATH": f"{hooks}{os.pathsep}{REPO_ROOT}",
               "TESSERA_MATERIALIZE_CHUNK": "40"}
        client = redis_py.Redis(port=server.port)
        child = subprocess.Popen([sys.executable, "-m", "tessera.cli", "materialize", "--repo",
                                  str(store.config.root / "feature_repo.yaml")], env=env,
                                 cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while client.dbsize() < 80 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.005)
        assert child.poll() is None, "materialize finished before it could be killed"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        partial = state(store)
        view = store.definitions.views["user_spend"]
        assert partial
        assert client.get(K.state_key(store.config.project, view.name,
                                      view.fingerprint())) is None  # it never finished
        assert [m.mode for m in materialize(store)] == ["full", "full"]
        killed_then_rerun = state(store)
        assert len(partial) < len(killed_then_rerun)  # the kill landed mid-run
        client.flushdb()
        materialize(store)
        assert state(store) == killed_then_rerun
        store.close()
    finally:
        server.stop(save=False)


@pytest.mark.parametrize("rerun", [False, True], ids=["old-values", "batch-rerun-late"])
def test_values_that_expired_by_the_run_are_deleted_and_reads_stay_exact(
        fresh: FeatureStore, rerun: bool) -> None:
    """Materialized again when some entities' last event has left the longest window (30 d):
    their window values are deleted, not written; lifetime values stay; every read at that
    instant still equals the point-in-time read. The values come from a batch run at midnight
    (expired ones are among them) or from one run late (expired ones are left out of it)."""
    materialize(fresh)  # at midnight: every entity has a live value
    lifetimes = {k for k in state(fresh) if k.endswith(":L")}
    late = today() + timedelta(days=29, hours=20)
    if rerun:
        run(fresh.config, views(fresh), "polars", show_progress=False, now_us=to_micros(late))
    again = mat.materialize(fresh.config, views(fresh), fresh.online, now_us=to_micros(late),
                            start="2000-01-01", end="2100-01-01", show_progress=False)
    assert all(m.keys_deleted > 0 for m in again), again  # some went quiet long enough
    after = state(fresh)
    window_keys = [k for k in after if not k.endswith(":L")]
    assert 0 < len(window_keys) < sum(m.entities for m in again)  # ...and some did not
    client = fresh.online.client
    assert all(client.pexpiretime(k) > to_micros(late) // 1000 for k in window_keys)
    assert {k for k in after if k.endswith(":L")} == lifetimes
    data = fresh.config.resolve(Path("data/transactions"))
    events = pl.read_parquet(data, hive_partitioning=False)
    for view, key in (("user_spend", "user_id"), ("merchant_activity", "merchant_id")):
        keys = events[key].unique().sort().to_list()
        fv = fresh.definitions.views[view]
        got = fresh.get_online_features([f"{view}:{f.name}" for f in fv.features],
                                        [{key: k} for k in keys], now=late).to_dict()
        want = historical(fresh, view, key, keys, late)
        bad = [(f.name, k, got[f.name][i], want[f.name][i]) for f in fv.features
               for i, k in enumerate(keys) if not equal(f.function, got[f.name][i],
                                                          want[f.name][i])]
        assert bad == [], bad[:5]


def _equal_to_offline(store: FeatureStore, view: str, key: str, keys: list[int]) -> None:
    fv = store.definitions.views[view]
    got = store.get_online_features([f"{view}:{f.name}" for f in fv.features],
                                    [{key: k} for k in keys], now=NOW).to_dict()
    want = historical(store, view, key, keys, today())
    bad = [(f.name, k, got[f.name][i], want[f.name][i]) for f in fv.features
           for i, k in enumerate(keys) if not equal(f.function, got[f.name][i], want[f.name][i])]
    assert bad == [], bad[:5]


def test_a_ttl_change_rewrites_every_entity(fresh: FeatureStore) -> None:
    """A view's ttl, or a plain feature's own, decides which newest values are kept and when
    keys expire, but not the tiles nor the fingerprint: materialization notices the change and
    rewrites every entity, from the tiles (the batch run's snapshot was built under the old
    ttl)."""
    source = fresh.config.root / "example" / "card_features.py"
    text = source.read_text()
    users = ids(fresh, "user_id", 80)
    source.write_text(text.replace('ttl="30d",', 'ttl="2d",', 1))  # user_spend's
    short = FeatureStore(config=load_config(fresh.config.root))
    fp = short.definitions.views["user_spend"].fingerprint()
    assert fp == fresh.definitions.views["user_spend"].fingerprint()
    assert [m.mode for m in materialize(short)] == ["full", "full"]
    _equal_to_offline(short, "user_spend", "user_id", users)
    kept = short.get_online_features(["user_spend:last_country"], {"user_id": users},
                                     now=NOW).to_dict()["last_country"]
    short.close()

    source.write_text(text)  # back to 30 days
    long = FeatureStore(config=load_config(fresh.config.root))
    spend, merchants = materialize(long)
    assert (spend.mode, spend.source, merchants.mode) == ("full", "tiles", "up to date")
    assert "the TTLs of plain last features changed: rewrote every entity" in spend.note
    now = long.get_online_features(["user_spend:last_country"], {"user_id": users},
                                   now=NOW).to_dict()["last_country"]
    assert any(a is None and b is not None for a, b in zip(kept, now, strict=True))
    _equal_to_offline(long, "user_spend", "user_id", users)
    assert materialize(long)[0].mode == "up to date"  # recorded: no second rewrite
    long.close()

    # A plain feature's own ttl: the same, and no `tessera run` is needed for it.
    source.write_text(text.replace('name="last_country")', 'name="last_country", ttl="1d")'))
    own = FeatureStore(config=load_config(fresh.config.root))
    assert own.definitions.views["user_spend"].fingerprint() == fp
    spend = materialize(own)[0]
    assert spend.mode == "full" and "TTLs of plain last features changed" in spend.note
    _equal_to_offline(own, "user_spend", "user_id", users)
    status = own.get_online_features(["user_spend:last_country"], {"user_id": users},
                                     now=NOW).status_dict()["last_country"]
    assert "OUTSIDE_MAX_AGE" in status and "PRESENT" in status  # a day: some are too old
    own.close()


def test_a_full_rewrite_after_collected_tiles_deletes_entities_left_without_values(
        fresh: FeatureStore, tmp_path: Path) -> None:
    """A day re-run without one user's events, its superseded tiles collected before the next
    materialization: which entities they held is unknown, so every entity is rewritten, and
    Redis is scanned so that the user, now with no event, loses its key (not served stale)."""
    materialize(fresh)
    view = fresh.definitions.views["user_spend"]
    fp, project, client = view.fingerprint(), fresh.config.project, fresh.online.client
    data = fresh.config.resolve(Path("data/transactions"))
    events = pl.read_parquet(data, hive_partitioning=False).with_columns(
        day=pl.col("event_ts").dt.date())
    lone = (events.group_by("user_id").agg(pl.col("day").n_unique().alias("days"),
                                           pl.col("day").first())
            .filter(pl.col("days") == 1).sort("user_id").row(0, named=True))
    user, day = lone["user_id"], lone["day"]
    key = K.window_key(project, "user_spend", fp, str(user))
    assert client.exists(key)
    for file in data.glob(f"*{day.isoformat()}*/*.parquet"):
        table = pl.read_parquet(file, hive_partitioning=False)
        table.filter(pl.col("user_id") != user).write_parquet(file)
    before = json.loads(fresh.online.get_text(K.state_key(project, "user_spend", fp)))
    run(fresh.config, [view], "polars", day, day.fromordinal(day.toordinal() + 1),
        show_progress=False)
    base = offline_store.view_dir(fresh.config.resolve(fresh.config.offline.path),
                                  "user_spend", fp)
    for i, f in enumerate(before["partitions"][f"{EXACT_TILE_US}/{day.isoformat()}"]):
        (base / f).rename(tmp_path / f"collected-{i}.parquet")  # what the batch GC does
    [spend] = mat.materialize(fresh.config, [view], fresh.online, now_us=NOW,
                              show_progress=False)
    assert spend.mode == "full" and "superseded tiles already collected" in spend.note
    assert not client.exists(key) and spend.keys_deleted >= 1
    _equal_to_offline(fresh, "user_spend", "user_id", [user, *ids(fresh, "user_id", 20)])


def test_bad_offline_or_state_files_are_one_line_and_other_views_go_on(
        fresh: FeatureStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tile file cut short: the view fails naming it, the next view is materialized; a state
    key that is not ours: every entity rewritten, with a note; a manifest of another shape:
    named."""
    materialize(fresh)
    before = state(fresh)
    view = fresh.definitions.views["user_spend"]
    fp, project = view.fingerprint(), fresh.config.project
    state_key = K.state_key(project, "user_spend", fp)

    fresh.online.set_text(state_key, "not json")
    spend = materialize(fresh)[0]
    assert spend.mode == "full" and f"state key {state_key} unreadable (not JSON" in spend.note
    assert state(fresh) == before
    fresh.online.set_text(state_key, '{"version": 2}')
    assert "(not the state materialize writes)" in materialize(fresh)[0].note
    fresh.online.client.set(state_key, b"\xaf\xff\x00")  # not even UTF-8
    assert "unreadable (not JSON: 'utf-8' codec" in materialize(fresh)[0].note
    assert state(fresh) == before

    root = fresh.config.resolve(fresh.config.offline.path)
    manifest = offline_store.latest(root, "user_spend", fp)
    assert manifest is not None
    victim = offline_store.view_dir(root, "user_spend", fp) / manifest.files(EXACT_TILE_US)[0]
    victim.write_bytes(victim.read_bytes()[:300])
    fresh.online.client.delete(state_key, *[K.state_key(project, v.name, v.fingerprint())
                                            for v in views(fresh)])
    monkeypatch.setenv("TESSERA__OFFLINE__ONLINE_SNAPSHOT", "false")
    cfg = load_config(fresh.config.root)
    with pytest.raises(mat.MaterializeError, match=r"^feature view 'user_spend': offline tiles "
                                                   r"unreadable \(.*part-0\.parquet") as e:
        mat.materialize(cfg, views(fresh), fresh.online, now_us=NOW, show_progress=False)
    assert "\n" not in str(e.value)
    assert [m.mode for m in e.value.summaries] == ["failed", "full"]
    assert state(fresh) == before  # nothing lost or half-built

    folder = offline_store.view_dir(root, "user_spend", fp) / "_manifest"
    (folder / f"{manifest.version + 1:010d}.json").write_text("{}")
    with pytest.raises(OfflineStoreError,
                       match=rf"{manifest.version + 1:010d}\.json: not a manifest \(TypeError"):
        offline_store.latest(root, "user_spend", fp)


def test_days_with_no_data_say_so_and_deletes_count_keys_removed(fresh: FeatureStore,
                                                                 redis_url: str) -> None:
    materialize(fresh)
    later = materialize(fresh, start="2030-01-01")
    assert [m.mode for m in later] == ["up to date", "up to date"]
    assert all("no day of the offline store is in [2030-01-01, the last)" in m.note
               for m in later)
    late = to_micros(today() + timedelta(days=29, hours=20))
    twice = [mat.materialize(fresh.config, views(fresh), fresh.online, now_us=late,
                             start="2000-01-01", end="2100-01-01", show_progress=False)
             for _ in range(2)]
    assert all(m.keys_deleted > 0 for m in twice[0])
    assert [m.keys_deleted for m in twice[1]] == [0, 0]  # already gone: none counted
    bad_db = RedisOnline(redis_url.rsplit("/", 1)[0] + "/99")
    with pytest.raises(OnlineUnavailableError, match=r"/99 is unavailable: DB index is out of "
                                                     r"range"):
        bad_db.get_text("anything")
