"""Event values shared by the encoding and the Kafka round-trip tests (bit-for-bit floats:
``tests.reference.expr_eval.same_bits``)."""

from __future__ import annotations

from datetime import UTC, datetime

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)  # "now" of the generated events


def parse_ts(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)
