"""The Polars engine: a view's rules over a batch source, into tiles of partial aggregates.

Steps, each shared in meaning with the Spark engine (:mod:`pipelines.engine_spark`):

1. read the source files in path order, check their schema, normalise times to UTC µs, give
   each row its source order ``seq = file rank << 32 | row``;
2. apply the view's derived columns and row filter (a null filter drops the row), drop rows
   with a null entity key or event time (counted as rejected), compute each aggregation input;
3. group by entity key and tile — once per tile size, and once per instant (the exact layer) —
   into the partial columns :func:`features.tiles.layout` defines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from features.compile import compile_expr
from features.definitions import FeatureView
from features.tiles import EXACT_TILE_US, Layout, layout, partial_dtype
from features.windows import US_PER_UNIT
from pipelines.errors import SourceSchemaError
from pipelines.sources import SEQ_ROW_BITS

if TYPE_CHECKING:
    import polars as pl

DAY_US = US_PER_UNIT["d"]


@dataclass(frozen=True)
class Projected:
    """Events after the rules, ready to tile; counts for the run's summary."""

    frame: pl.DataFrame  # keys, __ts (µs), __seq, x0..xn
    rows_read: int
    rows_rejected: int
    rows_filtered: int


def _pl_type(dtype: str) -> pl.DataType:
    import polars as pl

    return {"int64": pl.Int64(), "float64": pl.Float64(), "bool": pl.Boolean(),
            "string": pl.String(), "timestamp": pl.Datetime("us", "UTC")}[dtype]


def _check_and_cast(view: FeatureView, file: Path, lf: pl.LazyFrame) -> pl.LazyFrame:
    """Fail on a missing or wrongly typed column (naming the file); cast safe widenings."""
    import polars as pl

    actual = lf.collect_schema()
    casts = []
    for name, want in view.source.schema.items():
        if name not in actual:
            raise SourceSchemaError(
                f"source {view.source.name!r}: {file}: column {name!r} is missing "
                f"(the file has: {', '.join(actual.names())})")
        got = actual[name]
        ok = {
            "int64": got.is_integer(),
            "float64": got.is_float() or got.is_integer(),
            "bool": got == pl.Boolean,
            "string": got in (pl.String, pl.Categorical, pl.Enum) or isinstance(got, pl.Categorical),
            "timestamp": isinstance(got, pl.Datetime) or got == pl.Date,
        }[want]
        if not ok:
            raise SourceSchemaError(
                f"source {view.source.name!r}: {file}: column {name!r} is {got}, expected {want}")
        if want == "timestamp" and isinstance(got, pl.Datetime):
            col = pl.col(name)
            # A naive timestamp is read as UTC; an aware one is converted to UTC.
            col = (col.dt.replace_time_zone("UTC") if got.time_zone is None
                   else col.dt.convert_time_zone("UTC"))
            casts.append(col.dt.cast_time_unit("us").alias(name))
        else:
            casts.append(pl.col(name).cast(_pl_type(want)))
    return lf.select(casts)


def read_events(view: FeatureView, files: Sequence[Path], start_us: int | None,
                end_us: int | None) -> pl.LazyFrame:
    """Source rows with ``start_us <= event time < end_us`` plus rows whose time is null."""
    import polars as pl

    ts = view.source.timestamp_field
    frames = []
    for rank, file in enumerate(files):
        lf = _check_and_cast(view, file, pl.scan_parquet(file))
        lf = lf.with_row_index("__row").with_columns(
            (pl.lit(rank << SEQ_ROW_BITS, pl.Int64) + pl.col("__row").cast(pl.Int64))
            .alias("__seq")).drop("__row")
        in_range = pl.lit(True)
        if start_us is not None:
            in_range &= pl.col(ts).dt.epoch("us") >= start_us
        if end_us is not None:
            in_range &= pl.col(ts).dt.epoch("us") < end_us
        frames.append(lf.filter(in_range | pl.col(ts).is_null()))
    return pl.concat(frames, how="vertical")


def project(view: FeatureView, events: pl.LazyFrame) -> Projected:
    """Apply derived columns, the row filter and the inputs; reject null keys and times."""
    import polars as pl

    lay = layout(view)
    schema = dict(view.source.schema)
    lf = events
    for name, node in view.derived:
        lf = lf.with_columns(compile_expr(node, "polars", schema).alias(name))
        schema[name] = view.row_schema()[name]
    ts = view.source.timestamp_field
    valid = pl.col(ts).is_not_null()
    for key in view.join_keys:
        valid &= pl.col(key).is_not_null()
    keep = valid if view.filter is None else valid & compile_expr(
        view.filter, "polars", schema).fill_null(False)
    lf = lf.with_columns(valid.alias("__valid"), keep.alias("__keep"))
    counts = lf.select(pl.len().alias("read"), (~pl.col("__valid")).sum().alias("rejected"),
                       (pl.col("__valid") & ~pl.col("__keep")).sum().alias("filtered"))
    out = lf.filter(pl.col("__keep")).select(
        *view.join_keys,
        pl.col(ts).dt.epoch("us").alias("__ts"),
        "__seq",
        *[compile_expr(inp.node, "polars", schema).cast(_pl_type(inp.dtype))
          .alias(inp.value_column) for inp in lay.inputs],
    ).sort(["__ts", "__seq"])
    frame, stats = pl.collect_all([out, counts])
    return Projected(frame, int(stats["read"][0]), int(stats["rejected"][0]),
                     int(stats["filtered"][0]))


def partial_aggs(lay: Layout) -> list[pl.Expr]:
    """Polars aggregations that build every partial column from a group of sorted events."""
    import polars as pl

    aggs = [pl.len().cast(pl.Int64).alias("n")]
    for inp in lay.inputs:
        x = pl.col(inp.value_column)
        has = x.is_not_null()
        by_kind = {
            "c": x.count(),
            "s": x.sum(),
            "q": (x.var(ddof=0) * x.count()).fill_null(0.0),
            "lo": x.min(),
            "hi": x.max(),
            # Rows arrive sorted by (event time, seq), and group_by keeps that order within a
            # group, so the last non-null row is the latest one.
            "l": x.drop_nulls().last(),
            "lt": pl.col("__ts").filter(has).last(),
            "ls": pl.col("__seq").filter(has).last(),
        }
        for kind in inp.kinds:
            aggs.append(by_kind[kind].cast(_pl_type(partial_dtype(kind, inp.dtype)))
                        .alias(inp.column(kind)))
    return aggs


def tile_frames(view: FeatureView, projected: pl.DataFrame) -> dict[int, pl.DataFrame]:
    """Partial rows per tile size (and the exact layer, ``EXACT_TILE_US``), keyed by size.

    Each row: join keys, ``tile`` (index), ``day`` (UTC date of its events), partials. A tile
    that straddles midnight gives one row per day, so runs over whole days never overlap.
    """
    import polars as pl

    lay = layout(view)
    aggs = partial_aggs(lay)
    lazy = projected.lazy().with_columns(
        (pl.col("__ts") // DAY_US).cast(pl.Int32).cast(pl.Date).alias("day"))
    sizes = (EXACT_TILE_US, *view.tile_sizes())
    plans = [
        lazy.with_columns((pl.col("__ts") // size).alias("tile"))
        .group_by([*view.join_keys, "tile", "day"]).agg(aggs)
        .sort([*view.join_keys, "tile", "day"])
        for size in sizes
    ]
    return dict(zip(sizes, pl.collect_all(plans), strict=True))


def write_tiles(frames: dict[int, pl.DataFrame], out_dir: Path) -> int:
    """Write ``out_dir/tile_us=<s>/day=<d>/part-0.parquet``; returns rows written."""
    written = 0
    for size, frame in frames.items():
        for (day,), part in frame.partition_by("day", as_dict=True).items():
            folder = out_dir / f"tile_us={size}" / f"day={day.isoformat()}"
            folder.mkdir(parents=True, exist_ok=True)
            part.drop("day").write_parquet(folder / "part-0.parquet", statistics=True)
            written += part.height
    return written
