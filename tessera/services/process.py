"""Processes, pid files and ports of the local services (Linux; reads ``/proc``).

A pid file alone cannot be trusted: the process may be gone, or its pid may since have been
given to another program. So a pid counts as *ours* only while the process is alive and its
command line (``/proc/<pid>/cmdline``) holds the service's *marker*, an absolute path inside the
state directory that no other program has on its command line.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tessera.services.errors import ServiceError

_POLL_S = 0.1


def read_pid(pid_file: Path) -> int | None:
    """The pid written in ``pid_file``, or None when the file is missing or not a number."""
    try:
        text = pid_file.read_text(encoding="ascii").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def write_pid(pid_file: Path, pid: int) -> None:
    """Write ``pid`` atomically: a reader sees the old file or the new one, never half of one."""
    tmp = pid_file.with_name(f".{pid_file.name}.{os.getpid()}")
    tmp.write_text(f"{pid}\n", encoding="ascii")
    os.replace(tmp, pid_file)


def remove_pid(pid_file: Path) -> None:
    """Remove ``pid_file`` if it exists."""
    pid_file.unlink(missing_ok=True)


def is_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie counts as gone).

    A service started by this Python process is its child; once it exits it stays a zombie
    until reaped, and ``kill(pid, 0)`` still succeeds on a zombie. So reap it here if it is ours.
    """
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by another user
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return False
    # Field 3, after the parenthesised command name (which may itself hold spaces or parens).
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def cmdline(pid: int) -> str:
    """The command line of ``pid`` with arguments joined by spaces, or "" when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""
    return raw.replace(b"\0", b" ").decode("utf-8", errors="replace").strip()


def is_ours(pid: int, marker: str) -> bool:
    """Whether ``pid`` is alive and its command line holds ``marker``."""
    return is_alive(pid) and marker in cmdline(pid)


def describe(pid: int) -> str:
    """``pid 123 (redis-server 127.0.0.1:6390)``: a pid with its command, for messages."""
    cmd = cmdline(pid)
    return f"pid {pid} ({cmd[:80]}{'…' if len(cmd) > 80 else ''})" if cmd else f"pid {pid}"


def spawn(argv: Sequence[str], *, log_file: Path, env: dict[str, str] | None = None) -> int:
    """Start ``argv`` detached from this process; return its pid.

    The child runs in a new session (no terminal signals reach it, it outlives the CLI), reads
    /dev/null and appends stdout and stderr to ``log_file``. ``posix_spawn`` rather than
    ``subprocess.Popen``: there is no Popen object to wait for or to warn, as it is collected,
    that its child "is still running", which for a service is the point.
    """
    exe = shutil.which(argv[0])
    if exe is None:
        raise ServiceError(f"{argv[0]!r} is not on PATH")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log_file), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    return os.posix_spawn(exe, list(argv), dict(os.environ if env is None else env),
                          file_actions=actions, setsid=True)


def terminate(pid: int, *, timeout: float, kill_timeout: float = 10.0) -> bool:
    """Stop ``pid``: SIGTERM, wait up to ``timeout`` s, then SIGKILL. True if SIGKILL was needed.

    Raises:
        ServiceError: the process survived SIGKILL (e.g. stuck in the kernel, or not ours).
    """
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    except PermissionError:
        raise ServiceError(f"not permitted to stop {describe(pid)}: it belongs to another user. "
                           "Hint: run the command as that user.") from None
    if wait_for(lambda: not is_alive(pid), timeout):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if wait_for(lambda: not is_alive(pid), kill_timeout):
        return True
    raise ServiceError(f"{describe(pid)} is still running after SIGTERM and SIGKILL")


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = _POLL_S) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def port_is_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound (a listener on 0.0.0.0 or on ``host`` makes it busy)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR: a port left in TIME_WAIT by a service we just stopped is free to reuse.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_owner(port: int) -> int | None:
    """The pid of the process listening on TCP ``port``, if ``/proc`` lets us see it.

    Finds the socket's inode among the listeners in ``/proc/net/tcp{,6}``, then the process
    holding that inode in ``/proc/<pid>/fd``. Other users' processes are visible only to root.
    """
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text(encoding="ascii").splitlines()[1:]:
                fields = line.split()
                # fields: sl local_address rem_address st ... inode; st 0A is LISTEN.
                if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return int(proc.name)
    return None


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a text file ("" when it is missing); reads at most 64 KiB."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            data = f.read()
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode("utf-8", errors="replace").splitlines()[-lines:])
