"""Online reads and materialization over TLS (``rediss://``) against a real redis-server that
serves TLS only: the same values as plain Redis, with the read polling for its reply (where a
TLS socket says "nothing yet" with its own exception) and without."""

from __future__ import annotations

import asyncio
from pathlib import Path

from features.store import FeatureStore
from features.windows import to_micros
from pipelines.materialize import materialize
from tests.online.private_redis import PrivateRedis, make_certs, start_tls_cluster
from tests.online.repo import build, ids, today


def test_tls_reads_equal_plain_reads_polling_or_not(tmp_path: Path, redis_url: str) -> None:
    server = PrivateRedis(tmp_path / "tls-redis", certs=make_certs(tmp_path / "certs"))
    server.start()
    plain = build(tmp_path / "repo", redis_url, rows=4_000, days=8)
    cfg = plain.config
    tls = FeatureStore(config=cfg.model_copy(update={
        "online": cfg.online.model_copy(update={"url": server.url, "spin_us": 200})}))
    try:
        assert tls.online.url.startswith("rediss://")
        now = to_micros(today())
        for store in (plain, tls):
            materialize(store.config, list(store.definitions.views.values()), store.online,
                        now_us=now, show_progress=False)
        at = now + 3_600_000_000
        refs = [f"user_spend:{f.name}" for f in plain.definitions.views["user_spend"].features]
        users = ids(plain, "user_id")
        before = tls.online.client.info("stats")["total_connections_received"]
        for spin_s in (200e-6, 0.0):  # polling (the default here), then blocking at once
            tls.online.spin_s = spin_s
            for u in users:
                a = plain.get_online_features(refs, [{"user_id": u}], now=at)
                b = tls.get_online_features(refs, [{"user_id": u}], now=at)
                assert (b.to_dict(), b.status_dict()) == (a.to_dict(), a.status_dict())
            many = [{"user_id": u} for u in users]
            assert (tls.get_online_features(refs, many, now=at).to_dict()
                    == plain.get_online_features(refs, many, now=at).to_dict())
        # every read on one connection: none failed and was retried on a new one
        assert tls.online.client.info("stats")["total_connections_received"] - before <= 2
        want = [plain.get_online_features(refs, [{"user_id": u}], now=at) for u in users]

        async def together() -> list:
            return await asyncio.gather(*(tls.get_online_features_async(
                refs, [{"user_id": u}], now=at) for u in users))

        blocking, tls.online.get = tls.online.get, None  # awaited over TLS: never the blocking
        try:
            before = tls.online.client.info("stats")["total_connections_received"]
            got = asyncio.run(together())
            assert tls.online.client.info("stats")["total_connections_received"] - before == 1
        finally:
            tls.online.get = blocking
        assert [(g.to_dict(), g.status_dict()) for g in got] == [
            (w.to_dict(), w.status_dict()) for w in want]
        assert "PRESENT" in got[0].status_dict()["txn_count_7d"]
    finally:
        tls.close()
        plain.close()
        server.stop(save=False)


def test_awaited_tls_reads_authenticate_select_recover_and_time_out(tmp_path: Path) -> None:
    """The awaited read's own TLS connection: AUTH and SELECT as the URL says (values of db 2
    behind a password), a wrong password and a Redis that hangs fail as
    OnlineUnavailableError within the bound, and a dropped connection is retried on one loop."""
    import pytest
    import redis as redis_py

    from features.errors import OnlineUnavailableError
    from features.online.redis_async import AsyncReads
    from features.online.redis_store import RedisOnline

    certs = make_certs(tmp_path / "certs")
    server = PrivateRedis(tmp_path / "tls-redis", certs=certs)
    server.start()
    base = server.url.replace("/0?", "/2?")
    try:
        admin = redis_py.Redis.from_url(server.url)
        admin.config_set("requirepass", "s3cret")
        url = base.replace("rediss://", "rediss://:s3cret@")
        redis_py.Redis.from_url(url).mset({"a": b"1", "b": b"\x00\r\n"})
        online = RedisOnline(url, timeout_s=0.3)
        reads = AsyncReads(online)

        async def checks() -> None:
            assert await reads.get(["a", "b", "nope"]) == [b"1", b"\x00\r\n", None]
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: redis_py.Redis.from_url(url).client_kill_filter(
                    _type="normal", skipme=True))
            assert await reads.get(["b", "a"]) == [b"\x00\r\n", b"1"]  # retried, same loop

        asyncio.run(checks())
        assert asyncio.run(reads.get(["a"])) == online.get(["a"]) == [b"1"]
        reads.close()

        wrong = AsyncReads(RedisOnline(base.replace("rediss://", "rediss://:nope@"),
                                       timeout_s=0.3))
        with pytest.raises(OnlineUnavailableError, match=r"is unavailable: .*(WRONGPASS|invalid)"):
            asyncio.run(wrong.get(["a"]))

        hung = AsyncReads(RedisOnline(url, timeout_s=0.3))
        server.fails_while_hung(lambda: asyncio.run(hung.get(["a"])), 0.3, "is unavailable")
        assert asyncio.run(hung.get(["a"])) == [b"1"]  # works again, nothing restarted
        hung.close()
        online.close()
    finally:
        server.stop(save=False)


def test_awaited_reads_over_tls_on_a_cluster_equal_plain_reads(tmp_path: Path,
                                                               redis_url: str) -> None:
    """A 3-master Redis Cluster serving TLS only: materialized there, the blocking and the
    awaited reads give the single node's values and statuses; the awaited ones open their own
    TLS connection to each master, one each, and never fall back to the blocking read."""
    certs = make_certs(tmp_path / "certs")
    nodes = start_tls_cluster(tmp_path / "cluster", certs)
    plain = build(tmp_path / "repo", redis_url, rows=4_000, days=8)
    cfg = plain.config
    url = f"rediss://127.0.0.1:{nodes[0].port}/0?ssl_ca_certs={certs / 'ca.crt'}"
    tls = FeatureStore(config=cfg.model_copy(update={
        "online": cfg.online.model_copy(update={"url": url, "cluster": True})}))
    try:
        assert tls.online.cluster
        now = to_micros(today())
        for store in (plain, tls):
            materialize(store.config, list(store.definitions.views.values()), store.online,
                        now_us=now, show_progress=False)
        keys = [tls.online.client.dbsize(target_nodes=n) for n in
                tls.online.client.get_primaries()]
        assert len(keys) == 3 and min(keys) > 0  # the values are spread over the masters
        at = now + 3_600_000_000
        refs = [f"user_spend:{f.name}" for f in plain.definitions.views["user_spend"].features]
        users = ids(plain, "user_id")
        want = [plain.get_online_features(refs, [{"user_id": u}], now=at) for u in users]
        blocking = [tls.get_online_features(refs, [{"user_id": u}], now=at) for u in users]
        assert [(b.to_dict(), b.status_dict()) for b in blocking] == [
            (w.to_dict(), w.status_dict()) for w in want]

        async def together() -> list:
            return await asyncio.gather(*(tls.get_online_features_async(
                refs, [{"user_id": u}], now=at) for u in users))

        import redis as redis_py

        watchers = [redis_py.Redis(port=n.port, ssl=True, ssl_ca_certs=str(certs / "ca.crt"))
                    for n in nodes]  # each keeps its one connection: not counted twice

        def connections() -> list[int]:
            return [w.info("stats")["total_connections_received"] for w in watchers]

        read, tls.online.get = tls.online.get, None  # awaited over TLS: never the blocking
        try:
            before = connections()
            got = asyncio.run(together())
            after = connections()
        finally:
            tls.online.get = read
        assert [(g.to_dict(), g.status_dict()) for g in got] == [
            (w.to_dict(), w.status_dict()) for w in want]
        assert "PRESENT" in got[0].status_dict()["txn_count_7d"]
        assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1]
        for w in watchers:
            w.close()
    finally:
        tls.close()
        plain.close()
        for node in nodes:
            node.stop(save=False)
