"""``tessera demo``: the example, end to end, on the local services, printing what it did.

Each step is a small function that returns what it measured, so the demo reads as a script and
the tests can call the steps one by one.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from features.config import RepoConfig


@dataclass(frozen=True)
class RoundTrip:
    """What a round trip through one service showed."""

    service: str
    sent: int
    received: int
    seconds: float
    detail: str


def redis_round_trip(url: str, n: int = 1_000) -> RoundTrip:
    """Write ``n`` feature hashes in one pipeline, read them back in another, and compare."""
    import redis

    client = redis.Redis.from_url(url)
    prefix = f"tessera:demo:{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    with client.pipeline(transaction=False) as pipe:
        for i in range(n):
            pipe.hset(f"{prefix}:{i}", mapping={"txn_count_1h": i, "amount_sum_1d": i * 1.5})
            pipe.expire(f"{prefix}:{i}", 60)
        pipe.execute()
    with client.pipeline(transaction=False) as pipe:
        for i in range(n):
            pipe.hmget(f"{prefix}:{i}", ["txn_count_1h", "amount_sum_1d"])
        rows = pipe.execute()
    seconds = time.perf_counter() - start
    good = sum(1 for i, (c, s) in enumerate(rows) if int(c) == i and float(s) == i * 1.5)
    version = client.info("server")["redis_version"]
    client.delete(*[f"{prefix}:{i}" for i in range(n)])
    return RoundTrip("redis", n, good, seconds, f"Redis {version} at {url}")


def kafka_round_trip(bootstrap: str, n: int = 1_000, partitions: int = 4,
                     timeout_s: float = 30.0) -> RoundTrip:
    """Produce ``n`` keyed JSON events to a fresh topic and consume them back through a group."""
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
    from kafka.admin import NewTopic
    from kafka.serializer import DefaultSerializer
    from kafka.serializer.json import JsonSerializer

    topic = f"tessera.demo.{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="tessera-demo")
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    start = time.perf_counter()
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5,
                             key_serializer=DefaultSerializer(),
                             value_serializer=JsonSerializer())
    for i in range(n):
        producer.send(topic, key=f"user-{i % 50}", value={"user_id": i % 50, "amount": i / 10})
    producer.flush(timeout=timeout_s)
    producer.close()
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"{topic}.group",
                             auto_offset_reset="earliest", enable_auto_commit=False)
    seen: set[tuple[int, int]] = set()
    deadline = time.monotonic() + timeout_s
    while len(seen) < n and time.monotonic() < deadline:
        for tp, records in consumer.poll(timeout_ms=500, max_records=5_000).items():
            seen.update((tp.partition, r.offset) for r in records)
    consumer.commit()
    consumer.close()
    seconds = time.perf_counter() - start
    admin.delete_topics([topic])
    admin.close()
    return RoundTrip("kafka", n, len(seen), seconds,
                     f"topic {topic} ({partitions} partitions) at {bootstrap}")


def run_demo(cfg: RepoConfig, console: Console) -> None:
    """Bring the services up and show a working round trip through each of them."""
    from rich.table import Table

    from tessera import services

    console.rule("[bold]1. Local services")
    console.print(services.render_status(services.up(cfg.services, cfg.root, console=console)))

    console.rule("[bold]2. Round trips")
    table = Table("service", "sent", "received", "seconds", "detail")
    for trip in (redis_round_trip(cfg.online.url), kafka_round_trip(cfg.kafka.bootstrap_servers)):
        ok = "green" if trip.received == trip.sent else "red"
        table.add_row(trip.service, str(trip.sent), f"[{ok}]{trip.received}[/]",
                      f"{trip.seconds:.3f}", trip.detail)
        if trip.received != trip.sent:
            from features.errors import TesseraError

            console.print(table)
            raise TesseraError(f"{trip.service} round trip lost data: sent {trip.sent}, "
                               f"received {trip.received}")
    console.print(table)
    console.print("Stop the services with [bold]make down[/] (or `tessera services down`).")
