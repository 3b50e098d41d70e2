"""Materialization guarded against what shares Redis with it, with real Redis: two
materializations of one view at once (a lease: the second waits, or fails naming the first),
a holder that lost its lease, and a Redis that evicts keys or refuses writes (OOM)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from features.online import keys as K
from features.store import FeatureStore
from pipelines import materialize as mat
from pipelines.batch import run
from pipelines.consistency import check_consistency
from pipelines.online_state import lock_key
from tests.online.private_redis import PrivateRedis
from tests.online.repo import build, today
from tests.online.test_materialize import NOW, materialize, views


@pytest.fixture
def fresh(tmp_path: Path, redis_url: str) -> FeatureStore:
    s = build(tmp_path / "repo", redis_url, rows=6_000, days=6)
    yield s
    s.close()


def _paused_writes(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """The first ``_write`` of a materialization waits for ``go`` (``entered`` says it got
    there): the values are read and built, nothing written yet. Later writes run at once."""
    entered, go = threading.Event(), threading.Event()
    real = mat._write

    def write(*args: Any, **kwargs: Any) -> Any:
        if not entered.is_set():
            entered.set()
            assert go.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(mat, "_write", write)
    return entered, go


def test_a_second_materialization_waits_for_the_first_and_redis_ends_right(
        fresh: FeatureStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The interleaving a review found: A reads the offline store, the day is re-run, B
    starts. Without the lease B wrote the new values and A overwrote them with the old ones.
    With it, B waits until A has saved its state, then rewrites the re-run day."""
    materialize(fresh)
    day = today().date().fromordinal(today().toordinal() - 2)
    data = fresh.config.resolve(Path("data/transactions"))
    entered, go = _paused_writes(monkeypatch)
    results: dict[str, Any] = {}

    def materialize_as(name: str) -> None:
        other = FeatureStore(config=fresh.config)
        try:
            results[name] = materialize(other, start=day.isoformat(),
                                        end=day.fromordinal(day.toordinal() + 1).isoformat())
        except Exception as e:
            results[name] = e
        finally:
            other.close()

    a = threading.Thread(target=materialize_as, args=("a",))
    a.start()
    assert entered.wait(60), "A never reached its writes"
    # The day's events change (half of them dropped) and the day is re-run: manifest v2.
    import polars as pl

    files = sorted(data.rglob("*.parquet"))
    events = pl.concat([pl.read_parquet(f) for f in files])
    kept = events.filter((pl.col("event_ts").dt.date() != day) | (pl.col("transaction_id") % 2 == 0))
    for f in files:
        f.unlink()
    kept.write_parquet(data / "all.parquet")
    run(fresh.config, views(fresh), "polars", day, day.fromordinal(day.toordinal() + 1),
        show_progress=False)
    b = threading.Thread(target=materialize_as, args=("b",))
    b.start()
    time.sleep(1.0)
    assert "b" not in results, "B must wait for A's lease, not write meanwhile"
    go.set()
    a.join(120)
    b.join(120)
    assert all(isinstance(results[n], list) for n in "ab"), results
    assert [m.mode for m in results["b"]] == ["incremental", "incremental"]
    report = check_consistency(fresh, sample=150, seed=3, since=NOW)
    assert report.mismatches == 0 and report.exit_code == 0


def test_a_held_view_fails_naming_its_holder_and_a_dead_holder_frees_it(
        fresh: FeatureStore) -> None:
    client = fresh.online.client
    key = lock_key(fresh.config.project, "user_spend")
    holder = {"host": "batch-7", "pid": 4242, "since": "2026-12-03T10:00:00Z", "token": "x"}
    client.set(key, json.dumps(holder), px=60_000)
    told: list[str] = []
    try:
        with pytest.raises(mat.MaterializeError) as e:
            materialize(fresh, lock_wait_s=0.3)
        with pytest.raises(mat.PipelineError):  # the progress bar says whom it waits for
            mat.materialize_view(fresh.config, fresh.definitions.views["user_spend"],
                                 fresh.online, now_us=NOW, lock_wait_s=0.2, on_wait=told.append)
    finally:
        client.delete(key)
    assert told == ["process 4242 on batch-7, since 2026-12-03T10:00:00Z"]
    modes = {m.view: m.mode for m in e.value.summaries}
    assert modes == {"user_spend": "failed", "merchant_activity": "full"}  # the others go on
    assert ("feature view 'user_spend': another materialization is writing it (process 4242 "
            "on batch-7, since 2026-12-03T10:00:00Z); waited 0.3 s") in str(e.value)
    # A holder killed mid-run stops renewing: its lease expires, and the waiting run goes on.
    client.set(key, json.dumps(holder), px=400)
    began = time.monotonic()
    summaries = materialize(fresh, lock_wait_s=10)
    assert [m.mode for m in summaries] == ["full", "up to date"]
    assert 0.2 < time.monotonic() - began < 10
    assert client.get(key) is None  # released


def test_a_holder_that_lost_its_lease_clears_the_state_instead_of_saving_it(
        fresh: FeatureStore, monkeypatch: pytest.MonkeyPatch) -> None:
    entered, go = _paused_writes(monkeypatch)
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.setdefault("r", _catch(lambda: materialize(fresh))))
    t.start()
    assert entered.wait(60)
    fresh.online.client.delete(lock_key(fresh.config.project, "user_spend"))  # as if expired
    go.set()
    t.join(120)
    error = out["r"]
    assert isinstance(error, mat.MaterializeError), error
    assert "lost its lease while writing" in str(error) and "rewrites every value" in str(error)
    fp = fresh.definitions.views["user_spend"].fingerprint()
    assert fresh.online.client.get(K.state_key(fresh.config.project, "user_spend", fp)) is None
    assert [m.mode for m in materialize(fresh)] == ["full", "up to date"]


def _catch(call: Any) -> Any:
    try:
        return call()
    except Exception as e:
        return e


@pytest.fixture
def tight_redis(tmp_path: Path) -> Any:
    """A private Redis, whose memory limit each test sets just above what it holds empty."""
    private = PrivateRedis(tmp_path / "redis")
    private.start()
    yield private
    private.stop(save=False)


@pytest.fixture
def tight(tmp_path: Path, tight_redis: PrivateRedis) -> Any:
    """(a repo on the private Redis, ``limit(policy, room)``: its maxmemory set to what it
    holds now plus ``room`` bytes, with that eviction policy)."""
    store = build(tmp_path / "repo", tight_redis.url, rows=6_000, days=6)

    def limit(policy: str, room: int) -> None:
        client = redis.Redis.from_url(tight_redis.url)
        client.config_set("maxmemory", int(client.info("memory")["used_memory"]) + room)
        client.config_set("maxmemory-policy", policy)
        client.close()

    yield store, limit
    store.close()


def test_keys_evicted_while_materializing_fail_every_view_and_clear_its_state(tight) -> None:
    store, limit = tight
    limit("allkeys-lru", 300_000)
    with pytest.raises(mat.MaterializeError) as e:
        materialize(store)
    assert {m.mode for m in e.value.summaries} == {"failed"}
    assert "Redis evicted" in str(e.value) and "maxmemory-policy allkeys-lru" in str(e.value)
    for view in views(store):
        state = K.state_key(store.config.project, view.name, view.fingerprint())
        assert store.online.client.get(state) is None  # the next run rewrites it all
    # Room enough: written, with a note that Redis may still evict.
    limit("allkeys-lru", 200_000_000)
    done = materialize(store)
    assert [m.mode for m in done] == ["full", "full"]
    assert all("Redis may evict keys (maxmemory-policy allkeys-lru" in m.note for m in done)


def test_a_full_redis_refusing_writes_fails_each_view_by_name(tight) -> None:
    store, limit = tight
    limit("noeviction", 100_000)
    with pytest.raises(mat.MaterializeError) as e:
        materialize(store)
    notes = {m.view: m.note for m in e.value.summaries}
    assert {m.mode for m in e.value.summaries} == {"failed"}  # both tried, neither recorded
    for view, note in notes.items():
        assert note.startswith(f"feature view {view!r}: "), note
        assert "OOM" in note or "used memory > 'maxmemory'" in note, note  # Redis's words
    limit("noeviction", 200_000_000)
    assert [m.mode for m in materialize(store)] == ["full", "full"]
