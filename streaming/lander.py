"""Landing off the micro-batch's critical path: accepted events reach the offline store after
they are visible online, and a batch's Kafka offsets are committed only once they have.

The consumer applies a batch to Redis, hands its accepted events (per topic) and its offsets
here, and goes on with the next batch. This thread lands batches in the order they came and
then hands each batch's offsets on (``done``: the fetcher commits them). Batches are landed
together, one file per partition for all of them: those that queued up while it was writing,
and those that come within ``every_s`` of the first one waiting (``stream.land_every_ms``),
unless ``max_rows`` events wait already. At a steady 5,000 events/s a batch holds ~1,000
events; landed one by one that was 6 files of ~170 rows per batch, ~30 files a second in the
offline store, which every later ``tessera run`` has to open. :meth:`flush` lands what waits
now: the consumer calls it when the stream goes quiet, the fetcher when partitions are revoked
(a rebalance waits for the landing), :meth:`close` when the consumer stops.

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
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import polars as pl

    from streaming.landing import Landing

log = logging.getLogger("tessera.stream")

_Item = tuple[Sequence[tuple["Landing", "pl.DataFrame"]], dict[Any, int]]
_FLUSH = object()  # in the queue: land what waits now


class Lander(threading.Thread):
    """Lands handed-over batches in order; ``done(offsets)`` once a batch is landed."""

    def __init__(self, done: Callable[[dict[Any, int]], None], *, every_s: float = 0.0,
                 max_rows: int = 200_000) -> None:
        super().__init__(name="tessera-stream-landing", daemon=True)
        self._done = done
        self.every_s, self.max_rows = every_s, max_rows
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()  # _Item, _FLUSH or None
        self.error: BaseException | None = None
        self.landed = 0  # rows written (this thread only)
        self.writes = 0  # landing calls, each one file per partition (this thread only)

    def submit(self, frames: Sequence[tuple[Landing, pl.DataFrame]],
               offsets: dict[Any, int]) -> None:
        """Land ``frames`` (per topic), then hand ``offsets`` on, after every batch before it
        (a batch with nothing to land too: committing its offsets early would commit the
        ones of the batches still being landed)."""
        self._queue.put(([(landing, f) for landing, f in frames if f.height], offsets))

    def flush(self) -> None:
        """Land what was handed over so far without waiting for ``every_s`` (any thread)."""
        self._queue.put(_FLUSH)

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
            if first is _FLUSH:  # nothing waits
                continue
            items = [first]
            rows = _rows(first)
            deadline = time.monotonic() + self.every_s
            while rows < self.max_rows:  # what queued up meanwhile, or comes before deadline
                wait = deadline - time.monotonic()
                try:
                    more = (self._queue.get(timeout=wait) if wait > 0
                            else self._queue.get_nowait())
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                if more is _FLUSH:
                    break
                items.append(more)
                rows += _rows(more)
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


def _rows(item: _Item) -> int:
    return sum(frame.height for _, frame in item[0])


__all__ = ["Lander"]
