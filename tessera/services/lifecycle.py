"""Start, stop and check one local service, whatever it is.

Each service (``redis_server.RedisServer``, ``kafka_broker.KafkaBroker``) says how to prepare
and launch it and how to probe its health; this module owns the part they share: pid files,
stale pids, ports taken by strangers, bounded waits, and errors that quote the service's log.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from tessera.services import process
from tessera.services.errors import ServiceError
from tessera.services.status import ServiceStatus

Say = Callable[[str], None]
"""Prints one line of progress for a person (or nothing, when there is no console)."""

LOG_TAIL_LINES = 20
_PROBE_INTERVAL_S = 0.25


@dataclass(frozen=True, slots=True)
class Probe:
    """The answer of one health check."""

    healthy: bool
    version: str | None
    detail: str


class Service(Protocol):
    """What :mod:`lifecycle` needs to know about a service."""

    @property
    def name(self) -> str:
        """``"redis"`` or ``"kafka"``."""
        ...

    @property
    def start_timeout(self) -> float:
        """Seconds from launch to healthy before giving up."""
        ...

    @property
    def stop_timeout(self) -> float:
        """Seconds from SIGTERM to SIGKILL."""
        ...

    @property
    def address(self) -> str:
        """``host:port`` that clients use."""
        ...

    @property
    def host(self) -> str:
        """The loopback address the service binds."""
        ...

    @property
    def ports(self) -> tuple[int, ...]:
        """Every TCP port the service listens on."""
        ...

    @property
    def pid_file(self) -> Path:
        """Where the pid of the running service is kept."""
        ...

    @property
    def stdout_log(self) -> Path:
        """Where the process's stdout and stderr go."""
        ...

    @property
    def log_files(self) -> tuple[Path, ...]:
        """The service's logs, the main one first; their tails are quoted on failure."""
        ...

    @property
    def marker(self) -> str:
        """A string on the command line of our process and of no other (see :mod:`process`)."""
        ...

    def prepare(self, say: Say) -> list[str]:
        """Install, download, write config and format as needed; return the command to run."""
        ...

    def probe(self, pid: int | None) -> Probe:
        """Check health once, within a few seconds at most."""
        ...


def find(svc: Service, *, repair: bool) -> tuple[int | None, str]:
    """Our running process of ``svc``, and a note on anything odd found on the way.

    A pid file whose process is gone, or whose pid now belongs to another program, is stale.
    A service of ours that runs without a pid file (someone deleted it) is found through the
    process listening on its port. With ``repair`` the pid file is fixed in both cases; without
    it (``status``) nothing is written.
    """
    pid = process.read_pid(svc.pid_file)
    note = ""
    if pid is not None and process.is_ours(pid, svc.marker):
        return pid, ""
    if pid is not None:
        now = "gone" if not process.is_alive(pid) else f"now {process.describe(pid)}"
        note = f"stale pid file {svc.pid_file} (pid {pid} is {now})"
    elif svc.pid_file.exists():
        note = f"unreadable pid file {svc.pid_file}"
    if note and repair:
        process.remove_pid(svc.pid_file)
        note = f"removed {note}"
    for port in svc.ports:
        owner = process.port_owner(port)
        if owner is not None and process.is_ours(owner, svc.marker):
            if repair:
                process.write_pid(svc.pid_file, owner)
            return owner, _join(note, f"found running {svc.name} as pid {owner} on port {port}")
    return None, note


def start(svc: Service, say: Say) -> ServiceStatus:
    """Make ``svc`` run and be healthy; do nothing when it already is.

    Raises:
        ServiceError: a port is taken by another program, preparation failed, or the service
            exited or stayed unhealthy for ``svc.start_timeout`` seconds (its log is quoted).
    """
    began = time.monotonic()
    pid, note = find(svc, repair=True)
    if note:
        say(f"{svc.name}: {note}")
    if pid is not None:
        probe = svc.probe(pid)
        if probe.healthy:
            say(f"{svc.name}: already running at {svc.address} (pid {pid}); nothing to do")
            return _status(svc, pid, probe, _join(note, f"already running; {probe.detail}"))
        say(f"{svc.name}: pid {pid} is running but not healthy yet ({probe.detail}); waiting")
        return _await_health(svc, pid, began, note, launched=time.monotonic())
    for port in svc.ports:
        if not process.port_is_free(svc.host, port):
            raise ServiceError(_port_taken_message(svc, port))
    argv = svc.prepare(say)
    svc.stdout_log.parent.mkdir(parents=True, exist_ok=True)
    with svc.stdout_log.open("a", encoding="utf-8") as log:
        log.write(f"=== tessera services up: {datetime.now(UTC).isoformat()} ===\n")
    pid = process.spawn(argv, log_file=svc.stdout_log)
    process.write_pid(svc.pid_file, pid)
    say(f"{svc.name}: launched pid {pid}; waiting up to {svc.start_timeout:.0f} s for health")
    return _await_health(svc, pid, began, note, launched=time.monotonic())


def stop(svc: Service, say: Say) -> ServiceStatus:
    """Stop ``svc`` gracefully (SIGTERM, then SIGKILL after ``svc.stop_timeout`` seconds)."""
    pid, note = find(svc, repair=True)
    if pid is None:
        say(f"{svc.name}: not running")
        return ServiceStatus(svc.name, svc.address, None, None, False,
                             _join(note, "not running"), svc.log_files[0])
    began = time.monotonic()
    killed = process.terminate(pid, timeout=svc.stop_timeout)
    process.remove_pid(svc.pid_file)
    took = time.monotonic() - began
    how = f"killed (SIGKILL) after {took:.1f} s" if killed else f"stopped in {took:.1f} s"
    say(f"{svc.name}: pid {pid} {how}")
    return ServiceStatus(svc.name, svc.address, None, None, False, _join(note, how),
                         svc.log_files[0])


def inspect(svc: Service) -> ServiceStatus:
    """The current state of ``svc``; reads only, never starts, stops or rewrites anything."""
    pid, note = find(svc, repair=False)
    if pid is not None:
        return _status(svc, pid, svc.probe(pid), note)
    detail = "not running"
    for port in svc.ports:
        if not process.port_is_free(svc.host, port):
            owner = process.port_owner(port)
            who = process.describe(owner) if owner else "another program"
            detail += f"; port {port} is in use by {who}"
    return ServiceStatus(svc.name, svc.address, None, None, False, _join(note, detail),
                         svc.log_files[0])


def log_tails(svc: Service, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of each of the service's non-empty logs, headed by their paths."""
    parts = []
    for path in svc.log_files:
        text = process.tail(path, lines)
        if text.strip():
            parts.append(f"--- last {lines} lines of {path} ---\n{text}")
    return "\n".join(parts) or f"(no log written; expected {svc.log_files[0]})"


def _await_health(svc: Service, pid: int, began: float, note: str, *,
                  launched: float) -> ServiceStatus:
    # The timeout runs from the launch: a first download of Kafka's jars must not eat into it.
    deadline = launched + svc.start_timeout
    probe = Probe(False, None, "not checked yet")
    while True:
        if not process.is_alive(pid):
            process.remove_pid(svc.pid_file)
            raise ServiceError(
                f"{svc.name} (pid {pid}) exited during startup.\n{log_tails(svc)}"
            )
        probe = svc.probe(pid)
        if probe.healthy:
            took = time.monotonic() - began
            detail = _join(note, f"started in {took:.1f} s; {probe.detail}")
            return _status(svc, pid, probe, detail)
        if time.monotonic() >= deadline:
            break
        time.sleep(_PROBE_INTERVAL_S)
    # A half-started service would make the next `up` wait again for nothing: stop it.
    process.terminate(pid, timeout=svc.stop_timeout)
    process.remove_pid(svc.pid_file)
    raise ServiceError(
        f"{svc.name} did not become healthy within {svc.start_timeout:.0f} s "
        f"(last check: {probe.detail}); it was stopped.\n{log_tails(svc)}"
    )


def _status(svc: Service, pid: int, probe: Probe, detail: str) -> ServiceStatus:
    return ServiceStatus(svc.name, svc.address, pid, probe.version, probe.healthy,
                         detail or probe.detail, svc.log_files[0])


def _port_taken_message(svc: Service, port: int) -> str:
    owner = process.port_owner(port)
    who = process.describe(owner) if owner is not None else "another program"
    return (
        f"{svc.name}: port {port} on {svc.host} is already in use by {who}, which is not a "
        f"{svc.name} started by Tessera from this state directory. Hint: stop that program, or "
        f"choose free ports under services.{svc.name} in feature_repo.yaml; to use that server "
        "instead of a local one, point online.url or kafka.bootstrap_servers at it and do not "
        "start this service."
    )


def _join(*notes: str) -> str:
    return "; ".join(n for n in notes if n)
