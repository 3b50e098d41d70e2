"""Run a view on an engine over rows written to Parquet, then read it back at instants.

Shared by the parity tests: the rows go to Parquet exactly as given (split over several files in
path order when asked, to exercise source order across files), the engine writes tiles through
the real offline store, and :func:`features.historical.get_historical_features` reads them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from features.config import OfflineConfig, RepoConfig
from features.definitions import FeatureView, Source
from features.historical import get_historical_features
from pipelines.batch import run_view

ARROW_TYPES = {"int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_(),
               "string": pa.string()}


def write_source(rows: Sequence[Mapping[str, Any]], schema: Mapping[str, str], folder: Path,
                 files: int = 1, ts_type: pa.DataType | None = None) -> Path:
    """Write rows, in order, as ``files`` Parquet files whose path order is the row order."""
    folder.mkdir(parents=True, exist_ok=True)
    fields = [pa.field(n, ts_type or pa.timestamp("us", tz="UTC")) if t == "timestamp"
              else pa.field(n, ARROW_TYPES[t]) for n, t in schema.items()]
    arrow_schema = pa.schema(fields)
    chunks = max(1, files)
    size = math.ceil(len(rows) / chunks) if rows else 0
    for i in range(chunks):
        part = rows[i * size:(i + 1) * size]
        cols = {}
        for f in fields:
            values = [r.get(f.name) for r in part]
            if pa.types.is_timestamp(f.type) and f.type.tz is None:
                values = [None if v is None else v.astimezone(UTC).replace(tzinfo=None)
                          for v in values]
            cols[f.name] = pa.array(values, f.type)
        pq.write_table(pa.table(cols, schema=arrow_schema), folder / f"part-{i:04d}.parquet")
    return folder


READ_AHEAD_DAYS = 60  # the tests read up to weeks after the last event: those days are empty


def day_span(rows: Sequence[Mapping[str, Any]], ts: str) -> tuple[date, date]:
    """The days of the rows, plus the days after them the tests read (truly without events)."""
    times = [r[ts] for r in rows if r.get(ts) is not None]
    lo = min(times).astimezone(UTC).date() if times else date(2026, 1, 1)
    hi = max(times).astimezone(UTC).date() if times else date(2026, 1, 1)
    return lo, hi + timedelta(days=1 + READ_AHEAD_DAYS)


def materialize(engine: str, make_view: Callable[[Source], FeatureView],
                source: Source, rows: Sequence[Mapping[str, Any]], tmp: Path, *,
                files: int = 1, ts_type: pa.DataType | None = None,
                span: tuple[date, date] | None = None) -> tuple[FeatureView, RepoConfig]:
    folder = write_source(rows, source.schema, tmp / "source", files=files, ts_type=ts_type)
    src = Source(name=source.name, path=str(folder), schema=source.schema,
                 timestamp_field=source.timestamp_field)
    view = make_view(src)
    cfg = RepoConfig(project="t", offline=OfflineConfig(path=tmp / "offline"), root=tmp)
    start, end = span or day_span(rows, source.timestamp_field)
    run_view(cfg, view, engine, start, end, allow_empty_days=True)  # type: ignore[arg-type]
    return view, cfg


def read_back(view: FeatureView, cfg: RepoConfig,
              requests: Sequence[tuple[tuple[Any, ...], datetime]]) -> list[dict[str, Any]]:
    keys = view.join_keys
    table = pa.table({
        **{k: pa.array([r[0][i] for r in requests], pa.int64()) for i, k in enumerate(keys)},
        "event_ts": pa.array([r[1] for r in requests], pa.timestamp("us", tz="UTC")),
    })
    out = get_historical_features([view], table, cfg.resolve(cfg.offline.path))
    rows = out.to_pylist()
    return [{f.name: row[f.name] for f in view.features} for row in rows]


def same(a: Any, b: Any) -> bool:
    """Identical, except floats within a relative 1e-9 (summation order differs by engine)."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
    return a == b and type(a) is type(b)


def mismatches(got: Sequence[Mapping[str, Any]], want: Sequence[Mapping[str, Any]],
               requests: Sequence[Any]) -> list[str]:
    out = []
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        for name in w:
            if not same(g[name], w[name]):
                out.append(f"request {requests[i]!r}: {name}: engine {g[name]!r} != "
                           f"reference {w[name]!r}")
    return out
