"""The streaming consumer's error."""

from __future__ import annotations

from features.errors import TesseraError


class StreamError(TesseraError, RuntimeError):
    """The stream cannot start or cannot go on (named cause)."""


__all__ = ["StreamError"]
