"""``tessera stream`` on real Kafka and Redis: the streamed online state equals the batch result
over the same events, whatever happens to the consumer (replays, kill -9, two processes, Redis
restarts, SIGTERM)."""

from __future__ import annotations

import random
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from features.store import FeatureStore
from features.windows import to_micros
from streaming.consumer import StreamConsumer, StreamSummary
from tests.online.private_redis import PrivateRedis
from tests.streaming.harness import END, StreamRepo

AT = END + timedelta(minutes=1)  # every generated event is before END


def logs_of(repo: StreamRepo) -> list[str]:
    return [p.read_text() for p in sorted(repo.folder.glob("stream-*.log"))]


def wait_for_logs(repo: StreamRepo, text: str, count: int, timeout_s: float) -> bool:
    """Whether ``count`` of the repo's stream logs say ``text`` within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sum(text in log for log in logs_of(repo)) >= count:
            return True
        time.sleep(0.2)
    return False


def last_assignment(log: str) -> str:
    """What the last "partitions assigned" line of a stream log names ("" if none yet)."""
    return log.rpartition("partitions assigned: ")[2] if "partitions assigned: " in log else ""


def consume(repo: StreamRepo, group: str, **run: Any) -> StreamSummary:
    consumer = StreamConsumer(repo.cfg, repo.views, group=group, clock=lambda: to_micros(AT))
    return consumer.run(handle_signals=False, **{"until_idle_s": 3.0, **run})


def spy_process(consumer: StreamConsumer, look: Callable[[], None]) -> None:
    """Call ``look()`` before each batch the consumer processes."""
    process = consumer._process

    def spy(*args: Any) -> Any:
        look()
        return process(*args)

    consumer._process = spy  # type: ignore[method-assign,assignment]


@pytest.fixture
def new_repo(tmp_path: Path, redis_url: str, kafka_bootstrap: str
             ) -> Iterator[Callable[..., StreamRepo]]:
    """``new_repo(rows=..., redis=url, **StreamRepo options)``: a repo with a topic of its own
    on the shared Redis (or ``redis``), its topics deleted after the test."""
    made: list[StreamRepo] = []

    def make(*, redis: str | None = None, **options: Any) -> StreamRepo:
        repo = StreamRepo(tmp_path / f"repo{len(made)}", redis or redis_url, kafka_bootstrap,
                          **options)
        made.append(repo)
        return repo

    yield make
    for repo in made:
        repo.close()


@pytest.fixture
def small(new_repo: Callable[..., StreamRepo]) -> StreamRepo:
    return new_repo(rows=20_000, stream="max_batch_events: 1500")


def test_streamed_online_values_equal_the_batch_result_for_every_feature(
        small: StreamRepo) -> None:
    small.produce()
    summary = consume(small, "g1")
    assert summary.events == 20_000 and summary.batches >= 10  # many merges, not one
    assert summary.landed == 20_000 and summary.dead_letters == {}
    assert small.mismatches(AT) == []


def test_a_replay_applies_and_lands_nothing_twice(small: StreamRepo) -> None:
    small.produce()
    first = consume(small, "g1")
    # another group reads the whole topic again: every event is already applied and landed
    again = consume(small, "g2")
    assert again.events == 20_000
    assert sum(again.applied.values()) == 0 and again.skipped == 2 * 20_000
    assert again.landed == 0
    assert sum(first.applied.values()) == 2 * 20_000
    assert small.mismatches(AT) == []


def test_batches_land_together_and_a_quiet_stream_lands_without_waiting(
        new_repo: Callable[..., StreamRepo]) -> None:
    # land_every_ms far beyond the run: only the quiet-stream flush can land (and commit) it
    repo = new_repo(rows=6_000, stream="max_batch_events: 1000, land_every_ms: 600000")
    repo.produce()
    summary = consume(repo, "g1", until_idle_s=1.0, max_seconds=120)
    assert summary.batches >= 6 and summary.landed == 6_000
    assert summary.seconds < 60  # ended as idle: landed and committed, not at max_seconds
    files = list((repo.folder / "offline").rglob("landed/**/*.parquet"))
    assert len(files) == 6  # six partitions, one landing for all the batches
    assert repo.mismatches(AT) == []


def test_the_heap_is_frozen_while_batches_run_and_unfrozen_after(
        new_repo: Callable[..., StreamRepo]) -> None:
    # the imported libraries stay out of the collector's full passes (pauses of 60-140 ms,
    # the freshness tail), and a host process (a notebook, a test) gets its heap back after
    import gc

    repo = new_repo(rows=2_000)
    repo.produce()
    consumer = StreamConsumer(repo.cfg, repo.views, group="g1",
                              clock=lambda: to_micros(AT))
    frozen: list[int] = []
    spy_process(consumer, lambda: frozen.append(gc.get_freeze_count()))
    before = gc.get_freeze_count()
    summary = consumer.run(handle_signals=False, until_idle_s=1.0)
    assert summary.events == 2_000 and frozen
    assert min(frozen) > 10_000  # the libraries' objects, not a handful
    assert gc.get_freeze_count() == before == 0


def test_the_fetch_settings_reach_the_kafka_consumer(new_repo: Callable[..., StreamRepo]) -> None:
    # fewer, fuller fetches are what keeps a steady stream's batches short (docs/streaming.md)
    repo = new_repo(rows=500, stream="fetch_min_bytes: 4096, fetch_max_wait_ms: 30")
    repo.produce()
    consumer = StreamConsumer(repo.cfg, repo.views, group="g1",
                              clock=lambda: to_micros(AT))
    seen: list[tuple[int, int]] = []
    spy_process(consumer, lambda: seen.append(
        (consumer._consumer.config["fetch_min_bytes"],
         consumer._consumer.config["fetch_max_wait_ms"])))
    summary = consumer.run(handle_signals=False, until_idle_s=1.0)
    assert summary.events == 500 and set(seen) == {(4096, 30)}


def test_redis_restarted_mid_stream_loses_and_doubles_nothing(
        tmp_path: Path, new_repo: Callable[..., StreamRepo]) -> None:
    redis = PrivateRedis(tmp_path / "redis")
    redis.start()
    repo = new_repo(redis=redis.url, rows=40_000, stream="max_batch_events: 1000")
    try:
        repo.produce()
        consumer = StreamConsumer(repo.cfg, repo.views, group="g", clock=lambda: to_micros(AT))
        result: dict = {}
        thread = threading.Thread(target=lambda: result.update(
            s=consumer.run(handle_signals=False, until_idle_s=8.0)))
        thread.start()
        deadline = time.monotonic() + 60
        while consumer.metrics.total_events < 8_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        redis.stop(save=True)  # mid-stream: the consumer retries with backoff meanwhile
        time.sleep(2.0)
        redis.start()
        thread.join(timeout=120)
        assert not thread.is_alive()
        summary = result["s"]
        assert summary.events >= 40_000  # some batches were read twice: retried
        assert repo.mismatches(AT) == []
    finally:
        redis.stop(save=False)


def test_kill_9_at_random_points_then_restart_gives_the_batch_result(
        new_repo: Callable[..., StreamRepo]) -> None:
    repo = new_repo(rows=200_000, stream="max_batch_events: 5000")
    repo.produce()
    rng = random.Random(11)
    kills = 0
    for _ in range(5):
        proc = repo.cli("--until-idle", "5")
        time.sleep(rng.uniform(2.5, 6.0))  # import + some batches, cut anywhere
        if proc.poll() is None:
            proc.kill()  # SIGKILL: no cleanup at all
            kills += 1
        proc.wait(timeout=30)
    assert kills == 5, "each run must be killed mid-stream (make the topic bigger)"
    final = repo.cli("--until-idle", "5")
    assert final.wait(timeout=300) == 0
    at = datetime.now(UTC)
    assert repo.mismatches(at) == []
    landed = sum(1 for _ in (repo.cfg.resolve(repo.cfg.offline.path) / "landed").rglob(
        "*.parquet"))
    assert landed > 0


def assigned_partitions(log: str) -> set[int]:
    """The partitions the last "partitions assigned" line of a stream log names."""
    text = last_assignment(log).partition("partitions revoked")[0]
    return {int(p) for p in re.findall(r"\[(\d+)\]", text)}


def test_until_idle_waits_for_the_partitions_a_killed_member_still_holds(
        new_repo: Callable[..., StreamRepo]) -> None:
    """A member killed with kill -9 keeps its partitions until its session ends (10 s). A bounded
    run beside it must not stop once its own partitions are read: the dead member's events (in a
    real crash: applied online, not yet landed) would wait for a member that never comes."""
    repo = new_repo(rows=20_000, stream="max_batch_events: 2000")
    doomed = repo.cli()  # unbounded
    assert wait_for_logs(repo, "partitions assigned: t-", 1, timeout_s=180), logs_of(repo)
    bounded = repo.cli("--until-idle", "3")
    deadline = time.monotonic() + 180
    while True:  # the group split the six partitions between the two
        held = [assigned_partitions(log) for log in logs_of(repo)]
        if len(held) == 2 and all(held) and not held[0] & held[1] and \
                len(held[0] | held[1]) == 6:
            break
        assert time.monotonic() < deadline, logs_of(repo)
        time.sleep(0.2)
    doomed.kill()
    doomed.wait(timeout=30)
    repo.produce()
    assert bounded.wait(timeout=240) == 0, logs_of(repo)
    log = next(log for log in logs_of(repo) if "streamed" in log)
    assert "streamed 20,000 events" in log, log  # its own partitions and the dead member's
    assert repo.mismatches(datetime.now(UTC)) == []


def test_two_consumer_processes_end_in_the_same_state_as_one(
        new_repo: Callable[..., StreamRepo]) -> None:
    repo = new_repo(rows=60_000, stream="max_batch_events: 2000")
    procs = [repo.cli("--until-idle", "20") for _ in range(2)]
    # both joined the group and hold partitions before any event (a cold start of two
    # processes on a busy machine takes a while)
    assert wait_for_logs(repo, "partitions assigned: t-", 2, timeout_s=180), logs_of(repo)
    repo.produce()
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    logs = [p.read_text() for p in repo.folder.glob("stream-*.log")]
    assert all("streamed" in log for log in logs), logs
    # both took part: each applied some events (the group split the 6 partitions)
    assert all("applied: user_spend 0," not in log for log in logs), logs
    assert repo.mismatches(datetime.now(UTC)) == []


def test_until_idle_stops_a_member_that_holds_no_partition(
        new_repo: Callable[..., StreamRepo]) -> None:
    """One partition, two members: the group gives it to one of them and nothing to the other.
    ``--until-idle`` must still end both, and only once every event is applied."""
    repo = new_repo(rows=6_000, partitions=1, stream="max_batch_events: 1000")
    # The first member must outlive the second one's cold start (15-60 s on a busy 2-core
    # box) on an empty topic: with a short idle bound it is gone before the group forms.
    procs = [repo.cli("--until-idle", "45")]
    assert wait_for_logs(repo, "partitions assigned: t-", 1, timeout_s=120), logs_of(repo)
    procs.append(repo.cli("--until-idle", "45"))
    deadline = time.monotonic() + 120
    while sorted(last_assignment(log)[:2] for log in logs_of(repo)) != ["no", "t-"]:
        assert time.monotonic() < deadline, logs_of(repo)  # one holds it, one nothing
        time.sleep(0.2)
    repo.produce()
    assert [p.wait(timeout=240) for p in procs] == [0, 0], logs_of(repo)
    logs = logs_of(repo)
    assert sum("streamed 6,000 events" in log for log in logs) == 1, logs
    assert repo.mismatches(datetime.now(UTC)) == []


def test_sigterm_finishes_the_batch_commits_and_exits_0(
        new_repo: Callable[..., StreamRepo]) -> None:
    repo = new_repo(rows=100_000, stream="max_batch_events: 2000")
    repo.produce()
    proc = repo.cli()
    # mid-stream: once it streams (before, SIGTERM would stop a process still importing)
    assert wait_for_logs(repo, "partitions assigned: t-", 1, timeout_s=120), logs_of(repo)
    time.sleep(3.0)
    assert proc.poll() is None, "still streaming (no bound given)"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    # what it committed was applied: a second run starts after it and applies the rest
    final = repo.cli("--until-idle", "5")
    assert final.wait(timeout=300) == 0
    log = sorted(repo.folder.glob("stream-*.log"), key=lambda p: p.stat().st_mtime)[-1]
    assert "already applied: 0;" in " ".join(log.read_text().split())  # lines wrap anywhere
    assert repo.mismatches(datetime.now(UTC)) == []


def test_online_reads_see_streamed_events_through_the_feature_store(
        small: StreamRepo) -> None:
    """A burst of events for one new user changes what get_online_features returns."""
    import polars as pl

    burst = small.events.head(5).with_columns(
        pl.lit(77_000_001).alias("user_id"),
        pl.Series("event_ts", [AT - timedelta(minutes=m) for m in (50, 40, 30, 20, 10)]))
    small.produce(burst)
    consume(small, "g")
    store = FeatureStore(config=small.cfg)
    got = store.get_online_features(["user_spend:txn_count_1h"], [{"user_id": 77_000_001}],
                                    now=AT).to_dict()
    assert got["txn_count_1h"] == [5]


def test_metrics_count_events_dead_letters_and_lag_over_http(small: StreamRepo) -> None:
    import urllib.request

    import polars as pl

    burst = small.events.head(40)
    small.produce(burst)
    small.produce_raw([b"not json"], [b"1"])
    consumer = StreamConsumer(small.cfg, small.views, group="gm", clock=lambda: to_micros(AT))
    port = consumer.metrics.serve(0)
    lines: list[str] = []
    consumer.settings = consumer.settings.model_copy(update={"status_every_s": 0.2})
    summary = consumer.run(handle_signals=False, until_idle_s=2.0, status=lines.append)
    assert summary.events == 41
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in text.splitlines() if line.startswith("tessera_stream_")}
    assert samples[f'tessera_stream_events_total{{topic="{small.topic}"}}'] == 41
    kept = burst.filter(pl.col("amount") > 0).height  # user_spend's filter
    assert samples['tessera_stream_applied_total{view="user_spend"}'] == kept, samples
    assert samples['tessera_stream_applied_total{view="merchant_activity"}'] == 40, samples
    assert samples['tessera_stream_dead_letters_total{reason="undecodable"}'] == 1
    assert samples[f'tessera_stream_lag{{partition="0",topic="{small.topic}"}}'] == 0
    assert samples["tessera_stream_freshness_seconds_count"] > 0
    assert lines and lines[-1].startswith("stream: ") and "dead letters 1" in lines[-1]


def test_streaming_into_a_redis_cluster_gives_the_batch_result(
        redis_cluster_url: str, new_repo: Callable[..., StreamRepo]) -> None:
    """Each entity's values and offsets share a hash tag, so every compare-and-set touches one
    slot; the cluster path writes entity by entity."""
    repo = new_repo(redis=redis_cluster_url, rows=3_000, stream="max_batch_events: 1000",
                    cluster=True)
    repo.produce()
    summary = consume(repo, "g")
    assert summary.events == 3_000 and summary.batches >= 3
    assert repo.mismatches(AT, keys_per_view=100) == []
