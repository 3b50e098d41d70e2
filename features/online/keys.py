"""Redis key names of the online store.

``<project>:{<entity>}:<view>:<fingerprint[:16]>:v<format>`` holds an entity's window value, the
same with ``:L`` its lifetime value and with ``:O`` the stream's offsets applied to it; the tag
``{_materialized}`` holds materialize's state of a view. The format version
(``codec.VERSION``) is in the name, so a new byte layout never decodes values written in an old
one. ``{<entity>}`` is a Redis Cluster hash tag: every key of one entity, across views, lands in
one slot, so one entity's read is one slot however many views it spans. The fingerprint names
the rules: after a rule change the new rules never read old state. :func:`parse` reads a name
back (``tessera online gc`` tells current keys from stale ones with it).

The entity part is the join-key values, comma separated; in string values ``\\``, ``,`` and ``}``
are escaped so that no two entities share a key and the hash tag always closes where it should.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from features.online.codec import VERSION

FINGERPRINT_CHARS = 16
LIFETIME = ":L"  # after a window key: the entity's lifetime value
OFFSETS = ":O"  # after a window key: the stream offsets applied to the entity
STATE_TAG = "_materialized"  # the hash tag of materialize's state keys (never an entity's)

# what follows a key's hash tag: ":<view>:<fingerprint>:v<format>" and an optional suffix
_TAIL = re.compile(r":([A-Za-z_][A-Za-z0-9_]*):([0-9a-f]{" + str(FINGERPRINT_CHARS)
                   + r"}):v([0-9]+)(" + LIFETIME + "|" + OFFSETS + ")?")
_KINDS = {None: "window", LIFETIME: "lifetime", OFFSETS: "offsets"}


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
    return window_key(project, view, fingerprint, tag) + LIFETIME


def state_key(project: str, view: str, fingerprint: str) -> str:
    """Where materialization records what it last wrote for a view (its own hash tag)."""
    return f"{project}:{{{STATE_TAG}}}:{view}:{fingerprint[:FINGERPRINT_CHARS]}:v{VERSION}"


def parse(project: str, key: str) -> tuple[str, str, int, str] | None:
    """(view, fingerprint[:16], format, kind) of a key of ``project``'s layout, kind one of
    window, lifetime, offsets, state; None for any other key. The hash tag ends at its first
    ``}`` (string join keys escape theirs)."""
    head = project + ":{"
    if not key.startswith(head):
        return None
    close = key.find("}", len(head))
    m = _TAIL.fullmatch(key, close + 1) if close > 0 else None
    if m is None:
        return None
    kind = _KINDS[m.group(4)]
    if key[len(head):close] == STATE_TAG:
        if kind != "window":
            return None
        kind = "state"
    return m.group(1), m.group(2), int(m.group(3)), kind
