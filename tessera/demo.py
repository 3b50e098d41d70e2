"""``tessera demo``: the example, end to end, on the local services, printing what it did.

Each step is a small function that returns what it measured, so the demo reads as a script and
the tests can call the steps one by one.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from features.config import OfflineConfig, RepoConfig


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
    run_pipeline(cfg, console)
    console.print("Stop the services with [bold]make down[/] (or `tessera services down`).")


DEMO_ROWS = 100_000
DEMO_DAYS = 28  # the days before today (UTC), so online windows have something to show
DRIFT_DAYS = 7  # the last week of the demo data drifts


def drift_from() -> date:
    """The UTC day the demo data starts to drift (the model was trained before it)."""
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC).date() - timedelta(days=DRIFT_DAYS)


def run_pipeline(cfg: RepoConfig, console: Console) -> None:
    """Generate data, register the example, run both engines, read features at instants."""
    from datetime import UTC, datetime, timedelta

    import polars as pl
    from rich.table import Table

    from features.historical import get_historical_features
    from pipelines.batch import run
    from pipelines.datagen import generate_cli
    from tessera.commands import apply_repo, load_valid, render_runs

    console.rule("[bold]3. Data: seeded card transactions")
    import shutil

    from pipelines.sources import landing_root

    # fresh data each run: events a previous demo streamed (and landed) are dropped too
    for source in load_valid(cfg).sources.values():
        shutil.rmtree(landing_root(cfg.resolve(cfg.offline.path), source), ignore_errors=True)
    today = datetime.now(UTC).date()
    start = today - timedelta(days=DEMO_DAYS)
    end = today + timedelta(days=1)  # today has no events yet: computed as empty, not unknown
    # The last week drifts (more online and night-time spending, dearer categories): the
    # drift report at the end compares it with a training set from the weeks before.
    summary = generate_cli(rows=DEMO_ROWS, out=cfg.resolve(Path("data")),
                           start=datetime.combine(start, datetime.min.time()), days=DEMO_DAYS,
                           seed=7, drift_from=datetime.combine(drift_from(), datetime.min.time()))
    console.print(summary.format())

    console.rule("[bold]4. tessera apply: validate, register in Feast")
    apply_repo(cfg, console)
    defs = load_valid(cfg)
    views = list(defs.views.values())

    console.rule("[bold]5. tessera run: validate, then the same rules on Polars and on Spark")
    from validation.gate import BatchGate

    gate = BatchGate(cfg)  # the source's expectations, checked by Great Expectations first
    summaries = run(cfg, views, "polars", start, end, allow_empty_days=True, gate=gate)
    for report in gate.reports.values():
        console.print(f"Great Expectations: {len(report.outcomes)} expectations on "
                      f"{report.rows:,} rows of {report.source!r} in {report.seconds:.1f} s, "
                      f"{len(report.blocking)} failed, {len(report.warnings)} warned")
    spark_cfg = cfg.model_copy(update={"offline": replace_offline(cfg, "offline-spark")})
    summaries += run(spark_cfg, views, "spark", start, end, allow_empty_days=True, gate=gate)
    render_runs(console, summaries)

    console.rule("[bold]6. Point-in-time features (no value from after each timestamp)")
    rows = pl.DataFrame({
        "user_id": [1_000_003, 1_000_003, 1_000_003, 1_000_042, 424242],
        "merchant_id": [2_000_000_001] * 5,
        "event_ts": [at(start, 7, 9), at(start, 14, 9),
                     at(start, 14, 9) + timedelta(microseconds=1), at(start, 21, 18),
                     at(start, 21, 18)],
    }).with_columns(pl.col("event_ts").dt.replace_time_zone("UTC"))
    shown = ["txn_count_1d", "spend_eur_7d", "spend_eur_std_7d", "last_country"]
    out = {}
    for name, c in (("polars", cfg), ("spark", spark_cfg)):
        out[name] = pl.from_arrow(get_historical_features(
            [defs.views["user_spend"]], rows, c.resolve(c.offline.path)))
    table = Table("user_id", "event_ts (UTC)", *shown)
    for r in out["polars"].iter_rows(named=True):
        table.add_row(str(r["user_id"]), r["event_ts"].strftime("%m-%d %H:%M:%S.%f"),
                      *[_fmt(r[c]) for c in shown])
    console.print(table)
    feature_cols = [f.name for f in defs.views["user_spend"].features]
    equal = _frames_equal(out["polars"].select(feature_cols), out["spark"].select(feature_cols))
    console.print(f"Polars and Spark agree on all {len(feature_cols)} features × {rows.height} "
                  f"rows: [{'green' if equal else 'red'}]{equal}[/]")
    if not equal:
        from features.errors import TesseraError

        raise TesseraError("Polars and Spark disagree on the demo features")
    run_online(cfg, console, defs)


def at(day: object, days: int, hour: int) -> object:
    """A naive UTC datetime ``days`` after ``day`` at ``hour``."""
    from datetime import datetime, timedelta

    return datetime.combine(day, datetime.min.time()) + timedelta(days=days, hours=hour)  # type: ignore[arg-type]


def run_online(cfg: RepoConfig, console: Console, defs: object) -> None:
    """Materialize into Redis and read online: windows merged now, equal to the offline read."""
    import time as _time
    from datetime import UTC, datetime

    import polars as pl
    from rich.table import Table

    from features.store import FeatureStore
    from tessera.commands import materialize_repo

    console.rule("[bold]7. tessera materialize: the run's online values into Redis")
    materialize_repo(cfg, console, None, None, None)
    console.rule("[bold]8. get_online_features: windows merged at request time")
    store = FeatureStore(config=cfg)
    busiest = (pl.read_parquet(cfg.resolve(Path("data/transactions")), hive_partitioning=False)
               .group_by("user_id").len().sort(["len", "user_id"], descending=[True, False]))
    users = [*busiest["user_id"].head(3).to_list(), 424242]  # and one never seen
    shown = ["txn_count_1h", "txn_count_7d", "spend_eur_7d", "spend_eur_std_7d",
             "last_country"]
    now = datetime.now(UTC).replace(microsecond=0)
    t0 = _time.perf_counter()
    resp = store.get_online_features([f"user_spend:{f}" for f in shown],
                                     [{"user_id": u} for u in users], now=now)
    ms = (_time.perf_counter() - t0) * 1000
    values, statuses = resp.to_dict(), resp.status_dict()
    table = Table("user_id", *shown, "status")
    for i, u in enumerate(users):
        table.add_row(str(u), *[_fmt(values[f][i]) for f in shown], statuses[shown[1]][i])
    console.print(table)
    view = store.definitions.views["user_spend"]
    offline = store.get_historical_features(
        pl.DataFrame({"user_id": users, "event_ts": [now] * len(users)}),
        [f"user_spend:{f.name}" for f in view.features]).to_arrow().to_pydict()
    online = store.get_online_features([f"user_spend:{f.name}" for f in view.features],
                                       [{"user_id": u} for u in users], now=now).to_dict()
    same = all(_same(online[f.name][i], offline[f.name][i])
               for f in view.features for i in range(len(users)))
    console.print(f"one Redis round trip, {ms:.1f} ms (first call); online equals the "
                  f"point-in-time read at {now:%Y-%m-%d %H:%M:%S} for all "
                  f"{len(view.features)} features × {len(users)} users: "
                  f"[{'green' if same else 'red'}]{same}[/]")
    store.close()
    if not same:
        from features.errors import TesseraError

        raise TesseraError("online and offline values differ")
    run_http(cfg, console, users[0])


def run_http(cfg: RepoConfig, console: Console, user: int) -> None:
    """Start ``tessera serve`` on a free loopback port, make one Feast-style call, stop it."""
    import json
    import socket
    import subprocess
    import sys
    import urllib.request

    console.rule("[bold]9. tessera serve: the same read over HTTP (Feast's JSON)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    repo = cfg.root / "feature_repo.yaml"
    proc = subprocess.Popen([sys.executable, "-m", "tessera.cli", "serve", "--repo", str(repo),
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    body = {"features": ["user_spend:txn_count_7d", "user_spend:spend_eur_7d"],
            "entities": {"user_id": [user, 424242]}}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    from features.errors import TesseraError

                    err = (proc.stderr.read() if proc.stderr else b"").decode()[-2000:]
                    raise TesseraError(f"tessera serve did not start on {url}: {err}") from None
                time.sleep(0.2)
        request = urllib.request.Request(url + "/get-online-features",
                                         data=json.dumps(body).encode(),
                                         headers={"content-type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=10).read())
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    console.print(f"$ curl -s {url}/get-online-features -d '{json.dumps(body)}'",
                  markup=False, soft_wrap=True)
    console.print(json.dumps(answer), markup=False, soft_wrap=True)
    from tessera.demo_drift import run_drift_report
    from tessera.demo_export import run_export
    from tessera.demo_stream import run_stream

    manifest = run_export(cfg, console)
    run_stream(cfg, console, user)
    run_drift_report(cfg, console, manifest)


def _same(a: object, b: object) -> bool:
    import math

    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def replace_offline(cfg: RepoConfig, folder: str) -> OfflineConfig:
    """The same offline settings in a sibling folder (the Spark run's own store)."""
    return cfg.offline.model_copy(update={"path": cfg.offline.path.parent / folder})


def _fmt(value: object) -> str:
    return f"{value:,.2f}" if isinstance(value, float) else str(value)


def _frames_equal(a: object, b: object) -> bool:
    import math

    for ra, rb in zip(a.iter_rows(), b.iter_rows(), strict=True):  # type: ignore[attr-defined]
        for x, y in zip(ra, rb, strict=True):
            if isinstance(x, float) and isinstance(y, float):
                if not math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9):
                    return False
            elif x != y:
                return False
    return True
