"""`tessera services`: real Redis and real Apache Kafka, started, checked and stopped by us.

The module starts its own services once, in a temporary state directory and on ports a
developer's own services do not use (Redis 6391, Kafka 9394/9395), so these tests never skip
and never touch a running ``tessera services up``. Everything is stopped at the end.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from features.config import RedisServiceConfig, ServicesConfig
from tessera import services
from tessera.services import ServiceError, process

REDIS_PORT, KAFKA_PORT, CONTROLLER_PORT = 6391, 9394, 9395
PARTITIONS, KEYS, PER_KEY = 4, 40, 10


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServicesConfig]:
    state = tmp_path_factory.mktemp("services")
    config = ServicesConfig.model_validate({
        "state_dir": state,
        "redis": {"port": REDIS_PORT},
        "kafka": {"port": KAFKA_PORT, "controller_port": CONTROLLER_PORT},
    })
    try:
        services.up(config, state)
        yield config
    finally:
        services.down(config, state)


def by_name(statuses: list[services.ServiceStatus]) -> dict[str, services.ServiceStatus]:
    return {s.name: s for s in statuses}


@pytest.mark.redis
@pytest.mark.kafka
def test_up_reports_healthy_services_and_their_versions(cfg: ServicesConfig) -> None:
    now = by_name(services.status(cfg, cfg.state_dir))
    assert now["redis"].healthy and now["kafka"].healthy, now
    assert now["redis"].address == f"127.0.0.1:{REDIS_PORT}"
    assert now["kafka"].address == f"127.0.0.1:{KAFKA_PORT}"
    assert re.fullmatch(r"\d+\.\d+\.\d+", now["redis"].version or ""), now["redis"]
    assert now["kafka"].version == cfg.kafka.version == "4.3.1"
    table = services.render_status(list(now.values()))
    assert table.row_count == 2


@pytest.mark.redis
def test_redis_round_trip_and_pipeline(cfg: ServicesConfig) -> None:
    import redis

    client = redis.Redis(host="127.0.0.1", port=REDIS_PORT, socket_timeout=5)
    try:
        assert client.set("tessera:it:one", "1")
        assert client.get("tessera:it:one") == b"1"
        pipe = client.pipeline(transaction=False)
        for i in range(100):
            pipe.set(f"tessera:it:{i}", i)
        for i in range(100):
            pipe.get(f"tessera:it:{i}")
        replies = pipe.execute()
        assert replies[:100] == [True] * 100
        assert replies[100:] == [str(i).encode() for i in range(100)]
    finally:
        client.close()



@pytest.mark.redis
def test_redis_does_not_snapshot_while_serving_but_keeps_its_keys_over_down_and_up(
        cfg: ServicesConfig) -> None:
    """No BGSAVE fork a minute after a materialize (it tripled reads' p99 while it ran), yet a
    `down` then `up` keeps every key: they are saved when Redis stops."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=REDIS_PORT, socket_timeout=5)
    try:
        assert client.config_get("save") == {"save": ""}
        pipe = client.pipeline(transaction=False)
        for i in range(10_001):  # past the default's "60 s after 10,000 changes" snapshot
            pipe.set(f"tessera:it:snap:{i}", i)
        pipe.execute()
        info = client.info("persistence")
        assert info["rdb_changes_since_last_save"] >= 10_001
        assert info["rdb_bgsave_in_progress"] == 0
    finally:
        client.close()
    [stopped] = services.down(cfg, cfg.state_dir, only=("redis",))
    assert stopped.pid is None
    [started] = services.up(cfg, cfg.state_dir, only=("redis",))
    assert started.healthy
    client = redis.Redis(host="127.0.0.1", port=REDIS_PORT, socket_timeout=5)
    try:
        assert client.get("tessera:it:snap:0") == b"0"
        assert client.get("tessera:it:snap:10000") == b"10000"
        assert client.info("persistence")["rdb_changes_since_last_save"] == 0
    finally:
        client.close()

@pytest.mark.redis
def test_redis_also_listens_on_a_private_unix_socket(cfg: ServicesConfig) -> None:
    """``unix://`` for a client on this machine: the same server as the TCP port, the socket
    readable by this user only, and named in the status."""
    import stat

    import redis

    url = services.redis_socket_url(cfg, cfg.state_dir)
    assert url is not None
    path = Path(url.removeprefix("unix://").split("?")[0])
    assert path.is_socket() and stat.S_IMODE(path.stat().st_mode) == 0o700
    over_tcp = redis.Redis(host="127.0.0.1", port=REDIS_PORT, socket_timeout=5)
    over_socket = redis.Redis.from_url(url, socket_timeout=5)
    try:
        over_tcp.set("tessera:it:socket", "same server")
        assert over_socket.get("tessera:it:socket") == b"same server"
        assert over_socket.client_info()["addr"].startswith(str(path))
    finally:
        over_tcp.close()
        over_socket.close()
    [redis_status] = services.status(cfg, cfg.state_dir, only=("redis",))
    assert redis_status.detail.endswith(f"; socket {path}")


def test_a_state_path_too_long_for_a_socket_listens_on_tcp_only(tmp_path: Path) -> None:
    from tessera.services.redis_server import SUN_PATH_MAX, RedisServer

    deep = tmp_path / ("d" * (SUN_PATH_MAX - len(str(tmp_path))))
    server = RedisServer(RedisServiceConfig(port=REDIS_PORT), deep / "redis")
    assert server.socket_path is None
    assert "unixsocket" not in server.render_conf()
    assert f"port {REDIS_PORT}" in server.render_conf()
    short = RedisServer(RedisServiceConfig(port=REDIS_PORT), tmp_path / "redis")
    assert f'unixsocket "{tmp_path / "redis" / "redis.sock"}"' in short.render_conf()


@pytest.mark.kafka
def test_a_consumer_group_splits_partitions_and_reads_every_message_once(
    cfg: ServicesConfig,
) -> None:
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
    from kafka.admin import NewTopic
    from kafka.serializer import DefaultSerializer  # str <-> UTF-8 bytes

    utf8 = DefaultSerializer()

    bootstrap = f"127.0.0.1:{KAFKA_PORT}"
    topic = f"tessera-it-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)],
                            wait_for_metadata=True)
        [described] = admin.describe_topics([topic])
        assert len(described["partitions"]) == PARTITIONS
    finally:
        admin.close()

    group = f"tessera-it-{uuid.uuid4().hex[:8]}"
    lock = threading.Lock()
    stop = threading.Event()
    received: list[list[tuple[str, int, int]]] = [[], []]  # (key, seq, partition)
    assigned: list[set[int]] = [set(), set()]
    errors: list[BaseException] = []

    def consume(i: int) -> None:
        consumer = KafkaConsumer(
            topic, bootstrap_servers=bootstrap, group_id=group, client_id=f"it-{i}",
            auto_offset_reset="earliest", enable_auto_commit=True,
            key_deserializer=utf8, value_deserializer=utf8,
        )
        try:
            deadline = time.monotonic() + 120
            while not stop.is_set() and time.monotonic() < deadline:
                batches = consumer.poll(timeout_ms=200)
                with lock:
                    assigned[i] = {tp.partition for tp in consumer.assignment()}
                    for records in batches.values():
                        received[i].extend((r.key, int(r.value), r.partition) for r in records)
        except BaseException as e:  # surfaced in the main thread below
            errors.append(e)
        finally:
            consumer.close()

    threads = [threading.Thread(target=consume, args=(i,), daemon=True) for i in (0, 1)]
    for t in threads:
        t.start()
    try:
        # Produce only once the group has settled: a rebalance mid-stream may legitimately
        # redeliver, and this test is about the split, not about at-least-once semantics.
        def settled() -> bool:
            with lock:
                a, b = assigned
                return bool(a) and bool(b) and not a & b and a | b == set(range(PARTITIONS))

        assert process.wait_for(settled, 60), f"the group did not split the partitions: {assigned}"

        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                 key_serializer=utf8, value_serializer=utf8)
        try:
            futures = [producer.send(topic, key=f"k{n % KEYS:02d}", value=str(n // KEYS))
                       for n in range(KEYS * PER_KEY)]
            producer.flush(timeout=30)
            partitions_written = {f.get(timeout=30).partition for f in futures}
        finally:
            producer.close()

        def total() -> int:
            with lock:
                return len(received[0]) + len(received[1])

        assert process.wait_for(lambda: total() >= KEYS * PER_KEY, 60), f"got {total()} messages"
        time.sleep(1.0)  # a duplicate, if any, would arrive now
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not errors, errors

    a, b = assigned
    assert a and b and not a & b and a | b == set(range(PARTITIONS)), assigned
    assert partitions_written == set(range(PARTITIONS))
    for i in (0, 1):
        assert {p for _, _, p in received[i]} <= assigned[i], "a message came from another's partition"
    everything = [(k, s) for k, s, _ in received[0] + received[1]]
    expected = [(f"k{n % KEYS:02d}", n // KEYS) for n in range(KEYS * PER_KEY)]
    assert len(everything) == len(set(everything)), "duplicates"
    assert sorted(everything) == sorted(expected), "missing or unexpected messages"
    for key in {k for k, _ in expected}:
        seqs = [s for k, s, _ in received[0] + received[1] if k == key]
        assert seqs == list(range(PER_KEY)), f"order of {key} broken: {seqs}"


@pytest.mark.kafka
def test_the_broker_logs_through_log4j2(cfg: ServicesConfig) -> None:
    # With slf4j-api 1.7 on the class path (Maven's default pick) this file stays empty.
    log = Path(cfg.state_dir) / "kafka" / "server.log"
    text = log.read_text(encoding="utf-8", errors="replace")
    assert "Kafka Server started" in text
    assert f"Kafka version: {cfg.kafka.version}" in text


@pytest.mark.redis
@pytest.mark.kafka
def test_a_second_up_changes_nothing(cfg: ServicesConfig) -> None:
    before = by_name(services.status(cfg, cfg.state_dir))
    again = by_name(services.up(cfg, cfg.state_dir))
    for name in services.SERVICE_NAMES:
        assert again[name].pid == before[name].pid is not None
        assert again[name].healthy
        assert "already running" in again[name].detail


@pytest.mark.redis
@pytest.mark.kafka
def test_a_pid_file_naming_another_program_is_not_trusted(cfg: ServicesConfig) -> None:
    before = by_name(services.status(cfg, cfg.state_dir))
    pid_files = {"redis": Path(cfg.state_dir) / "redis" / "redis.pid",
                 "kafka": Path(cfg.state_dir) / "kafka" / "kafka.pid"}
    for path in pid_files.values():
        path.write_text(f"{os.getpid()}\n")  # a live pid, reused by "another program": us
    stale = by_name(services.status(cfg, cfg.state_dir))
    for name in services.SERVICE_NAMES:
        assert stale[name].pid == before[name].pid, "status must find the service by its port"
        assert "stale pid file" in stale[name].detail
    after = by_name(services.up(cfg, cfg.state_dir))
    for name, path in pid_files.items():
        assert after[name].pid == before[name].pid and after[name].healthy
        assert path.read_text().strip() == str(before[name].pid)


@pytest.mark.redis
def test_up_restarts_a_service_that_crashed_leaving_its_pid_file(cfg: ServicesConfig) -> None:
    old_pid = by_name(services.status(cfg, cfg.state_dir))["redis"].pid
    assert old_pid is not None
    os.kill(old_pid, signal.SIGKILL)
    assert process.wait_for(lambda: not process.is_alive(old_pid), 10)
    crashed = by_name(services.status(cfg, cfg.state_dir))["redis"]
    assert not crashed.healthy and crashed.pid is None
    assert f"pid {old_pid} is gone" in crashed.detail

    [new] = services.up(cfg, cfg.state_dir, only=("redis",))
    assert new.healthy and new.pid not in (None, old_pid)
    assert "removed stale pid file" in new.detail


@pytest.mark.redis
def test_a_port_taken_by_another_program_is_named(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        config = ServicesConfig(state_dir=tmp_path, redis=RedisServiceConfig(port=port))
        with pytest.raises(ServiceError, match=rf"port {port} on 127\.0\.0\.1 is already in use"):
            services.up(config, tmp_path, only=("redis",))
    assert not (tmp_path / "redis" / "redis.pid").exists()


def test_kafka_jars_are_fetched_again_unless_a_copy_completed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tessera.services import kafka_runtime

    libs = tmp_path / "4.3.1" / "libs"
    libs.mkdir(parents=True)
    (libs / "kafka_2.13-4.3.1.jar").write_bytes(b"")
    monkeypatch.setenv("PATH", str(tmp_path))  # no mvn: any attempt to fetch fails loudly
    with pytest.raises(ServiceError, match="Maven"):
        kafka_runtime.ensure_jars(libs, "4.3.1", print)  # jar present, marker missing: redo
    (libs / kafka_runtime.COMPLETE_MARKER).write_text("done")
    assert kafka_runtime.ensure_jars(libs, "4.3.1", print) == libs  # complete: no Maven


def test_unknown_service_names_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ServiceError, match="unknown service"):
        services.status(ServicesConfig(state_dir=tmp_path), tmp_path, only=("postgres",))


def test_importing_the_package_stays_light() -> None:
    # `tessera --help` imports it; the clients must load only when a service is checked.
    code = ("import sys, tessera.services; "
            "print(sorted(m for m in ('redis', 'kafka', 'rich', 'pydantic') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"


@pytest.mark.redis
@pytest.mark.kafka
def test_down_stops_everything_and_status_says_so(cfg: ServicesConfig) -> None:
    running = by_name(services.status(cfg, cfg.state_dir))
    stopped = by_name(services.down(cfg, cfg.state_dir))
    for name in services.SERVICE_NAMES:
        pid = running[name].pid
        assert pid is not None and not process.is_alive(pid)
        assert stopped[name].pid is None and not stopped[name].healthy
    now = by_name(services.status(cfg, cfg.state_dir))
    for name in services.SERVICE_NAMES:
        assert now[name].pid is None and not now[name].healthy
        assert now[name].detail == "not running"
    for port in (REDIS_PORT, KAFKA_PORT, CONTROLLER_PORT):
        assert process.port_is_free("127.0.0.1", port)
    again = services.down(cfg, cfg.state_dir)
    assert all(s.detail == "not running" for s in again)
