"""The demo's round trips through the project's own Redis and Kafka (started by `make test`)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tessera.demo import kafka_round_trip, redis_round_trip


@pytest.mark.redis
def test_redis_round_trip_returns_every_value(redis_url: str) -> None:
    trip = redis_round_trip(redis_url, n=500)
    assert trip.sent == trip.received == 500
    assert "Redis 7" in trip.detail or "Redis" in trip.detail


@pytest.mark.kafka
def test_kafka_round_trip_through_a_consumer_group(kafka_bootstrap: str) -> None:
    trip = kafka_round_trip(kafka_bootstrap, n=300, partitions=3)
    assert trip.sent == trip.received == 300


def test_cli_import_pulls_no_heavy_library() -> None:
    """`tessera --help` must answer at once: no engine or Feast imported with the CLI."""
    code = ("import sys, tessera.cli; heavy = {'feast', 'pyspark', 'polars', 'duckdb', "
            "'great_expectations', 'evidently', 'redis', 'kafka', 'pandas'} & set(sys.modules); "
            "print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_broken_config_is_one_line_from_the_cli(tmp_path) -> None:
    bad = tmp_path / "feature_repo.yaml"
    bad.write_text("project: shop\nonline:\n  urll: redis://x:1/0\n")
    out = subprocess.run([sys.executable, "-m", "tessera.cli", "config", "--repo", str(bad)],
                         capture_output=True, text=True)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "online.urll: unknown key" in lines[0]
