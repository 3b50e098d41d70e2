"""The same repo materialized and served through a real 3-master Redis Cluster reads exactly
what single-node Redis reads: one entity's keys share a hash tag, so a slot."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from features.config import load_config
from features.store import FeatureStore
from features.windows import to_micros
from pipelines.materialize import materialize
from tests.online.repo import build, today


def single_and_cluster(folder: Path, redis_url: str, redis_cluster_url: str,
                       rows: int) -> tuple[FeatureStore, FeatureStore]:
    """One repo (run, not materialized), as a store on single-node Redis and one on the
    cluster."""
    single = build(folder, redis_url, rows=rows, days=8)
    text = (folder / "feature_repo.yaml").read_text()
    (folder / "feature_repo.yaml").write_text(
        text.replace(f"url: '{redis_url}', cluster: false",
                     f"url: '{redis_cluster_url}', cluster: true"))
    cluster = FeatureStore(config=load_config(folder))
    assert cluster.config.online.cluster
    return single, cluster


def test_cluster_reads_equal_single_node(tmp_path: Path, redis_url: str,
                                         redis_cluster_url: str) -> None:
    single, cluster = single_and_cluster(tmp_path / "repo", redis_url, redis_cluster_url, 6_000)
    folder = single.config.root
    now = to_micros(today())
    for store in (single, cluster):
        materialize(store.config, list(store.definitions.views.values()), store.online,
                    now_us=now, show_progress=False)
    nodes = {node.port for node in cluster.online.client.get_nodes()}
    holding = {node.port for node in cluster.online.client.get_nodes()
               if cluster.online.client.dbsize(target_nodes=node)}
    assert len(nodes) == 3 and holding == nodes  # the keys spread over every master
    events = pl.read_parquet(folder / "data" / "transactions", hive_partitioning=False)
    pairs = events.select("user_id", "merchant_id").unique().sort("user_id").head(300)
    rows = [*pairs.to_dicts(), {"user_id": 1, "merchant_id": 2}]
    rows.append({"user_id": None, "merchant_id": 5})
    for at in (now, now + 3_600_000_000, now + 8 * 86_400_000_000):
        a = single.get_online_features(feature_service="fraud_model_v1", entity_rows=rows, now=at,
                                         full_feature_names=True)
        b = cluster.get_online_features(feature_service="fraud_model_v1", entity_rows=rows, now=at,
                                         full_feature_names=True)
        assert a.to_dict() == b.to_dict()
        assert a.status_dict() == b.status_dict()
        assert any(a.to_dict()["user_spend__txn_count_7d"]) or at > now
    cluster.close()
    single.close()


def test_cluster_script_calls_run_pipelined_per_node_and_reload_a_flushed_script(
        redis_cluster_url: str) -> None:
    """The stream's compare-and-set path on a cluster: script calls grouped by the master that
    owns each one's slot, every reply back in the caller's order, and a script the nodes
    forgot (SCRIPT FLUSH, as after a restart) loaded again and run."""
    import hashlib
    import uuid

    from features.online.redis_store import RedisOnline

    online = RedisOnline(redis_cluster_url, cluster=True)
    client = online.client
    script = "redis.call('SET', KEYS[1], ARGV[1]); return tonumber(ARGV[2])"
    sha = hashlib.sha1(script.encode()).hexdigest()
    run = uuid.uuid4().hex[:8]
    keys = [f"t-{run}:{{{i}}}:v" for i in range(300)]
    for node in client.get_primaries():  # as after a restart: no script cached anywhere
        client.get_redis_connection(node).script_flush()
    try:
        replies = online.call_many(
            [["EVALSHA", sha, "1", key, f"value {i}".encode(), str(i)]
             for i, key in enumerate(keys)], script=script)
        assert replies == list(range(300))  # in order, though sent per node
        assert [client.get(key) for key in keys] == [f"value {i}".encode() for i in range(300)]
        owners = {client.get_node_from_key(key).port for key in keys}
        assert len(owners) == 3  # the calls really went to every master
    finally:
        for key in keys:
            client.delete(key)


def test_a_stale_slot_map_follows_moved_and_reads_and_writes_the_right_keys(
        redis_cluster_url: str) -> None:
    """While slots move between masters, a node answers MOVED for a slot it no longer owns.
    Pointing the client's slot map at the wrong master gets that real reply: the read and the
    script call are redone after a fresh map, and give what they would have."""
    import hashlib
    import uuid

    from features.online.redis_store import RedisOnline

    online = RedisOnline(redis_cluster_url, cluster=True)
    client = online.client
    run = uuid.uuid4().hex[:8]
    keys = [f"t-{run}:{{{i}}}:v" for i in range(40)]
    online.write([(key, f"v{i}".encode(), None) for i, key in enumerate(keys)])
    script = "redis.call('SET', KEYS[1], ARGV[1]); return 1"
    sha = hashlib.sha1(script.encode()).hexdigest()
    try:
        def mislead() -> None:  # every key's slot mapped to a master that does not own it
            cache = client.nodes_manager.slots_cache
            primaries = client.get_primaries()
            for key in keys:
                slot = client.keyslot(key)
                owner = cache[slot][0]
                cache[slot] = [next(n for n in primaries if n.name != owner.name)]

        mislead()
        assert online.get(keys) == [f"v{i}".encode() for i in range(40)]
        mislead()
        assert online.call_many([["EVALSHA", sha, "1", key, b"new"] for key in keys],
                                script=script) == [1] * 40
        assert online.get(keys) == [b"new"] * 40
    finally:
        for key in keys:
            client.delete(key)


def _calls(client: object, node: object, command: str) -> int:
    """Calls of ``command`` a cluster node has served (its ``INFO commandstats``)."""
    stats = client.get_redis_connection(node).info("commandstats")  # type: ignore[attr-defined]
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def _slot_map_reads(client: object) -> int:
    """``CLUSTER SLOTS`` calls over every master: how often the slot map was read."""
    return sum(_calls(client, m, "cluster|slots")
               for m in client.get_primaries())  # type: ignore[attr-defined]


def test_awaited_cluster_reads_equal_blocking_ones_through_moved_slots_and_dropped_connections(
        tmp_path: Path, redis_cluster_url: str) -> None:
    """``get_online_features_async`` on a cluster (what ``tessera serve`` uses under load):
    calls started together, each split by hash slot over every master, equal the blocking
    read; a stale slot map (as after resharding) is followed through Redis's ``MOVED``
    replies; connections a master dropped are replaced on the next call, the other masters'
    kept. The 20 calls that fail together read the slot map again once, not once each."""
    import asyncio

    import redis

    store = build(tmp_path / "repo", redis_cluster_url, rows=6_000, days=8, cluster=True)
    now = to_micros(today())
    materialize(store.config, list(store.definitions.views.values()), store.online,
                now_us=now, show_progress=False)
    at = now + 3_600_000_000
    events = pl.read_parquet(store.config.root / "data" / "transactions",
                             hive_partitioning=False)
    pairs = events.select("user_id", "merchant_id").unique().sort("user_id").head(200).to_dicts()
    asks = [pairs[lo:lo + 10] for lo in range(0, 200, 10)]
    asks[0] += [{"user_id": 1, "merchant_id": 2}, {"user_id": None, "merchant_id": 5}]
    client = store.online.client
    masters = client.get_primaries()

    def check(got: list) -> None:
        for rows, response in zip(asks, got, strict=True):
            blocking = store.get_online_features(feature_service="fraud_model_v1",
                                                 entity_rows=rows, now=at,
                                                 full_feature_names=True)
            assert response.to_dict() == blocking.to_dict()
            assert response.status_dict() == blocking.status_dict()
            assert response.event_times_us == blocking.event_times_us
        statuses = [s for r in got for col in r.statuses for s in col]
        assert statuses.count("PRESENT") > 1000 and "NOT_FOUND" in statuses

    async def awaited() -> list:
        return await asyncio.gather(*[store.get_online_features_async(
            feature_service="fraud_model_v1", entity_rows=rows, now=at,
            full_feature_names=True) for rows in asks])

    async def scenario() -> None:  # one event loop, so its connections live throughout
        before = [_calls(client, m, "mget") for m in masters]
        check(await awaited())
        # every master served MGETs: the awaited path (the blocking one sends GETs here)
        assert all(_calls(client, m, "mget") > b for m, b in zip(masters, before, strict=True))

        # a stale slot map: every slot of the first master pointed at the second
        cache = client.nodes_manager.slots_cache
        moved = [slot for slot, nodes in cache.items() if nodes[0].name == masters[0].name]
        for slot in moved:
            cache[slot] = [masters[1]]
        reads = _slot_map_reads(client)
        check(await awaited())
        # one reading shared by the 20 calls (2: one straggler on a loaded box; a reading
        # per call made 5 here, the thread pool queueing the rest)
        assert _slot_map_reads(client) - reads <= 2
        fresh = client.nodes_manager.slots_cache  # the map was read again
        assert all(fresh[slot][0].name == masters[0].name for slot in moved)

        # one master drops its clients (as a restart does): the calls reconnect to it, and
        # only to it (the others' connections stay, with other calls' replies on them)
        def accepted(node: object) -> int:
            info = client.get_redis_connection(node).info("stats")
            return int(info["total_connections_received"])

        admin = redis.Redis(host=masters[0].host, port=masters[0].port, socket_timeout=5)
        assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
        admin.close()
        reads, opened = _slot_map_reads(client), [accepted(m) for m in masters]
        check(await awaited())
        assert _slot_map_reads(client) - reads <= 2
        now_opened = [accepted(m) for m in masters]
        assert now_opened[0] > opened[0] and now_opened[1:] == opened[1:], (opened, now_opened)

    asyncio.run(scenario())
    store.close()


def test_a_hung_master_fails_only_the_awaited_reads_that_need_it(
        tmp_path: Path, redis_cluster_url: str) -> None:
    """One master stops answering (SIGSTOP): awaited reads of entities on the other masters go
    on with the same values, those that need it fail with OnlineUnavailableError within a few
    timeouts, and once it answers again (SIGCONT) every read works, with no restart."""
    import asyncio
    import os
    import signal
    import time

    from features.errors import OnlineUnavailableError
    from features.store import _keys

    built = build(tmp_path / "repo", redis_cluster_url, rows=5_000, days=8, cluster=True)
    now = to_micros(today())
    materialize(built.config, list(built.definitions.views.values()), built.online,
                now_us=now, show_progress=False)
    cfg = built.config
    store = FeatureStore(config=cfg.model_copy(update={
        "online": cfg.online.model_copy(update={"timeout_ms": 300})}))
    client = store.online.client
    hung = client.get_primaries()[0]
    refs = [f"user_spend:{f.name}" for f in store.definitions.views["user_spend"].features]
    events = pl.read_parquet(cfg.root / "data" / "transactions", hive_partitioning=False)
    users = events["user_id"].unique().sort().head(400).to_list()
    probe = store.plan(refs)
    on_hung, elsewhere = [], []
    for u in users:
        [key] = _keys(probe, {"user_id": [u]})[0]  # the entity's one key: its slot's master
        (on_hung if client.get_node_from_key(key).name == hung.name else elsewhere).append(u)
    assert len(on_hung) > 20 and len(elsewhere) > 20
    healthy = [[{"user_id": u}] for u in elsewhere[:20]]
    needing = [[{"user_id": u}] for u in on_hung[:10]]
    at = now + 3_600_000_000
    expected = [store.get_online_features(refs, rows, now=at).to_dict() for rows in healthy]
    pid = int(client.get_redis_connection(hung).info("server")["process_id"])

    async def scenario() -> None:
        async def read(rows: list) -> dict:
            return (await store.get_online_features_async(refs, rows, now=at)).to_dict()

        await asyncio.gather(*[read(rows) for rows in healthy + needing])  # connections open
        os.kill(pid, signal.SIGSTOP)
        try:
            began = time.monotonic()
            got = await asyncio.gather(*[read(rows) for rows in healthy + needing],
                                       return_exceptions=True)
            took = time.monotonic() - began
        finally:
            os.kill(pid, signal.SIGCONT)
        assert got[:len(healthy)] == expected  # the other masters kept serving
        for failure in got[len(healthy):]:
            assert isinstance(failure, OnlineUnavailableError), failure
            assert "is unavailable: Timeout" in str(failure)
        # two attempts and two slot-map readings of up to one timeout each, and slack
        assert took < 4 * 0.3 + 1.5, took
        again = await asyncio.gather(*[read(rows) for rows in healthy + needing])
        assert again[:len(healthy)] == expected
        blocking = [store.get_online_features(refs, rows, now=at).to_dict() for rows in needing]
        assert again[len(healthy):] == blocking

    asyncio.run(scenario())
    store.close()
    built.close()


def test_cluster_deletes_and_full_rewrites_match_single_node(tmp_path: Path, redis_url: str,
                                                             redis_cluster_url: str) -> None:
    """A full rewrite over earlier values (a state key that is not ours) 29 days on: on a
    cluster the scan for the view's keys walks every master, one DEL a key goes to its slot's
    master, and the keys removed and the reads equal single node's."""
    from features.online.keys import state_key
    from pipelines.materialize import MaterializeSummary

    single, cluster = single_and_cluster(tmp_path / "repo", redis_url, redis_cluster_url, 4_000)
    folder = single.config.root
    now = to_micros(today())
    late = now + (29 * 24 + 20) * 3_600_000_000
    view = single.definitions.views["user_spend"]
    got: list[list[MaterializeSummary]] = []
    for store in (single, cluster):
        views = list(store.definitions.views.values())
        materialize(store.config, views, store.online, now_us=now, show_progress=False)
        store.online.set_text(state_key(store.config.project, view.name, view.fingerprint()),
                              "not json")
        got.append(materialize(store.config, views, store.online, now_us=late,
                               show_progress=False))
    spend = [g[0] for g in got]
    assert all(s.mode == "full" and "unreadable (not JSON" in s.note for s in spend)
    assert spend[0].keys_deleted == spend[1].keys_deleted > 0
    users = pl.read_parquet(folder / "data" / "transactions",
                            hive_partitioning=False)["user_id"].unique().sort().to_list()
    refs = [f"user_spend:{f.name}" for f in view.features]
    a = single.get_online_features(refs, {"user_id": users}, now=late)
    b = cluster.get_online_features(refs, {"user_id": users}, now=late)
    assert a.to_dict() == b.to_dict() and a.status_dict() == b.status_dict()
    cluster.close()
    single.close()
