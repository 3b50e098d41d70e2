"""How the machine is set for a benchmark run: Redis's RDB snapshots paused, a CPU shared with
the local Redis, the guest kernel's idle polling. Each is a context manager that restores what it
changed (``bench/online.py``, ``bench/round_trip.py``, ``bench/streaming.py``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def snapshots_paused(url: str) -> Iterator[str]:
    """Redis's RDB snapshots off for the block, restored after; yields the saved setting.

    The local Redis of ``tessera services up`` has no ``save`` points (docs/services.md); a
    Redis of your own may keep Redis's default ones. A snapshot forks the server (40 ms
    with the ~700 MB a test run leaves behind) and writes the data set to disk on the same two
    cores: measured in a latency benchmark, that is Redis persistence, not feature serving, and
    it lands on whichever side happens to run then. Both sides run with snapshots off.
    """
    import redis

    client = redis.Redis.from_url(url)
    saved = client.config_get("save").get("save", "")
    client.config_set("save", "")
    try:
        yield saved
    finally:
        client.config_set("save", saved)
        client.close()


@contextlib.contextmanager
def core_shared_with_redis(url: str, cpu: int | None) -> Iterator[int | None]:
    """This thread and the local Redis's main thread both on CPU ``cpu`` for the block (None:
    left alone), their CPU sets restored after; yields ``cpu``.

    On this VM an idle vCPU halts, and the Redis round trip of a short read pays for waking
    Redis's: ~13-16 µs inside our own ``send`` (the wake-up that crosses the host) and ~20 µs
    more before the reply lands. With both on one vCPU that vCPU never halts between the two,
    and a bare round trip takes ~6-9 µs (docs/benchmarks.md, "Where a round trip goes").
    Threads and processes started inside the block (servers, Feast) inherit the CPU,
    so the whole run shares one core with Redis: both sides measured alike.
    """
    if cpu is None:
        yield None
        return
    import os

    import redis

    client = redis.Redis.from_url(url)
    try:
        pid = int(client.info("server")["process_id"])
    finally:
        client.close()
    if not Path(f"/proc/{pid}").exists():
        raise SystemExit(f"--share-core-with-redis: Redis at {url} runs as pid {pid}, which is "
                         f"not a process of this machine (it must be a local Redis)")
    saved_redis, saved_self = os.sched_getaffinity(pid), os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(pid, {cpu})
    except OSError as e:
        raise SystemExit(f"--share-core-with-redis: cannot move Redis (pid {pid}) to CPU {cpu}: "
                         f"{e}") from None
    try:
        os.sched_setaffinity(0, {cpu})
        yield cpu
    finally:
        os.sched_setaffinity(0, saved_self)
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(pid, saved_redis)


@contextlib.contextmanager
def halt_polling(ns: int | None) -> Iterator[int | None]:
    """The guest kernel's idle polling set to ``ns`` for the block (None: left alone), restored
    after; yields the value in force (None: no ``haltpoll`` cpuidle driver here).

    On a virtual machine with the ``haltpoll`` driver, a vCPU with nothing to run polls up to
    ``guest_halt_poll_ns`` before it halts; a halted vCPU is woken by the host, which costs a
    round trip to Redis ~25 µs here (docs/benchmarks.md, "The VM's idle vCPUs"). The kernel's
    default is 200,000; this machine ships 0. Writing it needs root.
    """
    from features.online.spin import HALT_POLL as KNOB

    HALT_POLL = Path(KNOB)
    if not HALT_POLL.exists():
        if ns is not None:
            raise SystemExit(f"--guest-halt-poll-ns: {HALT_POLL} does not exist (no haltpoll "
                             f"cpuidle driver on this machine)")
        yield None
        return
    saved = int(HALT_POLL.read_text())
    if ns is None or ns == saved:
        yield saved
        return
    try:
        HALT_POLL.write_text(str(ns))
    except OSError as e:
        raise SystemExit(f"--guest-halt-poll-ns: cannot write {HALT_POLL}: {e} (needs root)"
                         ) from None
    try:
        yield ns
    finally:
        HALT_POLL.write_text(str(saved))
