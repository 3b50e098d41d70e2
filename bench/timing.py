"""The benchmarks' timing helpers: a bounded timed loop, the summary of its latencies, seeded
batches of request entity ids, and a free local port.

Every latency summary is a dict: ``n`` (timed calls), ``seconds`` (wall time of the timed loop),
``p50_ms``, ``p99_ms``, ``max_ms``, ``mean_ms``, ``ops_per_s`` (calls/s) and ``entities_per_s``.
"""

from __future__ import annotations

import math
import random
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

Progress = Callable[[int], None]


def summarize(lat_ns: Sequence[int], seconds: float, entities_per_op: int = 1) -> dict[str, Any]:
    """p50/p99/max/mean in ms (nearest-rank percentiles), calls/s and entities/s."""
    if not lat_ns:
        return {"n": 0, "seconds": seconds, "p50_ms": math.nan, "p99_ms": math.nan,
                "max_ms": math.nan, "mean_ms": math.nan, "ops_per_s": 0.0,
                "entities_per_s": 0.0}
    s = sorted(lat_ns)
    n = len(s)

    def pct(p: float) -> float:
        return s[min(n - 1, max(0, math.ceil(p / 100 * n) - 1))] / 1e6

    ops = n / seconds if seconds > 0 else math.nan
    return {"n": n, "seconds": seconds, "p50_ms": pct(50), "p99_ms": pct(99),
            "max_ms": s[-1] / 1e6, "mean_ms": sum(s) / n / 1e6, "ops_per_s": ops,
            "entities_per_s": ops * entities_per_op}


def timed_loop(call: Callable[[Any], Any], payloads: Sequence[Any], iterations: int,
               max_seconds: float, warmup: int | None = None,
               progress: Progress | None = None) -> tuple[list[int], float]:
    """Call ``call(payload)`` at most ``iterations`` times and for at most ``max_seconds``.

    The warm-up (default: min(100, iterations // 10 + 1) calls, at most a tenth of the time
    budget) is not recorded. Returns the latencies in ns and the wall time of the timed loop.
    """
    if not payloads:
        raise ValueError("no payloads")
    m = len(payloads)
    warm = min(100, iterations // 10 + 1) if warmup is None else warmup
    clock = time.perf_counter_ns
    stop = clock() + int(max_seconds * 1e9 / 10)
    for i in range(warm):
        call(payloads[(m - 1 - i) % m])
        if clock() > stop:
            break
    lat: list[int] = []
    began = clock()
    deadline = began + int(max_seconds * 1e9)
    for i in range(iterations):
        t0 = clock()
        call(payloads[i % m])
        t1 = clock()
        lat.append(t1 - t0)
        if progress is not None and i % 50 == 49:
            progress(50)
        if t1 > deadline:
            break
    elapsed = (clock() - began) / 1e9
    if progress is not None:
        progress(len(lat) % 50)
    return lat, elapsed


def _batches(entity_ids: Sequence[int], batch: int, count: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    ids = list(entity_ids)
    if batch > len(ids):
        raise ValueError(f"batch {batch} > {len(ids)} entities")
    return [rng.sample(ids, batch) for _ in range(count)]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
