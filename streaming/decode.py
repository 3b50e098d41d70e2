"""Kafka message values into typed rows of a source's schema; bad messages with their reason.

A decoder turns a micro-batch of raw values into a Polars frame with the source's columns (typed
as the schema says, times as UTC µs) and ``__i``, the index of the message each row came from,
plus one :class:`Bad` per message it could not use. Decoders are pluggable
(:class:`Decoder`); :class:`JsonDecoder` is the default: one JSON object per message, fields
named as in the source schema (extra fields ignored), times as ISO-8601 strings
(``2026-11-29T10:00:00.123456Z``, any UTC offset). Each message is validated alone with msgspec
against a struct built from the schema, so one bad message never costs its neighbours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from features.definitions import Source

if TYPE_CHECKING:
    import polars as pl

# Reasons a message goes to the dead-letter topic (the ``tessera.reason`` header).
UNDECODABLE = "undecodable"
MISSING_FIELD = "missing_field"
MISTYPED_FIELD = "mistyped_field"
NULL_TIME = "null_time"
NULL_KEY = "null_key"
TOO_LATE = "too_late"
TOO_EARLY = "too_early"  # stamped more than stream.max_future after the consumer's clock
RULE_ERROR = "rule_error"
OVERFLOW = "overflow"  # would take an entity's integer sum out of int64 (docs/tiles.md)
EXPECTATION = "expectation"  # failed a row-level expectation of the source (features.expect)
REASONS = (UNDECODABLE, MISSING_FIELD, MISTYPED_FIELD, NULL_TIME, NULL_KEY, TOO_LATE, TOO_EARLY,
           RULE_ERROR, OVERFLOW, EXPECTATION)

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%.f%#z"


@dataclass(frozen=True)
class Bad:
    """One message that cannot be applied: its index in the batch, reason and a detail line."""

    index: int
    reason: str
    detail: str
    view: str | None = None  # set when only one view rejects it (null key, too late, rule)


class Decoder(Protocol):
    def decode(self, values: Sequence[bytes | None]) -> tuple[pl.DataFrame, list[Bad]]:
        """(rows with the source columns and ``__i``, bad messages)."""
        ...


class JsonDecoder:
    """JSON objects, validated per message against the source schema."""

    def __init__(self, source: Source) -> None:
        import msgspec

        self.source = source
        i64 = msgspec.Meta(ge=-(2**63), le=2**63 - 1)
        from typing import Annotated

        python: dict[str, Any] = {"int64": Annotated[int, i64], "float64": float, "bool": bool,
                                  "string": str, "timestamp": str}
        fields = [(name, python[dtype] | None) for name, dtype in source.schema.items()]
        self._names = list(source.schema)
        # gc=False: the fields are scalars, so no cycles; a batch of 20k tracked structs set
        # off the collector (and its passes over every tracked object) dozens of times
        self._struct = msgspec.defstruct(f"{source.name}_event", fields,  # type: ignore[arg-type]
                                         gc=False)
        self._decoder = msgspec.json.Decoder(self._struct)
        self._batch = msgspec.json.Decoder(list[self._struct])  # type: ignore[name-defined]
        self._astuple = msgspec.structs.astuple
        self._errors = (msgspec.ValidationError, msgspec.DecodeError)

    def decode(self, values: Sequence[bytes | None]) -> tuple[pl.DataFrame, list[Bad]]:
        frame = self._all_good(values)
        if frame is not None:
            return self._times(frame, [])
        return self._one_by_one(values)

    def _all_good(self, values: Sequence[bytes | None]) -> pl.DataFrame | None:
        """The common case, at C/Rust speed: msgspec validates the whole batch in one call and
        Polars parses it as NDJSON. None when any message is bad (then :meth:`_one_by_one`)."""
        import io

        import msgspec
        import polars as pl

        if not values or None in values:  # a C-level scan
            return None
        try:
            checked = self._batch.decode(b"[" + b",".join(values) + b"]")  # type: ignore[arg-type]
        except (msgspec.ValidationError, msgspec.DecodeError):
            return None
        lines = b"\n".join(values)  # type: ignore[arg-type]
        # a message holding two objects ("{..},{..}") or a newline would shift the rows
        if len(checked) != len(values) or lines.count(b"\n") != len(values) - 1:
            return None
        try:
            frame = pl.read_ndjson(io.BytesIO(lines), schema=self._ndjson_schema())
        except Exception:  # Polars refusing what msgspec accepted: the careful path decides
            return None
        if frame.height != len(values):
            return None
        return frame.with_columns(pl.int_range(0, frame.height, dtype=pl.Int64).alias("__i"))

    def _ndjson_schema(self) -> dict[str, Any]:
        import polars as pl

        return {n: (pl.String if d == "timestamp" else _pl_type(d))
                for n, d in self.source.schema.items()}

    def _one_by_one(self, values: Sequence[bytes | None]) -> tuple[pl.DataFrame, list[Bad]]:
        import msgspec
        import polars as pl

        rows: list[tuple[Any, ...]] = []
        index: list[int] = []
        bad: list[Bad] = []
        decode, astuple = self._decoder.decode, self._astuple
        for i, value in enumerate(values):
            if value is None:
                bad.append(Bad(i, UNDECODABLE, "message has no value (a tombstone)"))
                continue
            try:
                rows.append(astuple(decode(value)))
                index.append(i)
            except msgspec.ValidationError as e:
                text = str(e)
                reason = MISSING_FIELD if text.startswith("Object missing") else MISTYPED_FIELD
                if text.startswith("Expected `object`"):
                    reason = UNDECODABLE
                bad.append(Bad(i, reason, text))
            except msgspec.DecodeError as e:
                bad.append(Bad(i, UNDECODABLE, str(e)))
        schema = self.source.schema
        columns: list[Any] = (list(zip(*rows, strict=True)) if rows
                              else [[] for _ in self._names])
        data = {}
        for name, values_ in zip(self._names, columns, strict=True):
            dtype = schema[name]
            if dtype == "timestamp":
                data[name] = pl.Series(name, values_, pl.String)
            else:
                data[name] = pl.Series(name, values_, _pl_type(dtype))
        frame = pl.DataFrame(data).with_columns(pl.Series("__i", index, pl.Int64))
        return self._times(frame, bad)

    def _times(self, frame: pl.DataFrame, bad: list[Bad]) -> tuple[pl.DataFrame, list[Bad]]:
        """Parse the ISO-8601 time columns; a text that is no time is a mistyped field."""
        import polars as pl

        times = [n for n, d in self.source.schema.items() if d == "timestamp"]
        if times:
            parsed = frame.with_columns(
                pl.col(t).str.to_datetime(TIME_FORMAT, time_unit="us", time_zone="UTC",
                                          strict=False) for t in times)
            if all(parsed[t].null_count() == frame[t].null_count() for t in times):
                bad.sort(key=lambda b: b.index)
                return parsed, bad  # every text was a time (the common case, one pass)
            failed = {t: parsed[t].is_null() & frame[t].is_not_null() for t in times}
            broken = pl.zeros(frame.height, pl.Boolean, eager=True)
            for t, f in failed.items():
                for i, text in frame.filter(f & ~broken).select("__i", t).iter_rows():
                    bad.append(Bad(i, MISTYPED_FIELD,
                                   f"Expected an ISO-8601 time, got {text!r} - at `$.{t}`"))
                broken = broken | f
            frame = parsed.filter(~broken) if broken.any() else parsed
        bad.sort(key=lambda b: b.index)
        return frame, bad


def _pl_type(dtype: str) -> Any:
    import polars as pl

    return {"int64": pl.Int64, "float64": pl.Float64, "bool": pl.Boolean,
            "string": pl.String}[dtype]


__all__ = ["REASONS", "Bad", "Decoder", "JsonDecoder"]
