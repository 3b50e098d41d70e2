"""A private redis-server on a free loopback port, for tests that stop and restart Redis, or
that need one serving TLS only (``rediss://``, certificates made with ``openssl``); and a
3-master Redis Cluster serving TLS only (:func:`start_tls_cluster`). Benchmarks use them too."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_certs(folder: Path) -> Path:
    """A throwaway CA and a server certificate for 127.0.0.1 (``ca.crt``, ``server.crt``,
    ``server.key`` in ``folder``), made with the ``openssl`` command."""
    folder.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True,
                       timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.crt", "-days", "2", "-subj", "/CN=tessera-test-ca")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
            "server.csr", "-subj", "/CN=127.0.0.1")
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf")
    return folder


class PrivateRedis:
    """``start()``/``stop()`` a redis-server whose data survives a restart (RDB on shutdown);
    with ``certs`` (:func:`make_certs`), one that serves TLS only; with ``unix``, one that also
    listens on ``<folder>/redis.sock``, its ``url`` then a ``unix://`` one."""

    def __init__(self, folder: Path, certs: Path | None = None, port: int | None = None,
                 args: tuple[str, ...] = (), *, unix: bool = False) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.binary = binary
        self.folder = folder
        self.certs = certs
        self.port = free_port() if port is None else port
        self.args = args  # more redis-server options (cluster mode...)
        self.socket = folder / "redis.sock" if unix else None
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        if self.socket is not None:
            return f"unix://{self.socket}?db=0"
        if self.certs is not None:
            return (f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs="
                    f"{self.certs / 'ca.crt'}")
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        listen = ["--port", str(self.port)]
        if self.certs is not None:
            listen = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file",
                      str(self.certs / "server.crt"), "--tls-key-file",
                      str(self.certs / "server.key"), "--tls-ca-cert-file",
                      str(self.certs / "ca.crt"), "--tls-auth-clients", "no"]
        if self.socket is not None:
            listen += ["--unixsocket", str(self.socket), "--unixsocketperm", "700"]
        self.proc = subprocess.Popen(
            [self.binary, *listen, "--bind", "127.0.0.1", "--dir", str(self.folder), "--save",
             "", "--appendonly", "no", *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"private redis-server on port {self.port} did not start in 10 s")

    def fails_while_hung(self, call: Callable[[], Any], timeout_s: float,
                         match: str = "is unavailable: Timeout") -> None:
        """With the server not answering (SIGSTOP, its connections left open), ``call()``
        raises ``OnlineUnavailableError`` matching ``match`` within two attempts of
        ``timeout_s`` (and a second of slack); then the server goes on (SIGCONT)."""
        import pytest

        from features.errors import OnlineUnavailableError

        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        try:
            began = time.monotonic()
            with pytest.raises(OnlineUnavailableError, match=match):
                call()
            assert time.monotonic() - began < 2 * timeout_s + 1.0
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self, save: bool = True) -> None:
        if self.proc is None:
            return
        if save and self.certs is None:
            import redis

            with contextlib.suppress(redis.ConnectionError, redis.ResponseError):
                redis.Redis(port=self.port, socket_timeout=5).shutdown(save=True)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


def cluster_ports(count: int) -> list[int]:
    """Loopback ports free for a cluster node and its bus (port + 10000), below 55536."""
    import random

    found: list[int] = []
    for port in random.sample(range(20_000, 30_000), 200):
        try:
            for p in (port, port + 10_000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        found.append(port)
        if len(found) == count:
            return found
    raise RuntimeError("no free ports for a test cluster")


def start_tls_cluster(folder: Path, certs: Path) -> list[PrivateRedis]:
    """Three redis-server masters serving TLS only, their bus over TLS too, joined by
    ``redis-cli --tls --cluster create``."""
    import redis as redis_py

    nodes = [PrivateRedis(folder / f"node{i}", certs=certs, port=port,
                          args=("--cluster-enabled", "yes", "--cluster-config-file",
                                "nodes.conf", "--tls-cluster", "yes"))
             for i, port in enumerate(cluster_ports(3))]
    for node in nodes:
        node.start()
    subprocess.run(["redis-cli", "--tls", "--cacert", str(certs / "ca.crt"), "--cluster",
                    "create", *(f"127.0.0.1:{n.port}" for n in nodes), "--cluster-replicas",
                    "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
    deadline = time.monotonic() + 20
    for node in nodes:
        client = redis_py.Redis(port=node.port, ssl=True, ssl_ca_certs=str(certs / "ca.crt"))
        while client.cluster("info")["cluster_state"] != "ok":
            assert time.monotonic() < deadline, f"TLS cluster node {node.port} not ok in 20 s"
            time.sleep(0.1)
        client.close()
    return nodes
