"""The Feast registry: Tessera's definitions as Feast objects, so Feast tooling can browse them.

``tessera apply`` writes entities, feature views (carrying their rule fingerprints and canonical
rules in tags) and feature services into a Feast registry file, with a generated
``feature_store.yaml`` beside it, so ``feast -c <state>/feast feature-views list`` works.
Feast is imported here only (it takes seconds to import).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from features.config import RepoConfig
from features.definitions import FeatureView
from features.repo import Definitions
from features.windows import format_duration

_FEAST_TYPES = {"int64": "Int64", "float64": "Float64", "bool": "Bool", "string": "String",
                "timestamp": "UnixTimestamp"}


@dataclass(frozen=True)
class ApplySummary:
    """What ``tessera apply`` registered, and where Feast can read it."""

    registry: Path
    feast_repo: Path
    entities: list[str]
    views: dict[str, str]  # name -> rule fingerprint
    services: list[str]


def feast_repo_dir(cfg: RepoConfig) -> Path:
    return cfg.resolve(cfg.services.state_dir) / "feast"


def write_feast_yaml(cfg: RepoConfig) -> Path:
    """A feature_store.yaml pointing Feast's CLI at our registry (no Feast stores are used)."""
    folder = feast_repo_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    registry = cfg.resolve(cfg.registry.path)
    registry.parent.mkdir(parents=True, exist_ok=True)
    (folder / "feature_store.yaml").write_text(
        f"# Written by `tessera apply`; lets Feast's CLI browse Tessera's registry.\n"
        f"project: {cfg.project}\n"
        f"registry: {registry}\n"
        f"provider: local\n"
        f"online_store:\n  type: sqlite\n  path: {folder / 'online.db'}\n"
        f"offline_store:\n  type: file\n"
        f"entity_key_serialization_version: 3\n")
    return folder


def _window_tag(view: FeatureView, feature: Any) -> str:
    """``1h/1m`` for a window; ``ttl=3d`` for a plain feature (its own TTL or the view's)."""
    if feature.window is not None:
        return str(feature.window.spec)
    ttl = view.feature_ttl_us(feature)
    return "ttl" if ttl is None else f"ttl={format_duration(ttl)}"


def _feast_view(view: FeatureView, entities: dict[str, Any], cfg: RepoConfig) -> Any:
    import feast
    from feast import types as ft

    fp = view.fingerprint()
    schema = [feast.Field(name=f.name, dtype=getattr(ft, _FEAST_TYPES[view.output_dtype(f)]),
                          tags={"tessera.fingerprint": view.feature_fingerprint(f),
                                "tessera.function": f.function,
                                "tessera.window": _window_tag(view, f)})
              for f in view.features]
    checks = json.dumps([e.to_dict() for e in view.source.expectations], sort_keys=True,
                        separators=(",", ":"))
    source = feast.FileSource(name=view.source.name, path=str(cfg.root / view.source.path),
                              timestamp_field=view.source.timestamp_field,
                              tags={"tessera.expectations": checks})
    tags = {**view.tags, "tessera.fingerprint": fp,
            "tessera.rules": json.dumps(view.rules_dict(), sort_keys=True, separators=(",", ":"))}
    return feast.FeatureView(
        name=view.name, entities=[entities[e.name] for e in view.entities], schema=schema,
        source=source, ttl=view.ttl, description=view.description, owner=view.owner, tags=tags,
        online=True)


def apply(cfg: RepoConfig, defs: Definitions) -> ApplySummary:
    """Register every definition in the Feast registry (validate first: see features.validate)."""
    import feast

    folder = write_feast_yaml(cfg)
    value_types = {"int64": feast.ValueType.INT64, "string": feast.ValueType.STRING}
    entities = {name: feast.Entity(name=name, join_keys=[e.join_key],
                                   value_type=value_types[e.dtype], description=e.description)
                for name, e in defs.entities.items()}
    views = {name: _feast_view(v, entities, cfg) for name, v in defs.views.items()}
    services = []
    for svc in defs.services.values():
        by_view: dict[str, list[str]] = {}
        for ref in svc.features:
            view_name, _, feature = ref.partition(":")
            by_view.setdefault(view_name, []).append(feature)
        services.append(feast.FeatureService(
            name=svc.name, features=[views[v][fs] for v, fs in by_view.items()],
            description=svc.description, owner=svc.owner))
    store = feast.FeatureStore(repo_path=str(folder))
    existing = {v.name for v in store.list_feature_views()}
    stale = [store.get_feature_view(n) for n in existing - set(views)]
    store.apply([*entities.values(), *views.values(), *services],
                objects_to_delete=stale, partial=not stale)
    return ApplySummary(cfg.resolve(cfg.registry.path), folder, sorted(entities),
                        {n: v.fingerprint() for n, v in defs.views.items()},
                        sorted(s.name for s in defs.services.values()))
