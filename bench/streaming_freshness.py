"""The freshness side of ``bench/streaming.py``: a ``StreamConsumer`` with the wall clock while
another process produces at a steady rate (``freshness``), and the table of its result
(``_freshness_table``).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import threading
import time
import uuid
from typing import Any

from rich.table import Table

from bench.streaming_runs import Timers, console, timed

GOAL_P99_S = 0.5
WARMUP_S = 1.0  # freshness: applied batches of the first second are left out


def _produce_at(bootstrap: str, topic: str, payloads: list[bytes], keys: list[bytes],
                rate: float, seconds: float, start: float, out: Any) -> None:
    """In its own process: wait for the planned instant, then produce at ``rate``."""
    import kafka  # noqa: F401  (imported before the planned instant, not after it)
    import rich.progress  # noqa: F401

    from streaming.produce import produce

    time.sleep(max(0.0, start - time.time()))
    summary = produce(bootstrap, topic, payloads, keys, rate=rate, max_seconds=seconds)
    out.put((summary.sent, summary.seconds))


def freshness(repo: Any, events: Any, rate: float, seconds: float) -> dict[str, Any]:
    import numpy as np
    import polars as pl

    from streaming import events as E
    from streaming.consumer import StreamConsumer

    n = int(rate * seconds)
    frame = events.sample(n, with_replacement=n > events.height, seed=11)
    views = repo.views
    consumer = StreamConsumer(repo.cfg, views, group=f"bench-fresh-{uuid.uuid4().hex[:6]}")
    batches: list[tuple[float, Any]] = []  # (applied at, lags in µs), every batch
    observe = consumer.metrics.freshness

    def record(lag_us: Any) -> None:
        if len(lag_us):
            batches.append((time.monotonic(), np.asarray(lag_us)))
        observe(lag_us)

    consumer.metrics.freshness = record
    timers = Timers(consumer)
    marks = timed(consumer)
    sent_at: list[tuple[int, bytes]] = []  # (CreateTime ms, value) of every 20th record
    process = consumer._process

    def sample(records: Any, summary: Any) -> Any:
        for recs in records.values():
            sent_at.extend((r.timestamp, r.value) for r in recs[::20])
        return process(records, summary)

    consumer._process = sample
    result: dict[str, Any] = {}
    assigned = threading.Event()
    log = logging.getLogger("tessera.stream")
    handler = _OnAssigned(assigned)
    level, propagate = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # the bench prints its own lines (warnings through the handler)
    thread = threading.Thread(target=lambda: result.update(summary=consumer.run(
        max_seconds=seconds + 60, handle_signals=False)), daemon=True)
    thread.start()
    if not assigned.wait(30):  # start producing once the consumer holds its partitions
        console.print("[yellow]freshness: no partitions assigned after 30 s[/]")
    start = time.time() + 2.0
    start_us = int(start * 1e6)
    ts = pl.Series("event_ts", start_us + (np.arange(n) * (1e6 / rate)).astype(np.int64))
    frame = frame.with_columns(ts.cast(pl.Datetime("us", "UTC")))
    src = views[0].source
    payloads, keys = E.encode_events(frame, src), E.encode_keys(frame, "user_id")
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    producer = ctx.Process(target=_produce_at, args=(repo.bootstrap, repo.topic, payloads, keys,
                                                     rate, seconds, start, out))
    producer.start()
    try:
        sent, produce_s = out.get(timeout=seconds + 90)
    finally:
        producer.join(timeout=30)
    deadline = time.monotonic() + 30
    while consumer.metrics.total_events < sent and time.monotonic() < deadline:
        time.sleep(0.05)
    consumer.stop()
    thread.join(timeout=30)
    timers.restore()
    consumer.online.close()
    log.removeHandler(handler)
    log.setLevel(level)
    log.propagate = propagate

    skew = np.array([ms * 1000 - _event_us(json.loads(v)["event_ts"]) for ms, v in sent_at],
                    np.float64) / 1e6  # send time - event time, s
    offset = float(np.median(skew)) if len(skew) else 0.0
    first = batches[0][0] if batches else 0.0
    every = np.concatenate([x for _, x in batches]) / 1e6 if batches else np.zeros(0)
    warm = [x for t, x in batches if t - first >= WARMUP_S]
    steady = np.concatenate(warm) / 1e6 if warm else np.zeros(0)
    return {
        "sent": sent, "produce_s": produce_s, "summary": result.get("summary"),
        "consumed": consumer.metrics.total_events,
        "metrics_p50": consumer.metrics.freshness_p(0.5, seconds=3600),
        "metrics_p99": consumer.metrics.freshness_p(0.99, seconds=3600),
        "offset": offset, "skew_p99": float(np.quantile(skew, 0.99)) if len(skew) else 0.0,
        "all": every, "steady": steady, "marks": marks, "timers": timers.seconds,
    }


class _OnAssigned(logging.Handler):
    """Sets ``event`` when the consumer logs that it got partitions."""

    def __init__(self, event: threading.Event) -> None:
        super().__init__(logging.INFO)
        self.event = event

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            console.print(f"[yellow]stream: {text}[/]")
        if text.startswith("partitions assigned") and not text.endswith("none"):
            self.event.set()


def _event_us(text: str) -> int:
    from datetime import datetime

    from features.windows import to_micros

    return to_micros(datetime.fromisoformat(text.replace("Z", "+00:00")))


def _goal(ok: bool) -> str:
    return "[green]met[/]" if ok else "[red]missed[/]"


def _freshness_table(f: dict[str, Any], rate: float, seconds: float) -> float:
    """Prints the run's tables; returns its p99 after the warm-up, ms (inf: no batch)."""
    import numpy as np

    def q(x: Any, p: float) -> str:
        return f"{np.quantile(x, p) * 1000:,.0f}" if len(x) else "n/a"

    off = f["offset"]
    table = Table(title=f"Freshness: {f['sent']:,} events produced at {rate:,.0f}/s for "
                        f"{seconds:g} s ({f['sent'] / f['produce_s']:,.0f}/s achieved), "
                        f"{f['consumed']:,} consumed")
    for col in ("measure", "events × views", "p50 ms", "p99 ms", "max ms",
                f"goal p99 ≤ {GOAL_P99_S * 1000:.0f} ms"):
        table.add_column(col, justify="right")
    mp50, mp99 = f["metrics_p50"], f["metrics_p99"]
    table.add_row("StreamMetrics.freshness_p, all (event time to visible)",
                  f"{len(f['all']):,}",
                  "n/a" if mp50 is None else f"{mp50 * 1000:,.0f}",
                  "n/a" if mp99 is None else f"{mp99 * 1000:,.0f}",
                  f"{f['all'].max() * 1000:,.0f}" if len(f["all"]) else "n/a", "")
    for name, x in (("all, send offset subtracted", f["all"] - off),
                    (f"after the first {WARMUP_S:g} s, send offset subtracted",
                     f["steady"] - off)):
        ok = len(x) and np.quantile(x, 0.99) <= GOAL_P99_S
        table.add_row(name, f"{len(x):,}", q(x, 0.5), q(x, 0.99),
                      f"{x.max() * 1000:,.0f}" if len(x) else "n/a", _goal(bool(ok)))
    console.print(table)
    console.print(f"send time − event time (CreateTime, sampled): median {off * 1000:,.0f} ms, "
                  f"p99 {f['skew_p99'] * 1000:,.0f} ms (the median is subtracted above)")
    if f["summary"] is not None:
        console.print(f"  {f['summary'].format()}")
    marks = f["marks"]
    if len(marks) > 1:
        sizes = np.diff([0] + [m[2] for m in marks])
        spent = np.array([m[1] - m[0] for m in marks])
        console.print(f"  batches: {len(marks)}, events per batch median {np.median(sizes):,.0f}; "
                      f"processing per batch (decode → Redis → commit) p50 "
                      f"{np.median(spent) * 1000:,.0f} ms, p99 "
                      f"{np.quantile(spent, 0.99) * 1000:,.0f} ms, first {spent[0] * 1000:,.0f} ms")
        t = f["timers"]
        per = {"JSON": t["json"], "landing": t.get("landing", 0.0), "rules": t["rules"],
               "merge": t["merge"], "tags/offsets/CAS": t["apply"] - t["merge"] - t["redis"],
               "Redis": t["redis"], "commit": t["commit"]}
        per["rest"] = spent.sum() - sum(per.values())
        console.print("  per batch, mean ms: " + ", ".join(
            f"{k} {v / len(marks) * 1000:,.0f}" for k, v in per.items()))
    steady = f["steady"] - off
    return float(np.quantile(steady, 0.99) * 1000) if len(steady) else float("inf")
