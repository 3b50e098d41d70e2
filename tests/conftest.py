"""Session-wide fixtures for the real services.

Integration tests talk to the Redis and Kafka that ``make test`` starts (``tessera services up``)
at the addresses in ``feature_repo.yaml``. Without them a test skips, but only on a developer's
machine: under ``CI=true`` a missing service fails the run, because a skipped integration test
proves nothing.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest

from features.config import RepoConfig, load_config

REPO_ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip (locally) or fail (under CI=true) when a service is not listening."""
    if _reachable(host, port):
        return
    msg = (f"{name} is not running at {host}:{port}; start it with `make services` "
           f"(tessera services up)")
    if IN_CI:
        pytest.fail(f"CI=true and {msg}", pytrace=False)
    pytest.skip(msg)


def delete_project_keys(store: Any) -> None:
    """Delete every Redis key of ``store``'s project (a clean slate, or a test's teardown)."""
    client = store.online.client
    keys = list(client.scan_iter(match=f"{store.config.project}:*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture(scope="session")
def repo_config() -> RepoConfig:
    return load_config(REPO_ROOT / "feature_repo.yaml")


@pytest.fixture(scope="session")
def redis_url(repo_config: RepoConfig) -> str:
    svc = repo_config.services.redis
    require_service("Redis", svc.host, svc.port)
    return repo_config.online.url


@pytest.fixture(scope="session")
def redis_socket_url(redis_url: str, repo_config: RepoConfig) -> str:
    """The local Redis (the one at ``redis_url``) over its Unix socket: ``unix://...?db=0``."""
    from tessera import services

    url = services.redis_socket_url(repo_config.services, repo_config.root)
    path = None if url is None else Path(url.removeprefix("unix://").split("?")[0])
    if path is None or not path.is_socket():
        msg = (f"the local Redis has no Unix socket at {path} (started before it listened on "
               f"one?); restart it with `tessera services down && make services`")
        if IN_CI:
            pytest.fail(f"CI=true and {msg}", pytrace=False)
        pytest.skip(msg)
    return url  # type: ignore[return-value]


@pytest.fixture(scope="session")
def _redis_cluster_up(repo_config: RepoConfig) -> str:
    """Start the local Redis Cluster once per test run; its startup URL.

    Unlike Redis and Kafka, which ``make test`` starts, the cluster is started here: it is off
    by default, and cheap to start (a no-op when it runs, ~3 s after ``down``, ~5 s the first
    time). It is left running, like the other services (``tessera services down`` stops it).
    Only when it cannot be started does a test skip, and under ``CI=true`` it fails instead.
    """
    from tessera import services

    try:
        services.up(repo_config.services, repo_config.root, only=(services.CLUSTER,))
    except services.ServiceError as e:
        msg = f"the local Redis Cluster could not be started: {e}"
        if IN_CI:
            pytest.fail(f"CI=true and {msg}", pytrace=False)
        pytest.skip(msg)
    return services.redis_cluster_url(repo_config.services)


@pytest.fixture
def redis_cluster_url(_redis_cluster_up: str, repo_config: RepoConfig) -> str:
    """``redis://127.0.0.1:7001``: the local 3-master Redis Cluster, empty (FLUSHALL on every
    master before each test), for ``redis.cluster.RedisCluster.from_url``."""
    import redis

    for port in repo_config.services.redis_cluster.ports:  # every node is a master
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5,
                             socket_connect_timeout=5)
        try:
            client.flushall()
        finally:
            client.close()
    return _redis_cluster_up


@pytest.fixture(scope="session")
def kafka_bootstrap(repo_config: RepoConfig) -> str:
    host, _, port = repo_config.kafka.bootstrap_servers.split(",")[0].rpartition(":")
    require_service("Kafka", host, int(port))
    return repo_config.kafka.bootstrap_servers


@pytest.fixture(scope="session")
def spark():
    """One local[2] SparkSession for the whole test run (it takes ~15 s to start)."""
    from pipelines.spark_session import get_spark

    session = get_spark("local[2]", "tessera-tests")
    yield session
    session.stop()
