"""``tessera serve`` while Redis is down or hung, on a Redis of the test's own: a quick 503 with
a reason, one timeout's wait at most, and the server heals by itself when Redis is back."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from features.store import FeatureStore
from tests.integration.serve_harness import USER_FEATURES, Server, one_line_error, write_repo
from tests.online.private_redis import PrivateRedis

pytestmark = [pytest.mark.redis, pytest.mark.slow]

USER = {"user_id": [1]}


def private_repo(repo: Path, folder: Path) -> tuple[PrivateRedis, Path]:
    """A redis-server of the test's own (stopped and restarted at will), and the test repo
    pointed at it."""
    redis = PrivateRedis(folder / "redis")
    cfg = FeatureStore(repo).config
    path = write_repo(folder / "private", redis.url, cfg.resolve(cfg.offline.path))
    redis.start()
    return redis, path


def test_redis_down_is_a_quick_503_and_the_server_heals_itself(
        repo: Path, tmp_path: Path, users: list[int]) -> None:
    redis, path = private_repo(repo, tmp_path)
    try:
        FeatureStore(path).materialize(views=["user_spend"])
        body = {"features": USER_FEATURES, "entities": {"user_id": users[:2]}}
        with Server(path) as s:
            r = s.post(body)
            assert r.status_code == 200 and r.json()["results"][1]["statuses"][0] == "PRESENT"

            redis.stop(save=False)
            began = time.monotonic()
            r = s.post(body)
            elapsed = time.monotonic() - began
            one_line_error(r, 503, f"127.0.0.1:{redis.port}", "unavailable")
            assert elapsed < 1.5  # 200 ms timeout, one retry: far below
            assert r.headers["retry-after"] == "1"
            health = httpx.get(s.url + "/health", timeout=5)
            assert health.status_code == 503 and "unavailable" in health.json()["error"]
            # While it stays down, a burst of concurrent requests all get a quick 503.
            codes: list[int] = []
            began = time.monotonic()
            threads = [threading.Thread(target=lambda: codes.append(s.post(body).status_code))
                       for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=10)
            assert codes == [503] * 8 and time.monotonic() - began < 1.5
            # A malformed request is still a 400 (a 503 would tell the client to retry it);
            # one that needs no key in Redis is answered as when Redis is up.
            one_line_error(s.post({**body, "entities": {"user_id": [1.5]}}), 400,
                           "entity row 0: join key 'user_id' is float 1.5")
            one_line_error(s.post({**body, "entities": {"userid": [1]}}), 400,
                           "no join key 'user_id'")
            nulls = s.post({**body, "entities": {"user_id": [None, None]}})
            assert nulls.status_code == 200, nulls.text
            assert nulls.json()["results"][1]["statuses"] == ["NOT_FOUND"] * 2
            empty = s.post({**body, "entities": {"user_id": []}})
            assert empty.status_code == 200 and empty.json()["results"][1]["values"] == []

            redis.start()  # empty: it never saved
            deadline = time.monotonic() + 10
            while (code := s.post(body).status_code) != 200 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert code == 200
            assert httpx.get(s.url + "/health").status_code == 200
            FeatureStore(path).materialize(views=["user_spend"])
            assert s.post(body).json()["results"][1]["statuses"][0] == "PRESENT"
            assert s.metrics()['tessera_http_errors_total{kind="unavailable"}'] >= 9
    finally:
        redis.stop(save=False)


def test_a_hung_redis_costs_one_timeout_then_quick_503s(repo: Path, tmp_path: Path) -> None:
    """A Redis that accepts connections but never answers (SIGSTOP): the request that finds out
    waits for the timeout; the ones after it get the 503 at once, not one timeout each."""
    redis, path = private_repo(repo, tmp_path)
    try:
        body = {"features": USER_FEATURES, "entities": USER}
        with Server(path) as s:
            assert s.post(body).status_code == 200
            os.kill(redis.proc.pid, signal.SIGSTOP)
            try:
                began = time.monotonic()
                one_line_error(s.post(body), 503, "unavailable", "Timeout")
                assert time.monotonic() - began < 2.0  # 200 ms, one retry
                began = time.monotonic()
                codes = [s.post(body).status_code for _ in range(10)]
                assert codes == [503] * 10 and time.monotonic() - began < 1.0
                # /health and /metrics answer during the outage (nothing blocks the loop).
                assert httpx.get(s.url + "/health", timeout=5).status_code == 503
                assert httpx.get(s.url + "/metrics", timeout=5).status_code == 200
            finally:
                os.kill(redis.proc.pid, signal.SIGCONT)
            deadline = time.monotonic() + 10
            while (code := s.post(body).status_code) != 200 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert code == 200
        assert "answering 503 until it is reachable again" in s.log.read_text()
        assert "online store reachable again" in s.log.read_text()
    finally:
        redis.stop(save=False)
