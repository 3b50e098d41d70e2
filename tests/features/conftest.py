"""Engine-blind fixtures for the expression tests.

``run_exprs(exprs, rows, schema)`` evaluates expressions on one engine and returns, per
expression, its engine dtype and one value per row (timestamps as epoch microseconds). A test
parametrised over ``engine`` runs the same assertions on Polars and on Spark.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest

from features.compile import compile_expr, engine_dtype
from features.expr import Node, to_epoch_micros

ENGINE_PARAMS = ["polars", pytest.param("spark", marks=pytest.mark.spark)]


@pytest.fixture(scope="session")
def spark():
    """One local[2] SparkSession for the whole run (it takes ~15 s to start)."""
    from pipelines.spark_session import get_spark

    session = get_spark("local[2]")
    yield session
    session.stop()


@dataclass
class EngineResult:
    """What one engine computed: engine dtypes and ``values[expr][row]``."""

    dtypes: list[Any]
    values: list[list[Any]]


RunExprs = Callable[[Sequence[Node], Sequence[Mapping[str, Any]], Mapping[str, str]],
                    EngineResult]


def _engine_value(value: Any, dtype: str) -> Any:
    if value is None:
        return None
    if dtype == "timestamp":
        return to_epoch_micros(value) if isinstance(value, datetime) else value
    if dtype == "float64":
        return float(value)
    return value


def run_polars(exprs: Sequence[Node], rows: Sequence[Mapping[str, Any]],
               schema: Mapping[str, str]) -> EngineResult:
    import polars as pl

    data: dict[str, list[Any]] = {"_row": list(range(len(rows)))}
    frame_schema: dict[str, Any] = {"_row": pl.Int64}
    for name, dtype in schema.items():
        data[name] = [_engine_value(row.get(name), dtype) for row in rows]
        frame_schema[name] = pl.Int64 if dtype == "timestamp" else engine_dtype(dtype, "polars")
    stamps = [n for n, d in schema.items() if d == "timestamp"]
    frame = pl.DataFrame(data, schema=frame_schema).with_columns(
        [pl.col(n).cast(engine_dtype("timestamp", "polars")) for n in stamps])
    compiled = [compile_expr(e, "polars", schema).alias(f"e{k}") for k, e in enumerate(exprs)]
    # keep _row so an all-literal selection still has one value per row
    out = frame.lazy().select(pl.col("_row"), *compiled).collect().drop("_row")
    dtypes = list(out.dtypes)
    out = out.with_columns(pl.col(pl.Datetime).dt.epoch("us"))
    return EngineResult(dtypes, [out[f"e{k}"].to_list() for k in range(len(exprs))])


def run_spark(session: Any, exprs: Sequence[Node], rows: Sequence[Mapping[str, Any]],
              schema: Mapping[str, str]) -> EngineResult:
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    fields = [T.StructField("_row", T.LongType())] + [
        T.StructField(n, T.LongType() if d == "timestamp" else engine_dtype(d, "spark"))
        for n, d in schema.items()]
    data = [(i, *[_engine_value(row.get(n), d) for n, d in schema.items()])
            for i, row in enumerate(rows)]
    frame = session.createDataFrame(data, T.StructType(fields)).select(
        "_row", *[F.timestamp_micros(n).alias(n) if d == "timestamp" else F.col(n)
                  for n, d in schema.items()])
    compiled = [compile_expr(e, "spark", schema).alias(f"e{k}") for k, e in enumerate(exprs)]
    out = frame.select("_row", *compiled)
    dtypes = [f.dataType for f in out.schema.fields[1:]]
    out = out.select("_row", *[
        F.unix_micros(f"e{k}").alias(f"e{k}") if isinstance(t, T.TimestampType) else f"e{k}"
        for k, t in enumerate(dtypes)])
    collected = sorted(out.collect(), key=lambda r: r[0])
    return EngineResult(dtypes, [[r[k + 1] for r in collected] for k in range(len(exprs))])


@pytest.fixture(params=ENGINE_PARAMS)
def engine(request: pytest.FixtureRequest) -> str:
    """The engine under test: every engine-blind test runs once per engine."""
    return request.param


def runner_for(engine: str, request: pytest.FixtureRequest) -> RunExprs:
    """The ``run_exprs`` function of ``engine`` (starts Spark on first use)."""
    if engine == "polars":
        return run_polars
    session = request.getfixturevalue("spark")
    return lambda exprs, rows, schema: run_spark(session, exprs, rows, schema)


@pytest.fixture
def run_exprs(engine: str, request: pytest.FixtureRequest) -> RunExprs:
    return runner_for(engine, request)


def same_value(actual: Any, expected: Any, dtype: str) -> bool:
    """Engine value vs reference value: exact, except floats within a relative 1e-12."""
    if expected is None or actual is None:
        return expected is None and actual is None
    if dtype == "float64":
        return isinstance(actual, float) and math.isclose(actual, expected, rel_tol=1e-12,
                                                          abs_tol=1e-300)
    if dtype == "timestamp":
        return actual == to_epoch_micros(expected)
    return type(actual) is type(expected) and actual == expected
