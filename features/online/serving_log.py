"""The serving log: a sampled record of online responses, written to Parquet in the background.

It is the *live distribution* that drift reports compare with a training reference
(``tessera drift --current serving-log``). Layout (a contract with that reader; see
docs/serving_log.md)::

    <serving_log.path>/date=YYYY-MM-DD/part-<yyyymmddThhmmss>-<uuid hex>.parquet

``date`` is the UTC date of the rows' ``served_at``; the name's time is the file's first
``served_at`` (UTC). Columns: ``served_at`` (timestamp[us, UTC]), the request's join keys
(their entity dtypes), then ``<view>__<feature>`` per served feature (its declared dtype; null
where the value was not found, outside its max age, or null). A file holds the union of the
columns of its rows; read the folder with DuckDB's ``read_parquet(..., union_by_name=true)``.
Each file is written as a hidden ``.<name>.tmp`` beside it, then renamed.

The caller's thread only samples rows and appends copies of the already-built columns to a
bounded buffer (a few µs); a daemon thread turns them into files every ``flush_seconds`` or
``flush_rows``. Past ``max_buffered_rows`` (rows waiting or being written) new rows are dropped
and counted. A failed write is logged in one line with the path and counted, never raised into
``get_online_features``.

pyarrow is imported by the writer only (:mod:`features.online.serving_log_files` builds the
tables and files), so the engine-free core stays import-light.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import random
import sys
import threading
import weakref
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.online.serving_log_files import _by_day, _table, _write

if TYPE_CHECKING:
    from features.config_jobs import ServingLogConfig
    from features.online.request import Plan
    from features.store import OnlineResponse

log = logging.getLogger("tessera.serving_log")

THREAD_NAME = "tessera-serving-log"


@dataclass(frozen=True)
class ServingLogStats:
    """Counters of one serving log since it was made.

    Attributes:
        rows_logged: entity rows sampled and buffered.
        rows_dropped: entity rows sampled but dropped, the buffer being full.
        rows_written: rows in files written.
        files_written: Parquet files written (renamed into place).
        write_errors: files that could not be written (their rows are lost).
        buffered: rows waiting in memory or being written now.
    """

    rows_logged: int = 0
    rows_dropped: int = 0
    rows_written: int = 0
    files_written: int = 0
    write_errors: int = 0
    buffered: int = 0


class _Batch:
    """The buffered rows of one request shape: one growing list per column.

    Rows are appended with ``list.extend`` into lists that live as long as the batch: a call
    allocates no container, so a full buffer adds nothing for the garbage collector to walk
    (a list per call and column did: 400k small lists made each append ~4 µs).
    """

    __slots__ = ("columns", "plan", "rows", "served_n", "served_us")

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.rows = 0
        self.served_us: list[int] = []  # per call: its instant ...
        self.served_n: list[int] = []  # ... and how many rows it logged
        # The join keys, the values, then per view read the status of its first feature.
        self.columns: list[list[Any]] = [[] for _ in range(len(plan.join_keys)
                                                           + len(plan.names) + len(plan.reads))]


class ServingLog:
    """The sampled, buffered log of one :class:`~features.store.FeatureStore`'s responses.

    Args:
        cfg: the ``serving_log`` section of ``feature_repo.yaml``.
        folder: where files go (``cfg.path`` resolved against the repo).
        seed: seed of the sampling; None: a random one.

    Example:
        >>> slog = ServingLog(cfg.serving_log, cfg.resolve(cfg.serving_log.path))  # doctest: +SKIP
        >>> slog.record(plan, response, served_at_us)                              # doctest: +SKIP
        >>> slog.close()  # writes what is buffered                                # doctest: +SKIP
    """

    def __init__(self, cfg: ServingLogConfig, folder: Path, *, seed: int | None = None) -> None:
        self.cfg = cfg
        self.folder = Path(folder)
        self.rate = float(cfg.sample_rate)
        self._rng = random.Random(seed)
        # Sampling by geometric gaps: the rows skipped before the next sampled one. Each row
        # is still logged with probability `rate`, independently, but a call whose rows all
        # fall in a gap costs one subtraction, not one random number per row.
        self._log_miss = math.log1p(-self.rate) if 0 < self.rate < 1 else 0.0
        self._skip = self._gap()
        self._lock = threading.Lock()  # buffer, counters and sampling state
        self._write_lock = threading.Lock()  # one writer at a time (thread, flush, close)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._batches: dict[int, _Batch] = {}  # id(plan) -> its rows (the batch holds it)
        self._pending = 0  # rows in _batches
        self._buffered = 0  # rows in _batches or being written
        self._logged = self._dropped = self._written = self._files = self._errors = 0

    # ---------------------------------------------------------------------------------------
    # The caller's side
    # ---------------------------------------------------------------------------------------

    def _gap(self) -> int:
        if self.rate >= 1:
            return 0
        if self.rate <= 0:
            return 1 << 62
        return int(math.log(1.0 - self._rng.random()) / self._log_miss)

    def record(self, plan: Plan, response: OnlineResponse, served_at_us: int) -> None:
        """Sample the rows of ``response`` and buffer them (never blocks, never raises I/O)."""
        keys = response.entities
        n = len(keys[plan.join_keys[0]]) if plan.join_keys else 0
        if n == 0:
            return
        with self._lock:
            if self.rate >= 1:
                picked: list[int] | None = None
            else:
                skip = self._skip
                if skip >= n:
                    self._skip = skip - n
                    return
                picked = []
                while skip < n:
                    picked.append(skip)
                    skip += 1 + self._gap()
                self._skip = skip - n
            k = n if picked is None else len(picked)
            room = self.cfg.max_buffered_rows - self._buffered
            if room <= 0:
                self._dropped += k
                return
            if k > room:
                self._dropped += k - room
                picked = list(range(n))[:room] if picked is None else picked[:room]
                k = room
            self._logged += k
            self._buffered += k
            self._pending += k
            wake = self._pending >= self.cfg.flush_rows
            batch = self._batches.get(id(plan))
            if batch is None:
                batch = self._batches[id(plan)] = _Batch(plan)
            batch.rows += k
            batch.served_us.append(served_at_us)
            batch.served_n.append(k)
            sources = [keys[name] for name in plan.join_keys]
            sources += response.values
            statuses = response.statuses  # NOT_FOUND is per view and row: one column a view
            sources += [statuses[slots[0]] for slots in plan.slots]
            if picked is None:
                for out, column in zip(batch.columns, sources, strict=True):
                    out.extend(column)
            elif len(picked) == 1:
                i = picked[0]
                for out, column in zip(batch.columns, sources, strict=True):
                    out.append(column[i])
            else:
                take = itemgetter(*picked)  # a tuple of the picked rows
                for out, column in zip(batch.columns, sources, strict=True):
                    out.extend(take(column))
        if self._thread is None:
            self._start()
        if wake:
            self._wake.set()

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
            _LIVE.add(self)
            _install_hooks()
            self._thread.start()

    # ---------------------------------------------------------------------------------------
    # The writer's side
    # ---------------------------------------------------------------------------------------

    @staticmethod
    def prepare() -> None:
        """Import what the writer needs (numpy, pyarrow and, through pyarrow, pandas: ~2 s).

        Done by the writer thread when it starts, and by ``tessera serve`` before its first
        request. An import holds the GIL in long stretches: done by the writer while requests
        are served, it slowed 110-120 of ~20,000 one-entity reads past 5 ms (up to 112 ms) in
        a 2.5 s window (docs/serving_log.md).
        """
        import numpy  # noqa: F401
        import pyarrow as pa
        import pyarrow.compute
        import pyarrow.parquet

        # pyarrow imports pandas, when installed, on its first conversion of Python objects
        # (1.5-1.7 s here): the writer's first flush did that, in the middle of serving.
        pa.array([0])

    def _run(self) -> None:
        try:
            self.prepare()
        except Exception as e:
            if _exiting():  # the exit hook writes what is buffered, from the main thread
                return
            log.warning("serving log: the writer could not import pyarrow: %s: %s",
                        type(e).__name__, " ".join(str(e).split()))
        while not self._stop.is_set():
            self._wake.wait(self.cfg.flush_seconds)
            self._wake.clear()
            if self._stop.is_set():
                return
            self._drain()

    def flush(self) -> None:
        """Write every buffered row now (in the caller's thread). Errors are counted, not
        raised."""
        self._drain()

    def close(self) -> None:
        """Stop the writer thread and write what is buffered. A later ``record`` starts a new
        thread."""
        thread = self._thread
        if thread is not None:
            self._stop.set()
            self._wake.set()
            if thread is not threading.current_thread():
                thread.join(timeout=30)
            self._thread = None
        self._drain()

    def stats(self) -> ServingLogStats:
        """The counters now."""
        with self._lock:
            return ServingLogStats(self._logged, self._dropped, self._written, self._files,
                                   self._errors, self._buffered)

    def _drain(self) -> None:
        with self._write_lock:
            with self._lock:
                batches, self._batches, self._pending = list(self._batches.values()), {}, 0
            if not batches:
                return
            rows = sum(b.rows for b in batches)
            try:
                days = _by_day(_table(batches))
            except Exception as e:  # a bug or a type conflict: the rows cannot be written
                self._failed(rows, self.folder, e)
                return
            for day, table in days:
                folder = self.folder / f"date={day}"
                try:
                    _write(table, folder)
                except Exception as e:  # a full disk, a read-only folder: counted, not raised
                    self._failed(table.num_rows, folder, e)
                else:
                    with self._lock:
                        self._files += 1
                        self._written += table.num_rows
                        self._buffered -= table.num_rows

    def _failed(self, rows: int, where: Path, e: Exception) -> None:
        log.warning("serving log: could not write %d rows to %s: %s: %s", rows, where,
                    type(e).__name__, " ".join(str(e).split()))
        with self._lock:
            self._errors += 1
            self._buffered -= rows


# Every log with a running thread, so the exit and fork hooks find them without keeping them
# alive. Installed on the first started thread, never at import.
_LIVE: weakref.WeakSet[ServingLog] = weakref.WeakSet()
_HOOKS: list[bool] = []


def _install_hooks() -> None:
    if _HOOKS:
        return
    _HOOKS.append(True)
    atexit.register(_close_all)
    os.register_at_fork(after_in_child=_forget_in_child)


def _exiting() -> bool:
    """Whether the interpreter has begun to exit.

    A script that exits within ~2 s of its first read does so while the writer thread still
    imports pyarrow and pandas; pandas' import registers a thread-exit hook, which threading
    refuses once its shutdown began (``RuntimeError: can't register atexit after shutdown``).
    The flag is private to threading (3.9 to 3.13 alike); the main thread stopped and the
    interpreter finalizing are the public signs of the same.
    """
    return (bool(getattr(threading, "_SHUTTING_DOWN", False))
            or not threading.main_thread().is_alive() or sys.is_finalizing())


def _close_all() -> None:
    for slog in list(_LIVE):
        slog.close()


def _forget_in_child() -> None:
    """A forked child has no writer thread, and its buffer holds the parent's rows (the parent
    writes them): start empty."""
    for slog in list(_LIVE):
        slog._thread = None
        slog._batches, slog._pending, slog._buffered = {}, 0, 0
        slog._lock, slog._write_lock = threading.Lock(), threading.Lock()
        slog._wake, slog._stop = threading.Event(), threading.Event()
