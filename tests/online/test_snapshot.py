"""The batch run's online snapshot (pipelines.online_snapshot): materialize copies it into real
Redis with the same reads as building from the tiles, keeps it right across incremental runs,
and falls back to the tiles whenever it cannot be used."""

from __future__ import annotations

import os
import time
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from features import offline_store
from features.config import RepoConfig
from features.online.codec import codec
from features.store import FeatureStore
from pipelines import materialize as mat
from pipelines import online_build as ob
from pipelines import online_snapshot as snap
from pipelines.batch import run
from tests.conftest import delete_project_keys
from tests.online.repo import build, historical, today
from tests.online.test_materialize import NOW, materialize, state, views

HOUR_US = 3_600_000_000


@pytest.fixture
def fresh(tmp_path: Path, redis_url: str) -> FeatureStore:
    s = build(tmp_path / "repo", redis_url, rows=6_000, days=10)
    yield s
    delete_project_keys(s)
    s.close()


def without_snapshots(cfg: RepoConfig) -> RepoConfig:
    return cfg.model_copy(update={"offline": cfg.offline.model_copy(
        update={"online_snapshot": False})})


def current(store: FeatureStore, view: str) -> tuple[Path, offline_store.Manifest]:
    """The view's offline folder and its newest manifest."""
    v = store.definitions.views[view]
    root = store.config.resolve(store.config.offline.path)
    return (offline_store.view_dir(root, v.name, v.fingerprint()),
            offline_store.latest(root, v.name, v.fingerprint()))


def snapshot_file(store: FeatureStore, view: str) -> Path:
    base, manifest = current(store, view)
    return snap.path(base, manifest.version)


def rows_of(table, now_us: int | None = None) -> dict[tuple[str, bool], tuple[bytes, int]]:
    """(tag, lifetime) → (blob, expire µs) of snapshot rows; alive at ``now_us`` if given."""
    return {(t, life): (blob, exp) for t, life, blob, exp in zip(
        *(table.column(c).to_pylist() for c in ("tag", "lifetime", "blob", "expire_us")),
        strict=True) if now_us is None or exp < 0 or exp > now_us}


def snapshot_rows(store: FeatureStore, view: str) -> dict:
    return rows_of(pq.read_table(snapshot_file(store, view)))


def built_rows(store: FeatureStore, view: str, now_us: int) -> dict:
    """What the snapshot of the current manifest must hold: a full build from the tiles."""
    base, manifest = current(store, view)
    v = store.definitions.views[view]
    return rows_of(snap._table(ob.build(ob.Reader(v, base, manifest, None), codec(v), now_us)),
                   now_us)


def reads(store: FeatureStore, at_us: int) -> dict:
    """Every feature of both views for every user and merchant of the source, read online."""
    data = pl.read_parquet(store.config.resolve(Path("data/transactions")),
                           hive_partitioning=False)
    at = today() + timedelta(microseconds=at_us - NOW)
    out = {}
    for view, key in (("user_spend", "user_id"), ("merchant_activity", "merchant_id")):
        refs = [f"{view}:{f.name}" for f in store.definitions.views[view].features]
        ids = sorted(data[key].unique().to_list())
        out[view] = store.get_online_features(refs, {key: ids}, now=at).to_dict()
    return out


def test_materialize_copies_the_snapshot_byte_for_byte_when_built_at_the_same_instant(
        fresh: FeatureStore) -> None:
    summaries = run(fresh.config, views(fresh), "polars", now_us=NOW, show_progress=False)
    assert [s.snapshot.mode for s in summaries] == ["full", "full"]
    copied = materialize(fresh)
    assert [m.source for m in copied] == ["snapshot", "snapshot"]
    from_snapshot = state(fresh)
    delete_project_keys(fresh)
    tiles = mat_tiles(fresh)
    assert [m.source for m in tiles] == ["tiles", "tiles"]
    assert [m.entities for m in tiles] == [m.entities for m in copied]
    assert state(fresh) == from_snapshot


def mat_tiles(store: FeatureStore, **kwargs) -> list:
    return mat.materialize(without_snapshots(store.config), views(store), store.online,
                           now_us=NOW, show_progress=False, **kwargs)


def test_a_snapshot_built_earlier_reads_the_same_as_the_tiles_later(fresh: FeatureStore) -> None:
    """Built two hours before the materialization: its older tiles are skipped by the read, and
    a key whose expiry passed in between is not written."""
    run(fresh.config, views(fresh), "polars", now_us=NOW - 2 * HOUR_US, show_progress=False)
    assert [m.source for m in materialize(fresh)] == ["snapshot", "snapshot"]
    copied = reads(fresh, NOW)
    delete_project_keys(fresh)
    mat_tiles(fresh)
    assert reads(fresh, NOW) == copied
    # A snapshot built after the materialization's instant is not used.
    run(fresh.config, views(fresh), "polars", now_us=NOW + HOUR_US, show_progress=False)
    delete_project_keys(fresh)
    assert [m.source for m in materialize(fresh)] == ["tiles", "tiles"]


def test_an_incremental_run_keeps_the_snapshot_equal_to_a_full_build(fresh: FeatureStore) -> None:
    """Both runs as of the same instant, so the kept rows are byte for byte a full build's."""
    run(fresh.config, views(fresh), "polars", now_us=NOW, show_progress=False)
    day = today().date() - timedelta(days=3)
    second = run(fresh.config, views(fresh), "polars", day, day + timedelta(days=1),
                 now_us=NOW, show_progress=False)
    assert [s.snapshot.mode for s in second] == ["incremental", "incremental"]
    spend = second[0].snapshot  # only the users of the rerun day were built again
    assert 0 < spend.rebuilt < spend.entities
    for view in ("user_spend", "merchant_activity"):
        assert snapshot_rows(fresh, view) == built_rows(fresh, view, NOW), view


def drop_user_on(store: FeatureStore, day: date) -> int:
    """Remove one user's events of ``day`` from the source; returns that user."""
    folder = store.config.resolve(Path("data/transactions"))
    files = sorted(folder.rglob("*.parquet"))
    frames = {f: pl.read_parquet(f, hive_partitioning=False) for f in files}
    that_day = pl.concat(frames.values()).filter(pl.col("event_ts").dt.date() == day)
    user = int(that_day["user_id"][0])
    for f, frame in frames.items():
        kept = frame.filter(~((pl.col("user_id") == user) & (pl.col("event_ts").dt.date() == day)))
        if kept.height != frame.height:
            kept.write_parquet(f)
    return user


def test_an_entity_whose_events_were_replaced_away_is_rewritten(fresh: FeatureStore) -> None:
    """A corrected source drops a user's events of one day: the next run and materialization
    (incremental) must forget them, from the snapshot and from the tiles alike."""
    run(fresh.config, views(fresh), "polars", now_us=NOW - HOUR_US, show_progress=False)
    materialize(fresh)
    client = fresh.online.client
    stored = {k: (client.get(k), client.pttl(k))
              for k in client.scan_iter(f"{fresh.config.project}:*", count=1000)}
    day = today().date() - timedelta(days=1)
    user = drop_user_on(fresh, day)
    run(fresh.config, views(fresh), "polars", day, day + timedelta(days=1), now_us=NOW,
        show_progress=False)
    expected = historical(fresh, "user_spend", "user_id", [user], today())["txn_count_7d"][0]
    before = fresh.get_online_features(["user_spend:txn_count_7d"], [{"user_id": user}],
                                       now=today()).to_dict()["txn_count_7d"][0]
    assert before > expected  # the stale value still counts the dropped events
    for copy, source in ((materialize, "snapshot"), (mat_tiles, "tiles")):
        delete_project_keys(fresh)
        for k, (value, ttl) in stored.items():  # the state before this materialization
            client.set(k, value, px=ttl if ttl > 0 else None)
        summaries = copy(fresh)
        assert (summaries[0].mode, summaries[0].source) == ("incremental", source)
        got = fresh.get_online_features(["user_spend:txn_count_7d"], [{"user_id": user}],
                                        now=today()).to_dict()["txn_count_7d"][0]
        assert got == expected, source


def test_an_unreadable_snapshot_falls_back_to_the_tiles_and_says_so(fresh: FeatureStore) -> None:
    run(fresh.config, views(fresh), "polars", now_us=NOW, show_progress=False)
    file = snapshot_file(fresh, "user_spend")
    file.write_bytes(b"not parquet at all")
    fell_back_to_the_tiles(fresh, file)
    # The next run replaces the broken file with a whole snapshot.
    run(fresh.config, views(fresh), "polars", now_us=NOW, show_progress=False)
    assert snapshot_rows(fresh, "user_spend") == built_rows(fresh, "user_spend", NOW)


def fell_back_to_the_tiles(store: FeatureStore, file: Path) -> None:
    """Materialize both views, ``user_spend``'s snapshot ``file`` being unusable: it says so,
    and Redis ends as a tiles-only materialization leaves it."""
    [spend, merchant] = materialize(store)
    assert (spend.source, merchant.source) == ("tiles", "snapshot")
    assert str(file) in spend.note and "built from the tiles" in spend.note
    after = state(store)
    delete_project_keys(store)
    mat_tiles(store)
    assert state(store) == after


def groups_read(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The rows of each snapshot row group materialize reads from now on (in small groups)."""
    monkeypatch.setattr(snap, "GROUP_ROWS", 40)
    read: list[int] = []
    real = snap._values
    monkeypatch.setattr(snap, "_values", lambda table: (read.append(table.num_rows),
                                                        real(table))[1])
    return read


def test_a_snapshot_in_another_value_format_is_not_copied(fresh: FeatureStore) -> None:
    """After an upgrade that changed the online value format, an old snapshot must not reach
    Redis: materialize builds from the tiles and says why."""
    run(fresh.config, views(fresh), "polars", now_us=NOW, show_progress=False)
    file = snapshot_file(fresh, "user_spend")
    table = pq.read_table(file)
    old = {**table.schema.metadata, b"tessera.format": b"1"}
    pq.write_table(table.replace_schema_metadata(old), file)
    [spend, _] = materialize(fresh)
    assert spend.source == "tiles" and "online value format 1" in spend.note


def test_a_snapshot_that_cannot_be_written_is_a_warning_not_a_failed_run(
        fresh: FeatureStore) -> None:
    folder = current(fresh, "user_spend")[0] / snap.SNAPSHOT_DIR
    for old in folder.glob("*"):
        old.unlink()
    folder.rmdir()
    folder.write_text("a file where the snapshot folder should be")
    [spend, merchant] = run(fresh.config, views(fresh), "polars", now_us=NOW,
                            show_progress=False)
    assert spend.snapshot is None and merchant.snapshot is not None
    assert spend.manifest_version is not None  # the tiles were committed
    [warning] = spend.warnings()
    assert "online snapshot of version" in warning and "build from the tiles" in warning
    assert [m.source for m in materialize(fresh)] == ["tiles", "snapshot"]


def test_only_the_newest_snapshot_and_no_dead_writers_files_are_kept(
        fresh: FeatureStore) -> None:
    folder = current(fresh, "user_spend")[0] / snap.SNAPSHOT_DIR
    dead = folder / ".0000000001.parquet.0123abcd.tmp"  # a writer killed mid-write, long ago
    live = folder / ".0000000002.parquet.4567ef01.tmp"  # one writing now
    dead.write_bytes(b"partial")
    live.write_bytes(b"partial")
    old = time.time() - offline_store.STALE_RUN_S - 60
    os.utime(dead, (old, old))
    [spend, _] = run(fresh.config, views(fresh), "polars", now_us=NOW, show_progress=False)
    assert sorted(p.name for p in folder.iterdir()) == [
        live.name, f"{spend.manifest_version:010d}.parquet"]


def test_snapshots_off_writes_none_and_reads_none(fresh: FeatureStore) -> None:
    cfg = without_snapshots(fresh.config)
    [spend, _] = run(cfg, views(fresh), "polars", now_us=NOW, show_progress=False)
    assert spend.snapshot is None
    assert not snapshot_file(fresh, "user_spend").exists()


def test_a_snapshot_is_copied_one_row_group_at_a_time(fresh: FeatureStore,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Materialize reads the snapshot's values one row group at a time (what it holds in
    memory) and writes the same state as the tiles, in full and for forced days."""
    read = groups_read(monkeypatch)
    run(fresh.config, views(fresh), "polars", now_us=NOW, show_progress=False)
    meta = pq.ParquetFile(snapshot_file(fresh, "user_spend")).metadata
    assert meta.num_row_groups >= 3
    assert max(meta.row_group(i).num_rows for i in range(meta.num_row_groups)) <= 40
    copied = materialize(fresh)
    assert [m.source for m in copied] == ["snapshot", "snapshot"]
    assert len(read) >= meta.num_row_groups and max(read) <= 40
    from_snapshot = state(fresh)
    delete_project_keys(fresh)
    tiles = mat_tiles(fresh)
    assert [m.entities for m in tiles] == [m.entities for m in copied]
    assert [m.keys_written for m in tiles] == [m.keys_written for m in copied]
    assert state(fresh) == from_snapshot

    # forced days: only their entities, filtered group by group
    day = (today() - timedelta(days=2)).date()
    read.clear()
    forced = materialize(fresh, start=day, end=day + timedelta(days=1))
    assert [m.source for m in forced] == ["snapshot", "snapshot"]
    assert 0 < forced[0].entities < copied[0].entities and len(read) >= 2
    assert state(fresh) == from_snapshot


def test_a_snapshot_failing_part_way_falls_back_to_the_tiles(
        fresh: FeatureStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A row group that cannot be read after others were written: materialize says so and
    writes every value from the tiles; Redis ends as a tiles-only materialization leaves it."""
    read = groups_read(monkeypatch)
    run(fresh.config, views(fresh), "polars", now_us=NOW, show_progress=False)
    file = snapshot_file(fresh, "user_spend")
    corrupt_the_last_row_group(file)
    read.clear()
    failed_after: list[int] = []  # groups read when the failure was met
    note = mat._unreadable
    monkeypatch.setattr(mat, "_unreadable", lambda *a: (failed_after.append(len(read)),
                                                        note(*a))[1])
    fell_back_to_the_tiles(fresh, file)
    assert len(failed_after) == 1 and failed_after[0] >= 2  # written before the broken group


def corrupt_the_last_row_group(file: Path) -> None:
    """Random bytes over the blob pages of the file's last row group (its footer stays good)."""
    meta = pq.ParquetFile(file).metadata
    assert meta.num_row_groups >= 3
    blob = meta.schema.names.index("blob")
    last = meta.row_group(meta.num_row_groups - 1).column(blob)
    data = bytearray(file.read_bytes())
    at = last.data_page_offset
    data[at:at + last.total_compressed_size] = os.urandom(last.total_compressed_size)
    file.write_bytes(bytes(data))


def test_a_previous_snapshot_failing_part_way_is_rebuilt_whole(
        fresh: FeatureStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """An incremental run copies the previous snapshot's rows a row group at a time: when one
    fails to read after others were copied, the run builds the whole snapshot instead."""
    monkeypatch.setattr(snap, "GROUP_ROWS", 40)
    run(fresh.config, views(fresh), "polars", now_us=NOW, show_progress=False)
    corrupt_the_last_row_group(snapshot_file(fresh, "user_spend"))
    day = today().date() - timedelta(days=3)
    [spend, merchant] = run(fresh.config, views(fresh), "polars", day, day + timedelta(days=1),
                            now_us=NOW, show_progress=False)
    assert (spend.snapshot.mode, merchant.snapshot.mode) == ("full", "incremental")
    assert spend.snapshot.rebuilt == spend.snapshot.entities
    for view in ("user_spend", "merchant_activity"):
        assert snapshot_rows(fresh, view) == built_rows(fresh, view, NOW), view


def test_a_snapshot_of_other_partitions_or_ttls_is_not_copied(fresh: FeatureStore) -> None:
    """A snapshot is copied only for the manifest it was built from (its version and its
    partitions: a stray file of the same version is not) and the TTLs it was built under."""
    run(fresh.config, views(fresh), "polars", now_us=NOW, show_progress=False)
    file = snapshot_file(fresh, "user_spend")
    table = pq.read_table(file)
    meta = dict(table.schema.metadata)

    def materialized_from(changes: dict[bytes, bytes]) -> str:
        pq.write_table(table.replace_schema_metadata({**meta, **changes}), file)
        delete_project_keys(fresh)
        return materialize(fresh)[0].source

    assert materialized_from({b"tessera.partitions": b"{}"}) == "tiles"
    assert materialized_from({b"tessera.ttls": b"[]"}) == "tiles"
    assert materialized_from({}) == "snapshot"  # as the batch run wrote it
