"""The local Redis: Debian's ``redis-server`` on loopback, state under ``<state_dir>/redis/``.

Files: ``redis.conf`` (rewritten on every start), ``redis.pid``, ``redis.log`` (the server's
stdout/stderr, where it logs) and the data directory itself (``dump.rdb``, saved on
``tessera services down``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tessera.services.errors import ServiceError
from tessera.services.lifecycle import Probe, Say
from tessera.services.process import port_accepts

if TYPE_CHECKING:
    from features.config import RedisServiceConfig

LOOPBACK = "127.0.0.1"
_APT_TIMEOUT_S = 900
# A Unix socket's path must fit ``sockaddr_un.sun_path`` (108 bytes on Linux, with its NUL)
SUN_PATH_MAX = 107
# Keys are saved to dump.rdb when the server stops (SIGTERM: `tessera services down`) and
# loaded when it starts, but never snapshotted while it serves. Redis's default (a BGSAVE a
# minute after 10,000 writes: after every materialize) forks a child that competes for the
# CPUs for its whole write: SDK 1 x 10 reads' p99 went from 72-99 µs to 223-227 µs during one
# (docs/services.md). The online store is derived from the offline one: a crash takes it back
# to its last stop, materialize's own state key with it, so the next `tessera materialize`
# catches up from there and never applies a wrong increment.
NO_PERIODIC_SNAPSHOTS = ('save ""', "shutdown-on-sigterm save", "shutdown-on-sigint save")


class RedisFiles:
    """The files of one ``redis-server`` under its state folder, and how to start it.

    Shared by the local Redis and each Redis Cluster node; the class gives ``state`` and
    ``render_conf()``.
    """

    __slots__ = ()
    state: Path

    def render_conf(self) -> str:
        raise NotImplementedError

    @property
    def conf_file(self) -> Path:
        """``<state>/redis.conf``."""
        return self.state / "redis.conf"

    @property
    def pid_file(self) -> Path:
        """``<state>/redis.pid``."""
        return self.state / "redis.pid"

    @property
    def stdout_log(self) -> Path:
        """``<state>/redis.log``: Redis logs to stdout (``logfile ""``), redirected here."""
        return self.state / "redis.log"

    @property
    def log_files(self) -> tuple[Path, ...]:
        """Just ``redis.log``."""
        return (self.stdout_log,)

    @property
    def marker(self) -> str:
        """The config path, which ``proc-title-template`` keeps in the process title."""
        return str(self.conf_file)

    def prepare(self, say: Say) -> list[str]:
        """Install redis-server if needed, write ``redis.conf``; return the command."""
        exe = ensure_redis_server(say)
        self.state.mkdir(parents=True, exist_ok=True)
        self.conf_file.write_text(self.render_conf(), encoding="utf-8")
        return [exe, str(self.conf_file)]


@dataclass(frozen=True, slots=True)
class RedisServer(RedisFiles):
    """Redis as a :class:`tessera.services.lifecycle.Service`.

    Attributes:
        cfg: ``services.redis`` from ``feature_repo.yaml``.
        state: the service's folder, ``<state_dir>/redis``.
    """

    cfg: RedisServiceConfig
    state: Path
    name: str = "redis"
    start_timeout: float = 10.0
    stop_timeout: float = 10.0

    @property
    def host(self) -> str:
        """Always 127.0.0.1: ``localhost`` in the config still binds IPv4 loopback only."""
        return LOOPBACK

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"{LOOPBACK}:{self.cfg.port}"

    @property
    def ports(self) -> tuple[int, ...]:
        """The one client port."""
        return (self.cfg.port,)

    @property
    def socket_path(self) -> Path | None:
        """``<state>/redis.sock``, where Redis also listens (mode 700: this user only), for a
        client on this machine (``unix://`` URL: a round trip 2-10 µs shorter than over TCP
        loopback, docs/online.md); None when the path is too long for a Unix socket, so the
        server listens on TCP only."""
        path = self.state / "redis.sock"
        return path if len(os.fsencode(path)) <= SUN_PATH_MAX else None

    def render_conf(self) -> str:
        """The ``redis.conf`` for this state directory and port."""
        # Redis rewrites its process title; by default the config path would vanish from
        # /proc/<pid>/cmdline, and with it our way to tell our redis from anyone else's.
        title = "{title} {listen-addr} {server-mode} {config-file}"
        sock = self.socket_path
        unix = [] if sock is None else [f"unixsocket {_quote(str(sock))}", "unixsocketperm 700"]
        return "\n".join([
            "# Written by `tessera services up` on every start; edits are lost. docs/services.md",
            f"bind {LOOPBACK}",
            f"port {self.cfg.port}",
            *unix,
            "protected-mode yes",
            "daemonize no",
            'logfile ""',
            f"dir {_quote(str(self.state))}",
            "appendonly no",
            *NO_PERIODIC_SNAPSHOTS,
            f"proc-title-template {_quote(title)}",
            "",
        ])

    def probe(self, pid: int | None) -> Probe:
        """PING, then ``INFO server`` for the version."""
        if not port_accepts(LOOPBACK, self.cfg.port):
            return Probe(False, None, f"nothing accepts connections on {self.address}")
        import redis  # local: `import tessera.services` must stay fast

        client = redis.Redis(host=LOOPBACK, port=self.cfg.port, socket_timeout=2,
                             socket_connect_timeout=2)
        try:
            client.ping()
            info: dict[str, object] = client.info("server")  # type: ignore[assignment]
            keys = client.dbsize()
        except redis.RedisError as e:
            return Probe(False, None, f"PING failed: {e}")
        finally:
            client.close()
        sock = self.socket_path
        also = f"; socket {sock}" if sock is not None and sock.is_socket() else ""
        return Probe(True, str(info.get("redis_version")),
                     f"PING ok; {keys} keys in db 0; up {info.get('uptime_in_seconds')} s{also}")


def ensure_redis_server(say: Say) -> str:
    """The path of ``redis-server``, installed with apt-get first when missing and we are root.

    Raises:
        ServiceError: it is missing and cannot be installed here.
    """
    return ensure_debian_tool("redis-server", "redis-server", say)


def ensure_debian_tool(exe_name: str, package: str, say: Say) -> str:
    """The path of ``exe_name``, installed from Debian's ``package`` when missing and we are root.

    Raises:
        ServiceError: it is missing and cannot be installed here.
    """
    exe = shutil.which(exe_name)
    if exe is not None:
        return exe
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ServiceError(
            f"{exe_name} is not installed (not found on PATH). Hint: install Debian's package "
            f"with `sudo apt-get install {package}` (or your system's redis package), then run "
            "`tessera services up` again."
        )
    say(f"{exe_name} not found; installing Debian's {package} with apt-get (first run only)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
        try:
            done = subprocess.run(argv, env=env, capture_output=True, text=True,
                                  timeout=_APT_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise ServiceError(f"{' '.join(argv)!r} took over {_APT_TIMEOUT_S} s") from None
        if done.returncode != 0:
            out = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
            raise ServiceError(f"{' '.join(argv)!r} failed (exit {done.returncode}):\n{out}")
    exe = shutil.which(exe_name)
    if exe is None:
        raise ServiceError(f"apt-get installed {package}, but {exe_name} is still not on PATH")
    return exe


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
