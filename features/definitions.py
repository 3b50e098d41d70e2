"""Definitions: entities, sources, features, feature views and feature services.

These are values: frozen, keyword-only, engine-free. A feature view's rules (row filter, derived
columns, aggregation inputs) are expression trees from :mod:`features.expr`, so the same view
runs on Polars, Spark and the streaming consumer, and its canonical JSON is what the registry
stores.

Example:
    >>> from features import agg, col
    >>> user = Entity(name="user", join_key="user_id")
    >>> txns = Source(name="transactions", path="data/transactions",
    ...               schema={"user_id": "int64", "amount": "float64", "event_ts": "timestamp"},
    ...               timestamp_field="event_ts")
    >>> view = FeatureView(name="user_spend", entities=[user], source=txns, ttl="30d",
    ...                    features=[agg.count(windows=["1h", "1d"], name="txn_count"),
    ...                              agg.sum(col("amount"), windows=["1d"], name="amount_sum")])
    >>> [f.name for f in view.features]
    ['txn_count_1h', 'txn_count_1d', 'amount_sum_1d']
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from features import expr as ex
from features.errors import DefinitionError
from features.expect import Expectation, flatten
from features.windows import Window, format_duration, parse_duration

DTYPES = ("int64", "float64", "bool", "string", "timestamp")
Function = Literal["count", "sum", "mean", "min", "max", "last", "stddev"]
FUNCTIONS: tuple[str, ...] = ("count", "sum", "mean", "min", "max", "last", "stddev")
NUMERIC = ("int64", "float64")


@dataclass(frozen=True, kw_only=True, slots=True)
class Entity:
    """A thing features describe, identified by one join key (``user_id``)."""

    name: str
    join_key: str
    dtype: Literal["int64", "string"] = "int64"
    description: str = ""


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class Source:
    """Events with one schema: a batch location (Parquet) and optionally a Kafka topic."""

    name: str
    path: str
    schema: Mapping[str, str]
    timestamp_field: str
    kafka_topic: str | None = None
    description: str = ""
    # Data-quality checks on the events (features.expect); not part of any view's rules, so
    # changing one never re-keys stored state. Checked by `tessera run` and `tessera stream`.
    expectations: tuple[Expectation, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "schema", dict(self.schema))
        object.__setattr__(self, "expectations",
                           flatten(self.expectations, f"source {self.name!r}"))

    def row_checks(self, severity: str = "error") -> tuple[Expectation, ...]:
        """The row-level expectations of one severity: rows failing them are dropped."""
        return tuple(e for e in self.expectations if e.row_level and e.severity == severity)


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class Feature:
    """One aggregation of one expression over one window (or a TTL'd ``last``: window None)."""

    name: str
    function: Function
    expr: ex.Node | None = None  # None only for count(): counts events
    window: Window | None = None  # None: plain feature, last(expr) within its TTL
    ttl: timedelta | None = None  # a plain feature's own TTL (default: the view's)

    @property
    def plain(self) -> bool:
        return self.window is None

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "function": self.function,
               "expr": None if self.expr is None else ex.to_dict(self.expr),
               "window": None if self.window is None else self.window.spec}
        if self.ttl is not None:  # only when set, so existing fingerprints stay the same
            out["ttl"] = format_duration(parse_duration(self.ttl))
        return out


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class FeatureView:
    """Features of one set of entities, aggregated from one source by registered rules.

    Compared and hashed by identity: two views with equal rules have equal ``fingerprint()``.
    """

    name: str
    entities: tuple[Entity, ...]
    source: Source
    features: tuple[Feature, ...]
    filter: ex.Node | None = None
    derived: tuple[tuple[str, ex.Node], ...] = ()
    ttl: timedelta | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    owner: str = ""

    def __init__(self, *, name: str, entities: Iterable[Entity], source: Source,
                 features: Iterable[Feature | Iterable[Feature]],
                 filter: ex.Node | None = None,
                 derived: Mapping[str, ex.Node] | Iterable[tuple[str, ex.Node]] = (),
                 ttl: str | timedelta | None = None, tags: Mapping[str, str] | None = None,
                 description: str = "", owner: str = "") -> None:
        flat: list[Feature] = []
        for item in features:
            flat.extend([item] if isinstance(item, Feature) else item)
        items = derived.items() if isinstance(derived, Mapping) else derived
        ttl_td = None if ttl is None else timedelta(microseconds=parse_duration(ttl))
        for name_, value in (
            ("name", name), ("entities", tuple(entities)), ("source", source),
            ("features", tuple(flat)), ("filter", filter), ("derived", tuple(items)),
            ("ttl", ttl_td), ("tags", dict(tags or {})), ("description", description),
            ("owner", owner),
        ):
            object.__setattr__(self, name_, value)

    @property
    def join_keys(self) -> tuple[str, ...]:
        return tuple(e.join_key for e in self.entities)

    @property
    def ttl_us(self) -> int | None:
        return None if self.ttl is None else parse_duration(self.ttl)

    def feature_ttl_us(self, feature: Feature) -> int | None:
        """A plain feature's TTL in µs: its own, else the view's (None: no TTL set)."""
        if feature.ttl is not None:
            return parse_duration(feature.ttl)
        return self.ttl_us

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise DefinitionError(f"feature view {self.name!r} has no feature {name!r} "
                              f"(it has: {', '.join(f.name for f in self.features)})")

    def rules_dict(self) -> dict[str, Any]:
        """Everything that decides the stored values: the canonical form of the rules. Not the
        TTLs (the view's, a plain feature's own): they decide what a read returns, not the
        tiles, so a TTL change needs no batch re-run (materialization notices it)."""
        return {
            "view": self.name,
            "join_keys": list(self.join_keys),
            "timestamp_field": self.source.timestamp_field,
            "schema": dict(sorted(self.source.schema.items())),
            "filter": None if self.filter is None else ex.to_dict(self.filter),
            "derived": [[n, ex.to_dict(e)] for n, e in self.derived],
            "features": [{k: v for k, v in f.to_dict().items() if k != "ttl"}
                         for f in self.features],
        }

    def fingerprint(self) -> str:
        """sha256 of the canonical rules; names the view's state offline and in Redis."""
        text = json.dumps(self.rules_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def feature_fingerprint(self, feature: Feature) -> str:
        """sha256 of what decides one feature's values: filter, derived columns and itself
        (its own TTL included: a drift reference says when a feature changed meaning)."""
        rules = self.rules_dict()
        text = json.dumps({"filter": rules["filter"], "derived": rules["derived"],
                           "keys": rules["join_keys"], "feature": feature.to_dict()},
                          sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def row_schema(self) -> dict[str, str]:
        """Source columns plus derived columns, with their types (raises on a bad rule)."""
        schema = dict(self.source.schema)
        for name, node in self.derived:
            schema[name] = ex.infer_dtype(node, schema)
        return schema

    def windows(self) -> tuple[Window, ...]:
        """Distinct windows of the windowed features, in definition order."""
        seen: dict[Window, None] = {}
        for f in self.features:
            if f.window is not None:
                seen.setdefault(f.window)
        return tuple(seen)

    def tile_sizes(self) -> tuple[int, ...]:
        """Distinct tile sizes (µs) the offline store keeps for this view, ascending."""
        return tuple(sorted({w.tile_us for w in self.windows()}))

    def output_dtype(self, feature: Feature) -> str:
        """The type of a feature's value (given the rules are valid)."""
        if feature.function == "count":
            return "int64"
        if feature.expr is None:
            raise DefinitionError(f"feature view {self.name!r}, feature {feature.name!r}: "
                                  f"{feature.function} needs an expression")
        in_type = ex.infer_dtype(feature.expr, self.row_schema())
        if feature.function in ("mean", "stddev"):
            return "float64"
        return in_type


@dataclass(frozen=True, kw_only=True, slots=True)
class FeatureService:
    """A named set of features a model reads together: ``["user_spend:txn_count_1h", ...]``."""

    name: str
    features: tuple[str, ...]
    description: str = ""
    owner: str = ""

    def __init__(self, *, name: str, features: Iterable[str | FeatureView],
                 description: str = "", owner: str = "") -> None:
        refs: list[str] = []
        for item in features:
            if isinstance(item, FeatureView):
                refs.extend(f"{item.name}:{f.name}" for f in item.features)
            else:
                refs.append(item)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "features", tuple(refs))
        object.__setattr__(self, "description", description)
        object.__setattr__(self, "owner", owner)


__all__ = ["DTYPES", "FUNCTIONS", "Entity", "Feature", "FeatureService", "FeatureView", "Source",
           "format_duration"]
