"""Aggregation builders: ``agg.sum(col("amount"), windows=["1h", "1d"], name="amount_sum")``.

Each builder returns one :class:`~features.definitions.Feature` per window, named
``{name}_{window}`` (``amount_sum_1h``). With no windows, ``last`` is a plain feature: the latest
non-null value within the view's TTL, named ``name``.

A window is ``"1h"``, ``"lifetime"``, or ``"7d/1h"`` to choose the tile size (default w / 60).
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence

from features import expr as ex
from features.definitions import Feature
from features.errors import DefinitionError
from features.windows import Window

WindowSpec = str | Window


def _build(function: str, node: ex.Node | None, windows: Sequence[WindowSpec] | None,
           name: str | None) -> tuple[Feature, ...]:
    if name is None:
        if node is None:
            name = function
        elif isinstance(node, ex.Col):
            name = f"{node.name}_{function}"
        else:
            raise DefinitionError(f"{function}({node!r}): give the feature a name= "
                                  f"(only a plain column names itself)")
    if not windows:
        if function != "last":
            raise DefinitionError(f"{name!r}: {function} needs windows=[...]; only last() may "
                                  f"be a plain feature (latest value within the view's TTL)")
        return (Feature(name=name, function="last", expr=node, window=None),)
    if isinstance(windows, str | Window):
        windows = [windows]
    parsed = [Window.parse(w) for w in windows]
    return builtins.tuple(Feature(name=f"{name}_{w.name}", function=function,  # type: ignore[arg-type]
                                  expr=node, window=w) for w in parsed)


def count(node: ex.Node | None = None, *, windows: Sequence[WindowSpec],
          name: str | None = None) -> tuple[Feature, ...]:
    """Events in the window (``count()``) or non-null values of ``node`` (``count(expr)``)."""
    return _build("count", node, windows, name)


def sum(node: ex.Node, *, windows: Sequence[WindowSpec],
        name: str | None = None) -> tuple[Feature, ...]:
    """Sum of non-null values; 0 when there are none. A sum of integers is an integer."""
    return _build("sum", node, windows, name)


def mean(node: ex.Node, *, windows: Sequence[WindowSpec],
         name: str | None = None) -> tuple[Feature, ...]:
    """Mean of non-null values; null when there are none."""
    return _build("mean", node, windows, name)


def min(node: ex.Node, *, windows: Sequence[WindowSpec],
        name: str | None = None) -> tuple[Feature, ...]:
    """Smallest non-null value; null when there are none."""
    return _build("min", node, windows, name)


def max(node: ex.Node, *, windows: Sequence[WindowSpec],
        name: str | None = None) -> tuple[Feature, ...]:
    """Largest non-null value; null when there are none."""
    return _build("max", node, windows, name)


def stddev(node: ex.Node, *, windows: Sequence[WindowSpec],
           name: str | None = None) -> tuple[Feature, ...]:
    """Sample standard deviation (n − 1) of non-null values; null with fewer than two."""
    return _build("stddev", node, windows, name)


def last(node: ex.Node, *, windows: Sequence[WindowSpec] | None = None,
         name: str | None = None) -> tuple[Feature, ...]:
    """Latest non-null value (ties in event time: source order). No windows: within the TTL."""
    return _build("last", node, windows, name)
