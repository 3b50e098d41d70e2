"""The Spark engine: the same steps and meanings as :mod:`pipelines.engine_polars`, on a cluster.

Source order for ties comes from Parquet's hidden ``_metadata.file_path`` and
``_metadata.row_index``: ``seq = rank(file path) << 32 | row`` — the very number the Polars engine
computes, so both engines break ties identically. Integer tile and day arithmetic uses
``pmod``/``div`` (floor semantics for times before 1970, exact on 64-bit microseconds).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from features.compile import compile_expr
from features.definitions import FeatureView
from features.errors import SUM_HINT, SumOverflowError
from features.tiles import EXACT_TILE_US, Layout, layout, partial_dtype
from features.windows import US_PER_UNIT
from pipelines.counts import Counts
from pipelines.errors import SourceSchemaError
from pipelines.sources import SEQ_ROW_BITS, SourceFile, find_unreadable

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

DAY_US = US_PER_UNIT["d"]
_SPARK_TYPES = {"int64": "bigint", "float64": "double", "bool": "boolean", "string": "string",
                "timestamp": "timestamp"}


def _floor_div(name: str, size: int) -> Column:
    """``floor(name / size)`` on bigints, exactly (``div`` truncates; ``pmod`` makes it floor)."""
    from pyspark.sql import functions as F

    return F.expr(f"(`{name}` - pmod(`{name}`, {size}L)) div {size}L")


def read_events(spark: SparkSession, view: FeatureView, files: Sequence[SourceFile],
                start_us: int | None, end_us: int | None) -> DataFrame:
    """Source rows in ``[start_us, end_us)`` or with a null time; ``__seq`` gives source order."""
    from pyspark.errors import AnalysisException
    from pyspark.sql import functions as F

    paths = [f.path for f in files]
    try:
        df = spark.read.parquet(*[str(p) for p in paths])
    except AnalysisException as e:
        if "TIMESTAMP(NANOS" in str(e):
            raise SourceSchemaError(
                f"source {view.source.name!r}: {paths[0].parent}: Spark cannot read Parquet "
                f"timestamps in nanoseconds; write them in microseconds (pyarrow: "
                f"coerce_timestamps='us') or run with --engine polars") from None
        raise find_unreadable(view.source, files, e) from None
    fields = {f.name: f.dataType.simpleString() for f in df.schema.fields}
    cols = []
    for name, want in view.source.schema.items():
        if name not in fields:
            raise SourceSchemaError(
                f"source {view.source.name!r}: {paths[0].parent}: column {name!r} is missing "
                f"(the files have: {', '.join(fields)})")
        got = fields[name]
        ok = {
            "int64": got in ("bigint", "int", "smallint", "tinyint"),
            "float64": got in ("double", "float", "bigint", "int", "smallint", "tinyint"),
            "bool": got == "boolean",
            "string": got == "string",
            "timestamp": got in ("timestamp", "timestamp_ntz", "date"),
        }[want]
        if not ok:
            raise SourceSchemaError(
                f"source {view.source.name!r}: column {name!r} is {got}, expected {want}")
        # timestamp_ntz (a naive Parquet timestamp) cast in a UTC session is read as UTC.
        cols.append(F.col(name).cast(_SPARK_TYPES[want]).alias(name))
    ranks = {str(f.path.resolve()): f.rank for f in files}
    rank_map = F.create_map(*[x for path, i in ranks.items() for x in (F.lit(path), F.lit(i))])
    local_path = F.url_decode(F.regexp_replace(F.col("_metadata.file_path"), r"^file:(//)?", ""))
    seq = F.shiftleft(rank_map[local_path].cast("bigint"), SEQ_ROW_BITS).bitwiseOR(
        F.col("_metadata.row_index").cast("bigint"))
    ts_us = F.unix_micros(F.col(view.source.timestamp_field).cast("timestamp"))
    df = df.select(*cols, seq.alias("__seq"))
    in_range = F.lit(True)
    if start_us is not None:
        in_range = in_range & (ts_us >= F.lit(start_us))
    if end_us is not None:
        in_range = in_range & (ts_us < F.lit(end_us))
    return df.where(in_range | F.col(view.source.timestamp_field).isNull())


def project(view: FeatureView, events: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(projected events, counts per event day) — the same rules as the Polars engine.

    The counts frame has one row per UTC event day (null: null times) with ``read``,
    ``rejected``, ``filtered`` and ``kept``.
    """
    from pyspark.sql import functions as F

    lay = layout(view)
    schema = dict(view.source.schema)
    df = events
    for name, node in view.derived:
        df = df.withColumn(name, compile_expr(node, "spark", schema))
        schema[name] = view.row_schema()[name]
    ts = view.source.timestamp_field
    valid = F.col(ts).isNotNull()
    for key in view.join_keys:
        valid = valid & F.col(key).isNotNull()
    for check in view.source.row_checks():  # the batch passed its gate: drop the rows that fail
        valid = valid & F.coalesce(compile_expr(check.row_check(), "spark", view.source.schema),
                                   F.lit(False))
    keep = valid if view.filter is None else valid & F.coalesce(
        compile_expr(view.filter, "spark", schema), F.lit(False))
    df = df.withColumn("__valid", valid).withColumn("__keep", keep)
    counts = df.groupBy(F.to_date(F.col(ts)).alias("__day")).agg(
        F.count(F.lit(1)).alias("read"),
        F.sum(F.when(~F.col("__valid"), 1).otherwise(0)).alias("rejected"),
        F.sum(F.when(F.col("__valid") & ~F.col("__keep"), 1).otherwise(0)).alias("filtered"),
        F.sum(F.when(F.col("__keep"), 1).otherwise(0)).alias("kept"))
    out = df.where(F.col("__keep")).select(
        *view.join_keys,
        F.unix_micros(F.col(ts)).alias("__ts"),
        "__seq",
        *[compile_expr(inp.node, "spark", schema).cast(_SPARK_TYPES[inp.dtype])
          .alias(inp.value_column) for inp in lay.inputs],
    )
    return out, counts


def partial_aggs(lay: Layout) -> list[Column]:
    """Spark aggregations building the partial columns of :mod:`features.tiles`."""
    from pyspark.sql import functions as F

    aggs = [F.count(F.lit(1)).cast("bigint").alias("n")]
    for inp in lay.inputs:
        x = F.col(inp.value_column)
        zero = F.lit(0).cast(_SPARK_TYPES[partial_dtype("s", inp.dtype)])
        # max of a struct compares field by field: (event time, seq) decide; nulls are skipped.
        latest = F.max(F.when(x.isNotNull(), F.struct(F.col("__ts").alias("t"),
                                                      F.col("__seq").alias("q"), x.alias("v"))))
        by_kind = {
            "c": F.count(x),
            "s": F.coalesce(F.sum(x), zero),
            "q": F.coalesce(F.var_pop(x) * F.count(x), F.lit(0.0)),
            "lo": F.min(x),
            "hi": F.max(x),
            "l": latest["v"],
            "lt": latest["t"],
            "ls": latest["q"],
        }
        for kind in inp.kinds:
            aggs.append(by_kind[kind].cast(_SPARK_TYPES[partial_dtype(kind, inp.dtype)])
                        .alias(inp.column(kind)))
    return aggs


def write_tiles(view: FeatureView, projected: DataFrame, out_dir: Path,
                advance: Callable[[int], None] = lambda n: None) -> int:
    """Write every tile size (and the exact layer) under ``out_dir``; returns rows written.

    The projected events are persisted once and reused by every layer; the row count comes from
    the written files' Parquet footers instead of a second pass over the data. ``advance(1)``
    is called after each layer.
    """
    import pyarrow.parquet as pq
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    aggs = partial_aggs(layout(view))
    day = F.date_from_unix_date(_floor_div("__ts", DAY_US).cast("int"))
    events = projected.withColumn("day", day).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        for size in (EXACT_TILE_US, *view.tile_sizes()):
            (events.withColumn("tile", _floor_div("__ts", size))
             .groupBy(*view.join_keys, "tile", "day").agg(*aggs)
             .repartition("day").sortWithinPartitions(*view.join_keys, "tile")
             .write.mode("overwrite").partitionBy("day")
             .parquet(str(out_dir / f"tile_us={size}")))
            advance(1)
    finally:
        events.unpersist()
    return sum(pq.ParquetFile(f).metadata.num_rows for f in out_dir.rglob("*.parquet"))


def run(spark: SparkSession, view: FeatureView, files: Sequence[SourceFile],
        days: Sequence[date], out_dir: Path,
        advance: Callable[[int], None] = lambda n: None) -> Counts:
    """Tile ``days`` of a view's events into ``out_dir`` in one Spark job per layer."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    lo = (days[0] - date(1970, 1, 1)).days * DAY_US
    hi = (days[-1] - date(1970, 1, 1)).days * DAY_US + DAY_US
    counts = Counts()
    if not files:
        advance(len(view.tile_sizes()) + 2)
        return counts
    try:
        events, per_day = project(view, read_events(spark, view, files, lo, hi))
        for row in per_day.collect():
            counts.read += int(row["read"])
            counts.rejected += int(row["rejected"] or 0)
            counts.filtered += int(row["filtered"] or 0)
            if row["__day"] is not None:
                counts.per_day[row["__day"]] = int(row["read"])
                if row["kept"]:
                    counts.output_days.add(row["__day"])
        advance(1)
        counts.written = write_tiles(view, events, out_dir, advance)
    except (PySparkException, Py4JJavaError) as e:  # a corrupt file fails inside a job
        if "ARITHMETIC_OVERFLOW" in str(e):  # ANSI mode: a sum of longs (expressions never)
            raise SumOverflowError(f"feature view {view.name!r}: a sum of integers leaves int64 "
                                   f"in a tile (Spark: [ARITHMETIC_OVERFLOW]): "
                                   f"{SUM_HINT}") from None
        found = find_unreadable(view.source, files, e)
        if found is e:
            raise
        raise found from None
    return counts
