"""Tessera's engine-free core: what a feature repo imports to define features.

    from features import Entity, Source, FeatureView, FeatureService, agg, col, when
"""

from __future__ import annotations

from features import compiled

compiled.install()  # before any module of the read path is imported (features/compiled.py)

from features import agg, expect  # noqa: E402
from features.definitions import Entity, Feature, FeatureService, FeatureView, Source  # noqa: E402
from features.expr import (  # noqa: E402
    abs_,
    clip,
    coalesce,
    col,
    day_of_month,
    day_of_week,
    epoch_seconds,
    exp,
    hour,
    lit,
    log,
    log1p,
    minute,
    month,
    round_,
    sqrt,
    when,
    year,
)
from features.windows import Window  # noqa: E402

__all__ = [
    "Entity", "Feature", "FeatureService", "FeatureView", "Source", "Window", "abs_", "agg",
    "clip", "coalesce", "col", "day_of_month", "day_of_week", "epoch_seconds", "exp", "expect",
    "hour",
    "lit", "log", "log1p", "minute", "month", "round_", "sqrt", "when", "year",
]
