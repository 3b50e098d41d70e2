"""The offline store's commit: atomic, replaces exactly its partitions, survives killed and
concurrent writers, never collects what a live run or a reader still needs, records coverage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest

from features import offline_store as store
from features.errors import OfflineStoreError

FP = "f" * 64
DAY1, DAY2, DAY3 = date(2026, 1, 1), date(2026, 1, 2), date(2026, 1, 3)
HOUR = 3600.0


def stage(root: Path, run_id: str, tile: int, day: date, name: str = "part-0.parquet") -> str:
    folder = store.run_dir(root, "v", FP, run_id) / f"tile_us={tile}" / f"day={day}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b"PAR1")
    return str((folder / name).relative_to(store.view_dir(root, "v", FP)))


def commit(root: Path, run_id: str, parts: dict[tuple[int, date], list[str]],
           **kw: object) -> store.Manifest:
    manifest = store.commit(root, "v", FP, run_id, files=parts, **kw)  # type: ignore[arg-type]
    (store.run_dir(root, "v", FP, run_id)).mkdir(parents=True, exist_ok=True)
    (store.run_dir(root, "v", FP, run_id) / store.COMMITTED).write_text("x")
    return manifest


def test_nothing_committed_reads_as_none(tmp_path: Path) -> None:
    assert store.latest(tmp_path, "v", FP) is None


def test_commit_makes_files_live_and_rerun_replaces_exactly_its_days(tmp_path: Path) -> None:
    a1, a2 = stage(tmp_path, "r1", 60, DAY1), stage(tmp_path, "r1", 60, DAY2)
    m1 = commit(tmp_path, "r1", {(60, DAY1): [a1], (60, DAY2): [a2]})
    assert m1.version == 1 and m1.files(60) == sorted([a1, a2])
    b2, b3 = stage(tmp_path, "r2", 60, DAY2), stage(tmp_path, "r2", 60, DAY3)
    m2 = commit(tmp_path, "r2", {(60, DAY2): [b2], (60, DAY3): [b3]})
    assert m2.version == 2
    assert m2.files(60) == sorted([a1, b2, b3])  # day 1 kept, day 2 replaced, day 3 added


def test_a_day_the_rerun_computed_as_empty_becomes_empty(tmp_path: Path) -> None:
    a1 = stage(tmp_path, "r1", 60, DAY1)
    commit(tmp_path, "r1", {(60, DAY1): [a1]})
    m = commit(tmp_path, "r2", {(60, DAY1): []})  # computed, and found no events
    assert m.files(60) == []
    assert m.gaps(DAY1, DAY1) == []  # still covered: computed, empty


def test_a_run_killed_before_commit_leaves_the_previous_state(tmp_path: Path) -> None:
    a1 = stage(tmp_path, "r1", 60, DAY1)
    commit(tmp_path, "r1", {(60, DAY1): [a1]})
    # A writer process that stages files and dies (SIGKILL) before it commits.
    code = (f"import os, sys; sys.path.insert(0, {str(Path.cwd())!r}); "
            f"from tests.features.test_offline_store import stage; from pathlib import Path; "
            f"stage(Path({str(tmp_path)!r}), 'r9', 60, __import__('datetime').date(2026,1,1)); "
            f"os.kill(os.getpid(), 9)")
    proc = subprocess.run([sys.executable, "-c", code], check=False)
    assert proc.returncode == -9
    m = store.latest(tmp_path, "v", FP)
    assert m is not None and m.version == 1 and m.files(60) == [a1]
    assert all((store.view_dir(tmp_path, "v", FP) / f).exists() for f in m.files(60))


def test_concurrent_commits_never_lose_a_version(tmp_path: Path) -> None:
    """Two writers race for version 2: one wins, the other retries as version 3."""
    a1 = stage(tmp_path, "r1", 60, DAY1)
    commit(tmp_path, "r1", {(60, DAY1): [a1]})
    folder = store.view_dir(tmp_path, "v", FP) / "_manifest"
    # Simulate the other writer taking version 2 between our read and our link.
    other = json.loads((folder / "0000000001.json").read_text())
    other["version"] = 2
    real_link = os.link
    calls = []

    def racing_link(src: str, dst: str) -> None:
        if not calls:
            calls.append(dst)
            (folder / "0000000002.json").write_text(json.dumps(other))
        real_link(src, dst)

    os.link = racing_link  # type: ignore[assignment]
    try:
        b = stage(tmp_path, "r2", 60, DAY2)
        m = commit(tmp_path, "r2", {(60, DAY2): [b]})
    finally:
        os.link = real_link  # type: ignore[assignment]
    assert m.version == 3 and b in m.files(60) and a1 in m.files(60)


def test_a_live_runs_folder_survives_a_later_runs_collection(tmp_path: Path) -> None:
    """The reported loss: a backfill is still writing when a daily run of the same view
    commits; the daily run's garbage collection must not take the backfill's files."""
    with store.Staging(tmp_path, "v", FP, run_id="20260101T000000-backfil") as backfill:
        early = stage(tmp_path, backfill.run_id, 60, DAY1)
        # A later daily run starts, writes and commits (and collects) while the backfill works.
        daily = stage(tmp_path, "20260101T000500-daily", 60, DAY3)
        commit(tmp_path, "20260101T000500-daily", {(60, DAY3): [daily]})
        late = stage(tmp_path, backfill.run_id, 60, DAY2)
        m = store.commit(tmp_path, "v", FP, backfill.run_id,
                         files={(60, DAY1): [early], (60, DAY2): [late]})
        backfill.mark_committed()
    assert m.files(60) == sorted([early, late, daily])
    base = store.view_dir(tmp_path, "v", FP)
    assert all((base / f).is_file() for f in m.files(60))


def test_a_commit_whose_files_vanished_fails_and_changes_nothing(tmp_path: Path) -> None:
    a1 = stage(tmp_path, "r1", 60, DAY1)
    commit(tmp_path, "r1", {(60, DAY1): [a1]})
    b1 = stage(tmp_path, "r2", 60, DAY1)
    (store.view_dir(tmp_path, "v", FP) / b1).unlink()
    with pytest.raises(OfflineStoreError, match=r"lost 1 of its files.*nothing was committed"):
        store.commit(tmp_path, "v", FP, "r2", files={(60, DAY1): [b1]})
    m = store.latest(tmp_path, "v", FP)
    assert m is not None and m.version == 1 and m.files(60) == [a1]


def test_a_dead_runs_folder_is_collected_once_its_heartbeat_is_stale(tmp_path: Path) -> None:
    base = store.view_dir(tmp_path, "v", FP)
    stage(tmp_path, "dead", 60, DAY1)
    (base / "data" / "dead" / store.RUNNING).write_text("{}")
    a = stage(tmp_path, "r1", 60, DAY2)
    commit(tmp_path, "r1", {(60, DAY2): [a]})
    assert (base / "data" / "dead").is_dir()  # fresh heartbeat: maybe still working
    removed = store.collect_garbage(base, now=time.time() + store.STALE_RUN_S + 60)
    assert "data/dead" in removed and not (base / "data" / "dead").exists()
    assert (base / a).is_file()


def test_the_heartbeat_keeps_a_long_run_fresh(tmp_path: Path) -> None:
    with store.Staging(tmp_path, "v", FP, heartbeat_s=0.05) as run:
        beat = run.path / store.RUNNING
        os.utime(beat, (0, 0))
        time.sleep(0.3)
        assert time.time() - beat.stat().st_mtime < 5
    with pytest.raises(RuntimeError), store.Staging(tmp_path, "v", FP) as failed:
        raise RuntimeError("engine failed")
    assert not failed.path.exists()  # a failed run leaves nothing behind


def test_superseded_versions_stay_for_readers_then_go(tmp_path: Path) -> None:
    for i in range(1, 6):
        f = stage(tmp_path, f"r{i}", 60, DAY1)
        commit(tmp_path, f"r{i}", {(60, DAY1): [f]})
    base = store.view_dir(tmp_path, "v", FP)
    data = base / "data"
    # Within the grace period a reader of version 1 can still open its files.
    assert sorted(p.name for p in data.iterdir()) == ["r1", "r2", "r3", "r4", "r5"]
    store.collect_garbage(base, now=time.time() + store.READER_GRACE_S + 60)
    assert sorted(p.name for p in data.iterdir()) == ["r3", "r4", "r5"]
    manifests = sorted(p.name for p in (base / "_manifest").glob("*.json"))
    assert manifests == ["0000000003.json", "0000000004.json", "0000000005.json"]


def test_coverage_records_computed_days_and_their_gaps(tmp_path: Path) -> None:
    a = stage(tmp_path, "r1", 60, DAY1)
    commit(tmp_path, "r1", {(60, DAY1): [a]})
    m = commit(tmp_path, "r2", {(60, date(2026, 1, 5)): []})
    assert m.gaps(date(2025, 12, 31), date(2026, 1, 6)) == [
        (date(2025, 12, 31), DAY1), (DAY2, date(2026, 1, 5)), (date(2026, 1, 6),
                                                               date(2026, 1, 7))]
    m = commit(tmp_path, "r3", {(60, DAY3): []}, cover_from_start=True)
    # Everything before the run's first day is known empty now; Jan 4 is still missing.
    assert m.gaps(date(2000, 1, 1), date(2026, 1, 5)) == [(date(2026, 1, 4), date(2026, 1, 5))]


def test_add_coverage_merges_adjacent_and_overlapping_days() -> None:
    spans = store.add_coverage([(DAY1, DAY2)], [DAY2, DAY3, date(2026, 1, 9)])
    assert spans == [(DAY1, date(2026, 1, 4)), (date(2026, 1, 9), date(2026, 1, 10))]
    assert store.add_coverage(spans, [date(2026, 1, 6)], from_start=True) == [
        (None, date(2026, 1, 7)), (date(2026, 1, 9), date(2026, 1, 10))]


@pytest.mark.parametrize("name", ["../evil", "a/b", "", "1x", "x y"])
def test_a_view_name_that_is_no_identifier_never_becomes_a_path(tmp_path: Path,
                                                                name: str) -> None:
    with pytest.raises(OfflineStoreError, match="not an identifier"):
        store.view_dir(tmp_path, name, FP)
