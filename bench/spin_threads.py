"""Spin reads with threads: SDK reads from 1, 4 and 8 threads, polling on and off, one process.

A read polls the socket for Redis's reply for up to ``online.spin_us`` before it sleeps, but
only when no other read of the process is in flight: threads polling at once fight over the
GIL. This measures that rule: each thread count with ``spin_us`` 0 and with the default, in
alternating rounds, and prints the ratios. Uses the repo ``bench/online.py`` generated
(``.tessera/bench/online/repo``, materialized), so run that first.

    .venv/bin/python bench/spin_threads.py [--calls 1500] [--rounds 2]
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.online import FEATURES, WORK

REPO = WORK / "repo"

MAX_SECONDS = 30.0  # per measurement, whatever --calls says


def measure(store: Any, users: list[int], threads: int, calls: int) -> dict[str, float]:
    """``threads`` threads of up to ``calls`` 1 × 10 reads each: calls/s, p50 and p99 (µs)."""
    refs = [f"user_spend:{f}" for f in FEATURES]
    lat: list[list[int]] = [[] for _ in range(threads)]
    deadline = time.monotonic() + MAX_SECONDS

    def worker(out: list[int], seed: int) -> None:
        rnd = random.Random(seed)
        for _ in range(calls):
            if time.monotonic() > deadline:
                return
            rows = [{"user_id": rnd.choice(users)}]
            t = time.perf_counter_ns()
            store.get_online_features(refs, rows).to_dict()
            out.append(time.perf_counter_ns() - t)

    workers = [threading.Thread(target=worker, args=(lat[i], i)) for i in range(threads)]
    began = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    seconds = time.perf_counter() - began
    flat = sorted(x for one in lat for x in one)
    n = len(flat)
    return {"calls_per_s": n / seconds, "p50_us": flat[n // 2] / 1e3,
            "p99_us": flat[int(n * 0.99)] / 1e3}


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    from features.config import load_config
    from features.store import FeatureStore

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1500, help="reads per thread")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if not (REPO / "feature_repo.yaml").is_file():
        sys.exit(f"{REPO}: no benchmark repo; run bench/online.py first")
    import polars as pl

    store = FeatureStore(config=load_config(REPO))
    store.serving_log = None  # the reads alone
    users = (pl.read_parquet(REPO / "data" / "transactions", hive_partitioning=False)
             ["user_id"].unique().to_list())
    online = store.online
    default = online.spin_s
    console = Console()
    gc.freeze()
    got: dict[tuple[int, str], list[dict[str, float]]] = {}
    try:
        for r in range(args.rounds):
            for threads in (1, 4, 8):
                for label, spin in (("off", 0.0), ("on", default)):
                    online.spin_s = spin
                    with console.status(f"round {r + 1}/{args.rounds}: {threads} thread(s), "
                                        f"spin {label}"):
                        got.setdefault((threads, label), []).append(
                            measure(store, users, threads, args.calls))
    finally:
        online.spin_s = default
        store.close()
    table = Table(title=f"1 × 10 SDK reads, spin_us {default * 1e6:.0f} vs 0 "
                        f"(medians of {args.rounds} rounds)")
    for col in ("threads", "spin", "calls/s", "p50 µs", "p99 µs", "on/off p50", "on/off p99"):
        table.add_column(col, justify="right")
    for threads in (1, 4, 8):
        med = {label: {k: statistics.median(m[k] for m in got[(threads, label)])
                       for k in ("calls_per_s", "p50_us", "p99_us")} for label in ("off", "on")}
        for label in ("off", "on"):
            m = med[label]
            ratios = ("", "") if label == "off" else (
                f"{m['p50_us'] / med['off']['p50_us']:.2f}×",
                f"{m['p99_us'] / med['off']['p99_us']:.2f}×")
            table.add_row(str(threads), label, f"{m['calls_per_s']:,.0f}", f"{m['p50_us']:.0f}",
                          f"{m['p99_us']:.0f}", *ratios)
    console.print(table)


if __name__ == "__main__":
    main()
