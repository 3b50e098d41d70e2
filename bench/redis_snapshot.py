"""What a Redis snapshot (``BGSAVE``) does to online reads running at the same time.

    .venv/bin/python bench/redis_snapshot.py [--blocks 4] [--reads 2000]

Reads the online benchmark's store (run ``bench/online.py`` once first: it builds the repo and
materializes ~90,000 users into the local Redis). Blocks of SDK 1 entity x 10 feature reads
alternate between a quiet Redis (the baseline, same process) and a Redis that started a
``BGSAVE`` just before the block: the forked child writes ``dump.rdb`` while the reads run.
Prints p50/p99/max of each block and the ratio of the p99 medians. This is why the Redis
started by ``tessera services up`` never snapshots while it serves (docs/services.md). The
local Redis must be up (``tessera services up``); the snapshot it writes is its usual
``dump.rdb``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
REPO = ROOT / ".tessera" / "bench" / "online" / "repo"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=4, help="blocks of each kind")
    parser.add_argument("--reads", type=int, default=2000, help="reads per block")
    args = parser.parse_args()
    if not (REPO / "feature_repo.yaml").exists():
        sys.exit(f"{REPO} does not exist: run `.venv/bin/python bench/online.py` once first")

    import polars as pl
    import redis

    from features.store import FeatureStore

    store = FeatureStore(REPO)
    store.serving_log = None  # reads only: the log's writer thread is not what is measured
    view = store.definitions.views["user_spend"]
    refs = [f"user_spend:{f.name}" for f in view.features][:10]
    users = (pl.read_parquet(REPO / "data" / "transactions", hive_partitioning=False)
             ["user_id"].unique().to_list())
    client = redis.Redis.from_url(store.config.online.url, socket_timeout=30)
    memory: dict[str, Any] = client.info("memory")  # type: ignore[assignment]
    print(f"{client.dbsize():,} keys, {memory['used_memory_human']} used")
    rng = random.Random(1)
    clock = time.perf_counter_ns
    for _ in range(3000):  # warm-up
        store.get_online_features(refs, [{"user_id": rng.choice(users)}])

    def snapshot_running() -> bool:
        persistence: dict[str, Any] = client.info("persistence")  # type: ignore[assignment]
        return bool(persistence["rdb_bgsave_in_progress"])

    def block() -> tuple[float, float, float]:
        lat = []
        for _ in range(args.reads):
            rows = [{"user_id": rng.choice(users)}]
            t0 = clock()
            store.get_online_features(refs, rows)
            lat.append(clock() - t0)
        lat.sort()
        return (lat[len(lat) // 2] / 1e3, lat[int(len(lat) * 0.99)] / 1e3, lat[-1] / 1e3)

    got: dict[str, list[tuple[float, float, float]]] = {"quiet": [], "during BGSAVE": []}
    deadline = time.monotonic() + 300
    try:
        for _ in range(args.blocks):
            while snapshot_running() and time.monotonic() < deadline:
                time.sleep(0.05)
            got["quiet"].append(block())
            client.bgsave()
            ran = snapshot_running()
            got["during BGSAVE"].append(block())
            print(f"quiet p50/p99/max {got['quiet'][-1][0]:.1f}/{got['quiet'][-1][1]:.1f}/"
                  f"{got['quiet'][-1][2]:.0f} µs; during BGSAVE "
                  f"{got['during BGSAVE'][-1][0]:.1f}/{got['during BGSAVE'][-1][1]:.1f}/"
                  f"{got['during BGSAVE'][-1][2]:.0f} µs"
                  f"{'' if ran else ' (the snapshot had already ended)'}")
    finally:
        store.close()
        client.close()
    quiet = statistics.median(b[1] for b in got["quiet"])
    during = statistics.median(b[1] for b in got["during BGSAVE"])
    print(f"p99, median of blocks: quiet {quiet:.1f} µs, during BGSAVE {during:.1f} µs: "
          f"{during / quiet:.2f}x")


if __name__ == "__main__":
    main()
