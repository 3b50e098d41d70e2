"""How long a single-node read polls for Redis's reply before it blocks (``online.spin_us``),
and how long ``tessera serve`` polls for its next request before it sleeps (``serve.poll_us``),
when the repo leaves them unset.

Decided once, when a store connects (:class:`features.online.redis_store.RedisOnline`), from the
machine: whether its kernel already polls before halting an idle vCPU, how many CPUs it has and
whether Redis is local. The poll itself is ``features.online.resp.call_spinning``; which reads
poll (only one with no other in flight) is ``redis_store``'s, on the read path. docs/online.md,
"Spin reads", has the measurements.
"""

from __future__ import annotations

import os

SPIN_US = 200  # the poll before a read blocks, where the kernel does not poll itself
LOCAL_SPIN_US = 1_000  # the same, Redis on this machine: its slow replies are the host's
SERVE_POLL_US = 1_000  # tessera serve's event loop after a response, before it sleeps
HALT_POLL = "/sys/module/haltpoll/parameters/guest_halt_poll_ns"
CGROUP = "/sys/fs/cgroup"  # this process's cgroup, as a container sees it


def default_spin_us(halt_poll: str = HALT_POLL, url: str | None = None,
                    cpus: int | None = None) -> int:
    """``online.spin_us`` when the config leaves it unset: :data:`LOCAL_SPIN_US` for a Redis on
    this machine (``url`` a Unix socket or a loopback address), :data:`SPIN_US` for one
    elsewhere, or 0 where polling only costs.

    Local Redis, a longer poll: a local reply later than 200 µs is the host waking Redis's vCPU
    late, not Redis's work, and a read that blocks then pays its own wake-up and runs its
    Python on cold caches after it. Measured on this VM on a slow afternoon (docs/benchmarks.md,
    "A longer poll for a local Redis"), SDK 1 × 10 in alternating rounds of 4,000 reads in one
    process: p99 300-617 µs polling 200 µs, 257-626 polling 1,000 (lower in 7 of 10 rounds),
    the same p50 and no more CPU per read (a blocked read's wake-up costs CPU too). Over the
    network a reply takes a round trip of hundreds of µs on its own, which a 1 ms poll would
    spend on a core every read: 200 µs there.

    Polling only costs:

    - on a virtual machine whose kernel polls before it halts an idle vCPU (the ``haltpoll``
      cpuidle driver with ``guest_halt_poll_ns`` > 0). Our poll saves the host's wake-up of
      this process's halted vCPU when Redis's reply lands; the kernel's saves that more
      cheaply, and Redis's side as well. Measured here, SDK 1 × 10, four rounds of 6,000
      reads (docs/benchmarks.md, "The VM's idle vCPUs"): with the kernel polling 200 µs, p50
      37-38 µs either way and p99 68-81 µs without our poll against 77-109 with it; with the
      kernel not polling (this VM ships ``guest_halt_poll_ns`` 0), our poll halves the read
      (p50 59-76 against 104-141 µs).
    - on a machine with one CPU (``cpus``, default ``os.cpu_count()``) whose Redis is local
      (``url`` a Unix socket or a loopback address): Redis answers on the CPU the poll holds,
      so the poll can only delay it. Measured with the reader and Redis on one vCPU
      (docs/benchmarks.md, "Where a round trip goes"): p50 23-25 µs either way,
      p99 70-76 µs polling against 39-50 µs not.
    """
    local = url is not None and _is_local(url)
    if local and (cpus if cpus is not None else os.cpu_count()) == 1:
        return 0
    return 0 if _kernel_polls(halt_poll) else LOCAL_SPIN_US if local else SPIN_US


def default_serve_poll_us(halt_poll: str = HALT_POLL, cpus: int | None = None,
                          cgroup: str = CGROUP) -> int:
    """``serve.poll_us`` when the config leaves it unset: :data:`SERVE_POLL_US`, or 0 where the
    kernel polls before halting an idle vCPU (it saves the same wake-up more cheaply), on a
    one-CPU machine (the poll would hold the CPU the clients and a local Redis need) and under
    a CPU quota of less than two CPUs (a container's ``cpu.max``: the poll would spend the
    quota, and a throttled process stalls for the rest of the period).

    After a response the server's vCPU has nothing to do; on this VM it halts, and the next
    request waits for the host to wake it, then runs on cold caches. Measured with two servers
    side by side (docs/benchmarks.md, "The server polls for its next request"): sequential 1 × 10
    p50 0.27-0.35 ms polling 1,000 µs against 0.37-0.53 not (two pairings of three rounds), and
    more requests/s with 8 clients. It costs CPU while requests come: 79% of a core at 500
    requests/s against 26% without.
    """
    if (cpus if cpus is not None else os.cpu_count()) == 1 or _kernel_polls(halt_poll):
        return 0
    quota = cpu_quota(cgroup)
    return 0 if quota is not None and quota < 2 else SERVE_POLL_US


def cpu_quota(cgroup: str = CGROUP) -> float | None:
    """The CPUs a CFS quota allows this process's cgroup (cgroup v2 ``cpu.max``, or v1
    ``cpu/cpu.cfs_quota_us`` over ``cpu.cfs_period_us``); None without a quota or a cgroup
    file to read."""
    try:
        with open(os.path.join(cgroup, "cpu.max")) as f:
            quota, _, period = f.read().strip().partition(" ")
        return None if quota == "max" else int(quota) / int(period or 100_000)
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(cgroup, "cpu", "cpu.cfs_quota_us")) as f:
            quota_us = int(f.read().strip())
        with open(os.path.join(cgroup, "cpu", "cpu.cfs_period_us")) as f:
            period_us = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


def _kernel_polls(halt_poll: str) -> bool:
    """True when the guest kernel polls for a while before it halts an idle vCPU (the haltpoll
    cpuidle driver with ``guest_halt_poll_ns`` > 0); False without it (bare metal, other
    hypervisors) or with it at 0."""
    try:
        with open(halt_poll) as f:
            return int(f.read().strip()) > 0
    except (OSError, ValueError):
        return False


def _is_local(url: str) -> bool:
    """True for a Redis on this machine: a Unix socket, or a loopback host."""
    import ipaddress
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme == "unix":
        return True
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
