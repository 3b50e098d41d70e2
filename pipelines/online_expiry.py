"""When an online window value stops mattering, so Redis can drop it (``PXAT``).

A value expires once its newest tile has left the longest window of its size and every newest
``last`` value is past its TTL or window; a plain ``last`` without a TTL keeps it forever (-1).
Computed for every entity at once, the same way by materialization
(:mod:`pipelines.online_build`) and the streaming merge (:mod:`streaming.state`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from features.definitions import FeatureView
from features.online.codec import NO_EVENT, Codec
from pipelines import online_pack as pk


def expire_at(view: FeatureView, cod: Codec, placed: Sequence[tuple[int, tuple[Any, pk.Section]]],
              latest: pk.Latest | None, latest_index: Any, entities: int) -> Any:
    """When each entity's window value stops mattering (µs; -1: never): its newest tile has
    left the longest window of its size, and its newest ``last`` values their TTL."""
    import numpy as np

    expire = np.full(entities, NO_EVENT, np.int64)
    for k, (index, sec) in placed:
        spec = cod.sections[k]
        last_tile = sec.tiles[sec.ends - 1]
        np.maximum.at(expire, index, (last_tile + spec.horizon) * spec.tile_us)
    never = np.zeros(entities, bool)
    if latest is not None:
        for k, rule in enumerate(expiry_rules(view, cod)):
            present = np.zeros(entities, bool)
            at = np.zeros(entities, np.int64)
            present[latest_index] = latest.present[k]
            at[latest_index] = latest.at[k]
            if rule is None:
                never |= present
            else:
                np.maximum.at(expire, np.flatnonzero(present), at[present] + rule)
    return np.where(never, -1, expire)


def expiry_rules(view: FeatureView, cod: Codec) -> list[int | None]:
    """Per latest input: how long after its event time a value still matters (None: ever)."""
    rules: list[int | None] = []
    for inp in cod.latest:
        spans: list[int | None] = []
        for f in view.features:
            if f.function != "last" or cod.layout.input_of(f) != inp:
                continue
            if f.window is None:
                spans.append(view.feature_ttl_us(f))
            elif f.window.tiles is not None:
                spans.append(f.window.tile_us + (f.window.length_us or 0))
        rules.append(None if any(x is None for x in spans)
                     else max(x for x in spans if x is not None))
    return rules


def ttl_signature(view: FeatureView) -> str:
    """What decides a view's online values besides its rules: the TTL of each plain ``last``
    (its own, else the view's). The fingerprint leaves the view's ``ttl`` out, since the offline
    tiles do not depend on it; but which entities are written and when their keys expire do.
    Materialization and the online snapshot record this and compare it, so a TTL change
    rewrites every entity instead of keeping values built under the old one."""
    return json.dumps([[f.name, view.feature_ttl_us(f)] for f in view.features
                       if f.function == "last" and f.window is None])
