"""The feature servers the benchmarks load, as subprocesses: ``tessera serve`` and ``feast serve``.

``ServerProcess`` runs one in its own process group on 127.0.0.1, waits for ``GET /health`` and
always stops it; ``TesseraServer`` and ``FeastServer`` (``FeastSide.serve``, ``bench/feast_side.py``)
are its two kinds, and their ``http_latency`` is ``bench/http_client.py``'s load loop.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.timing import Progress, free_port

if TYPE_CHECKING:
    from bench.feast_side import FeastSide

ROOT = Path(__file__).resolve().parents[1]


class ServerProcess:
    """A server subprocess in its own process group, on 127.0.0.1; ``start`` waits for
    ``GET /health``, ``stop`` (also at exit, and leaving a ``with``) always ends it."""

    label = "server"
    healthy: tuple[int, ...] = (200,)
    poll_s = 0.25

    url: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None

    @property
    def command(self) -> list[str]:
        raise NotImplementedError

    def spawn_options(self) -> dict[str, Any]:
        """Extra ``Popen`` arguments (cwd, env)."""
        return {}

    def start(self, timeout: float) -> None:
        import httpx

        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         **self.spawn_options())
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self.proc.returncode}: "
                                   f"{self.log_path.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=2.0).status_code in self.healthy:
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.label} not healthy after {timeout} s; "
                                   f"log: {self.log_path}")
            time.sleep(self.poll_s)

    def stop(self) -> None:
        """SIGTERM the server's process group (master and workers), SIGKILL after 15 s."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        except ProcessLookupError:
            pass

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TesseraServer(ServerProcess):
    """A ``tessera serve`` subprocess (its own process group) on 127.0.0.1, a free port unless
    given; a context manager that always stops it."""

    label = "tessera serve"
    healthy = (200, 503)
    poll_s = 0.1

    def __init__(self, repo: Path, port: int | None = None, workers: int = 1,
                 env: dict[str, str] | None = None, log_path: Path | None = None) -> None:
        self.repo = Path(repo).resolve()
        self.port = port or free_port()
        self.workers = workers
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {})}
        folder = self.repo if self.repo.is_dir() else self.repo.parent
        self.log_path = log_path or folder / f"tessera-serve-{self.port}.log"
        self.proc = None

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "tessera.cli", "serve", "--repo", str(self.repo),
                "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers)]

    def spawn_options(self) -> dict[str, Any]:
        return {"cwd": ROOT, "env": self.env}

    def start(self, timeout: float = 60.0) -> TesseraServer:  # type: ignore[override]
        super().start(timeout)
        return self

    def __enter__(self) -> TesseraServer:
        if self.proc is None:
            self.start()
        return self

    def http_latency(self, entity_ids: Sequence[Any], feature_refs: Sequence[str],
                     join_key: str, **kw: Any) -> dict[str, Any]:
        """:func:`http_latency` against this server (same keyword arguments)."""
        from bench.http_client import http_latency  # lazy: it imports this module

        return http_latency(self.url, feature_refs, join_key, entity_ids, **kw)


def _feast_bin() -> str:
    exe = Path(sys.executable).parent / "feast"
    return str(exe) if exe.exists() else "feast"


class FeastServer(ServerProcess):
    """A ``feast serve`` subprocess and an HTTP load generator."""

    label = "feast serve"

    def __init__(self, side: FeastSide, port: int, workers: int, max_requests: int) -> None:
        self.side = side
        self.port = port
        self.workers = workers
        self.max_requests = max_requests
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = side.workdir / "feast-serve.log"
        self.proc = None

    @property
    def command(self) -> list[str]:
        return [_feast_bin(), "-c", str(self.side.workdir), "serve", "--host", "127.0.0.1",
                "--port", str(self.port), "--workers", str(self.workers),
                "--max-requests", str(self.max_requests), "--no-access-log"]

    def spawn_options(self) -> dict[str, Any]:
        return {"cwd": self.side.workdir}

    def __enter__(self) -> FeastServer:
        return self

    def http_latency(self, entity_ids: Sequence[int], iterations: int = 2000,
                     max_seconds: float = 20.0, concurrency: int = 1, batch: int = 1,
                     seed: int = 0, path: str = "/get-online-features",
                     progress: Progress | None = None, client: str = "httpx") -> dict[str, Any]:
        """POST ``path`` with ``batch`` entities × all features, from ``concurrency`` threads
        (one keep-alive client each) sharing ``iterations`` requests and one deadline.
        Latency is per request; ``ops_per_s`` is requests over the wall time of the load.
        ``path="/health"`` (a GET) measures the HTTP stack alone. The loop is
        ``bench/http_client.py``'s, the one that measures ``tessera serve`` too."""
        from bench.http_client import all_present, http_latency  # lazy: it imports this module

        return http_latency(self.url, self.side.feature_refs, self.side.join_key, entity_ids,
                            iterations=iterations, max_seconds=max_seconds,
                            concurrency=concurrency, batch=batch, seed=seed, path=path,
                            progress=progress, check=all_present(), client=client)
