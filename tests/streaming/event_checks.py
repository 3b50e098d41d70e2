"""Exact comparisons of event values, shared by the encoding and the Kafka round-trip tests."""

from __future__ import annotations

import struct
from datetime import UTC, datetime

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)  # "now" of the generated events


def bits(x: float) -> bytes:
    """The IEEE 754 bits of ``x``: equal bits, not close values."""
    return struct.pack("<d", x)


def parse_ts(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)
