"""Feast's side of the online benchmark: a Feast feature repo on the project's Redis
(``FeastSide``: setup, materialize, Feast's Redis layout, reads, ``feast serve``) and the
synthetic table it is built from.

The choices it makes (Feast's Redis defaults, ``feast serve``'s options, the raw copies of its
hashes) are stated in ``bench/feast_baseline.py``, which runs it standalone.
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.servers import FeastServer
from bench.timing import Progress, _batches, free_port, summarize, timed_loop

if TYPE_CHECKING:
    import pyarrow as pa
    import redis

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".tessera" / "bench" / "feast"
PROJECT = "tessera_bench_feast"
VIEW = "bench_user_stats"
ENTITY = "bench_user"
RAW_SUFFIX = b"tessera_bench_rawhset"  # replaces the project name in raw HSET copies


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
# Feast
# --------------------------------------------------------------------------------------------

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
