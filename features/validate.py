"""Validation of definitions before anything is registered or run.

Every problem is one line naming the view and the field, and all problems are reported at once.
"""

from __future__ import annotations

from features import expr as ex
from features.definitions import DTYPES, Entity, FeatureView, Source
from features.errors import DefinitionError, ExprError
from features.names import check_identifier
from features.repo import Definitions

#: Types a join key may have (what Feast and the online store's keys support).
KEY_TYPES = ("int64", "string")

_NUMERIC = ("int64", "float64")
_INPUT_TYPES = {
    "count": DTYPES, "last": DTYPES,
    "sum": _NUMERIC, "mean": _NUMERIC, "stddev": _NUMERIC,
    "min": (*_NUMERIC, "timestamp"), "max": (*_NUMERIC, "timestamp"),
}


def entity_problems(entity: Entity) -> list[str]:
    """What is wrong with one entity by itself: its name, join key and key type."""
    problems: list[str] = []
    if why := check_identifier("entity", entity.name):
        problems.append(why)
    where = f"entity {entity.name!r}"
    if why := check_identifier("join key", entity.join_key):
        problems.append(f"{where}: {why}")
    if entity.dtype not in KEY_TYPES:
        problems.append(f"{where}: dtype {entity.dtype!r} cannot be a join key "
                        f"(expected {' or '.join(KEY_TYPES)})")
    return problems


def source_problems(source: Source) -> list[str]:
    """What is wrong with one source by itself (its columns may be named anything)."""
    why = check_identifier("source", source.name)
    problems = [why] if why else []
    for e in source.expectations:
        problems += e.problems(source.name, dict(source.schema), source.timestamp_field)
    names = [e.name for e in source.expectations]
    problems += [f"source {source.name!r}: expectation {n!r} is given twice"
                 for n in sorted({n for n in names if names.count(n) > 1})]
    return problems


def view_problems(view: FeatureView) -> list[str]:
    """What is wrong with one view, its source and its entities (empty when it is valid)."""
    where = f"feature view {view.name!r}"
    problems: list[str] = []
    if why := check_identifier("feature view", view.name):
        problems.append(why)
    problems += [f"{where}, {why}" for why in source_problems(view.source)]
    schema = dict(view.source.schema)
    for column, dtype in schema.items():
        if dtype not in DTYPES:
            problems.append(f"{where}, source {view.source.name!r} column {column!r}: unknown "
                            f"type {dtype!r} (expected one of {', '.join(DTYPES)})")
    ts = view.source.timestamp_field
    if schema.get(ts) != "timestamp":
        problems.append(f"{where}, source {view.source.name!r}: timestamp_field {ts!r} "
                        + ("is not a column" if ts not in schema else
                           f"is {schema[ts]}, expected timestamp"))
    if not view.entities:
        problems.append(f"{where}: needs at least one entity")
    for entity in view.entities:
        problems += [f"{where}, {why}" for why in entity_problems(entity)]
        key = entity.join_key
        if key not in schema:
            problems.append(f"{where}, entity {entity.name!r}: join key {key!r} is not a column "
                            f"of source {view.source.name!r} (columns: {', '.join(schema)})")
        elif schema[key] != entity.dtype and entity.dtype in KEY_TYPES:
            problems.append(f"{where}, entity {entity.name!r}: join key {key!r} is "
                            f"{schema[key]} in the source, but the entity says {entity.dtype}")
    for name, node in view.derived:
        if why := check_identifier("derived column", name):
            problems.append(f"{where}, {why}")
        if name in schema:
            problems.append(f"{where}, derived column {name!r}: shadows a source column")
            continue
        try:
            schema[name] = ex.infer_dtype(node, schema)
        except ExprError as e:
            problems.append(f"{where}, derived column {name!r}: {e}")
    if view.filter is not None:
        try:
            kind = ex.infer_dtype(view.filter, schema)
            if kind != "bool":
                problems.append(f"{where}, filter: must be a bool expression, got {kind} "
                                f"({view.filter!r})")
        except ExprError as e:
            problems.append(f"{where}, filter: {e}")
    if not view.features:
        problems.append(f"{where}: needs at least one feature (e.g. agg.count(windows=['1d'], "
                        f"name='events'))")
    seen: set[str] = set()
    for f in view.features:
        at = f"{where}, feature {f.name!r}"
        if why := check_identifier("feature", f.name):
            problems.append(f"{where}, {why}")
        if f.name in seen:
            problems.append(f"{at}: duplicate feature name")
        seen.add(f.name)
        if f.name in view.join_keys:
            problems.append(f"{at}: same name as a join key")
        if f.window is not None and (why := f.window.check()):
            problems.append(f"{at}: {why}")
        if f.window is None and view.feature_ttl_us(f) is None:
            problems.append(f"{at}: a plain last() needs a ttl: the view's (ttl='30d') or "
                            f"its own (agg.last(..., ttl='3d'))")
        if f.expr is None:
            if f.function != "count":
                problems.append(f"{at}: {f.function} needs an expression")
            continue
        try:
            dtype = ex.infer_dtype(f.expr, schema)
        except ExprError as e:
            problems.append(f"{at}: {e}")
            continue
        if dtype not in _INPUT_TYPES[f.function]:
            problems.append(f"{at}: {f.function} expects {' or '.join(_INPUT_TYPES[f.function])},"
                            f" got {dtype} ({f.expr!r})")
    return problems


def validate(defs: Definitions) -> None:
    """Raise one DefinitionError listing every problem, one per line."""
    problems: list[str] = []
    for view in defs.views.values():
        problems.extend(view_problems(view))
    # Entities and sources no view uses are registered too; those in views were checked above.
    in_views = {id(x) for v in defs.views.values() for x in (v.source, *v.entities)}
    for entity in defs.entities.values():
        if id(entity) not in in_views:
            problems.extend(entity_problems(entity))
    for source in defs.sources.values():
        if id(source) not in in_views:
            problems.extend(source_problems(source))
    features = {f"{v.name}:{f.name}" for v in defs.views.values() for f in v.features}
    for service in defs.services.values():
        if why := check_identifier("feature service", service.name):
            problems.append(why)
        for ref in service.features:
            if ref not in features:
                problems.append(f"feature service {service.name!r}: unknown feature {ref!r} "
                                f"(expected 'view:feature')")
    if problems:
        raise DefinitionError("\n".join(problems))
