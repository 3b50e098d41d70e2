"""Names that become Redis keys, Parquet folders, Feast objects and SQL columns.

A name of a feature view, entity, source, feature or feature service, and a join key or derived
column, must be an identifier: ASCII letters, digits and ``_``, not starting with a digit. So a
view named ``"../evil"`` can never make the offline store write outside its folder.

Example:
    >>> check_identifier("feature view", "user_spend") is None
    True
    >>> check_identifier("feature view", "../evil")
    "feature view '../evil' is not an identifier (expected ASCII letters, digits and _, not starting with a digit)"
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

#: What every name must match, whole (``fullmatch``: a trailing newline does not pass).
IDENTIFIER_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
IDENTIFIER = re.compile(IDENTIFIER_PATTERN)


def is_identifier(name: object) -> bool:
    """Whether ``name`` is a str matching :data:`IDENTIFIER_PATTERN`."""
    return isinstance(name, str) and IDENTIFIER.fullmatch(name) is not None


def check_identifier(kind: str, name: object) -> str | None:
    """None when ``name`` is a valid identifier, else one line naming ``kind`` and the value.

    Args:
        kind: What the name names, e.g. ``"feature view"``, ``"join key"``.
        name: The value to check (anything: a non-str is reported too).
    """
    if is_identifier(name):
        return None
    if not isinstance(name, str):
        return f"{kind} {name!r} is a {type(name).__name__}, expected a str identifier"
    return (f"{kind} {name!r} is not an identifier (expected ASCII letters, digits and _, "
            f"not starting with a digit)")


__all__ = ["IDENTIFIER", "IDENTIFIER_PATTERN", "check_identifier", "cut", "is_identifier",
           "shown"]

#: The longest repr an error message echoes of what a caller gave (a name, a key, a value).
SHOWN_CHARS = 80


def shown(value: object) -> str:
    """``repr(value)``, cut to :data:`SHOWN_CHARS` with its full length said: an error about a
    500 KB feature name or key stays one readable line (and a small HTTP answer).

    Example:
        >>> shown("user_id")
        "'user_id'"
        >>> shown("x" * 1000)[55:]
        'xxxxx... (1,002 characters)'
    """
    return cut(repr(value), SHOWN_CHARS)


def cut(text: str, limit: int) -> str:
    """``text``, or its first ``limit - 20`` characters and its full length when longer."""
    if len(text) <= limit:
        return text
    return f"{text[:limit - 20]}... ({len(text):,} characters)"


def did_you_mean(name: str, names: Iterable[str]) -> str:
    """`` (did you mean 'a', 'b'?)`` for up to three close names; empty when none is close
    (or ``name`` is far longer than any name could be close to)."""
    names = list(names)
    if len(name) > 2 * max(map(len, names), default=0) + 10:
        return ""
    near = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(repr(n) for n in near)}?)" if near else ""
