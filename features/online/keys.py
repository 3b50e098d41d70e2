"""Redis key names of the online store.

``<project>:{<entity>}:<view>:<fingerprint[:16]>:v<format>`` holds an entity's window value and
the same with ``:L`` its lifetime value. The format version (``codec.VERSION``) is in the name, so
a new byte layout never decodes values written in an old one. ``{<entity>}`` is a Redis Cluster hash tag: every key of one
entity, across views, lands in one slot, so one entity's read is one slot however many views it
spans. The fingerprint names the rules: after a rule change the new rules never read old state.

The entity part is the join-key values, comma separated; in string values ``\\``, ``,`` and ``}``
are escaped so that no two entities share a key and the hash tag always closes where it should.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from features.online.codec import VERSION

FINGERPRINT_CHARS = 16


def entity_tag(values: Sequence[Any]) -> str:
    """The hash-tag text of one entity's join-key values (int or str)."""
    if len(values) == 1 and type(values[0]) is int:  # one int key: the common case
        return str(values[0])
    parts = []
    for v in values:
        if isinstance(v, str):
            parts.append("s" + v.replace("\\", "\\\\").replace(",", "\\,").replace("}", "\\]"))
        else:
            parts.append(str(int(v)))
    return ",".join(parts)


def prefix(project: str, view: str, fingerprint: str) -> tuple[str, str]:
    """(text before the tag, text after it) of a view's window keys."""
    return f"{project}:{{", f"}}:{view}:{fingerprint[:FINGERPRINT_CHARS]}:v{VERSION}"


def window_key(project: str, view: str, fingerprint: str, tag: str) -> str:
    head, tail = prefix(project, view, fingerprint)
    return head + tag + tail


def lifetime_key(project: str, view: str, fingerprint: str, tag: str) -> str:
    return window_key(project, view, fingerprint, tag) + ":L"


def state_key(project: str, view: str, fingerprint: str) -> str:
    """Where materialization records what it last wrote for a view (its own hash tag)."""
    return f"{project}:{{_materialized}}:{view}:{fingerprint[:FINGERPRINT_CHARS]}:v{VERSION}"
