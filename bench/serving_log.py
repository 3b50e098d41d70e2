"""Serving log overhead: get_online_features with the log off, on at 1.0 and on at 0.1.

Same process, same Redis, same data, the same loop as ``bench/online.py`` (its repo, its 10
windowed features of ``user_spend``, its timed loop): three FeatureStores differ only in
``serving_log`` (default flush settings: 10,000 rows or 5 s), measured in interleaved rounds
(the machine is shared), medians of the rounds. The writer thread runs during the timed loops,
so its Parquet work is inside the numbers. Also timed alone: ``ServingLog.record``, the part
that runs in the caller's thread.

    .venv/bin/python bench/serving_log.py --rows 200000

Results print as a table with on/off ratios and go to ``.tessera/bench/serving_log.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.online import FEATURES, make_repo, midnight, tessera_latency
from bench.online_report import median_round

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".tessera" / "bench" / "serving_log"
VARIANTS = {"off": None, "on 1.0": 1.0, "on 0.1": 0.1}


def stores(cfg: Any) -> dict[str, Any]:
    from features.config_jobs import ServingLogConfig
    from features.store import FeatureStore

    out = {}
    for name, rate in VARIANTS.items():
        folder = WORK / f"log-{name.replace(' ', '-')}"
        shutil.rmtree(folder, ignore_errors=True)
        log = ServingLogConfig.model_validate(
            {"enabled": False} if rate is None else {"sample_rate": rate, "path": folder})
        out[name] = FeatureStore(config=cfg.model_copy(update={"serving_log": log}))
    return out


def record_cost(store: Any, users: list[int], batch: int, n: int) -> float:
    """µs per ``ServingLog.record`` call (sample rate 1.0), the caller's share of the work."""
    from features.config_jobs import ServingLogConfig
    from features.online.serving_log import ServingLog

    refs = [f"user_spend:{f}" for f in FEATURES]
    resp = store.get_online_features(refs, {"user_id": users[:batch]}, now=midnight())
    plan = store.plan(refs)
    folder = WORK / "record-only"
    shutil.rmtree(folder, ignore_errors=True)
    slog = ServingLog(ServingLogConfig.model_validate(
        {"sample_rate": 1.0, "max_buffered_rows": 10**9, "flush_rows": 10**9,
         "flush_seconds": 3600}), folder)
    began = time.perf_counter_ns()
    for i in range(n):
        slog.record(plan, resp, i)
    spent = (time.perf_counter_ns() - began) / n / 1000
    slog.close()  # writes the rows, outside the timed part
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--iterations", type=int, default=3000, help="1x10 calls per round "
                        "and variant (a quarter of that for 100x10)")
    parser.add_argument("--max-seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis-port", type=int, default=6390)
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 140)
    url = f"redis://127.0.0.1:{args.redis_port}/0"
    base = make_repo(WORK / "repo", args.rows, url)
    base.materialize(views=["user_spend"])
    import polars as pl

    users = (pl.read_parquet(WORK / "repo" / "data" / "transactions", hive_partitioning=False)
             ["user_id"].unique().sort().to_list())
    variants = stores(base.config)
    it, sec = args.iterations, args.max_seconds
    runs = [(f"{name} {b}x10", store, b, it if b == 1 else it // 4)
            for b in (1, 100) for name, store in variants.items()]
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in runs}
    try:
        for r in range(args.rounds):
            for name, store, batch, n in runs:
                with console.status(f"round {r + 1}/{args.rounds}: {name}"):
                    rounds[name].append(tessera_latency(store, users, batch, n, sec))
        record = {b: record_cost(base, users, b, 20_000 if b == 1 else 2_000) for b in (1, 100)}
    finally:
        for store in variants.values():
            store.close()  # writes what the logs still buffer
        base.close()
    results: dict[str, Any] = {name: median_round(got) for name, got in rounds.items()}
    t = Table(title=f"get_online_features, {args.rows:,} events, 10 features, "
                    f"{args.rounds} rounds (medians)")
    for col in ("measure", "n", "p50 ms", "p99 ms", "max ms", "calls/s"):
        t.add_column(col, justify="left" if col == "measure" else "right")
    for name, v in results.items():
        t.add_row(name, f"{v['n']:,}", f"{v['p50_ms']:.3f}", f"{v['p99_ms']:.3f}",
                  f"{v['max_ms']:.2f}", f"{v['ops_per_s']:,.0f}")
    console.print(t)
    g = Table(title="on / off (median over rounds of the ratio within a round)")
    for col in ("measure", "p50", "p99", "max"):
        g.add_column(col, justify="left" if col == "measure" else "right")
    ratios: dict[str, dict[str, float]] = {}
    for b in (1, 100):
        off = rounds[f"off {b}x10"]
        for name in ("on 1.0", "on 0.1"):
            on = rounds[f"{name} {b}x10"]
            ratios[f"{name} {b}x10"] = {k: statistics.median(
                x[f"{k}_ms"] / y[f"{k}_ms"] for x, y in zip(on, off, strict=True))
                for k in ("p50", "p99", "max")}
            q = ratios[f"{name} {b}x10"]
            g.add_row(f"{name} / off, {b}x10", f"{q['p50']:.2f}×", f"{q['p99']:.2f}×",
                      f"{q['max']:.2f}×")
    console.print(g)
    for b, us in record.items():
        console.print(f"ServingLog.record alone, {b}x10 at 1.0: {us:.2f} µs per call")
    for name, store in variants.items():
        if store.serving_log is not None:
            s = store.serving_log.stats()
            console.print(f"log {name}: {s.rows_logged:,} rows logged, {s.rows_written:,} "
                          f"written in {s.files_written} files, {s.rows_dropped:,} dropped, "
                          f"{s.write_errors} write errors")
    results.update({"ratios": ratios, "record_us": record, "rounds": rounds, "rows": args.rows})
    out = ROOT / ".tessera" / "bench" / "serving_log.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    console.print(f"results: {out}")


if __name__ == "__main__":
    main()
