"""The offline store's commit: atomic, replaces whole days exactly, survives a killed run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

from features import offline_store as store

FP = "f" * 64
DAY1, DAY2, DAY3 = date(2026, 1, 1), date(2026, 1, 2), date(2026, 1, 3)


def stage(root: Path, run_id: str, tile: int, day: date, name: str = "part-0.parquet") -> str:
    folder = store.run_dir(root, "v", FP, run_id) / f"tile_us={tile}" / f"day={day}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b"PAR1")
    return str((folder / name).relative_to(store.view_dir(root, "v", FP)))


def test_nothing_committed_reads_as_none(tmp_path: Path) -> None:
    assert store.latest(tmp_path, "v", FP) is None


def test_commit_makes_files_live_and_rerun_replaces_exactly_its_days(tmp_path: Path) -> None:
    a1, a2 = stage(tmp_path, "r1", 60, DAY1), stage(tmp_path, "r1", 60, DAY2)
    m1 = store.commit(tmp_path, "v", FP, "r1", [DAY1, DAY2], [60])
    assert m1.version == 1 and m1.files(60) == sorted([a1, a2])
    b2, b3 = stage(tmp_path, "r2", 60, DAY2), stage(tmp_path, "r2", 60, DAY3)
    m2 = store.commit(tmp_path, "v", FP, "r2", [DAY2, DAY3], [60])
    assert m2.version == 2
    assert m2.files(60) == sorted([a1, b2, b3])  # day 1 kept, day 2 replaced, day 3 added


def test_a_day_the_rerun_found_empty_becomes_empty(tmp_path: Path) -> None:
    stage(tmp_path, "r1", 60, DAY1)
    store.commit(tmp_path, "v", FP, "r1", [DAY1], [60])
    m = store.commit(tmp_path, "v", FP, "r2", [DAY1], [60])  # rerun wrote nothing for day 1
    assert m.files(60) == []


def test_a_run_killed_before_commit_leaves_the_previous_state(tmp_path: Path) -> None:
    a1 = stage(tmp_path, "r1", 60, DAY1)
    store.commit(tmp_path, "v", FP, "r1", [DAY1], [60])
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
    stage(tmp_path, "r1", 60, DAY1)
    store.commit(tmp_path, "v", FP, "r1", [DAY1], [60])
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
        m = store.commit(tmp_path, "v", FP, "r2", [DAY2], [60])
    finally:
        os.link = real_link  # type: ignore[assignment]
    assert m.version == 3 and b in m.files(60)


def test_old_run_folders_are_collected_after_enough_versions(tmp_path: Path) -> None:
    for i in range(1, 6):
        stage(tmp_path, f"r{i}", 60, DAY1)
        store.commit(tmp_path, "v", FP, f"r{i}", [DAY1], [60])
    data = store.view_dir(tmp_path, "v", FP) / "data"
    assert sorted(p.name for p in data.iterdir()) == ["r3", "r4", "r5"]
    manifests = sorted(p.name for p in (data.parent / "_manifest").glob("*.json"))
    assert manifests == ["0000000003.json", "0000000004.json", "0000000005.json"]
