"""Awaited online reads (``FeatureStore.get_online_features_async``, ``tessera serve`` under
load): the values, statuses and errors of the blocking read, with the round trip awaited."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from datetime import timedelta
from pathlib import Path

import pytest

from features.errors import OnlineRequestError, OnlineUnavailableError
from features.store import FeatureStore
from tests.online.repo import ids, today


def _same(a: object, b: object) -> None:
    assert a.to_dict() == b.to_dict()  # type: ignore[attr-defined]
    assert a.status_dict() == b.status_dict()  # type: ignore[attr-defined]
    assert a.event_times_us == b.event_times_us  # type: ignore[attr-defined]


def test_awaited_reads_equal_blocking_reads_and_pipeline(materialized: FeatureStore) -> None:
    """Sixty reads started together (one connection, pipelined) each equal the blocking read
    of the same entities at the same instant, for every feature of both views."""
    at = today() + timedelta(hours=1, minutes=5)
    users, merchants = ids(materialized, "user_id"), ids(materialized, "merchant_id")
    asks = []
    for view, key, keys in (("user_spend", "user_id", users),
                            ("merchant_activity", "merchant_id", merchants)):
        feats = [f"{view}:{f.name}" for f in materialized.definitions.views[view].features]
        asks += [(feats, [{key: k} for k in keys[lo:lo + 5]]) for lo in range(0, 150, 5)]

    async def all_at_once() -> list:
        return await asyncio.gather(*[materialized.get_online_features_async(
            feats, rows, now=at) for feats, rows in asks])

    got = asyncio.run(all_at_once())
    for (feats, rows), response in zip(asks, got, strict=True):
        _same(response, materialized.get_online_features(feats, rows, now=at))
    assert sum(s == "PRESENT" for r in got for col in r.statuses for s in col) > 1000
    # bad requests fail before any read, in one line, as the blocking read does
    with pytest.raises(OnlineRequestError, match="unknown feature view 'user_spen'"):
        asyncio.run(materialized.get_online_features_async(["user_spen:txn_count_1h"],
                                                           [{"user_id": 1}]))


def test_a_burst_longer_than_the_timeout_is_not_an_outage(materialized: FeatureStore) -> None:
    """Hundreds of awaited reads started together take longer than ``online.timeout_ms`` to be
    answered and evaluated, one after the other, with Redis answering all along: none fails
    (the timeout is the time without a byte from Redis, not since the request was sent)."""
    from features.online.redis_store import RedisOnline

    users = ids(materialized, "user_id", 100)
    feats = [f"user_spend:{f.name}" for f in materialized.definitions.views["user_spend"].features]
    online = materialized.online
    quick = RedisOnline(online.url, timeout_s=0.03, spin_us=0)
    materialized._online, materialized._aio = quick, None
    try:
        async def burst() -> tuple[list, float]:
            began = time.monotonic()
            got = await asyncio.gather(*[materialized.get_online_features_async(
                feats, {"user_id": users}, now=today()) for _ in range(600)],
                return_exceptions=True)
            return got, time.monotonic() - began

        got, seconds = asyncio.run(burst())
        assert seconds > 3 * quick.timeout_s  # the burst did outlast the timeout
        assert [type(r).__name__ for r in got if isinstance(r, Exception)] == []
        want = materialized.get_online_features(feats, {"user_id": users}, now=today())
        for response in got:
            _same(response, want)
    finally:
        if materialized._aio is not None:
            materialized._aio.close()
        quick.close()
        materialized._online, materialized._aio = online, None


def test_an_awaited_read_survives_a_restart_and_fails_like_a_blocking_one(
        tmp_path: Path) -> None:
    """A restarted Redis works on the next call (one retry on a new connection); a Redis that
    stops answering (SIGSTOP) fails ten calls within two timeouts (their retries share one
    connect, rather than each waiting its turn for its own); a refused login fails: each as
    OnlineUnavailableError worded as the blocking read words it, and the read works again
    once Redis does."""
    import redis as redis_py

    from features.online.redis_async import AsyncReads
    from features.online.redis_store import RedisOnline
    from tests.online.private_redis import PrivateRedis

    server = PrivateRedis(tmp_path / "redis")
    server.start()
    online = RedisOnline(server.url, timeout_s=0.3)
    reads = AsyncReads(online)

    async def get(keys: list[str]) -> list:
        return await reads.get(keys)

    async def failure(keys: list[str]) -> str:
        with pytest.raises(OnlineUnavailableError) as e:
            await reads.get(keys)
        return str(e.value)

    try:
        redis_py.Redis(port=server.port).mset({"a": b"1", "b": b"\x00\r\n"})
        loop = asyncio.new_event_loop()
        try:
            assert loop.run_until_complete(get(["a", "x", "b"])) == [b"1", None, b"\x00\r\n"]
            server.stop()  # saves, then starts again with the same data on the same port
            server.start()

            async def many() -> list:
                return await asyncio.gather(*[reads.get(["b", "a"]) for _ in range(20)])

            assert loop.run_until_complete(many()) == [[b"\x00\r\n", b"1"]] * 20
            clients = redis_py.Redis(port=server.port).client_list(_type="normal")
            assert len(clients) == 2  # ours, one for the twenty calls, and this one

            assert server.proc is not None
            os.kill(server.proc.pid, signal.SIGSTOP)
            try:
                began = time.monotonic()

                async def ten() -> list[str]:  # the retries share one connect, and its timeout
                    return await asyncio.gather(*[failure(["a"]) for _ in range(10)])

                stalled = loop.run_until_complete(ten())
                assert time.monotonic() - began < 2 * 0.3 + 1.0  # two attempts, and slack
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
            assert all(s.startswith(f"online store {server.url} is unavailable: Timeout")
                       for s in stalled), stalled
            assert loop.run_until_complete(get(["a"])) == [b"1"]

            admin = redis_py.Redis(port=server.port)
            admin.config_set("requirepass", "pw")  # connections already open stay logged in:
            admin.client_kill_filter(_type="normal", skipme=True)  # drop ours
            refused = loop.run_until_complete(failure(["a"]))
            with pytest.raises(OnlineUnavailableError) as blocking:
                online.get(["a"])
            assert refused == str(blocking.value)
            assert "Authentication required" in refused
        finally:
            reads.close()
            loop.close()
    finally:
        server.stop(save=False)


def test_the_server_awaits_reads_when_requests_queue(materialized: FeatureStore,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``tessera serve`` blocks on a lone request's read (the fastest alone) and awaits the
    read of requests that queue, so the loop serves others meanwhile; both answer the same."""
    from tessera.server import FeatureServer

    # Two servers in one process: each keeps its metrics in memory, as `tessera serve` with one
    # worker does. With prometheus_client's multiprocess folder (Feast sets one when an earlier
    # test imports it), same-named series of one process share a slot, and the counts mix.
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)

    users = ids(materialized, "user_id", 40)
    feats = [f"user_spend:{f.name}" for f in materialized.definitions.views["user_spend"].features]

    async def ask(app: FeatureServer, user: int) -> dict:
        body = json.dumps({"features": feats, "entities": {"user_id": [user]}}).encode()
        scope = {"type": "http", "path": "/get-online-features", "method": "POST",
                 "headers": [(b"content-length", str(len(body)).encode())]}
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        await app(scope, receive, send)
        assert sent[0]["status"] == 200, sent[1]["body"]
        return json.loads(sent[1]["body"])

    def answers(app: FeatureServer, together: bool) -> list[dict]:
        async def run() -> list[dict]:
            if together:
                return await asyncio.gather(*[ask(app, u) for u in users])
            return [await ask(app, u) for u in users]
        return asyncio.run(run())

    # the switch, made deterministic: "queued" means any request within 1 s of the last
    queued = FeatureServer(materialized, queued_s=1.0)
    alone = FeatureServer(materialized, queued_s=0.0)
    runs = 0
    for _ in range(2):  # reads at "now": again if an hour's tile closed between the two runs
        hour = time.time() // 3600
        together, apart = answers(queued, True), answers(alone, False)
        runs += 1
        if together == apart or time.time() // 3600 == hour:
            break

    def reads(app: FeatureServer) -> list[float]:  # blocking, awaited: as /metrics says them
        text = app.metrics.render()[0].decode()
        return [float(re.search(rf'tessera_online_reads_total{{wait="{w}"}} (\S+)', text)[1])
                for w in ("blocking", "awaited")]

    n = len(users)
    assert reads(queued) == [runs, runs * (n - 1)]  # all but the first, which found no queue
    assert reads(alone) == [runs * n, 0]
    for a, b in zip(together, apart, strict=True):  # event times too: no window moved between
        assert a == b
