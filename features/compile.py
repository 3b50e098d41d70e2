"""One entry point from the expression IR to an engine.

    >>> import polars as pl                                    # doctest: +SKIP
    >>> from features.expr import col
    >>> from features.compile import compile_expr
    >>> df = pl.DataFrame({"amount": [1, 2]})                  # doctest: +SKIP
    >>> df.select(compile_expr(col("amount") / 2, "polars", {"amount": "int64"}))  # doctest: +SKIP

The engines are imported only when a compiler runs, so this module is safe to import anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypeAlias, get_args

from features.errors import UnsupportedOperationError
from features.expr import DType, IntoExpr, TypeChecker, as_node

__all__ = ["ENGINES", "Engine", "compile_expr", "engine_dtype"]

Engine: TypeAlias = Literal["polars", "spark"]
ENGINES: tuple[Engine, ...] = get_args(Engine)


def compile_expr(node: IntoExpr, engine: Engine, schema: Mapping[str, str]) -> Any:
    """Type-check ``node`` over ``schema`` and compile it for ``engine``.

    Args:
        node: the expression (a Python literal is wrapped with ``lit``).
        engine: ``"polars"`` or ``"spark"``.
        schema: column name → IR dtype (``"int64"``, ``"float64"``, ``"bool"``, ``"string"``,
            ``"timestamp"``) of the frame the expression will run on.

    Returns:
        A ``polars.Expr`` or a ``pyspark.sql.Column`` whose engine type is exactly
        :func:`engine_dtype` of ``infer_dtype(node, schema)``. It is not aliased.

    Raises:
        ExprError: the expression does not type-check over ``schema``.
        UnsupportedOperationError: ``engine`` is unknown or lacks a compiler for an operation.
    """
    expr = as_node(node)
    types = TypeChecker(schema)
    types(expr)  # type errors surface here, before any engine is imported
    if engine == "polars":
        from features._polars import compile_polars

        return compile_polars(expr, types)
    if engine == "spark":
        from features._spark import compile_spark

        return compile_spark(expr, types)
    raise UnsupportedOperationError(
        f"no expression compiler for engine {engine!r} (available: {', '.join(ENGINES)})")


def engine_dtype(dtype: DType, engine: Engine) -> Any:
    """The engine's type for an IR dtype: ``pl.Datetime("us", "UTC")``, ``LongType()``, ...

    Raises:
        UnsupportedOperationError: ``engine`` is unknown.
    """
    if engine == "polars":
        from features._polars import polars_dtype

        return polars_dtype(dtype)
    if engine == "spark":
        from features._spark import spark_type

        return spark_type(dtype)
    raise UnsupportedOperationError(
        f"no expression compiler for engine {engine!r} (available: {', '.join(ENGINES)})")
