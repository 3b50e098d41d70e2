"""What the online snapshot costs a batch run: the same runs with and without it, one process.

Uses the repo ``bench/online.py`` generated (``.tessera/bench/online/repo``: 2M events over 28
days, view ``user_spend``), so run that first. Measured, after one warm-up run (imports):
full runs alternating snapshot on / off, then one-day reruns of the last day with it on (its
snapshot is incremental: the users with events that day are rebuilt, the other rows kept).

    .venv/bin/python bench/snapshot_cost.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1] / ".tessera" / "bench" / "online" / "repo"


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    from features.config import load_config
    from features.store import FeatureStore
    from pipelines.batch import run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if not (REPO / "feature_repo.yaml").is_file():
        sys.exit(f"{REPO}: no benchmark repo; run bench/online.py first")
    store = FeatureStore(config=load_config(REPO))
    view = store.definitions.views["user_spend"]

    def config(snapshot: bool):  # type: ignore[no-untyped-def]
        cfg = store.config
        return cfg.model_copy(update={"offline": cfg.offline.model_copy(
            update={"online_snapshot": snapshot})})

    rows: list[tuple[str, float, float | None, str]] = []

    def timed(label: str, snapshot: bool, start=None, end=None):  # type: ignore[no-untyped-def]
        began = time.perf_counter()
        [summary] = run(config(snapshot), [view], "polars", start, end, show_progress=False)
        snap = summary.snapshot
        rows.append((label, time.perf_counter() - began, None if snap is None else snap.seconds,
                     "" if snap is None else f"{snap.mode}, {snap.rebuilt:,} of "
                                             f"{snap.entities:,} built"))
        return summary

    last = timed("warm-up (imports)", True).last_day
    for _ in range(args.rounds):
        timed("full, snapshot off", False)
        timed("full, snapshot on", True)
    for _ in range(args.rounds):
        timed("one day, snapshot on", True, last, last + timedelta(days=1))
    table = Table(title="batch run with and without the online snapshot")
    for col in ("run", "s", "snapshot s", "snapshot"):
        table.add_column(col, justify="left" if col in ("run", "snapshot") else "right")
    for label, seconds, snap_s, what in rows:
        table.add_row(label, f"{seconds:.2f}", "-" if snap_s is None else f"{snap_s:.2f}", what)
    Console().print(table)
    on = [s for label, s, _, _ in rows if label == "full, snapshot on"]
    off = [s for label, s, _, _ in rows if label == "full, snapshot off"]
    print(f"full run with / without the snapshot: {sum(on) / sum(off):.2f}x")


if __name__ == "__main__":
    main()
