"""Redis's own time for a many-entity read: random (cold) keys against the same keys again (hot).

A 100 × 10 read is two ``MGET``s of 50 random entities' window values. This measures what
Redis itself spends on such an ``MGET`` (its ``latency_percentiles_usec_mget``, reset before
each case, so no round trip and no client in it) on the online benchmark's keys:

- 50 random keys, as a read of random users does;
- the same 50 keys every time (in the CPU's caches after the first call): the baseline;
- 50 random keys of the smallest and of the largest quarter by value size: how much of the
  cold cost is the value's bytes, and how much is finding the key.

Run after ``bench/online.py`` (its keys, ``<project>:{<entity>}:<view>:…``, in the Redis of
``--repo``)::

    .venv/bin/python bench/redis_cold_keys.py
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script too

ROOT = Path(__file__).resolve().parents[1]
BENCH_REPO = ROOT / ".tessera" / "bench" / "online" / "repo"


def window_keys(client: Any, project: str, limit: int) -> list[bytes]:
    """Up to ``limit`` window-value keys of ``project`` (lifetime keys, ``…:L``, left out)."""
    keys = []
    for k in client.scan_iter(match=f"{project}:{{*", count=10_000):
        if not k.endswith(b":L"):
            keys.append(k)
            if len(keys) >= limit:
                break
    return keys


def value_sizes(client: Any, keys: Sequence[bytes]) -> dict[bytes, int]:
    out: dict[bytes, int] = {}
    for i in range(0, len(keys), 1000):
        pipe = client.pipeline(transaction=False)
        for k in keys[i:i + 1000]:
            pipe.strlen(k)
        out.update(zip(keys[i:i + 1000], pipe.execute(), strict=True))
    return out


def server_mget_us(client: Any, pick: Callable[[], Sequence[bytes]], calls: int) -> dict[str, float]:
    """Redis's own p50/p99/p99.9 (µs) of ``calls`` MGETs of ``pick()``, and the client's p50."""
    import time

    client.config_resetstat()
    lat = []
    for _ in range(calls):
        keys = pick()
        t0 = time.perf_counter_ns()
        client.mget(keys)
        lat.append(time.perf_counter_ns() - t0)
    server = client.info("latencystats")["latency_percentiles_usec_mget"]
    lat.sort()
    return {"p50": server["p50"], "p99": server["p99"], "p99.9": server["p99.9"],
            "client_p50": lat[len(lat) // 2] / 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=BENCH_REPO)
    parser.add_argument("--keys", type=int, default=50, help="keys per MGET (a read's part)")
    parser.add_argument("--calls", type=int, default=2000, help="MGETs per case and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import redis

    from features.config import load_config

    cfg = load_config(args.repo)
    client = redis.Redis.from_url(cfg.online.url)
    keys = window_keys(client, cfg.project, 50_000)
    if len(keys) < 4 * args.keys:
        raise SystemExit(f"{cfg.online.url}: {len(keys)} window keys of project {cfg.project!r} "
                         f"(run bench/online.py first)")
    rng = random.Random(args.seed)
    sizes = value_sizes(client, keys)
    by_size = sorted(keys, key=sizes.__getitem__)
    quarter = len(by_size) // 4
    small, large = by_size[:quarter], by_size[-quarter:]
    hot = rng.sample(keys, args.keys)
    random_name, hot_name = f"{args.keys} random keys", f"the same {args.keys} keys (hot)"
    pools = {random_name: keys, hot_name: hot, "random, smallest quarter": small,
             "random, largest quarter": large}

    def picker(pool: Sequence[bytes]) -> Callable[[], Sequence[bytes]]:
        return (lambda: hot) if pool is hot else (lambda: rng.sample(pool, args.keys))

    cases = {name: picker(pool) for name, pool in pools.items()}
    mean = {name: statistics.mean(sizes[k] for k in pool) for name, pool in pools.items()}
    print(f"{cfg.online.url}: {len(keys):,} window keys of {cfg.project!r}; Redis's own MGET "
          f"time, µs, {args.calls:,} calls per case and round")
    results: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
    for r in range(args.rounds):
        for name, pick in cases.items():
            results[name].append(server_mget_us(client, pick, args.calls))
        print(f"round {r + 1} of {args.rounds} done", flush=True)
    print(f"\n{'case':34s} {'mean bytes':>10s} {'p50':>8s} {'p99':>8s} {'p99.9':>8s} "
          f"{'client p50':>10s}")
    med = {}
    for name, rs in results.items():
        med[name] = {k: statistics.median(x[k] for x in rs) for k in rs[0]}
        m = med[name]
        print(f"{name:34s} {mean[name]:10.0f} {m['p50']:8.1f} {m['p99']:8.1f} {m['p99.9']:8.1f} "
              f"{m['client_p50']:10.1f}")
    cold_us, hot_us = med[random_name]["p50"], med[hot_name]["p50"]
    print(f"\nrandom / same keys, Redis's p50: {cold_us / hot_us:.1f}×; per key "
          f"{cold_us / args.keys:.2f} µs cold against {hot_us / args.keys:.2f} µs hot")


if __name__ == "__main__":
    main()
