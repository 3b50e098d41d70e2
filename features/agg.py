"""Aggregation builders: ``agg.sum(col("amount"), windows=["1h", "1d"], name="amount_sum")``.

Each builder returns one :class:`~features.definitions.Feature` per window, named
``{name}_{window}`` (``amount_sum_1h``), or as given when ``windows`` is a mapping from window to
feature name (``windows={"7d": "spend_7d", "7d/1d": "spend_7d_daily"}``: the same length with
two tile sizes). With no windows, ``last`` is a plain feature: the latest non-null value within
its ``ttl`` (default: the view's TTL), named ``name``.

A window is ``"1h"``, ``"lifetime"``, or ``"7d/1h"`` to choose the tile size (default w / 60).
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from datetime import timedelta

from features import expr as ex
from features.definitions import Feature
from features.errors import DefinitionError
from features.windows import Window, parse_duration

WindowSpec = str | Window
Windows = Sequence[WindowSpec] | Mapping[str, str]


def _build(function: str, node: ex.Node | None,
           windows: Sequence[WindowSpec] | Mapping[str, str] | None, name: str | None,
           ttl: str | timedelta | None = None) -> tuple[Feature, ...]:
    named: dict[str, str] = {}
    if isinstance(windows, Mapping):  # {"7d": "spend_7d", "7d/1d": "spend_7d_daily"}
        named = {str(w): str(n) for w, n in windows.items()}
        windows = list(named)
    if name is None and not named:  # a mapping names each window's feature itself
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
                                  f"be a plain feature (latest value within its TTL)")
        ttl_td = None if ttl is None else timedelta(microseconds=parse_duration(ttl))
        return (Feature(name=name or function, function="last", expr=node, window=None,
                        ttl=ttl_td),)
    if ttl is not None:
        raise DefinitionError(f"{name!r}: ttl= is for a plain last() without windows; a "
                              f"windowed feature's window is its horizon")
    if isinstance(windows, str | Window):
        windows = [windows]
    out = []
    for spec in windows:
        w = Window.parse(spec)
        feature_name = named.get(str(spec)) or f"{name}_{w.name}"
        out.append(Feature(name=feature_name, function=function,  # type: ignore[arg-type]
                           expr=node, window=w))
    return builtins.tuple(out)


def count(node: ex.Node | None = None, *, windows: Windows,
          name: str | None = None) -> tuple[Feature, ...]:
    """Events in the window (``count()``) or non-null values of ``node`` (``count(expr)``)."""
    return _build("count", node, windows, name)


def sum(node: ex.Node, *, windows: Windows,
        name: str | None = None) -> tuple[Feature, ...]:
    """Sum of non-null values; 0 when there are none. A sum of integers is an integer."""
    return _build("sum", node, windows, name)


def mean(node: ex.Node, *, windows: Windows,
         name: str | None = None) -> tuple[Feature, ...]:
    """Mean of non-null values; null when there are none."""
    return _build("mean", node, windows, name)


def min(node: ex.Node, *, windows: Windows,
        name: str | None = None) -> tuple[Feature, ...]:
    """Smallest non-null value; null when there are none."""
    return _build("min", node, windows, name)


def max(node: ex.Node, *, windows: Windows,
        name: str | None = None) -> tuple[Feature, ...]:
    """Largest non-null value; null when there are none."""
    return _build("max", node, windows, name)


def stddev(node: ex.Node, *, windows: Windows,
           name: str | None = None) -> tuple[Feature, ...]:
    """Sample standard deviation (n − 1) of non-null values; null with fewer than two."""
    return _build("stddev", node, windows, name)


def last(node: ex.Node, *, windows: Windows | None = None, name: str | None = None,
         ttl: str | timedelta | None = None) -> tuple[Feature, ...]:
    """Latest non-null value (ties in event time: source order).

    Without windows it is a plain feature: the latest value within ``ttl`` (default: the
    view's TTL), e.g. ``agg.last(col("country"), name="last_country", ttl="3d")``.
    """
    return _build("last", node, windows, name, ttl)
