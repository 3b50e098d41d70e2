"""The throughput side of ``bench/streaming.py``: one timed ``StreamConsumer`` run (``stream_run``,
``Run``), where its time goes (``Timers`` by wrapping the consumer's steps, ``profile_split``
from a cProfile run, ``PARTS``), and ``console``, the one Console the benchmark prints to.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

console = Console(width=150)


@dataclass
class Run:
    """One StreamConsumer run: its summary and per-batch (start, end, events so far)."""

    name: str
    summary: Any
    marks: list[tuple[float, float, int]] = field(default_factory=list)
    split: dict[str, float] = field(default_factory=dict)  # part -> seconds (Timers.parts)

    @property
    def e2e(self) -> float:
        return self.summary.rate

    @property
    def steady(self) -> float:
        """Events/s of the batches after the first (from the end of the first)."""
        if len(self.marks) < 2:
            return float("nan")
        return ((self.marks[-1][2] - self.marks[0][2])
                / (self.marks[-1][1] - self.marks[0][1]))

    @property
    def first_batch_s(self) -> float:
        return self.marks[0][1] - self.marks[0][0] if self.marks else float("nan")


def timed(consumer: Any) -> list[tuple[float, float, int]]:
    """Record each batch's processing start, end and the events so far (wraps the instance's
    ``_process``; the class is untouched)."""
    marks: list[tuple[float, float, int]] = []
    process = consumer._process

    def wrapper(records: Any, summary: Any) -> Any:
        began = time.monotonic()
        out = process(records, summary)
        marks.append((began, time.monotonic(), summary.events))
        return out

    consumer._process = wrapper
    return marks


class Timers:
    """Wall time of each step of the consumer, without a profiler: the step methods of this
    consumer's own objects are wrapped (one clock read per call, a few calls per batch);
    ``merge_batch`` in ``streaming.apply`` and, when polling has a thread of its own,
    ``streaming.fetcher.Fetcher._poll`` are swapped for the run and put back after."""

    def __init__(self, consumer: Any) -> None:
        import streaming.apply as apply_module

        self.seconds: dict[str, float] = {}
        self._patched: list[tuple[Any, str, Any]] = []
        self.threaded = not hasattr(consumer, "_poll")
        if self.threaded:
            from streaming.fetcher import Fetcher

            self._patch(Fetcher, "_poll", "poll")
        else:
            self._wrap(consumer, "_poll", "poll")
        for name in ("_commit", "_dead_letters"):
            if hasattr(consumer, name):
                self._wrap(consumer, name, "commit")
        self._wrap(consumer.online, "get", "redis")
        self._wrap(consumer.online, "call_many", "redis")
        for topic in consumer.topics.values():
            self._wrap(topic.decoder, "decode", "json")
            if topic.landing is not None:
                self._wrap(topic.landing, "write", "landing")
            for writer in topic.views:
                self._wrap(writer, "reject", "rules")
                self._wrap(writer, "rules", "rules")
                self._wrap(writer, "apply", "apply")
        self._patch(apply_module, "merge_batch", "merge")

    def _timed(self, inner: Any, label: str) -> Any:
        seconds = self.seconds
        seconds.setdefault(label, 0.0)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                seconds[label] += time.perf_counter() - began

        return wrapper

    def _wrap(self, obj: Any, attr: str, label: str) -> None:
        """An instance's method: the wrapper dies with the instance."""
        setattr(obj, attr, self._timed(getattr(obj, attr), label))

    def _patch(self, owner: Any, attr: str, label: str) -> None:
        """A class's or module's function: put back by :meth:`restore`."""
        inner = getattr(owner, attr)
        self._patched.append((owner, attr, inner))
        setattr(owner, attr, self._timed(inner, label))

    def restore(self) -> None:
        for owner, attr, inner in reversed(self._patched):
            setattr(owner, attr, inner)
        self._patched.clear()

    def parts(self, total: float, inside: float) -> dict[str, float]:
        """Seconds per part of ``PARTS`` (nested calls subtracted from their callers);
        ``inside``: the seconds spent in batches (``_process``)."""
        t = self.seconds
        known = t["json"] + t.get("landing", 0.0) + t["rules"] + t["apply"] + t["commit"]
        return {"outside": total - inside, "json": t["json"],
                "landing": t.get("landing", 0.0), "rules": t["rules"], "merge": t["merge"],
                "bookkeeping": t["apply"] - t["merge"] - t["redis"], "redis": t["redis"],
                "commit": t["commit"], "inside": inside - known, "poll": t["poll"],
                "threaded": float(self.threaded)}


#: The parts of a stream run, in the order they are shown. All but ``poll`` are the main
#: thread's and add up to the run's wall time.
PARTS = {
    "outside": "main thread between batches: connect, group join, and the Kafka poll "
               "(or, with a polling thread, waiting for it)",
    "json": "JSON decoding (streaming/decode.py)",
    "landing": "landing Parquet (streaming/landing.py, one fsync'd file per partition)",
    "rules": "rules + partials: reject, project, collect (ViewWriter.reject/rules)",
    "merge": "state merge (streaming/state.py merge_batch)",
    "bookkeeping": "entity tags, offsets, CAS commands (rest of ViewWriter.apply)",
    "redis": "Redis: MGET + EVALSHA pipelines (RedisOnline.get/call_many)",
    "commit": "dead letters (+ the offset commit when on the main thread)",
    "inside": "the rest of each batch: frames, partition/offset columns, metrics",
    "poll": "Kafka poll: fetch + record decoding (kafka-python)",
}


class ThreadProfiles:
    """cProfile for the consumer's polling thread too (``cProfile`` sees one thread): while
    installed, a thread named ``tessera-stream-fetcher`` starts a profiler of its own."""

    NAME = "tessera-stream-fetcher"

    def __init__(self) -> None:
        self.profiles: list[cProfile.Profile] = []

    def _hook(self, *_: Any) -> None:
        sys.setprofile(None)
        if threading.current_thread().name.startswith(self.NAME):
            profile = cProfile.Profile()
            self.profiles.append(profile)
            profile.enable()

    def __enter__(self) -> ThreadProfiles:
        threading.setprofile(self._hook)
        return self

    def __exit__(self, *_: Any) -> None:
        threading.setprofile(None)  # type: ignore[arg-type]


def round_config(cfg: Any, project: str, land: Path) -> Any:
    """``cfg`` with its own Redis namespace (project) and landing folder."""
    return cfg.model_copy(update={"project": project,
                                  "offline": cfg.offline.model_copy(update={"path": land})})


def stream_run(name: str, cfg: Any, views: list, group: str, events: int, clock: Any,
               profile: cProfile.Profile | None = None) -> Run:
    from streaming.consumer import StreamConsumer

    consumer = StreamConsumer(cfg, views, group=group, clock=clock)
    timers = Timers(consumer) if profile is None else None
    marks = timed(consumer)
    threads = ThreadProfiles()
    try:
        if profile is not None:
            threads.__enter__()
            profile.enable()
        summary = consumer.run(max_events=events, max_seconds=300, handle_signals=False)
    finally:
        if profile is not None:
            profile.disable()
            threads.__exit__()
        if timers is not None:
            timers.restore()
        consumer.online.close()
    inside = sum(end - began for began, end, _ in marks)
    split = {} if timers is None else timers.parts(summary.seconds, inside)
    if profile is not None:
        split = {"threads": threads.profiles}  # type: ignore[dict-item]
    applied = sum(summary.applied.values())
    if summary.events != events or applied != 2 * events or summary.skipped:
        console.print(f"[red]{name}: expected {events:,} events each applied to both views, "
                      f"got {summary.format()}[/]")
    return Run(name, summary, marks, split)


# --- profile ----------------------------------------------------------------------------------


def profile_split(profile: cProfile.Profile, threads: list[cProfile.Profile],
                  total: float) -> dict[str, float]:
    """Seconds per part of ``PARTS`` (and ``records``: kafka-python's record decoding, part of
    ``poll``) in one profiled stream run, from the cumulative times of the entry points; the
    polling thread's profile, when there is one, is added to the main thread's."""
    merged = pstats.Stats(profile)
    for p in threads:
        merged.add(p)
    stats = merged.stats  # type: ignore[attr-defined]

    def cum(suffix: str, *names: str) -> float:
        return sum(v[3] for (file, _line, name), v in stats.items()
                   if file.replace("\\", "/").endswith(suffix) and name in names)

    redis = cum("features/online/redis_store.py", "get", "call_many")
    merge = cum("streaming/state.py", "merge_batch")
    apply = cum("streaming/apply.py", "apply")
    out = {
        "json": cum("streaming/decode.py", "decode"),
        "landing": cum("streaming/landing.py", "write"),
        "rules": cum("streaming/apply.py", "reject", "rules"),
        "merge": merge,
        "bookkeeping": apply - merge - redis,
        "redis": redis,
        "commit": cum("streaming/consumer.py", "_commit", "_dead_letters"),
    }
    inside = cum("streaming/consumer.py", "_process")
    out["inside"] = inside - out["json"] - out["landing"] - out["rules"] - apply - out["commit"]
    out["outside"] = total - inside
    out["poll"] = cum("streaming/consumer.py", "_poll") + cum("streaming/fetcher.py", "_poll")
    out["records"] = cum("kafka/consumer/fetcher.py", "fetched_records")
    return out
