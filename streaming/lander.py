"""Landing off the micro-batch's critical path: accepted events reach the offline store after
they are visible online, and a batch's Kafka offsets are committed only once they have.

The consumer applies a batch to Redis, hands its accepted events (per topic) and its offsets
here, and goes on with the next batch. This thread lands batches in the order they came and
then hands each batch's offsets on (``done``: the fetcher commits them). Batches that queued up
while it was writing are landed together: one file per partition for all of them instead of one
per batch, which keeps both the CPU it takes from the next batches and the count of small files
in the offline store down when batches are small.

Nothing changes for exactly once: landing skips offsets already landed (file names), a batch's
offsets are committed only after its events are landed, and the fetcher counts a batch as in
hand until then, so a rebalance waits for its landing too. A landing error stops landing (later
batches are neither landed nor committed: read again after a restart) and is raised by the
consumer's loop.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import polars as pl

    from streaming.landing import Landing

log = logging.getLogger("tessera.stream")

_Item = tuple[Sequence[tuple["Landing", "pl.DataFrame"]], dict[Any, int]]


class Lander(threading.Thread):
    """Lands handed-over batches in order; ``done(offsets)`` once a batch is landed."""

    def __init__(self, done: Callable[[dict[Any, int]], None]) -> None:
        super().__init__(name="tessera-stream-landing", daemon=True)
        self._done = done
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self.error: BaseException | None = None
        self.landed = 0  # rows written (this thread only)
        self.writes = 0  # landing calls, each one file per partition (this thread only)

    def submit(self, frames: Sequence[tuple[Landing, pl.DataFrame]],
               offsets: dict[Any, int]) -> None:
        """Land ``frames`` (per topic), then hand ``offsets`` on, after every batch before it
        (a batch with nothing to land too: committing its offsets early would commit the
        ones of the batches still being landed)."""
        self._queue.put(([(landing, f) for landing, f in frames if f.height], offsets))

    def close(self, timeout: float = 120) -> None:
        """Land what was handed over, then stop (the consumer is finishing)."""
        self._queue.put(None)
        self.join(timeout=timeout)

    def run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            items = [first]
            while True:  # whatever else queued up meanwhile is landed with it
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                items.append(more)
            if self.error is not None:
                continue  # landing failed before: neither land nor commit anything after it
            try:
                self._land(items)
            except BaseException as e:  # raised by the consumer's loop
                log.error("landing failed: %s: %s", type(e).__name__, e)
                self.error = e
                continue
            for _, offsets in items:
                self._done(offsets)

    def _land(self, items: list[_Item]) -> None:
        import polars as pl

        by_landing: dict[int, tuple[Landing, list[pl.DataFrame]]] = {}
        for frames, _ in items:
            for landing, frame in frames:
                by_landing.setdefault(id(landing), (landing, []))[1].append(frame)
        for landing, parts in by_landing.values():
            frame = parts[0] if len(parts) == 1 else pl.concat(parts, how="vertical_relaxed")
            self.landed += landing.write(frame)
            self.writes += 1


__all__ = ["Lander"]
