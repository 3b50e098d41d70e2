"""The Polars engine: a view's rules over a batch source, into tiles of partial aggregates.

Steps, each shared in meaning with the Spark engine (:mod:`pipelines.engine_spark`):

1. read the source files in path order, check their schema, normalise times to UTC µs, give
   each row its source order ``seq = file rank << 32 | row``;
2. apply the view's derived columns and row filter (a null filter drops the row), drop rows
   with a null entity key or event time or failing an error-level row expectation of the
   source (counted as rejected), compute each aggregation input;
3. group by entity key and tile — once per tile size, and once per instant (the exact layer) —
   into the partial columns :func:`features.tiles.layout` defines.

Partials are grouped by the UTC day of their events, so a run is processed in chunks of whole
days (:func:`plan_chunks`) and each chunk's output is exactly what one pass over the whole range
would write for those days. Within a chunk, each (day, layer) is computed and written on its own
(:func:`tile_frames`, :func:`write_tiles`), so memory is bounded by a chunk's events, not by the
run nor by the number of layers, and progress is reported per day.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import date, timedelta
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from features.compile import compile_expr
from features.definitions import FeatureView
from features.errors import SUM_HINT, SumOverflowError
from features.tiles import EXACT_TILE_US, Layout, layout, partial_dtype
from features.windows import US_PER_UNIT
from pipelines.counts import Counts
from pipelines.errors import SourceSchemaError
from pipelines.sources import SEQ_ROW_BITS, SourceFile, find_unreadable, unreadable

if TYPE_CHECKING:
    import polars as pl

DAY_US = US_PER_UNIT["d"]
CHUNK_ROWS = 4_000_000  # events per chunk, estimated from the footers


def _pl_type(dtype: str) -> pl.DataType:
    import polars as pl

    return {"int64": pl.Int64(), "float64": pl.Float64(), "bool": pl.Boolean(),
            "string": pl.String(), "timestamp": pl.Datetime("us", "UTC")}[dtype]


def _check_and_cast(view: FeatureView, file: Path, lf: pl.LazyFrame) -> pl.LazyFrame:
    """Fail on a missing or wrongly typed column (naming the file); cast safe widenings."""
    import polars as pl

    try:
        actual = lf.collect_schema()
    except Exception as e:  # polars raises ComputeError/OSError on a file it cannot parse
        raise unreadable(view.source, file, e) from None
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


def read_events(view: FeatureView, files: Sequence[SourceFile], start_us: int | None,
                end_us: int | None, with_null_times: Sequence[SourceFile] = ()) -> pl.LazyFrame:
    """Source rows with ``start_us <= event time < end_us``, plus the rows whose time is null
    in the files of ``with_null_times`` (each file's null times are counted once per run)."""
    import polars as pl

    ts = view.source.timestamp_field
    frames = []
    null_ranks = {f.rank for f in with_null_times}
    for f in files:
        lf = _check_and_cast(view, f.path, pl.scan_parquet(f.path))
        lf = lf.with_row_index("__row").with_columns(
            (pl.lit(f.rank << SEQ_ROW_BITS, pl.Int64) + pl.col("__row").cast(pl.Int64))
            .alias("__seq")).drop("__row")
        in_range = pl.lit(True)
        if start_us is not None:
            in_range &= pl.col(ts).dt.epoch("us") >= start_us
        if end_us is not None:
            in_range &= pl.col(ts).dt.epoch("us") < end_us
        if f.rank in null_ranks:
            in_range |= pl.col(ts).is_null()
        frames.append(lf.filter(in_range))
    return pl.concat(frames, how="vertical")


def project(view: FeatureView, events: pl.LazyFrame) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """(projected events sorted by time and seq, per-day counts) — lazily.

    Derived columns, the row filter and the inputs are applied; rows with a null key or time are
    rejected. The counts frame has one row per event day (null: rows with a null time) with
    ``read``, ``rejected``, ``filtered`` and ``kept``.
    """
    import polars as pl

    derived, valid, keep, inputs = _projection(view)
    lf = events
    for step in derived:
        lf = lf.with_columns(step)
    ts = view.source.timestamp_field
    lf = lf.with_columns(valid.alias("__valid"), keep.alias("__keep"),
                         pl.col(ts).dt.date().alias("__day"))
    counts = lf.group_by("__day").agg(
        pl.len().alias("read"), (~pl.col("__valid")).sum().alias("rejected"),
        (pl.col("__valid") & ~pl.col("__keep")).sum().alias("filtered"),
        pl.col("__keep").sum().alias("kept"))
    out = lf.filter(pl.col("__keep")).select(
        *view.join_keys,
        pl.col(ts).dt.epoch("us").alias("__ts"),
        "__seq",
        *inputs,
    ).sort(["__ts", "__seq"])
    return out, counts


@cache
def _projection(view: FeatureView) -> tuple[list[pl.Expr], pl.Expr, pl.Expr, list[pl.Expr]]:
    """A view's rules compiled to Polars once: (derived columns in order, valid, keep, inputs).
    The streaming consumer projects every micro-batch; compiling costs ~3 ms a time."""
    import polars as pl

    lay = layout(view)
    schema = dict(view.source.schema)
    derived = []
    for name, node in view.derived:
        derived.append(compile_expr(node, "polars", schema).alias(name))
        schema[name] = view.row_schema()[name]
    valid = pl.col(view.source.timestamp_field).is_not_null()
    for key in view.join_keys:
        valid &= pl.col(key).is_not_null()
    for check in view.source.row_checks():  # the batch passed its gate: drop the rows that fail
        valid &= compile_expr(check.row_check(), "polars", view.source.schema).fill_null(False)
    keep = valid if view.filter is None else valid & compile_expr(
        view.filter, "polars", schema).fill_null(False)
    inputs = [compile_expr(inp.node, "polars", schema).cast(_pl_type(inp.dtype))
              .alias(inp.value_column) for inp in lay.inputs]
    return derived, valid, keep, inputs


def partial_aggs(lay: Layout) -> list[pl.Expr]:
    """Polars aggregations that build every partial column from a group of sorted events."""
    import polars as pl

    aggs = [pl.len().cast(pl.Int64).alias("n")]
    for inp in lay.inputs:
        x = pl.col(inp.value_column)
        has = x.is_not_null()
        by_kind = {
            "c": x.count(),
            # integers summed in 128 bits: the cast to int64 below then fails (tile_frames
            # says which view) instead of Polars' wrapped int64 sum
            "s": x.cast(pl.Int128).sum() if inp.dtype in ("int64", "bool") else x.sum(),
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


def day_slices(projected: pl.DataFrame) -> Iterator[tuple[date, pl.DataFrame]]:
    """Each UTC day's events of a projected frame sorted by time, as zero-copy slices."""
    if projected.height == 0:
        return
    import polars as pl

    ts = projected["__ts"]
    first, last = ts[0] // DAY_US, ts[-1] // DAY_US
    midnights = pl.Series([d * DAY_US for d in range(first, last + 2)], dtype=pl.Int64)
    bounds = ts.search_sorted(midnights, side="left").to_list()
    for k, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        if hi > lo:
            yield date(1970, 1, 1) + timedelta(days=first + k), projected.slice(lo, hi - lo)


def tile_frames(view: FeatureView, projected: pl.DataFrame
                ) -> Iterator[tuple[int, date, pl.DataFrame]]:
    """Partial rows of one (tile size, day) at a time: ``(size, day, frame)``.

    The exact layer has size ``EXACT_TILE_US``. Each row: join keys, ``tile`` (index), partials,
    sorted by keys and tile. A tile that straddles midnight gives one row per day, so runs over
    whole days never overlap.

    ``projected`` is sorted by (event time, seq), so a day is one slice of it. The day's events
    are sorted once by key (stably: within a key they stay in (time, seq) order, which ``last``
    needs), after which every group of every layer is a run of consecutive rows: a group number
    that grows at each change of key or tile is a sorted column, and Polars aggregates sorted
    groups as slices instead of hashing. Frames are produced lazily, one at a time, so memory
    holds one day's events and one layer of it on top of the projected chunk.
    """
    import polars as pl

    keys = list(view.join_keys)
    aggs = partial_aggs(layout(view))
    sizes = (EXACT_TILE_US, *view.tile_sizes())
    for day, events in day_slices(projected):
        by_key = events.sort(keys, maintain_order=True)
        key_change = pl.lit(False)
        for k in keys:
            key_change |= pl.col(k) != pl.col(k).shift()
        for size in sizes:
            tile = pl.col("__ts") // size
            change = key_change | (tile != tile.shift())
            query = (
                by_key.lazy().with_columns(tile.alias("tile"))
                .with_columns(change.fill_null(True).cum_sum().set_sorted().alias("__group"))
                .group_by("__group", maintain_order=True)
                .agg(*(pl.col(k).first() for k in keys), pl.col("tile").first(), *aggs)
                .drop("__group"))
            try:
                # The in-memory engine, not the streaming one: the streaming engine merges
                # per-thread partial sums in scheduling order, so float sums would change in the
                # last bits from one run to the next. Rerunning a day must give the same bits.
                frame = query.collect(engine="in-memory")
            except pl.exceptions.InvalidOperationError as e:  # an int64 sum that overflowed
                raise SumOverflowError(
                    f"feature view {view.name!r}: a sum of integers leaves int64 in a tile of "
                    f"{day} ({str(e).splitlines()[0]}): {SUM_HINT}") from None
            yield size, day, frame
            del frame


def write_tiles(frames: Iterable[tuple[int, date, pl.DataFrame]], out_dir: Path) -> int:
    """Write each ``(size, day, frame)`` to ``out_dir/tile_us=<size>/day=<day>/part-0.parquet``
    as it comes; returns rows written.

    A frame is written on a thread while the next one is computed (Polars releases the GIL in
    both), and at most one write is pending, so memory holds two frames at most.
    """
    def write(size: int, day: date, frame: pl.DataFrame) -> int:
        folder = out_dir / f"tile_us={size}" / f"day={day.isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        frame.write_parquet(folder / "part-0.parquet", statistics=True)
        return frame.height

    written = 0
    with ThreadPoolExecutor(1, thread_name_prefix="tessera-write") as pool:
        pending: Future[int] | None = None
        try:
            for size, day, frame in frames:
                if pending is not None:
                    written += pending.result()
                pending = pool.submit(write, size, day, frame)
                del frame
        finally:  # on an error, never leave a write running behind the caller's back
            if pending is not None:
                written += pending.result()
    return written


def _midnight(d: date) -> int:
    return (d - date(1970, 1, 1)).days * DAY_US


def plan_chunks(files: Sequence[SourceFile], days: Sequence[date],
                max_rows: int = CHUNK_ROWS) -> list[list[date]]:
    """Consecutive runs of days whose estimated events (from the footers) fit in ``max_rows``.

    A file's rows are spread evenly over the days its time range covers; a file without
    statistics counts fully on every day.
    """
    estimate = dict.fromkeys(days, 0.0)
    for f in files:
        rows = float(f.rows or 0)
        if f.timeless:
            continue
        if f.lo_us is None or f.hi_us is None:
            for d in days:
                estimate[d] += rows
            continue
        first, last = f.lo_us // DAY_US, f.hi_us // DAY_US
        share = rows / (last - first + 1)
        for d in days:
            if first <= (d - date(1970, 1, 1)).days <= last:
                estimate[d] += share
    chunks: list[list[date]] = []
    total = 0.0
    for d in days:
        if chunks and total + estimate[d] <= max_rows and chunks[-1][-1] + timedelta(1) == d:
            chunks[-1].append(d)
            total += estimate[d]
        else:
            chunks.append([d])
            total = estimate[d]
    return chunks


def run(view: FeatureView, files: Sequence[SourceFile], days: Sequence[date], out_dir: Path,
        advance: Callable[[int], None] = lambda n: None, max_rows: int | None = None) -> Counts:
    """Tile ``days`` of a view's events into ``out_dir``, chunk by chunk; returns the counts."""
    import polars as pl

    max_rows = max_rows or CHUNK_ROWS
    counts = Counts()
    nulls_counted: set[int] = set()  # each opened file's null-time rows count once per run
    for chunk in plan_chunks(files, days, max_rows):
        lo, hi = _midnight(chunk[0]), _midnight(chunk[-1] + timedelta(days=1))
        opened = [f for f in files if f.may_overlap(lo, hi)]
        if not opened:
            advance(len(chunk))
            continue
        first_time = [f for f in opened if f.rank not in nulls_counted]
        nulls_counted.update(f.rank for f in first_time)
        out, per_day = project(view, read_events(view, opened, lo, hi, first_time))
        try:
            frame, stats = pl.collect_all([out, per_day], engine="in-memory")
        except (pl.exceptions.ComputeError, OSError) as e:
            raise find_unreadable(view.source, opened, e) from None
        for row in stats.iter_rows(named=True):
            counts.read += row["read"]
            counts.rejected += row["rejected"]
            counts.filtered += row["filtered"]
            if row["__day"] is not None:
                counts.per_day[row["__day"]] = counts.per_day.get(row["__day"], 0) + row["read"]
                if row["kept"]:
                    counts.output_days.add(row["__day"])
        counts.written += write_tiles(tile_frames(view, frame), out_dir)
        del frame
        advance(len(chunk))
    return counts
