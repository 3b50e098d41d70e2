"""Local Redis and Apache Kafka, started by the project itself on 127.0.0.1.

``tessera services up|down|status`` call the three functions here and nothing else. They are
idempotent: ``up`` on healthy services does nothing (and says so), ``down`` on stopped ones does
nothing. Everything a service writes lives under ``services.state_dir`` (see docs/services.md).

A local Redis Cluster (three masters by default) is optional: ``up`` starts it when
``services.redis_cluster.enabled`` or when called with ``cluster=True`` (``up --cluster``);
``down`` and ``status`` include it whenever it is enabled or running.

Importing this package is cheap (no redis, kafka or rich import) so ``tessera --help`` stays
fast; the clients are imported when a health check runs.

Example:
    >>> from pathlib import Path
    >>> from rich.console import Console
    >>> from features.config import load_config
    >>> from tessera import services
    >>> cfg = load_config("feature_repo.yaml")                       # doctest: +SKIP
    >>> statuses = services.up(cfg.services, cfg.root, Console())    # doctest: +SKIP
    >>> Console().print(services.render_status(statuses))            # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tessera.services.errors import ServiceError
from tessera.services.kafka_broker import KafkaBroker
from tessera.services.lifecycle import Say, Service, start, stop
from tessera.services.lifecycle import inspect as _inspect
from tessera.services.redis_cluster import RedisCluster, startup_url
from tessera.services.redis_server import RedisServer
from tessera.services.status import ServiceStatus, render_status

if TYPE_CHECKING:
    from rich.console import Console

    from features.config import ServicesConfig

__all__ = ["ALL_SERVICE_NAMES", "CLUSTER", "SERVICE_NAMES", "ServiceError", "ServiceStatus",
           "down", "redis_cluster_url", "redis_socket_url", "render_status", "status", "up"]

SERVICE_NAMES: tuple[str, ...] = ("redis", "kafka")
"""The services every ``up`` starts, in start order (``down`` stops them in reverse)."""

CLUSTER = "redis-cluster"
"""The optional local Redis Cluster (``services.redis_cluster``), started after the others."""

ALL_SERVICE_NAMES: tuple[str, ...] = (*SERVICE_NAMES, CLUSTER)
"""Every service that ``only=`` may name, in start order."""

_LOCK_WAIT_S = 900.0  # a first `up` may download Kafka; a second one waits for it


def up(cfg: ServicesConfig, root: Path, console: Console | None = None, *,
       only: Sequence[str] | None = None, cluster: bool = False) -> list[ServiceStatus]:
    """Start the services that are not running and wait until each is healthy.

    Args:
        cfg: ``services`` from ``feature_repo.yaml``.
        root: folder that a relative ``cfg.state_dir`` is relative to (the repo root).
        console: where to print progress; None prints nothing.
        only: names from :data:`ALL_SERVICE_NAMES` to act on; None means
            :data:`SERVICE_NAMES`, plus the Redis Cluster when it is enabled or ``cluster``.
        cluster: also start the Redis Cluster, even when ``cfg.redis_cluster.enabled`` is off.

    Returns:
        One healthy status per service, in start order.

    Raises:
        ServiceError: a service could not be installed, fetched or started, a port it needs is
            taken by another program, or it did not become healthy in time (its log is quoted).
    """
    say = _sayer(console)
    with _locked(_state_dir(cfg, root)):
        results = []
        for svc in _select(cfg, root, only, cluster=cluster or cfg.redis_cluster.enabled):
            with _activity(console, f"Starting {svc.name}…"):
                results.append(svc.start(say) if isinstance(svc, RedisCluster)
                               else start(svc, say))
    if results and all("already running" in r.detail for r in results):
        say("Nothing to do: every service was already running and healthy.")
    return results


def down(cfg: ServicesConfig, root: Path, console: Console | None = None, *,
         only: Sequence[str] | None = None) -> list[ServiceStatus]:
    """Stop the services (SIGTERM, then SIGKILL after a timeout) and remove their pid files.

    Data and logs stay in the state directory. Stopping a stopped service is not an error.
    Without ``only``, the Redis Cluster is stopped too when it is enabled or running.

    Returns:
        One status per service, in :data:`ALL_SERVICE_NAMES` order.
    """
    say = _sayer(console)
    with _locked(_state_dir(cfg, root)):
        results = []
        for svc in reversed(_select(cfg, root, only, cluster=None)):
            with _activity(console, f"Stopping {svc.name}…"):
                results.append(svc.stop(say) if isinstance(svc, RedisCluster) else stop(svc, say))
    return results[::-1]


def status(cfg: ServicesConfig, root: Path, *,
           only: Sequence[str] | None = None) -> list[ServiceStatus]:
    """Check each service once (PING; a Kafka metadata request; CLUSTER INFO). Changes nothing.

    Without ``only``, the Redis Cluster is included when it is enabled or running.

    Returns:
        One status per service, in :data:`ALL_SERVICE_NAMES` order.
    """
    return [svc.inspect() if isinstance(svc, RedisCluster) else _inspect(svc)
            for svc in _select(cfg, root, only, cluster=None)]


def redis_cluster_url(cfg: ServicesConfig) -> str:
    """The local Redis Cluster's startup node, e.g. ``redis://127.0.0.1:7001``.

    For ``redis.cluster.RedisCluster.from_url``; the cluster itself is started by
    ``up(..., cluster=True)`` (or ``services.redis_cluster.enabled``).
    """
    return startup_url(cfg.redis_cluster)


def redis_socket_url(cfg: ServicesConfig, root: Path) -> str | None:
    """The local Redis over its Unix socket, e.g. ``unix:///repo/.tessera/redis/redis.sock``
    (for ``online.url``, on this machine); None when its state path is too long for one."""
    path = RedisServer(cfg.redis, _state_dir(cfg, root) / "redis").socket_path
    return None if path is None else f"unix://{path}?db=0"


def _state_dir(cfg: ServicesConfig, root: Path) -> Path:
    return cfg.state_dir if cfg.state_dir.is_absolute() else (root / cfg.state_dir).resolve()


def _select(cfg: ServicesConfig, root: Path, only: Sequence[str] | None, *,
            cluster: bool | None) -> list[Service | RedisCluster]:
    """The services to act on, in start order.

    Without ``only``: :data:`SERVICE_NAMES`, and the Redis Cluster when ``cluster`` is true, or,
    when it is None, when the cluster is enabled or any node of it runs (so ``down`` and
    ``status`` never lose sight of a cluster started with ``up --cluster``).
    """
    if isinstance(only, str):
        only = (only,)
    unknown = sorted(set(only or ()) - set(ALL_SERVICE_NAMES))
    if unknown:
        raise ServiceError(f"unknown service(s) {unknown!r}. Hint: choose from "
                           f"{ALL_SERVICE_NAMES!r}")
    state = _state_dir(cfg, root)
    services: dict[str, Service | RedisCluster] = {
        "redis": RedisServer(cfg.redis, state / "redis"),
        "kafka": KafkaBroker(cfg.kafka, state / "kafka"),
        CLUSTER: RedisCluster(cfg.redis_cluster, state / CLUSTER),
    }
    if only is not None:
        return [services[name] for name in ALL_SERVICE_NAMES if name in only]
    chosen: list[Service | RedisCluster] = [services[name] for name in SERVICE_NAMES]
    rc = services[CLUSTER]
    assert isinstance(rc, RedisCluster)
    if cluster or (cluster is None and (cfg.redis_cluster.enabled or rc.running_pids())):
        chosen.append(rc)
    return chosen


@contextlib.contextmanager
def _locked(state: Path) -> Iterator[None]:
    """Serialise ``up`` and ``down`` on one state directory, across processes."""
    state.mkdir(parents=True, exist_ok=True)
    with (state / ".services.lock").open("a") as f:
        deadline = time.monotonic() + _LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ServiceError(
                        f"another `tessera services up/down` has held {state}/.services.lock "
                        f"for over {_LOCK_WAIT_S:.0f} s. Hint: wait for it, or stop it."
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _sayer(console: Console | None) -> Say:
    if console is None:
        return lambda _msg: None
    return lambda msg: console.print(msg, markup=False, highlight=False)


def _activity(console: Console | None, what: str) -> contextlib.AbstractContextManager[object]:
    """A spinner while a service starts or stops (Kafka's first start takes a while)."""
    return console.status(what) if console is not None else contextlib.nullcontext()
