"""Validation of definitions before anything is registered or run.

Every problem is one line naming the view and the field, and all problems are reported at once.
"""

from __future__ import annotations

from features import expr as ex
from features.definitions import DTYPES, FeatureView
from features.errors import DefinitionError, ExprError
from features.repo import Definitions

_NUMERIC = ("int64", "float64")
_INPUT_TYPES = {
    "count": DTYPES, "last": DTYPES,
    "sum": _NUMERIC, "mean": _NUMERIC, "stddev": _NUMERIC,
    "min": (*_NUMERIC, "timestamp"), "max": (*_NUMERIC, "timestamp"),
}


def view_problems(view: FeatureView) -> list[str]:
    """What is wrong with one view (empty when it is valid)."""
    where = f"feature view {view.name!r}"
    problems: list[str] = []
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
        key = entity.join_key
        if key not in schema:
            problems.append(f"{where}, entity {entity.name!r}: join key {key!r} is not a column "
                            f"of source {view.source.name!r} (columns: {', '.join(schema)})")
        elif schema[key] != entity.dtype:
            problems.append(f"{where}, entity {entity.name!r}: join key {key!r} is "
                            f"{schema[key]} in the source, but the entity says {entity.dtype}")
    for name, node in view.derived:
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
    seen: set[str] = set()
    for f in view.features:
        at = f"{where}, feature {f.name!r}"
        if f.name in seen:
            problems.append(f"{at}: duplicate feature name")
        seen.add(f.name)
        if f.name in view.join_keys:
            problems.append(f"{at}: same name as a join key")
        if f.window is not None and (why := f.window.check()):
            problems.append(f"{at}: {why}")
        if f.window is None and view.ttl is None:
            problems.append(f"{at}: a plain last() needs the view's ttl (e.g. ttl='30d')")
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
    features = {f"{v.name}:{f.name}" for v in defs.views.values() for f in v.features}
    for service in defs.services.values():
        for ref in service.features:
            if ref not in features:
                problems.append(f"feature service {service.name!r}: unknown feature {ref!r} "
                                f"(expected 'view:feature')")
    if problems:
        raise DefinitionError("\n".join(problems))
