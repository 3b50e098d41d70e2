"""The Kafka side of ``tessera stream`` on its own thread: poll the next micro-batch while the
previous one is being applied.

kafka-python decodes records in pure Python, about as much CPU as everything else a batch costs
(decode, rules, merge, Redis). Polars, numpy and the Redis socket release the GIL, so polling on
a second thread overlaps much of the two. The consumer object is used by this thread only (it
is not thread-safe); the main thread hands back the offsets to commit once a batch is written,
and the commit happens here, between two polls.

Batches are adaptive: while the main thread is busy, the next batch fills up to
``max_batch_events`` or ``max_batch_ms``; when it is idle, it gets whatever the last poll brought
at once, so a quiet stream is not held back by the batch window.

Handing batches over must not let two processes land or apply one batch at once after a
rebalance: when partitions are revoked, the fetcher waits for every batch it handed over to be
written and commits, before the group may give the partitions to another member; what it had
polled but not handed over yet is dropped (neither written nor committed: read again). kafka-
python 3 calls the rebalance listener on its IO thread, which also sends the heartbeats and may
not make blocking consumer calls: the waiting and the commit there are awaited, not blocking.

``idle_since`` tells a bounded run (``--until-idle``) when nothing is left to do: the group has
given this process its partitions (maybe none), every one of them is read up to its end offset,
with nothing fetched since, and the group has committed every partition of the topics up to its
end offset. The last part matters after a crash: a member killed with ``kill -9`` keeps its
partitions until its session times out (10 s), and a run that stopped once its own partitions
were read would leave the dead member's events unlanded (they were applied online by the killed
process, never committed). A rebalance or any fetched event resets it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("tessera.stream")

DRAINED_EVERY_S = 0.5  # how often an idle process asks whether the whole group is done


class Fetcher(threading.Thread):
    """Polls micro-batches into ``batches`` (at most one waiting); commits what ``done`` gets."""

    def __init__(self, make_consumer: Callable[[Any], Any], *, max_events: int,
                 max_ms: int, limit: int | None) -> None:
        super().__init__(name="tessera-stream-fetcher", daemon=True)
        self.batches: queue.Queue[dict[Any, list[Any]]] = queue.Queue(maxsize=1)
        self.stopping = threading.Event()
        self.hungry = threading.Event()  # the main thread waits for a batch
        self.error: BaseException | None = None
        self.idle_since: float | None = None  # see the module docstring
        self.quiet = False  # this process's partitions are read to their end: land what waits
        self.on_revoke: Callable[[], None] | None = None  # e.g. land what waits, now
        self.lag: dict[tuple[str, int], int] = {}
        self._joined = False  # the group gave us our partitions and no rebalance began since
        self._rebalances = 0
        self._commits: queue.SimpleQueue[dict[Any, Any]] = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._inflight = 0
        self._max_events, self._max_ms, self._limit = max_events, max_ms, limit
        self._fetched = 0
        self._caught_up = False
        self._drained = False  # the whole group's commits reach the end offsets
        self._drained_checked = 0.0
        self.consumer = make_consumer(self)

    # --- called by the consumer's rebalance listener, on kafka-python's IO thread -----------

    async def revoked(self, sleep: Callable[[float], Any]) -> None:
        """A rebalance begins: wait (``await sleep``) until every handed-over batch is written,
        then commit. Never blocks the IO thread: heartbeats go on meanwhile."""
        self._joined = False
        self.idle_since = None
        self._drained, self._drained_checked = False, 0.0
        self._rebalances += 1
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            with self._cond:
                if not self._inflight:
                    break
                if self.stopping.is_set():  # the main thread is done: nothing is in hand
                    self._drop_waiting()
                    self._inflight = 0
                    break
            if self.on_revoke is not None:  # again each round: the batch being applied now
                self.on_revoke()            # is handed over after the first call
            await sleep(0.05)
        offsets = self._pending()
        if offsets:
            from kafka.errors import KafkaError

            try:
                await self.consumer.commit_async(offsets)
            except KafkaError as e:
                _commit_failed(e)

    def assigned(self) -> None:
        """The group's assignment (maybe no partitions) is ours."""
        self._joined = True
        self.idle_since = None  # counted from the first poll that finds nothing to read

    # --- called by the main thread ----------------------------------------------------------

    def done(self, offsets: dict[Any, Any]) -> None:
        """A handed-over batch is written: commit ``offsets`` (TopicPartition → next offset)."""
        self._commits.put(offsets)
        with self._cond:
            self._inflight -= 1
            self._cond.notify_all()

    def take(self, timeout: float) -> dict[Any, list[Any]] | None:
        self.hungry.set()
        try:
            return self.batches.get(timeout=timeout)
        except queue.Empty:
            return None
        finally:
            self.hungry.clear()

    # --- this thread ------------------------------------------------------------------------

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                self.commit_pending()
                if self._limit is not None and self._fetched >= self._limit:
                    time.sleep(0.05)
                    continue
                batch = self._poll()
                if batch:
                    with self._cond:
                        self._inflight += 1
                    while True:
                        try:
                            self.batches.put(batch, timeout=0.1)
                            break
                        except queue.Full:
                            if self.stopping.is_set():  # abandoned: neither written nor
                                with self._cond:        # committed, read again later
                                    self._inflight -= 1
                                    self._cond.notify_all()
                                break
                self._update_lag()
                self._update_idle(bool(batch))
        except BaseException as e:  # handed to the main thread, which raises it
            self.error = e

    def _poll(self) -> dict[Any, list[Any]]:
        most = self._max_events
        if self._limit is not None:
            most = min(most, self._limit - self._fetched)
        deadline = time.monotonic() + self._max_ms / 1000
        out: dict[Any, list[Any]] = {}
        count = 0
        while count < most and not self.stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            rebalances = self._rebalances
            got = self.consumer.poll(timeout_ms=int(left * 1000) + 1, max_records=most - count)
            if got:
                self.idle_since = None
            if self._rebalances != rebalances and out:  # revoked meanwhile: not ours to write
                out, count = {}, 0
            if not got and not self.consumer.assignment():
                time.sleep(min(0.05, max(left, 0)))  # poll returns at once without partitions
            for tp, recs in got.items():
                out.setdefault(tp, []).extend(recs)
                count += len(recs)
            if count and self.hungry.is_set() and self.batches.empty():
                break  # adaptive: an idle applier gets what there is now (freshness); a
                # busy one gets a fuller batch (throughput)
        self._fetched += count
        return out

    def _pending(self) -> dict[Any, Any]:
        """The offsets handed back since the last commit, merged (TopicPartition → metadata)."""
        from kafka import OffsetAndMetadata

        merged: dict[Any, int] = {}
        while True:
            try:
                for tp, offset in self._commits.get_nowait().items():
                    merged[tp] = max(merged.get(tp, 0), offset)
            except queue.Empty:
                break
        return {tp: OffsetAndMetadata(o, "", -1) for tp, o in merged.items()}

    def commit_pending(self) -> None:
        """Commit what was handed back (this thread, or the main thread once it stopped)."""
        from kafka.errors import KafkaError

        offsets = self._pending()
        if not offsets:
            return
        try:
            self.consumer.commit(offsets)
        except KafkaError as e:
            _commit_failed(e)

    def _drop_waiting(self) -> None:
        """Stopping: batches nobody will take are not written (nor committed)."""
        while True:
            try:
                self.batches.get_nowait()
                self._inflight -= 1
            except queue.Empty:
                return

    def _update_lag(self) -> None:
        from kafka.errors import IllegalStateError

        lag = {}
        self._caught_up = True
        for tp in self.consumer.assignment():
            try:
                end = self.consumer.highwater(tp)
                position = self.consumer.position(tp) if end is not None else None
            except IllegalStateError:  # revoked meanwhile
                end = position = None
            if end is None or position is None:  # nothing fetched yet: its end is unknown
                self._caught_up = False
            else:
                lag[(tp.topic, tp.partition)] = max(end - position, 0)
                self._caught_up &= position >= end
        self.lag = lag

    def _update_idle(self, fetched: bool) -> None:
        if fetched:
            self._drained = False  # asked again once these are committed
            self._drained_checked = 0.0
        self.quiet = not fetched and self._joined and self._caught_up
        if not self.quiet or not self._group_drained():
            self.idle_since = None
        elif self.idle_since is None:
            self.idle_since = time.monotonic()

    def _group_drained(self) -> bool:
        """Every partition of the subscribed topics committed by the group up to its end offset
        (asked of the broker at most every ``DRAINED_EVERY_S``, only once this process is read
        to its own end)."""
        from kafka import TopicPartition
        from kafka.errors import KafkaError

        now = time.monotonic()
        if now - self._drained_checked < DRAINED_EVERY_S:
            return self._drained
        self._drained_checked = now
        consumer = self.consumer
        tps = [TopicPartition(topic, p) for topic in sorted(consumer.subscription() or ())
               for p in sorted(consumer.partitions_for_topic(topic) or ())]
        try:
            ends = consumer.end_offsets(tps)
            self._drained = bool(tps) and all(
                (consumer.committed(tp, timeout_ms=5_000) or 0) >= ends[tp] for tp in tps)
        except KafkaError as e:  # asked again next round
            log.debug("group offsets unavailable: %s: %s", type(e).__name__, e)
            self._drained = False
        return self._drained

    def idle(self) -> float | None:
        """Since when nothing was left to read or write (main thread), or None: not joined,
        not read to the end, a batch still waiting or being written, or some partition of the
        topics not yet committed to its end by the group."""
        since = self.idle_since
        with self._cond:
            if self._inflight or not self.batches.empty():
                return None
        return since

    def finish(self) -> None:
        """Stop polling, wait for the thread, commit what was written (main thread, after)."""
        self.stopping.set()
        with self._cond:
            self._drop_waiting()
        self.join(timeout=60)
        self.commit_pending()


def _commit_failed(e: BaseException) -> None:
    # e.g. a rebalance took the partition: its next owner re-reads from the last commit, and
    # the per-entity offsets skip what we applied
    log.warning("offset commit failed (%s: %s); the events will be re-read and skipped as "
                "already applied", type(e).__name__, e)


__all__ = ["Fetcher"]
