"""Serialisation and traversal of the expression IR: canonical JSON (:func:`to_dict`,
:func:`from_dict`, :func:`to_json`, :func:`from_json`), the :func:`fingerprint` that names a
rule in stores and manifests, timestamps to and from epoch microseconds, and :func:`walk` and
:func:`columns`. The module imports no engine.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

from features.errors import ExprError
from features.expr_nodes import Call, Col, IntoExpr, Lit, Node, _into
from features.expr_vocab import UTC, Op, _ts_to_json

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=UTC)


def to_dict(node: IntoExpr) -> dict[str, Any]:
    """The JSON-ready dict of a node, for embedding in larger documents.

    Shapes: ``{"col": name}``, ``{"lit": value, "dtype": dtype}`` (timestamps as
    ``"YYYY-MM-DDTHH:MM:SS.ffffffZ"``), ``{"op": name, "args": [...], "options": {...}}``
    (``options`` only when the op has some).
    """
    node = _into(node)
    if isinstance(node, Col):
        return {"col": node.name}
    if isinstance(node, Lit):
        value = node.value
        if node.dtype == "timestamp" and value is not None:
            value = _ts_to_json(value)
        return {"lit": value, "dtype": node.dtype}
    if isinstance(node, Call):
        out: dict[str, Any] = {"op": node.op.value, "args": [to_dict(a) for a in node.args]}
        if node.options:
            out["options"] = dict(node.options)
        return out
    raise ExprError(f"not an expression node: {node!r}")


def from_dict(data: Mapping[str, Any]) -> Node:
    """Rebuild a node from :func:`to_dict` output, validating every field.

    Raises:
        ExprError: on an unknown op, an unexpected key, or an invalid literal or option.
    """
    if not isinstance(data, Mapping):
        raise ExprError(f"an expression must be a JSON object, got {data!r}")
    keys = set(data)
    if keys == {"col"}:
        return Col(data["col"])
    if keys == {"lit", "dtype"}:
        if data["dtype"] == "int64" and isinstance(data["lit"], float):
            raise ExprError(f"int64 literal written as a float: {data['lit']!r}")
        return Lit(data["lit"], data["dtype"])
    if keys in ({"op", "args"}, {"op", "args", "options"}):
        try:
            op = Op(data["op"])
        except ValueError:
            raise ExprError(f"unknown operation {data['op']!r} (known: "
                            f"{', '.join(sorted(o.value for o in Op))})") from None
        if not isinstance(data["args"], list):
            raise ExprError(f"'args' of {op.value!r} must be a list, got {data['args']!r}")
        options = data.get("options", {})
        if not isinstance(options, Mapping):
            raise ExprError(f"'options' of {op.value!r} must be an object, got {options!r}")
        return Call(op, tuple(from_dict(a) for a in data["args"]), tuple(options.items()))
    raise ExprError(f"not an expression node (unexpected keys {sorted(keys)}): {dict(data)!r}")


def to_json(node: IntoExpr) -> str:
    """Canonical JSON: sorted keys, no whitespace, ASCII, floats that round-trip exactly."""
    return json.dumps(to_dict(node), sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)


def from_json(text: str) -> Node:
    """Parse :func:`to_json` output (any key order or whitespace is accepted)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExprError(f"expression JSON is malformed: {exc}") from None
    return from_dict(data)


def fingerprint(node: IntoExpr) -> str:
    """SHA-256 hex digest of the canonical JSON: the rule's identity in stores and manifests."""
    return hashlib.sha256(to_json(node).encode("ascii")).hexdigest()


def to_epoch_micros(value: _dt.datetime) -> int:
    """Microseconds since 1970-01-01T00:00:00Z of a datetime (naive read as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_epoch_micros(micros: int) -> _dt.datetime:
    """The aware UTC datetime ``micros`` microseconds after the Unix epoch."""
    return _EPOCH + _dt.timedelta(microseconds=micros)


def walk(node: IntoExpr) -> Iterator[Node]:
    """Every node of the tree, parents before children."""
    stack = [_into(node)]
    while stack:
        current = stack.pop()
        yield current
        if isinstance(current, Call):
            stack.extend(reversed(current.args))


def columns(node: IntoExpr) -> frozenset[str]:
    """Names of the columns the expression reads."""
    return frozenset(n.name for n in walk(node) if isinstance(n, Col))
