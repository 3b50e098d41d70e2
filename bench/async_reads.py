"""Awaited against blocking online reads on one event loop, single-node Redis and Redis Cluster.

What ``tessera serve`` gains when requests queue: ``C`` coroutines on one asyncio loop (the
server's concurrent requests) each make 1 × 10 reads of random users in a loop, either with
``await store.get_online_features_async(...)`` (the round trip awaited, the loop free for the
others, their ``MGET``s pipelined) or with ``store.get_online_features(...)`` (the loop held for
each round trip: what the server did on a cluster before awaited cluster reads). Both on the
single-node Redis of ``bench/online.py``, on the local 3-master cluster (started here if it
is not running, ``services.redis_cluster``), on a private redis-server serving TLS only
(``rediss://``) and on a private 3-master cluster serving TLS only (both started and stopped
here), interleaved in rounds, every loop bounded in count and time. Prints reads/s and per-read p50/p99, and the awaited/blocking ratio.

Uses the repo ``bench/online.py`` generated (``.tessera/bench/online/repo``): run that first.

    .venv/bin/python bench/async_reads.py [--reads 3000] [--rounds 3] [--clients 1 8 32]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.online import FEATURES, WORK

REPO = WORK / "repo"
MAX_SECONDS = 20.0  # per measurement, whatever --reads says


async def load(store: Any, users: list[int], clients: int, reads: int, awaited: bool
               ) -> dict[str, float]:
    """``clients`` coroutines sharing ``reads`` 1 × 10 reads: reads/s, p50 and p99 (µs)."""
    refs = [f"user_spend:{f}" for f in FEATURES]
    lat: list[int] = []
    left, present = [reads], [0]
    deadline = time.monotonic() + MAX_SECONDS

    async def client(seed: int) -> None:
        rnd = random.Random(seed)
        while left[0] > 0 and time.monotonic() < deadline:
            left[0] -= 1
            rows = [{"user_id": rnd.choice(users)}]
            t = time.perf_counter_ns()
            if awaited:
                response = await store.get_online_features_async(refs, rows)
            else:
                response = store.get_online_features(refs, rows)
                await asyncio.sleep(0)  # a server's loop turns between requests
            lat.append(time.perf_counter_ns() - t)
            present[0] += response.statuses[0][0] == "PRESENT"

    began = time.perf_counter()
    await asyncio.gather(*[client(i) for i in range(clients)])
    seconds = time.perf_counter() - began
    lat.sort()
    assert present[0] > len(lat) // 2, f"only {present[0]} of {len(lat)} users found"
    return {"reads_per_s": len(lat) / seconds, "p50_us": lat[len(lat) // 2] / 1000,
            "p99_us": lat[int(len(lat) * 0.99)] / 1000, "n": len(lat)}


def cluster_store(store: Any) -> Any:
    """The same repo on the local Redis Cluster, materialized there."""
    from features.config import load_config
    from features.store import FeatureStore
    from pipelines.materialize import materialize
    from tessera import services

    cfg = load_config(Path(__file__).resolve().parents[1])
    services.up(cfg.services, cfg.root, only=(services.CLUSTER,))
    url = services.redis_cluster_url(cfg.services)
    online = store.config.online.model_copy(update={"url": url, "cluster": True})
    cluster = FeatureStore(config=store.config.model_copy(update={"online": online}))
    materialize(cluster.config, [cluster.definitions.views["user_spend"]], cluster.online,
                show_progress=False)
    return cluster


def tls_store(store: Any, folder: Path) -> tuple[Any, Any]:
    """The same repo on a private redis-server serving TLS only (certificates made with
    ``openssl``, as the TLS tests do), materialized there; and that server, to stop."""
    import shutil

    from features.store import FeatureStore
    from pipelines.materialize import materialize
    from tests.online.private_redis import PrivateRedis, make_certs

    shutil.rmtree(folder, ignore_errors=True)
    server = PrivateRedis(folder / "redis", certs=make_certs(folder / "certs"))
    server.start()
    online = store.config.online.model_copy(update={"url": server.url})
    tls = FeatureStore(config=store.config.model_copy(update={"online": online}))
    materialize(tls.config, [tls.definitions.views["user_spend"]], tls.online,
                show_progress=False)
    return tls, server


def tls_cluster_store(store: Any, folder: Path) -> tuple[Any, list[Any]]:
    """The same repo on a 3-master Redis Cluster serving TLS only (as the TLS tests make it),
    materialized there; and its nodes, to stop."""
    import shutil

    from features.store import FeatureStore
    from pipelines.materialize import materialize
    from tests.online.private_redis import make_certs, start_tls_cluster

    shutil.rmtree(folder, ignore_errors=True)
    certs = make_certs(folder / "certs")
    nodes = start_tls_cluster(folder / "cluster", certs)
    url = f"rediss://127.0.0.1:{nodes[0].port}/0?ssl_ca_certs={certs / 'ca.crt'}"
    online = store.config.online.model_copy(update={"url": url, "cluster": True})
    tls = FeatureStore(config=store.config.model_copy(update={"online": online}))
    materialize(tls.config, [tls.definitions.views["user_spend"]], tls.online,
                show_progress=False)
    return tls, nodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()

    import polars as pl
    from rich.console import Console
    from rich.table import Table

    from features.config import load_config
    from features.store import FeatureStore

    if not (REPO / "feature_repo.yaml").exists():
        sys.exit(f"{REPO} is missing: run bench/online.py first")
    console = Console(width=None if sys.stdout.isatty() else 120)
    single = FeatureStore(config=load_config(REPO))
    users = (pl.read_parquet(REPO / "data" / "transactions", hive_partitioning=False)
             ["user_id"].unique().to_list())
    with console.status("materializing into the local Redis Cluster, a TLS Redis and a TLS "
                        "Redis Cluster"):
        cluster = cluster_store(single)
        tls, tls_server = tls_store(single, WORK / "tls")
        tls_cluster, tls_nodes = tls_cluster_store(single, WORK / "tls_cluster")
    stores = {"single node": single, "cluster": cluster, "single node, TLS": tls,
              "cluster, TLS": tls_cluster}
    got: dict[tuple[str, int, str], list[dict[str, float]]] = {}

    async def rounds() -> None:
        for store in stores.values():  # first connections, first-use imports: not measured
            for awaited in (True, False):
                await load(store, users, 8, 500, awaited)
        for r in range(args.rounds):
            for where, store in stores.items():
                for clients in args.clients:
                    for how in ("awaited", "blocking"):
                        with console.status(f"round {r + 1}/{args.rounds}: {where}, "
                                            f"{clients} clients, {how}"):
                            got.setdefault((where, clients, how), []).append(await load(
                                store, users, clients, args.reads, how == "awaited"))

    asyncio.run(rounds())
    table = Table(title="1 × 10 reads on one event loop, medians of rounds")
    for column in ("store", "clients", "read", "n", "reads/s", "p50 µs", "p99 µs",
                   "reads/s awaited / blocking"):
        table.add_column(column, justify="left" if column in ("store", "read") else "right")
    for (where, clients, how), runs in got.items():
        med = {k: statistics.median(run[k] for run in runs)
               for k in ("reads_per_s", "p50_us", "p99_us")}
        ratio = ""
        if how == "awaited":  # the median of per-round ratios
            pairs = zip(runs, got[(where, clients, "blocking")], strict=True)
            ratio = f"{statistics.median(a['reads_per_s'] / b['reads_per_s'] for a, b in pairs):.2f}×"
        table.add_row(where, str(clients), how, f"{sum(r['n'] for r in runs):,.0f}",
                      f"{med['reads_per_s']:,.0f}", f"{med['p50_us']:.0f}",
                      f"{med['p99_us']:.0f}", ratio)
    console.print(table)
    for store in stores.values():
        store.close()
    tls_server.stop(save=False)
    for node in tls_nodes:
        node.stop(save=False)


if __name__ == "__main__":
    main()
