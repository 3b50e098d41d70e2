"""What materialization keeps in Redis beside the values: each view's state key (what it last
wrote) and its lease (one materialization of a view at a time).

Two materializations of one view that overlap can interleave their writes: one reads the
offline store at version 2 and writes late, the other reads version 3, writes first and then
records version 3 as materialized. Redis then holds version 2's values under a state that says
3, and every later incremental run skips them. So a materialization holds the view's lease
from reading the state to saving it; another one waits for it (``wait_s``), then fails naming
the holder.

The lease is redis-py's lock (``SET NX PX`` with a random token; released and renewed only by
its holder): it expires ``LEASE_S`` after its holder stops renewing it (killed), so a crash
blocks nobody for long. A thread renews it while the holder lives. A holder that was paused
past its lease (stopped, swapping) may have written after another one took over: it then
deletes the view's state key, so the next run rewrites every value, instead of recording a
state it can no longer vouch for.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from features import offline_store
from features.errors import OnlineUnavailableError
from features.online import keys as K
from features.online.redis_store import RedisOnline
from pipelines.errors import PipelineError

LEASE_S = 30.0  # a holder that stops renewing (killed) frees the view this long after
WAIT_S = 600.0  # how long a materialization waits for another one of the same view


def read_state(online: RedisOnline, state_key: str) -> tuple[dict[str, Any] | None, str]:
    """(what the last materialization recorded, a problem): None and no problem when there is
    no state key; None and what is wrong with it for one that is not ours to read (not UTF-8,
    not JSON, another shape). Materialization then rewrites everything; a consistency check
    cannot check."""
    try:
        text = online.get_text(state_key)
        if not text:
            return None, ""
        state = json.loads(text)
        if (isinstance(state, dict) and isinstance(state.get("partitions"), dict)
                and isinstance(state.get("at_us", 0), int)):
            return state, ""
        problem = "not the state materialize writes"
    except ValueError as e:  # UnicodeDecodeError too
        problem = f"not JSON: {e}"
    return None, f"state key {state_key} unreadable ({problem})"


def save_state(online: RedisOnline, state_key: str, manifest: offline_store.Manifest,
               at_us: int, ttls: str, lease: ViewLease) -> None:
    """Record what Redis now holds: the next run diffs against these partitions, and rewrites
    everything if the TTLs are no longer ``ttls``. Only while ``lease`` is held: a holder
    that lost it clears the state instead (the module docstring says why)."""
    if not lease.still_held():
        online.delete([state_key])
        raise PipelineError(
            f"feature view {lease.view!r}: the materialization lost its lease while writing "
            f"(paused more than {lease.lease_s:g} s?), so another one may have written since; "
            f"the view's state is cleared and the next `tessera materialize` rewrites every "
            f"value")
    online.set_text(state_key, json.dumps({"version": manifest.version,
                                           "partitions": manifest.partitions, "at_us": at_us,
                                           "ttls": ttls}))


def evictions(online: RedisOnline) -> tuple[int, str]:
    """(keys Redis has evicted since it started, summed over the masters; its eviction setting
    when it may evict, else ""). Materialization compares the count before and after: an
    evicted value is an online value silently gone. A Redis that hides INFO (some managed
    ones): (0, "")."""
    import redis

    try:
        if online.cluster:
            from redis.cluster import RedisCluster

            stats = list(online.client.info("stats", target_nodes=RedisCluster.PRIMARIES)
                         .values())
            memory = list(online.client.info("memory", target_nodes=RedisCluster.PRIMARIES)
                          .values())
        else:
            stats, memory = [online.client.info("stats")], [online.client.info("memory")]
    except redis.ResponseError:
        return 0, ""
    except (redis.ConnectionError, redis.TimeoutError) as e:
        raise online._unavailable(e) from None
    evicted = sum(int(s.get("evicted_keys", 0)) for s in stats)
    risky = {(m.get("maxmemory_policy"), int(m.get("maxmemory", 0))) for m in memory
             if m.get("maxmemory_policy", "noeviction") != "noeviction"
             and int(m.get("maxmemory", 0)) > 0}
    setting = ", ".join(f"maxmemory-policy {p}, maxmemory {b:,} bytes" for p, b in sorted(risky))
    return evicted, setting


def check_evictions(online: RedisOnline, project: str, out: list[Any], before: int,
                    setting: str) -> None:
    """After materializing ``out`` (summaries): when Redis evicted keys meanwhile (maxmemory
    with an eviction policy), values are gone that the state keys say are there, so every
    view fails and its state is cleared (the next run rewrites it all). Redis set to evict,
    but nothing evicted: a note."""
    evicted = evictions(online)[0] - before
    if evicted <= 0:
        for m in out:
            if setting and m.keys_written:
                m.note = "; ".join(filter(None, [m.note, (
                    f"Redis may evict keys ({setting}): an evicted value is lost without a "
                    f"word; set maxmemory-policy noeviction")]))
        return
    why = (f"Redis evicted {evicted:,} keys while materializing ({setting or 'eviction on'}): "
           f"online values are missing, so the views' state is cleared; set maxmemory-policy "
           f"noeviction and enough maxmemory, then run `tessera materialize` again")
    online.delete([K.state_key(project, m.view, m.fingerprint) for m in out])
    for m in out:
        m.mode, m.note = "failed", f"feature view {m.view!r}: {why}"


def lock_key(project: str, view: str) -> str:
    """The view's lease: one per view, whatever its rules (beside its state keys' tag; not a
    key of the layout, so ``online gc`` leaves it alone)."""
    return f"{project}:{{{K.STATE_TAG}}}:{view}:lock"


class ViewLease:
    """``with ViewLease(online, project, view): ...`` holds the view's lease; ``lost`` says
    whether it expired while held (see the module docstring)."""

    def __init__(self, online: RedisOnline, project: str, view: str, *,
                 wait_s: float = WAIT_S, lease_s: float = LEASE_S,
                 on_wait: Callable[[str], None] | None = None) -> None:
        self.online, self.view, self.wait_s, self.lease_s = online, view, wait_s, lease_s
        self.on_wait = on_wait  # told who holds the view, when it must wait for it
        self.key = lock_key(project, view)
        self.lost = False
        self._lock: Any = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def __enter__(self) -> ViewLease:
        import redis

        holder = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                             "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                             "token": uuid.uuid4().hex})
        self._lock = self.online.client.lock(self.key, timeout=self.lease_s, sleep=0.1,
                                             blocking_timeout=self.wait_s, thread_local=False)
        try:
            got = self._lock.acquire(token=holder, blocking=False)
            if not got:
                if self.on_wait is not None:
                    self.on_wait(self._holder())
                got = self._lock.acquire(token=holder)
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as e:
            raise self.online._unavailable(e) from None
        if not got:
            raise PipelineError(
                f"feature view {self.view!r}: another materialization is writing it "
                f"({self._holder()}); waited {self.wait_s:g} s. Run again when it has ended "
                f"(a killed one frees the view {self.lease_s:g} s after it stopped)")
        self._renewer = threading.Thread(target=self._renew, daemon=True,
                                         name=f"lease {self.view}")
        self._renewer.start()
        return self

    def _holder(self) -> str:
        """Who holds the lease, for the error: host, pid and since when."""
        try:
            text = self.online.get_text(self.key)
            held = json.loads(text) if text else None
            return (f"process {held['pid']} on {held['host']}, since {held['since']}"
                    if isinstance(held, dict) else "its holder is not known")
        except (ValueError, KeyError, OnlineUnavailableError):
            return "its holder is not known"

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            if not self.still_held():
                return

    def still_held(self) -> bool:
        """Renew the lease; False (and ``lost``) once it has expired or gone to another."""
        import redis

        if self.lost:
            return False
        try:
            if self._lock.reacquire():
                return True
        except redis.exceptions.LockNotOwnedError:
            pass
        except (redis.ConnectionError, redis.TimeoutError):
            return True  # Redis away: the writes fail too, and say so
        self.lost = True
        return False

    def __exit__(self, *exc: object) -> None:
        import redis

        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        # expired, or Redis away: it expires on its own
        with contextlib.suppress(redis.exceptions.LockError, redis.ConnectionError,
                                 redis.TimeoutError):
            self._lock.release()


__all__ = ["LEASE_S", "WAIT_S", "ViewLease", "check_evictions", "evictions", "lock_key",
           "read_state", "save_state"]
