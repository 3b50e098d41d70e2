"""Feast's online serving and plain redis-py baselines, on the same rows and the same Redis.

The reference side of the online benchmark (``bench/online.py`` measures Tessera against it in
the same run). Feast is used as a user would: a feature repo in a work folder
(``feature_store.yaml`` with ``online_store: redis`` on ``db=1`` and ``offline_store: duckdb``),
a ``FileSource`` over a Parquet file, an ``Entity`` and a ``FeatureView``, ``FeatureStore.apply``,
``materialize``, ``get_online_features(...).to_dict()`` and ``feast serve``.

Interface::

    side = FeastSide.setup(table, join_key="user_id", timestamp_column="event_ts",
                           workdir=Path(...), redis_host="127.0.0.1", redis_port=6390, redis_db=1)
    side.materialize()                         # {"rows", "seconds", "rows_per_s", "written"}
    side.verify(sample=200)                    # online values == the table's, or raises
    side.online_latency(ids, batch=1, iterations=2000, max_seconds=20)
    with side.serve() as server:               # `feast serve`, 127.0.0.1, a free port
        server.http_latency(ids, iterations=2000, max_seconds=20, concurrency=1)
        server.http_latency(ids, iterations=4000, max_seconds=20, concurrency=8)
    client = side.redis_client()
    keys, fields = side.redis_keys(ids), side.redis_fields()   # Feast's own hashes and fields
    raw_hmget_latency(client, keys, fields, batch=1, iterations=5000, max_seconds=10)
    raw_hmget_latency(client, keys, fields, batch=100, iterations=1000, max_seconds=10)
    raw_pipelined_hset_rate(client, side.copy_rows(ids), chunk=1000, max_seconds=60)
    raw_pipelined_hset_rate(client, side.encode_rows(), chunk=1000, max_seconds=60)
    side.clear_online(); side.close()

Every latency result is a dict: ``n`` (timed calls), ``seconds`` (wall time of the timed loop),
``p50_ms``, ``p99_ms``, ``max_ms``, ``mean_ms``, ``ops_per_s`` (calls/s) and ``entities_per_s``.
Every loop is bounded twice: at most ``iterations`` calls and at most ``max_seconds``; a short
warm-up (also bounded) comes first and is not recorded. Request entity ids are drawn with a
seeded RNG before the timed loop.

Choices, stated so they can be argued with:

- Feast's Redis online store runs with its defaults (``skip_dedup: false``: materialize first
  HMGETs the stored ``_ts`` of every entity, then HSETs; no key TTL). Its writes skip rows
  whose timestamp is not newer than the stored one, so ``setup`` first deletes this project's
  hashes in ``redis_db`` (a SCAN limited to keys ending in the project name; never FLUSHDB).
- ``feast serve`` runs with ``--workers 1`` (its default), ``--max-requests 0`` (gunicorn's
  "never restart"; Feast's default of 1000 restarts the worker mid-run) and ``--no-access-log``.
  Both favour Feast. The load generator runs in this process (httpx, one keep-alive client per
  thread, pre-encoded JSON bodies) on the same machine, so its CPU competes with the server's.
- The raw HMGET baseline reads the 10 feature fields of Feast's hashes (Feast itself also reads
  ``_ts:<view>``), with keys and field names computed up front by Feast's own helpers;
  ``decode=side.decode_values`` adds the protobuf decoding a reader needs.
- ``copy_rows`` rewrites the exact bytes Feast stored (read back with HGETALL) under keys
  with another project suffix: pure pipelined HSET. ``encode_rows`` also builds those bytes from
  the Arrow table in Python (Feast's key serializer, ``mmh3`` field names, ``Value`` protobufs),
  which is what a writer must do; both clean up their keys afterwards.

Run alone (needs the project's Redis: ``make services``)::

    .venv/bin/python bench/feast_baseline.py --entities 100000
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import itertools
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa
    import redis

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".tessera" / "bench" / "feast"
PROJECT = "tessera_bench_feast"
VIEW = "bench_user_stats"
ENTITY = "bench_user"
RAW_SUFFIX = b"tessera_bench_rawhset"  # replaces the project name in raw HSET copies

Progress = Callable[[int], None]


# --------------------------------------------------------------------------------------------
# Measurement helpers (no Feast import)
# --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def snapshots_paused(url: str) -> Iterator[str]:
    """Redis's RDB snapshots off for the block, restored after; yields the saved setting.

    The local Redis of ``tessera services up`` has no ``save`` points (docs/services.md); a
    Redis of your own may keep Redis's default ones. A snapshot forks the server (40 ms
    with the ~700 MB a test run leaves behind) and writes the data set to disk on the same two
    cores: measured in a latency benchmark, that is Redis persistence, not feature serving, and
    it lands on whichever side happens to run then. Both sides run with snapshots off.
    """
    import redis

    client = redis.Redis.from_url(url)
    saved = client.config_get("save").get("save", "")
    client.config_set("save", "")
    try:
        yield saved
    finally:
        client.config_set("save", saved)
        client.close()


@contextlib.contextmanager
def core_shared_with_redis(url: str, cpu: int | None) -> Iterator[int | None]:
    """This thread and the local Redis's main thread both on CPU ``cpu`` for the block (None:
    left alone), their CPU sets restored after; yields ``cpu``.

    On this VM an idle vCPU halts, and the Redis round trip of a short read pays for waking
    Redis's: ~13-16 µs inside our own ``send`` (the wake-up that crosses the host) and ~20 µs
    more before the reply lands. With both on one vCPU that vCPU never halts between the two,
    and a bare round trip takes ~6-9 µs (docs/benchmarks.md, "Where a round trip goes").
    Threads and processes started inside the block (servers, Feast) inherit the CPU,
    so the whole run shares one core with Redis: both sides measured alike.
    """
    if cpu is None:
        yield None
        return
    import os

    import redis

    client = redis.Redis.from_url(url)
    try:
        pid = int(client.info("server")["process_id"])
    finally:
        client.close()
    if not Path(f"/proc/{pid}").exists():
        raise SystemExit(f"--share-core-with-redis: Redis at {url} runs as pid {pid}, which is "
                         f"not a process of this machine (it must be a local Redis)")
    saved_redis, saved_self = os.sched_getaffinity(pid), os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(pid, {cpu})
    except OSError as e:
        raise SystemExit(f"--share-core-with-redis: cannot move Redis (pid {pid}) to CPU {cpu}: "
                         f"{e}") from None
    try:
        os.sched_setaffinity(0, {cpu})
        yield cpu
    finally:
        os.sched_setaffinity(0, saved_self)
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(pid, saved_redis)


@contextlib.contextmanager
def halt_polling(ns: int | None) -> Iterator[int | None]:
    """The guest kernel's idle polling set to ``ns`` for the block (None: left alone), restored
    after; yields the value in force (None: no ``haltpoll`` cpuidle driver here).

    On a virtual machine with the ``haltpoll`` driver, a vCPU with nothing to run polls up to
    ``guest_halt_poll_ns`` before it halts; a halted vCPU is woken by the host, which costs a
    round trip to Redis ~25 µs here (docs/benchmarks.md, "The VM's idle vCPUs"). The kernel's
    default is 200,000; this machine ships 0. Writing it needs root.
    """
    from features.online.redis_store import HALT_POLL as KNOB

    HALT_POLL = Path(KNOB)
    if not HALT_POLL.exists():
        if ns is not None:
            raise SystemExit(f"--guest-halt-poll-ns: {HALT_POLL} does not exist (no haltpoll "
                             f"cpuidle driver on this machine)")
        yield None
        return
    saved = int(HALT_POLL.read_text())
    if ns is None or ns == saved:
        yield saved
        return
    try:
        HALT_POLL.write_text(str(ns))
    except OSError as e:
        raise SystemExit(f"--guest-halt-poll-ns: cannot write {HALT_POLL}: {e} (needs root)"
                         ) from None
    try:
        yield ns
    finally:
        HALT_POLL.write_text(str(saved))


def summarize(lat_ns: Sequence[int], seconds: float, entities_per_op: int = 1) -> dict[str, Any]:
    """p50/p99/max/mean in ms (nearest-rank percentiles), calls/s and entities/s."""
    if not lat_ns:
        return {"n": 0, "seconds": seconds, "p50_ms": math.nan, "p99_ms": math.nan,
                "max_ms": math.nan, "mean_ms": math.nan, "ops_per_s": 0.0,
                "entities_per_s": 0.0}
    s = sorted(lat_ns)
    n = len(s)

    def pct(p: float) -> float:
        return s[min(n - 1, max(0, math.ceil(p / 100 * n) - 1))] / 1e6

    ops = n / seconds if seconds > 0 else math.nan
    return {"n": n, "seconds": seconds, "p50_ms": pct(50), "p99_ms": pct(99),
            "max_ms": s[-1] / 1e6, "mean_ms": sum(s) / n / 1e6, "ops_per_s": ops,
            "entities_per_s": ops * entities_per_op}


def timed_loop(call: Callable[[Any], Any], payloads: Sequence[Any], iterations: int,
               max_seconds: float, warmup: int | None = None,
               progress: Progress | None = None) -> tuple[list[int], float]:
    """Call ``call(payload)`` at most ``iterations`` times and for at most ``max_seconds``.

    The warm-up (default: min(100, iterations // 10 + 1) calls, at most a tenth of the time
    budget) is not recorded. Returns the latencies in ns and the wall time of the timed loop.
    """
    if not payloads:
        raise ValueError("no payloads")
    m = len(payloads)
    warm = min(100, iterations // 10 + 1) if warmup is None else warmup
    clock = time.perf_counter_ns
    stop = clock() + int(max_seconds * 1e9 / 10)
    for i in range(warm):
        call(payloads[(m - 1 - i) % m])
        if clock() > stop:
            break
    lat: list[int] = []
    began = clock()
    deadline = began + int(max_seconds * 1e9)
    for i in range(iterations):
        t0 = clock()
        call(payloads[i % m])
        t1 = clock()
        lat.append(t1 - t0)
        if progress is not None and i % 50 == 49:
            progress(50)
        if t1 > deadline:
            break
    elapsed = (clock() - began) / 1e9
    if progress is not None:
        progress(len(lat) % 50)
    return lat, elapsed


def _batches(entity_ids: Sequence[int], batch: int, count: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    ids = list(entity_ids)
    if batch > len(ids):
        raise ValueError(f"batch {batch} > {len(ids)} entities")
    return [rng.sample(ids, batch) for _ in range(count)]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def synthetic_table(entities: int, seed: int = 7, join_key: str = "user_id",
                    timestamp_column: str = "event_ts") -> pa.Table:
    """One row per entity: int64 key, a UTC timestamp in the last 30 days, 10 features
    (5 int64, 5 float64), no nulls. Deterministic for a given seed."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    now = datetime.now(UTC).replace(microsecond=0)
    ts_us = int(now.timestamp() * 1e6) - rng.integers(60, 30 * 86_400, entities) * 1_000_000
    cols: dict[str, pa.Array] = {
        join_key: pa.array(np.arange(1, entities + 1, dtype=np.int64) * 7 + 1_000_000),
        timestamp_column: pa.array(ts_us, type=pa.timestamp("us", tz="UTC")),
    }
    for i in range(5):
        cols[f"i{i}"] = pa.array(rng.integers(0, 10 ** (i + 2), entities, dtype=np.int64))
        cols[f"f{i}"] = pa.array(rng.normal(100.0 * (i + 1), 10.0 * (i + 1), entities))
    return pa.table(cols)


# --------------------------------------------------------------------------------------------
# Raw redis-py baselines
# --------------------------------------------------------------------------------------------

def raw_hmget_latency(client: redis.Redis, keys: Sequence[bytes], fields: Sequence[bytes],
                      batch: int = 1, iterations: int = 5000, max_seconds: float = 10.0,
                      seed: int = 0, decode: Callable[[list[Any]], Any] | None = None,
                      progress: Progress | None = None) -> dict[str, Any]:
    """Latency of one HMGET of ``fields`` (batch == 1) or of ``batch`` HMGETs in one
    non-transactional pipeline, on random keys among ``keys``. ``decode`` (optional) is applied
    to each hash's values inside the timed call. Raises if a read hash is missing."""
    flds = list(fields)
    requests = [[keys[i] for i in b] for b in _batches(range(len(keys)), batch,
                                                        min(iterations, 20_000), seed)]

    if batch == 1:
        def call(ks: list[bytes]) -> Any:
            vals = client.hmget(ks[0], flds)
            return decode(vals) if decode is not None else vals
    else:
        def call(ks: list[bytes]) -> Any:
            pipe = client.pipeline(transaction=False)
            for k in ks:
                pipe.hmget(k, flds)
            out = pipe.execute()
            return [decode(v) for v in out] if decode is not None else out

    # The very hashes Feast wrote: every field must be there.
    check = client.hmget(requests[0][0], flds)
    if any(v is None for v in check):
        raise RuntimeError(f"missing fields in hash {requests[0][0]!r}: {check}")
    lat, seconds = timed_loop(call, requests, iterations, max_seconds, progress=progress)
    return summarize(lat, seconds, batch)


def raw_pipelined_hset_rate(client: redis.Redis, rows: Iterable[tuple[bytes, Mapping[bytes, bytes]]],
                            chunk: int = 1000, max_seconds: float = 60.0, limit: int | None = None,
                            cleanup: bool = True, progress: Progress | None = None) -> dict[str, Any]:
    """Rows/s of HSET key mapping, ``chunk`` rows per non-transactional pipeline.

    ``rows`` may be a lazy iterator: producing the next row is timed too (so pass a list for
    pure HSET, a generator that encodes for encode + HSET). Stops after ``limit`` rows or once
    ``max_seconds`` is exceeded (checked per chunk). Deletes the written keys afterwards, untimed,
    unless ``cleanup`` is False."""
    written: list[bytes] = []
    it = iter(rows)
    began = time.perf_counter()
    deadline = began + max_seconds
    n = 0
    while limit is None or n < limit:
        part = list(itertools.islice(it, chunk if limit is None else min(chunk, limit - n)))
        if not part:
            break
        pipe = client.pipeline(transaction=False)
        for key, mapping in part:
            pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]
        pipe.execute()
        n += len(part)
        written.extend(k for k, _ in part)
        if progress is not None:
            progress(len(part))
        if time.perf_counter() > deadline:
            break
    seconds = time.perf_counter() - began
    if cleanup:
        for i in range(0, len(written), 10_000):
            client.unlink(*written[i:i + 10_000])
    return {"rows": n, "seconds": seconds, "rows_per_s": n / seconds if seconds else math.nan}


# --------------------------------------------------------------------------------------------
# Feast
# --------------------------------------------------------------------------------------------

def _feast_bin() -> str:
    exe = Path(sys.executable).parent / "feast"
    return str(exe) if exe.exists() else "feast"


class FeastSide:
    """A Feast feature repo in ``workdir``: one Entity, one FeatureView over a Parquet file,
    online store Redis ``redis_host:redis_port`` db ``redis_db``. Build it with ``setup``."""

    def __init__(self, store: Any, workdir: Path, table: pa.Table, join_key: str,
                 timestamp_column: str, feature_names: list[str], project: str,
                 redis_host: str, redis_port: int, redis_db: int) -> None:
        self.store = store
        self.workdir = workdir
        self.table = table
        self.join_key = join_key
        self.timestamp_column = timestamp_column
        self.feature_names = feature_names
        self.project = project
        self.redis_host, self.redis_port, self.redis_db = redis_host, redis_port, redis_db
        self.feature_refs = [f"{VIEW}:{f}" for f in feature_names]
        self.entity_ids: list[int] = table.column(join_key).to_pylist()
        self._client: redis.Redis | None = None
        self.unix_socket: str | None = None  # set by over_socket

    # -- setup ---------------------------------------------------------------------------

    @classmethod
    def setup(cls, table: pa.Table, join_key: str, timestamp_column: str, workdir: Path,
              redis_host: str = "127.0.0.1", redis_port: int = 6390, redis_db: int = 1,
              project: str = PROJECT) -> FeastSide:
        """Write ``table`` to Parquet, write ``feature_store.yaml``, apply an Entity and a
        FeatureView (ttl 3650 days) with a fresh registry, and delete this project's old
        hashes in ``redis_db``. Imports Feast (~13 s)."""
        import pyarrow as pa
        import pyarrow.parquet as pq
        from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
        from feast.types import Float64, Int64

        workdir = Path(workdir).resolve()
        data = workdir / "data"
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        parquet = data / "bench_user_stats.parquet"
        pq.write_table(table, parquet)
        (workdir / "feature_store.yaml").write_text(
            f"project: {project}\n"
            f"registry: {data / 'registry.db'}\n"
            "provider: local\n"
            "online_store:\n"
            "  type: redis\n"
            f'  connection_string: "{redis_host}:{redis_port},db={redis_db}"\n'
            "offline_store:\n"
            "  type: duckdb\n"
            "entity_key_serialization_version: 3\n"
            "auth:\n"
            "  type: no_auth\n")

        types = {pa.int64(): Int64, pa.float64(): Float64}
        schema = table.schema
        if schema.field(join_key).type != pa.int64():
            raise TypeError(f"join key {join_key} must be int64, got {schema.field(join_key).type}")
        features = [f for f in schema if f.name not in (join_key, timestamp_column)]
        bad = [f"{f.name}: {f.type}" for f in features if f.type not in types]
        if bad:
            raise TypeError(f"feature columns must be int64 or float64: {bad}")

        entity = Entity(name=ENTITY, join_keys=[join_key], value_type=ValueType.INT64)
        source = FileSource(name="bench_user_stats_source", path=str(parquet),
                            timestamp_field=timestamp_column)
        view = FeatureView(
            name=VIEW, entities=[entity], ttl=timedelta(days=3650), online=True, source=source,
            schema=[Field(name=join_key, dtype=Int64)]
            + [Field(name=f.name, dtype=types[f.type]) for f in features])
        store = FeatureStore(repo_path=str(workdir))
        store.apply([entity, source, view])
        side = cls(store, workdir, table, join_key, timestamp_column, [f.name for f in features],
                   project, redis_host, redis_port, redis_db)
        side.clear_online()
        return side

    def over_socket(self, path: str) -> FeastSide:
        """This repo read through a second Feast ``FeatureStore`` whose Redis client connects
        over the Unix socket ``path`` of the same server (Feast's connection string passes
        ``unix_socket_path`` on to ``redis.Redis``): same registry, same hashes. Only for
        reads; the first side owns the data (``clear_online``)."""
        from feast import FeatureStore

        workdir = self.workdir / "unix"
        workdir.mkdir(exist_ok=True)
        tcp = f'connection_string: "{self.redis_host}:{self.redis_port},db={self.redis_db}"'
        text = (self.workdir / "feature_store.yaml").read_text()
        if tcp not in text:
            raise RuntimeError(f"no {tcp!r} in {self.workdir / 'feature_store.yaml'}")
        (workdir / "feature_store.yaml").write_text(
            text.replace(tcp, tcp[:-1] + f',unix_socket_path={path}"'))
        side = FeastSide(FeatureStore(repo_path=str(workdir)), workdir, self.table,
                         self.join_key, self.timestamp_column, self.feature_names, self.project,
                         self.redis_host, self.redis_port, self.redis_db)
        side.unix_socket = path
        return side

    def redis_client(self) -> redis.Redis:
        if self._client is None:
            import redis

            self._client = (redis.Redis(unix_socket_path=self.unix_socket, db=self.redis_db)
                            if self.unix_socket else
                            redis.Redis(host=self.redis_host, port=self.redis_port,
                                        db=self.redis_db))
        return self._client

    def clear_online(self) -> int:
        """Delete this project's hashes (keys ending in the project name) and leftovers of the
        raw HSET copies, in ``redis_db`` only. Returns the number of keys deleted."""
        client = self.redis_client()
        n = 0
        for suffix in (self.project.encode(), RAW_SUFFIX):
            batch: list[bytes] = []
            for key in client.scan_iter(match=b"*" + suffix, count=5000):
                batch.append(key)
                if len(batch) >= 5000:
                    n += client.unlink(*batch)
                    batch.clear()
            if batch:
                n += client.unlink(*batch)
        return n

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- materialize ---------------------------------------------------------------------

    def materialize(self, incremental: bool = False) -> dict[str, Any]:
        """Time Feast's ``materialize`` (or ``materialize_incremental``) of every row, then
        count with pipelined EXISTS how many entity hashes are in Redis."""
        import pyarrow.compute as pc

        ts = self.table.column(self.timestamp_column)
        start = pc.min(ts).as_py() - timedelta(seconds=1)
        end = max(pc.max(ts).as_py() + timedelta(seconds=1), datetime.now(UTC))
        began = time.perf_counter()
        if incremental:
            self.store.materialize_incremental(end_date=end)
        else:
            self.store.materialize(start_date=start, end_date=end)
        seconds = time.perf_counter() - began
        written = self.count_hashes()
        rows = self.table.num_rows
        return {"rows": rows, "written": written, "seconds": seconds,
                "rows_per_s": rows / seconds}

    def count_hashes(self) -> int:
        client = self.redis_client()
        keys = self.redis_keys(self.entity_ids)
        n = 0
        for i in range(0, len(keys), 10_000):
            pipe = client.pipeline(transaction=False)
            for k in keys[i:i + 10_000]:
                pipe.exists(k)
            n += sum(pipe.execute())
        return n

    # -- Feast's Redis layout ------------------------------------------------------------

    def redis_keys(self, entity_ids: Iterable[int]) -> list[bytes]:
        """Feast's Redis key of each entity (its own serializer), in order."""
        from feast.infra.online_stores.helpers import _redis_key
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        version = self.store.config.entity_key_serialization_version
        return [_redis_key(self.project, EntityKey(join_keys=[self.join_key],
                                                   entity_values=[Value(int64_val=int(e))]),
                           entity_key_serialization_version=version)
                for e in entity_ids]

    def redis_fields(self, with_ts: bool = False) -> list[bytes]:
        """The hash fields of the 10 features (mmh3 of ``view:feature``), optionally ``_ts``."""
        from feast.infra.online_stores.helpers import _mmh3

        fields = [_mmh3(f"{VIEW}:{f}") for f in self.feature_names]
        return [*fields, f"_ts:{VIEW}".encode()] if with_ts else fields

    @staticmethod
    def decode_values(values: list[bytes | None]) -> list[Any]:
        """Bytes of serialized ``feast.types.Value`` → Python values (what a reader must do)."""
        from feast.protos.feast.types.Value_pb2 import Value

        out: list[Any] = []
        for raw in values:
            if raw is None:
                out.append(None)
                continue
            v = Value.FromString(raw)
            kind = v.WhichOneof("val")
            out.append(getattr(v, kind) if kind else None)
        return out

    def copy_rows(self, entity_ids: Sequence[int] | None = None
                  ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """The exact hashes Feast stored (pipelined HGETALL), under keys whose project suffix
        is replaced by ``RAW_SUFFIX``, for a pure pipelined HSET baseline."""
        client = self.redis_client()
        keys = self.redis_keys(self.entity_ids if entity_ids is None else entity_ids)
        cut = len(self.project.encode())
        rows: list[tuple[bytes, dict[bytes, bytes]]] = []
        for i in range(0, len(keys), 10_000):
            pipe = client.pipeline(transaction=False)
            part = keys[i:i + 10_000]
            for k in part:
                pipe.hgetall(k)
            for k, h in zip(part, pipe.execute(), strict=True):
                if not h:
                    raise RuntimeError(f"Feast hash {k!r} is missing")
                rows.append((k[:-cut] + RAW_SUFFIX, h))
        return rows

    def encode_rows(self) -> Iterator[tuple[bytes, dict[bytes, bytes]]]:
        """Lazily build, from the Arrow table, the same hashes Feast writes (key, mmh3 fields,
        serialized ``Value`` protobufs, ``_ts`` Timestamp), keyed with ``RAW_SUFFIX``."""
        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value
        from google.protobuf.timestamp_pb2 import Timestamp

        version = self.store.config.entity_key_serialization_version
        fields = self.redis_fields()
        ts_field = f"_ts:{VIEW}".encode()
        import pyarrow as pa

        kinds = ["int64_val" if pa.types.is_int64(self.table.schema.field(f).type)
                 else "double_val" for f in self.feature_names]
        for batch in self.table.to_batches(max_chunksize=10_000):
            ids = batch.column(self.join_key).to_pylist()
            tss = batch.column(self.timestamp_column).to_pylist()
            cols = [batch.column(f).to_pylist() for f in self.feature_names]
            for r, e in enumerate(ids):
                key = serialize_entity_key(
                    EntityKey(join_keys=[self.join_key], entity_values=[Value(int64_val=e)]),
                    entity_key_serialization_version=version) + RAW_SUFFIX
                ts = Timestamp()
                ts.FromDatetime(tss[r])
                mapping = {ts_field: ts.SerializeToString()}
                for fld, kind, col in zip(fields, kinds, cols, strict=True):
                    mapping[fld] = Value(**{kind: col[r]}).SerializeToString()
                yield key, mapping

    # -- reads ---------------------------------------------------------------------------

    def verify(self, sample: int = 200, seed: int = 1) -> int:
        """``get_online_features`` for ``sample`` random entities must return exactly the
        table's values. Returns the number of values compared; raises on any difference."""
        rng = random.Random(seed)
        idx = rng.sample(range(self.table.num_rows), min(sample, self.table.num_rows))
        rows = self.table.take(idx).to_pylist()
        got = self.store.get_online_features(
            features=self.feature_refs,
            entity_rows=[{self.join_key: r[self.join_key]} for r in rows]).to_dict()
        n = 0
        for i, r in enumerate(rows):
            for f in self.feature_names:
                if got[f][i] != r[f]:
                    raise AssertionError(f"{self.join_key}={r[self.join_key]} {f}: "
                                         f"online {got[f][i]!r} != table {r[f]!r}")
                n += 1
        return n

    def online_latency(self, entity_ids: Sequence[int], batch: int = 1, iterations: int = 2000,
                       max_seconds: float = 20.0, seed: int = 0,
                       progress: Progress | None = None) -> dict[str, Any]:
        """Latency of ``store.get_online_features(features=<all>, entity_rows=<batch rows>)
        .to_dict()`` in this process, random entities per call."""
        requests = [[{self.join_key: e} for e in b]
                    for b in _batches(entity_ids, batch, min(iterations, 20_000), seed)]
        refs = self.feature_refs
        store = self.store

        def call(rows: list[dict[str, int]]) -> dict[str, Any]:
            return store.get_online_features(features=refs, entity_rows=rows).to_dict()

        first = call(requests[0])
        # A null can be a stored null (an empty window's mean); a row with every feature null
        # means Feast found no hash for it.
        missing = [i for i in range(len(requests[0]))
                   if all(first[f][i] is None for f in self.feature_names)]
        if missing:
            raise RuntimeError(f"get_online_features found nothing for {len(missing)} of "
                               f"{len(requests[0])} entities, e.g. {requests[0][missing[0]]}")
        lat, seconds = timed_loop(call, requests, iterations, max_seconds, progress=progress)
        return summarize(lat, seconds, batch)

    def serve(self, port: int | None = None, workers: int = 1, max_requests: int = 0,
              start_timeout: float = 180.0) -> FeastServer:
        """Start ``feast serve`` on 127.0.0.1 (a free port unless given); use as a context
        manager, which always stops it."""
        server = FeastServer(self, port or free_port(), workers, max_requests)
        server.start(start_timeout)
        return server


class ServerProcess:
    """A server subprocess in its own process group, on 127.0.0.1; ``start`` waits for
    ``GET /health``, ``stop`` (also at exit, and leaving a ``with``) always ends it."""

    label = "server"
    healthy: tuple[int, ...] = (200,)
    poll_s = 0.25

    url: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None

    @property
    def command(self) -> list[str]:
        raise NotImplementedError

    def spawn_options(self) -> dict[str, Any]:
        """Extra ``Popen`` arguments (cwd, env)."""
        return {}

    def start(self, timeout: float) -> None:
        import httpx

        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         **self.spawn_options())
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self.proc.returncode}: "
                                   f"{self.log_path.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=2.0).status_code in self.healthy:
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.label} not healthy after {timeout} s; "
                                   f"log: {self.log_path}")
            time.sleep(self.poll_s)

    def stop(self) -> None:
        """SIGTERM the server's process group (master and workers), SIGKILL after 15 s."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        except ProcessLookupError:
            pass

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FeastServer(ServerProcess):
    """A ``feast serve`` subprocess and an HTTP load generator."""

    label = "feast serve"

    def __init__(self, side: FeastSide, port: int, workers: int, max_requests: int) -> None:
        self.side = side
        self.port = port
        self.workers = workers
        self.max_requests = max_requests
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = side.workdir / "feast-serve.log"
        self.proc = None

    @property
    def command(self) -> list[str]:
        return [_feast_bin(), "-c", str(self.side.workdir), "serve", "--host", "127.0.0.1",
                "--port", str(self.port), "--workers", str(self.workers),
                "--max-requests", str(self.max_requests), "--no-access-log"]

    def spawn_options(self) -> dict[str, Any]:
        return {"cwd": self.side.workdir}

    def __enter__(self) -> FeastServer:
        return self

    def http_latency(self, entity_ids: Sequence[int], iterations: int = 2000,
                     max_seconds: float = 20.0, concurrency: int = 1, batch: int = 1,
                     seed: int = 0, path: str = "/get-online-features",
                     progress: Progress | None = None, client: str = "httpx") -> dict[str, Any]:
        """POST ``path`` with ``batch`` entities × all features, from ``concurrency`` threads
        (one keep-alive client each) sharing ``iterations`` requests and one deadline.
        Latency is per request; ``ops_per_s`` is requests over the wall time of the load.
        ``path="/health"`` (a GET) measures the HTTP stack alone. The loop is
        ``bench/http_client.py``'s, the one that measures ``tessera serve`` too."""
        try:
            from http_client import all_present, http_latency
        except ImportError:  # imported as bench.feast_baseline
            from bench.http_client import all_present, http_latency

        return http_latency(self.url, self.side.feature_refs, self.side.join_key, entity_ids,
                            iterations=iterations, max_seconds=max_seconds,
                            concurrency=concurrency, batch=batch, seed=seed, path=path,
                            progress=progress, check=all_present(), client=client)


# --------------------------------------------------------------------------------------------
# Standalone run
# --------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=2000,
                        help="calls per 1-entity latency measure (batches: a quarter)")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="per measure")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--serve-workers", type=int, default=1)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--redis-host", default="127.0.0.1")
    parser.add_argument("--redis-port", type=int, default=6390)
    parser.add_argument("--redis-db", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=WORK)
    parser.add_argument("--incremental", action="store_true",
                        help="materialize_incremental instead of materialize")
    parser.add_argument("--keep", action="store_true", help="leave Feast's hashes in Redis")
    args = parser.parse_args()

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 150)
    it, its, bt, sec = args.iterations, args.iterations * 5 // 2, args.batch, args.max_seconds
    results: dict[str, dict[str, Any]] = {}

    with console.status("generating the table and importing Feast (~13 s)"):
        table = synthetic_table(args.entities, args.seed)
        t0 = time.perf_counter()
        side = FeastSide.setup(table, "user_id", "event_ts", args.workdir, args.redis_host,
                               args.redis_port, args.redis_db)
    console.print(f"setup (import feast + apply) {time.perf_counter() - t0:.1f} s; "
                  f"repo {args.workdir}")
    try:
        console.print("materializing (Feast's own progress bar follows)")
        mat = side.materialize(incremental=args.incremental)
        if mat["written"] != mat["rows"]:
            raise SystemExit(f"materialize wrote {mat['written']} of {mat['rows']} hashes")
        console.print(f"verified {side.verify():,} online values (200 entities) against the table")
        ids = side.entity_ids
        client = side.redis_client()
        keys, fields = side.redis_keys(ids), side.redis_fields()
        copies = side.copy_rows()

        cols = (TextColumn("{task.description:44s}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn())
        with Progress(*cols, console=console) as bar:
            def run(name: str, total: int, fn: Callable[..., dict[str, Any]], **kw: Any) -> None:
                task = bar.add_task(name, total=total)
                results[name] = fn(progress=lambda k: bar.advance(task, k), **kw)
                bar.update(task, completed=total)

            run("feast get_online_features 1", it, side.online_latency,
                entity_ids=ids, batch=1, iterations=it, max_seconds=sec)
            run(f"feast get_online_features {bt}", it // 4, side.online_latency,
                entity_ids=ids, batch=bt, iterations=it // 4, max_seconds=sec)
            run("raw HMGET 1", its, raw_hmget_latency, client=client, keys=keys,
                fields=fields, batch=1, iterations=its, max_seconds=sec)
            run("raw HMGET 1 + decode", its, raw_hmget_latency, client=client, keys=keys,
                fields=fields, batch=1, iterations=its, max_seconds=sec,
                decode=side.decode_values)
            run(f"raw pipelined HMGET {bt}", it // 4, raw_hmget_latency, client=client,
                keys=keys, fields=fields, batch=bt, iterations=it // 4, max_seconds=sec)
            run(f"raw pipelined HMGET {bt} + decode", it // 4, raw_hmget_latency,
                client=client, keys=keys, fields=fields, batch=bt, iterations=it // 4,
                max_seconds=sec, decode=side.decode_values)
            run("raw pipelined HSET (Feast's bytes)", len(copies), raw_pipelined_hset_rate,
                client=client, rows=copies, max_seconds=sec * 3)
            run("raw encode + pipelined HSET", table.num_rows, raw_pipelined_hset_rate,
                client=client, rows=side.encode_rows(), max_seconds=sec * 3)
            task = bar.add_task("starting feast serve", total=None)
            with side.serve(workers=args.serve_workers) as server:
                bar.update(task, description=f"feast serve on :{server.port}", total=1,
                           completed=1)
                run("feast serve GET /health (HTTP floor)", it, server.http_latency,
                    entity_ids=ids, iterations=it, max_seconds=sec, path="/health")
                run("feast serve HTTP 1", it, server.http_latency, entity_ids=ids,
                    iterations=it, max_seconds=sec)
                c = args.concurrency
                run(f"feast serve HTTP 1, {c} clients", its, server.http_latency,
                    entity_ids=ids, iterations=its, max_seconds=sec, concurrency=c)
                run(f"feast serve HTTP {bt}", it // 4, server.http_latency, entity_ids=ids,
                    iterations=it // 4, max_seconds=sec, batch=bt)
                serve_cmd = " ".join(server.command)
    finally:
        if not args.keep:
            side.clear_online()
        side.close()

    nf = len(side.feature_names)
    lat = Table(title=f"Online reads, {args.entities:,} entities × {nf} features "
                      f"(Redis {args.redis_host}:{args.redis_port} db {args.redis_db})")
    for col in ("measure", "n", "p50 ms", "p99 ms", "max ms", "calls/s", "entities/s",
                "p50 vs raw"):
        lat.add_column(col, justify="left" if col == "measure" else "right")
    one, many = results["raw HMGET 1"]["p50_ms"], results[f"raw pipelined HMGET {bt}"]["p50_ms"]
    base = {"feast get_online_features 1": one, f"feast get_online_features {bt}": many,
            "raw HMGET 1 + decode": one, f"raw pipelined HMGET {bt} + decode": many,
            "feast serve HTTP 1": one,  # none for the concurrent row: its p50 is queueing
            f"feast serve HTTP {bt}": many}
    for name, r in results.items():
        if "p50_ms" not in r:
            continue
        ratio = f"{r['p50_ms'] / base[name]:.1f}×" if name in base else ""
        lat.add_row(name, f"{r['n']:,}", f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}",
                    f"{r['max_ms']:.2f}", f"{r['ops_per_s']:,.0f}", f"{r['entities_per_s']:,.0f}",
                    ratio)
    console.print(lat)

    wr = Table(title="Writes")
    for col in ("measure", "rows", "seconds", "rows/s", "vs Feast"):
        wr.add_column(col, justify="left" if col == "measure" else "right")
    how = "materialize_incremental" if args.incremental else "materialize"
    wr.add_row(f"feast {how} (duckdb → redis)", f"{mat['rows']:,}", f"{mat['seconds']:.2f}",
               f"{mat['rows_per_s']:,.0f}", "1.0×")
    for name in ("raw pipelined HSET (Feast's bytes)", "raw encode + pipelined HSET"):
        r = results[name]
        wr.add_row(name, f"{r['rows']:,}", f"{r['seconds']:.2f}", f"{r['rows_per_s']:,.0f}",
                   f"{r['rows_per_s'] / mat['rows_per_s']:.1f}×")
    console.print(wr)
    console.print(f"feast serve: {serve_cmd}")


if __name__ == "__main__":
    main()
