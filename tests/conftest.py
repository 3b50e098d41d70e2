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


@pytest.fixture(scope="session")
def repo_config() -> RepoConfig:
    return load_config(REPO_ROOT / "feature_repo.yaml")


@pytest.fixture(scope="session")
def redis_url(repo_config: RepoConfig) -> str:
    svc = repo_config.services.redis
    require_service("Redis", svc.host, svc.port)
    return repo_config.online.url


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
