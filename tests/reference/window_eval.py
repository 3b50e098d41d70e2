"""The obviously-correct reference for feature values: event by event, from DESIGN.md's words.

No tiles, no partials, no engines: for each requested (key, t) it walks every event and applies
the definition literally. Slow on purpose; it is the truth the engines are compared against.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from features.definitions import Feature, FeatureView
from features.windows import to_micros
from tests.reference.expr_eval import eval_expr


def _events(view: FeatureView, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows after derived columns and the filter, with event time (µs) and source order."""
    schema = view.row_schema()
    out = []
    for seq, source_row in enumerate(rows):
        row = dict(source_row)
        ts = row.get(view.source.timestamp_field)
        if ts is None or any(row.get(k) is None for k in view.join_keys):
            continue  # rejected: null key or null event time
        for name, node in view.derived:
            row[name] = eval_expr(node, row, schema)
        if view.filter is not None and eval_expr(view.filter, row, schema) is not True:
            continue  # false or null: dropped
        row["__key"] = tuple(row[k] for k in view.join_keys)
        row["__us"] = to_micros(ts)
        row["__seq"] = seq
        out.append(row)
    return out


def _value(view: FeatureView, f: Feature, events: list[dict[str, Any]], t_us: int,
           schema: Mapping[str, str]) -> Any:
    if f.window is None:
        ttl = view.feature_ttl_us(f)  # the feature's own TTL, else the view's
        chosen = [e for e in events if e["__us"] <= t_us and (ttl is None or e["__us"] >= t_us - ttl)]
    else:
        chosen = [e for e in events if f.window.covers(e["__us"], t_us)]
    if f.function == "count" and f.expr is None:
        return len(chosen)
    assert f.expr is not None
    pairs = [(e["__us"], e["__seq"], eval_expr(f.expr, e, schema)) for e in chosen]
    values = [v for _, _, v in pairs if v is not None]
    fn = f.function
    if fn == "count":
        return len(values)
    if fn == "sum":
        if view.output_dtype(f) == "int64":
            return sum(int(v) for v in values)
        return math.fsum(values)
    if not values:
        return None
    if fn == "mean":
        return math.fsum(values) / len(values)
    if fn == "stddev":
        return statistics.stdev([float(v) for v in values]) if len(values) >= 2 else None
    if fn == "min":
        return min(values)
    if fn == "max":
        return max(values)
    latest = max(((us, seq, v) for us, seq, v in pairs if v is not None), key=lambda p: p[:2])
    return latest[2]


def reference_features(view: FeatureView, rows: Sequence[Mapping[str, Any]],
                       requests: Sequence[tuple[tuple[Any, ...], datetime]]) -> list[dict[str, Any]]:
    """For each (key tuple, t): {feature name: value} per the contract."""
    by_key: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for e in _events(view, rows):
        by_key.setdefault(e["__key"], []).append(e)
    out = []
    for key, t in requests:
        events = by_key.get(tuple(key), [])
        t_us = to_micros(t)
        schema = view.row_schema()
        out.append({f.name: _value(view, f, events, t_us, schema) for f in view.features})
    return out
