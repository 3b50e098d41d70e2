"""Online reads and materialization over TLS (``rediss://``) against a real redis-server that
serves TLS only: the same values as plain Redis, with the read polling for its reply (where a
TLS socket says "nothing yet" with its own exception) and without."""

from __future__ import annotations

import asyncio
from pathlib import Path

from features.store import FeatureStore
from features.windows import to_micros
from pipelines.materialize import materialize
from tests.online.private_redis import PrivateRedis, make_certs
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
        assert plain.awaits_reads and not tls.awaits_reads  # tessera serve blocks over TLS
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
        awaited = asyncio.run(tls.get_online_features_async(refs, many, now=at))  # blocking
        assert awaited.to_dict() == plain.get_online_features(refs, many, now=at).to_dict()
        assert "PRESENT" in awaited.status_dict()["txn_count_7d"]
    finally:
        tls.close()
        plain.close()
        server.stop(save=False)
