"""The local Redis Cluster: three real redis-server masters in cluster mode on 127.0.0.1.

The first tests use the repo's cluster (ports 7001-7003) through the ``redis_cluster_url``
fixture, which starts it when needed and empties it before each test. The lifecycle tests
(down, restart, broken state, a crashed node, ports taken) run their own cluster in a temporary
state directory on ports 7101-7103, so they never disturb the shared one.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from features.config import RepoConfig, ServicesConfig
from tessera import services
from tessera.services import ServiceError, process

pytestmark = pytest.mark.redis

SLOTS = 16384
PRIVATE_PORTS = (7101, 7102, 7103)
CLUSTER = (services.CLUSTER,)


def node_client(port: int):  # type: ignore[no-untyped-def]
    import redis

    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, socket_connect_timeout=5,
                       decode_responses=True)


def cluster_info(port: int) -> dict[str, str]:
    client = node_client(port)
    try:
        text = client.execute_command("CLUSTER INFO")
    finally:
        client.close()
    if isinstance(text, dict):  # redis-py parses it for us
        return {k: str(v) for k, v in text.items()}
    return dict(line.split(":", 1) for line in str(text).splitlines() if ":" in line)


def cluster_status(cfg: ServicesConfig, root: Path) -> services.ServiceStatus:
    [st] = services.status(cfg, root, only=CLUSTER)
    return st


# --- the shared cluster, through the fixture -------------------------------------------------


def test_three_masters_cover_all_16384_slots(redis_cluster_url: str,
                                             repo_config: RepoConfig) -> None:
    from redis.cluster import RedisCluster

    ports = repo_config.services.redis_cluster.ports
    assert redis_cluster_url == f"redis://127.0.0.1:{ports[0]}"
    for port in ports:
        info = cluster_info(port)
        assert info["cluster_state"] == "ok", (port, info)
        assert info["cluster_slots_assigned"] == info["cluster_slots_ok"] == str(SLOTS)
        assert info["cluster_known_nodes"] == info["cluster_size"] == "3"

    rc = RedisCluster.from_url(redis_cluster_url)
    try:
        primaries = rc.get_primaries()
        assert sorted(n.port for n in primaries) == sorted(ports)
        assert {n.host for n in primaries} == {"127.0.0.1"}
        assert rc.get_replicas() == []
        owners = [rc.nodes_manager.slots_cache[slot][0].port for slot in range(SLOTS)]
    finally:
        rc.close()
    assert set(owners) == set(ports), "every slot has an owner, and every master owns slots"


def test_keys_with_different_hash_tags_land_on_different_masters(redis_cluster_url: str,
                                                                 repo_config: RepoConfig) -> None:
    from redis.cluster import RedisCluster

    ports = repo_config.services.redis_cluster.ports
    for port in ports:
        client = node_client(port)
        try:
            assert client.dbsize() == 0, "the fixture empties every master"
        finally:
            client.close()

    rc = RedisCluster.from_url(redis_cluster_url, decode_responses=True)
    try:
        # One hash tag per entity, as an online store would key them; find a tag per master.
        tag_of_port: dict[int, str] = {}
        for i in range(1000):
            tag = f"user:{i}"
            tag_of_port.setdefault(rc.get_node_from_key(f"{{{tag}}}").port, tag)
            if len(tag_of_port) == len(ports):
                break
        assert sorted(tag_of_port) == sorted(ports)

        for port, tag in tag_of_port.items():
            assert rc.set(f"{{{tag}}}:spend", f"{port}")
            assert rc.hset(f"{{{tag}}}:tiles", mapping={"count": 3, "sum": "12.5"}) == 2
        for port, tag in tag_of_port.items():
            assert rc.get(f"{{{tag}}}:spend") == str(port)
            # Keys sharing a tag share a slot: one multi-key command reads both.
            assert rc.mget(f"{{{tag}}}:spend", f"{{{tag}}}:missing") == [str(port), None]
            assert rc.hgetall(f"{{{tag}}}:tiles") == {"count": "3", "sum": "12.5"}

        # A pipeline spanning every master (one round trip per node, not per key).
        pipe = rc.pipeline()
        for tag in tag_of_port.values():
            pipe.get(f"{{{tag}}}:spend")
        assert pipe.execute() == [str(p) for p in tag_of_port]
    finally:
        rc.close()

    # Each key is really stored on its own master, and only there.
    for port, tag in tag_of_port.items():
        client = node_client(port)
        try:
            assert sorted(client.keys("*")) == [f"{{{tag}}}:spend", f"{{{tag}}}:tiles"]
        finally:
            client.close()


def test_up_again_changes_nothing(redis_cluster_url: str, repo_config: RepoConfig) -> None:
    cfg, root = repo_config.services, repo_config.root
    before = cluster_status(cfg, root)
    began = time.monotonic()
    [again] = services.up(cfg, root, only=CLUSTER)
    took = time.monotonic() - began
    assert again.healthy and again.pids == before.pids and len(again.pids) == 3
    assert again.detail.startswith("already running; cluster_state ok")
    assert took < 2.0, f"a no-op `up` took {took:.1f} s"


def test_status_reports_state_slots_and_nodes(redis_cluster_url: str,
                                              repo_config: RepoConfig) -> None:
    cfg, root = repo_config.services, repo_config.root
    ports = cfg.redis_cluster.ports
    # Listed by a plain `status` even when not enabled, because it runs.
    everything = {s.name: s for s in services.status(cfg, root)}
    st = everything[services.CLUSTER]
    assert st.healthy and st.running and st.version
    assert st.address == "127.0.0.1:" + ",".join(str(p) for p in ports)
    assert len(st.pids) == len(ports) and st.pid == st.pids[0]
    assert all(process.is_alive(pid) for pid in st.pids)
    assert re.fullmatch(r"cluster_state ok; 16384/16384 slots assigned; 3 nodes \(3 masters\); "
                        r"\d+ keys", st.detail), st.detail
    table = services.render_status([st])
    assert table.row_count == 1


# --- a private cluster: lifecycle --------------------------------------------------------------


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServicesConfig]:
    state = tmp_path_factory.mktemp("cluster")
    cfg = ServicesConfig.model_validate({"state_dir": state,
                                         "redis_cluster": {"ports": list(PRIVATE_PORTS)}})
    try:
        yield cfg
    finally:
        services.down(cfg, state, only=CLUSTER)


def up(cfg: ServicesConfig) -> services.ServiceStatus:
    [st] = services.up(cfg, cfg.state_dir, only=CLUSTER)
    assert st.healthy, st
    for port in PRIVATE_PORTS:
        assert cluster_info(port)["cluster_state"] == "ok"
    return st


def test_a_cluster_restarted_after_down_rejoins_with_its_keys(private: ServicesConfig) -> None:
    from redis.cluster import RedisCluster

    first = up(private)
    assert services.redis_cluster_url(private) == "redis://127.0.0.1:7101"
    rc = RedisCluster.from_url(services.redis_cluster_url(private))
    try:
        for i in range(60):
            rc.set(f"{{k{i}}}", i)
    finally:
        rc.close()
    ids = (private.state_dir / "redis-cluster" / "7101" / "nodes.conf").read_text().split()[0]

    [stopped] = services.down(private, private.state_dir, only=CLUSTER)
    assert stopped.detail == "3 node(s) stopped"
    assert all(not process.is_alive(pid) for pid in first.pids)
    assert all(process.port_is_free("127.0.0.1", p) for p in (*PRIVATE_PORTS, 17101, 17102, 17103))
    down = cluster_status(private, private.state_dir)
    assert not down.healthy and not down.running and down.detail == "not running"
    # Not enabled and not running: a plain `status` leaves it out.
    assert services.CLUSTER not in {s.name for s in services.status(private, private.state_dir)}

    again = up(private)
    assert again.detail.startswith("rejoined in ")
    assert "60 keys" in again.detail
    assert (private.state_dir / "redis-cluster" / "7101" / "nodes.conf").read_text().split()[0] \
        == ids, "the same cluster, not a new one"


@pytest.mark.parametrize("damage", ["lost nodes.conf", "corrupt nodes.conf"])
def test_a_broken_cluster_state_is_wiped_and_created_again(private: ServicesConfig,
                                                           damage: str) -> None:
    up(private)
    services.down(private, private.state_dir, only=CLUSTER)
    nodes_conf = private.state_dir / "redis-cluster" / "7103" / "nodes.conf"
    if damage == "lost nodes.conf":
        nodes_conf.unlink()
    else:
        nodes_conf.write_text("not a cluster config\n")
    st = up(private)
    assert st.detail.startswith("created in "), st.detail
    assert "16384/16384 slots assigned; 3 nodes (3 masters); 0 keys" in st.detail


def test_a_crashed_node_is_restarted_and_rejoins(private: ServicesConfig) -> None:
    before = up(private)
    victim = before.pids[1]
    os.kill(victim, signal.SIGKILL)
    assert process.wait_for(lambda: not process.is_alive(victim), 10)
    crashed = cluster_status(private, private.state_dir)
    assert not crashed.healthy and crashed.running
    assert crashed.detail.startswith("node(s) 7102 not running")

    after = up(private)
    assert after.pids[0] == before.pids[0] and after.pids[2] == before.pids[2]
    assert after.pids[1] not in (victim, None)
    assert after.detail.startswith("rejoined in ")


def test_a_taken_cluster_bus_port_is_named(tmp_path: Path) -> None:
    ports = (7121, 7122, 7123)
    cfg = ServicesConfig.model_validate({"state_dir": tmp_path,
                                         "redis_cluster": {"ports": list(ports)}})
    with socket.socket() as other:
        other.bind(("127.0.0.1", 17122))
        other.listen()
        with pytest.raises(ServiceError, match=r"port 17122 \(cluster bus of node 7122\) on "
                                               r"127\.0\.0\.1 is already in use by pid \d+"):
            services.up(cfg, tmp_path, only=CLUSTER)
    assert not list(tmp_path.glob("redis-cluster/*/redis.pid")), "no node was started"
    assert all(process.port_is_free("127.0.0.1", p) for p in ports)


def test_a_missing_redis_cli_is_one_clear_error(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which",
                        lambda name, *a, **k: None if name == "redis-cli" else real_which(name))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # not root: no apt-get install here
    cfg = ServicesConfig.model_validate({"state_dir": tmp_path,
                                         "redis_cluster": {"ports": [7131, 7132, 7133]}})
    with pytest.raises(ServiceError) as caught:
        services.up(cfg, tmp_path, only=CLUSTER)
    msg = str(caught.value)
    assert msg.startswith("redis-cli is not installed (not found on PATH)"), msg
    assert "apt-get install redis-tools" in msg and "\n" not in msg
    assert not list(tmp_path.glob("redis-cluster/*/redis.pid")), "no node was started"


def test_the_node_config_is_cluster_mode_on_loopback(tmp_path: Path) -> None:
    from tessera.services.redis_cluster import ClusterNode

    conf = ClusterNode(7001, tmp_path / "7001").render_conf()
    for line in ("bind 127.0.0.1", "port 7001", "protected-mode yes", "appendonly no",
                 'save ""', "shutdown-on-sigterm save", "cluster-enabled yes", f'cluster-config-file "{tmp_path}/7001/nodes.conf"'):
        assert line in conf.splitlines()
    assert ClusterNode(7001, tmp_path).ports == (7001, 17001)
