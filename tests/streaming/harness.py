"""A throwaway repo whose events reach Tessera only through a private Kafka topic.

The generated events are moved out of the source folder (``gen/``) and produced to a topic of
its own, so the offline store sees them only once the stream has landed them: a batch run over
the landed files is then the reference the streamed online state must equal.
"""

from __future__ import annotations

import glob
import shutil
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import polars as pl

from features.config import RepoConfig, load_config
from features.store import FeatureStore
from pipelines.batch import run
from streaming import events as E
from streaming import kafka_admin as A
from streaming import produce as P
from tests.online.repo import REPO_ROOT, equal, historical, make_repo, today

VIEW_KEYS = (("user_spend", "user_id"), ("merchant_activity", "merchant_id"))
# Where every repo's events end, fixed once: the tests read at END + 1 min, and a run that
# crosses midnight UTC must not move the data a day past the instant they read at.
END = today()


class StreamRepo:
    def __init__(self, folder: Path, redis_url: str, bootstrap: str, *, rows: int = 20_000,
                 days: int = 10, partitions: int = 6, stream: str = "",
                 cluster: bool = False) -> None:
        make_repo(folder, redis_url, rows=rows, days=days, cluster=cluster, end=END)
        self.folder = folder
        self.bootstrap = bootstrap
        self.topic = f"t-{uuid.uuid4().hex[:10]}"
        defs = folder / "example" / "card_features.py"
        defs.write_text(defs.read_text().replace('kafka_topic="transactions"',
                                                 f'kafka_topic="{self.topic}"'))
        config = folder / "feature_repo.yaml"
        config.write_text(config.read_text() + f"kafka: {{bootstrap_servers: '{bootstrap}'}}\n"
                          + (f"stream: {{{stream}}}\n" if stream else ""))
        shutil.move(str(folder / "data"), str(folder / "gen"))
        files = sorted(glob.glob(str(folder / "gen" / "**" / "*.parquet"), recursive=True))
        self.events = E.event_order(pl.concat([pl.read_parquet(f) for f in files],
                                              how="vertical_relaxed"), "event_ts")
        A.ensure_topic(bootstrap, self.topic, partitions)

    @property
    def cfg(self) -> RepoConfig:
        return load_config(self.folder)

    @property
    def views(self) -> list:
        return list(FeatureStore(config=self.cfg).definitions.views.values())

    def produce(self, events: pl.DataFrame | None = None) -> int:
        events = self.events if events is None else events
        src = self.views[0].source
        P.produce(self.bootstrap, self.topic, E.encode_events(events, src),
                  E.encode_keys(events, "user_id"))
        return events.height

    def produce_raw(self, payloads: list[bytes], keys: list[bytes | None]) -> None:
        P.produce(self.bootstrap, self.topic, payloads, keys)

    def cli(self, *args: str) -> subprocess.Popen:
        """``tessera stream`` in its own process (stderr to a log file)."""
        log = open(self.folder / f"stream-{uuid.uuid4().hex[:6]}.log", "w")  # noqa: SIM115
        return subprocess.Popen(
            [sys.executable, "-m", "tessera.cli", "stream", "--repo",
             str(self.folder / "feature_repo.yaml"), "--group", f"g-{self.topic}", *args],
            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)

    def mismatches(self, at: datetime, keys_per_view: int = 400) -> list[tuple]:
        """Run the batch engine over the landed events, then compare every feature read online
        with the point-in-time read at ``at``, for the busiest and the quietest keys."""
        cfg = self.cfg
        store = FeatureStore(config=cfg)
        run(cfg, list(store.definitions.views.values()), "polars", show_progress=False)
        out = []
        try:
            for view, key in VIEW_KEYS:
                counts = self.events.group_by(key).len().sort(["len", key],
                                                               descending=[True, False])
                keys = (counts[key].head(keys_per_view // 2).to_list()
                        + counts[key].tail(keys_per_view // 2).to_list())
                fv = store.definitions.views[view]
                got = store.get_online_features([f"{view}:{f.name}" for f in fv.features],
                                                [{key: k} for k in keys], now=at).to_dict()
                want = historical(store, view, key, keys, at)
                out += [(view, f.name, k, got[f.name][i], want[f.name][i])
                        for f in fv.features for i, k in enumerate(keys)
                        if not equal(f.function, got[f.name][i], want[f.name][i])]
        finally:
            store.close()
        return out

    def close(self) -> None:
        A.delete_topic(self.bootstrap, self.topic)
        A.delete_topic(self.bootstrap, self.topic + ".dlq")


def dead_letters(bootstrap: str, topic: str, expected: int, timeout_s: float = 20.0) -> list:
    """Every message of ``topic`` (at least ``expected``, waiting at most ``timeout_s``)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=f"dlq-{uuid.uuid4().hex[:6]}")
    out: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=500).values():
                out += recs
        extra = time.monotonic() + 1.0  # and nothing more than expected
        while time.monotonic() < extra:
            for recs in consumer.poll(timeout_ms=200).values():
                out += recs
    finally:
        consumer.close()
    return out
