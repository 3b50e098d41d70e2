"""The online store over a Unix socket (``unix://``), for a Redis on the same machine: the local
Redis of ``tessera services up`` listens on one beside its TCP port. Same values as over TCP,
from the same server, through every read path (one entity, a large read in parts, awaited
reads), materialized over the socket; and the failures of a socket read are the TCP read's."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from features.errors import OnlineUnavailableError
from features.store import FeatureStore
from features.windows import to_micros
from pipelines.materialize import materialize
from tests.online.private_redis import PrivateRedis
from tests.online.repo import build, ids, today


def over(store: FeatureStore, url: str) -> FeatureStore:
    """``store``'s repo with its online store at ``url``."""
    cfg = store.config
    return FeatureStore(config=cfg.model_copy(update={
        "online": cfg.online.model_copy(update={"url": url})}))


@pytest.mark.redis
def test_reads_over_the_socket_equal_tcp_reads_on_every_path(tmp_path: Path, redis_url: str,
                                                             redis_socket_url: str) -> None:
    tcp = build(tmp_path / "repo", redis_url, rows=4_000, days=8)
    unix = over(tcp, redis_socket_url)
    try:
        now = to_micros(today())
        # written over the socket, read over both: one server, one set of keys
        summaries = materialize(unix.config, list(unix.definitions.views.values()),
                                unix.online, now_us=now, show_progress=False)
        assert sum(s.entities for s in summaries) > 0
        info = unix.online.client.client_info()
        assert info["addr"].startswith(redis_socket_url.removeprefix("unix://").split("?")[0])
        at = now + 3_600_000_000
        refs = [f"user_spend:{f.name}" for f in tcp.definitions.views["user_spend"].features]
        users = ids(tcp, "user_id")
        for u in users:
            a = tcp.get_online_features(refs, [{"user_id": u}], now=at)
            b = unix.get_online_features(refs, [{"user_id": u}], now=at)
            assert (b.to_dict(), b.status_dict()) == (a.to_dict(), a.status_dict())
        many = [{"user_id": u} for u in users]  # past READ_PART: MGETs in parts, pipelined
        want = tcp.get_online_features(refs, many, now=at)
        got = unix.get_online_features(refs, many, now=at)
        assert (got.to_dict(), got.status_dict()) == (want.to_dict(), want.status_dict())
        assert "PRESENT" in got.status_dict()["txn_count_7d"]

        async def together() -> list:
            return await asyncio.gather(*(unix.get_online_features_async(
                refs, [{"user_id": u}], now=at) for u in users))

        blocking, unix.online.get = unix.online.get, None  # awaited: never the blocking read
        try:
            awaited = asyncio.run(together())
        finally:
            unix.online.get = blocking
        assert [(g.to_dict(), g.status_dict()) for g in awaited] == [
            (w.to_dict(), w.status_dict())
            for w in (tcp.get_online_features(refs, [{"user_id": u}], now=at) for u in users)]
        # materializing again over the socket changes nothing (idempotent, as over TCP)
        materialize(unix.config, list(unix.definitions.views.values()), unix.online,
                    now_us=now, show_progress=False)
        assert unix.get_online_features(refs, many, now=at).to_dict() == want.to_dict()
    finally:
        unix.close()
        tcp.close()


def test_a_socket_read_fails_and_recovers_like_a_tcp_read(tmp_path: Path) -> None:
    """A Redis that stops answering (SIGSTOP) fails within the timeout, a stopped one fails at
    once, both as OnlineUnavailableError naming the socket; after a restart (a new socket
    file) the next call works, blocking or awaited, with the data saved before."""
    from features.online.redis_store import RedisOnline

    server = PrivateRedis(tmp_path / "r", unix=True)
    server.start()
    online = RedisOnline(server.url, timeout_s=0.3, spin_us=200)
    try:
        online.set_text("k", "v")
        assert online.get(["k", "nope"]) == [b"v", None]
        server.fails_while_hung(lambda: online.get(["k"]), 0.3)
        assert online.get(["k"]) == [b"v"]
        server.stop(save=True)
        with pytest.raises(OnlineUnavailableError) as e:
            online.get(["k"])
        assert str(e.value).startswith(f"online store {server.url} is unavailable: ")
        assert "redis.sock" in str(e.value)
        server.start()
        assert online.get(["k"]) == [b"v"]

        from features.online.redis_async import AsyncReads

        async def awaited() -> list:
            reads = AsyncReads(online)
            try:
                first = await reads.get(["k"])
                server.stop(save=True)
                server.start()  # the loop's connection is dead: retried on a new one
                return [first, await reads.get(["k", "nope"])]
            finally:
                reads.close()

        assert asyncio.run(awaited()) == [[b"v"], [b"v", None]]
    finally:
        online.close()
        server.stop(save=False)
