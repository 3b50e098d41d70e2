"""Writing a source's events to its Kafka topic: the producing side of streaming.

``tessera produce`` (:func:`produce_cli`) takes events from a Parquet file or folder or from
the example generator (:mod:`pipelines.datagen`), puts them in event-time order, encodes each
as one JSON object (:func:`encode_events`) and writes them to the source's topic with a
message key per entity (:func:`produce`), optionally paced to a rate. The streaming consumer
(``tessera stream``) reads them back; tests and benchmarks use the same functions.

The wire format, one Kafka message per event:

- value: a JSON object with exactly the source schema's fields, in schema order. ``int64`` and
  ``float64`` are JSON numbers (floats in their shortest round-trip form, so decoding gives the
  same bits), ``bool`` is ``true``/``false``, ``string`` a JSON string, ``timestamp`` an
  ISO-8601 UTC string with microseconds and a ``Z`` (``"2026-11-29T10:00:00.123456Z"``).
  A null is ``null``. JSON has no NaN or infinity: those become ``null``, with a warning.
- key: the key field's value as text, UTF-8 (``b"1000042"`` for ``user_id`` 1000042), so one
  entity always lands in one partition (Kafka's murmur2 partitioner, as the Java client);
  a null key is sent without a key.
- record timestamp: the time of sending (Kafka's CreateTime), not the event time: the
  broker rejects timestamps more than an hour ahead and would expire week-old ones at once.

Event-time order: rows are sorted by event time, stably (ties keep source order). A row with a
null event time keeps its place after the row before it, as it would arrive in a live stream.

polars, kafka-python and rich are imported inside the functions, so importing this module is
cheap (the CLI imports it).

Example:
    >>> from streaming.produce import encode_events, produce
    >>> payloads = encode_events(df, transactions)                    # doctest: +SKIP
    >>> keys = [str(u).encode() for u in df["user_id"]]               # doctest: +SKIP
    >>> produce("127.0.0.1:9392", "transactions", payloads, keys, rate=1000)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from features.errors import TesseraError

if TYPE_CHECKING:
    import polars as pl

    from features.config import RepoConfig
    from features.definitions import Source
    from features.repo import Definitions

__all__ = [
    "DEFAULT_DAYS",
    "DEFAULT_EVENTS",
    "DEFAULT_PARTITIONS",
    "TIMESTAMP_FORMAT",
    "ProduceError",
    "ProduceSummary",
    "ProduceWarning",
    "conform",
    "encode_events",
    "encode_keys",
    "event_order",
    "generated_events",
    "produce",
    "produce_cli",
    "read_events_file",
    "resolve_stream",
]

#: How a ``timestamp`` field is written: ISO-8601, UTC, microseconds, ``Z``.
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S%.6fZ"
DEFAULT_PARTITIONS = 6
DEFAULT_EVENTS = 100_000
DEFAULT_DAYS = 7
#: Pacing: the token bucket is topped up every slice and holds at most BURST_S of tokens.
SLICE_S = 0.01
BURST_S = 0.1
#: Sends between two looks at the clock (and progress updates) when not paced.
_UNPACED_CHUNK = 2048
#: Seconds for Kafka to acknowledge what is still buffered at the end.
FLUSH_TIMEOUT_S = 60.0
_KAFKA_TIMEOUT_MS = 10_000


class ProduceError(TesseraError):
    """Events could not be read, encoded or written to Kafka; the message says which and why."""


class ProduceWarning(UserWarning):
    """Events were produced, but something about them deserves a look (e.g. NaN as null)."""


@dataclass(frozen=True)
class ProduceSummary:
    """What :func:`produce` wrote."""

    topic: str
    partitions: int
    sent: int  # acknowledged by Kafka (acks=all)
    requested: int  # events given; more than ``sent`` only when max_seconds stopped it
    seconds: float  # from the first send to the last acknowledgement
    rate: float | None = None  # the pace asked for, events/s (None: as fast as possible)
    max_seconds: float | None = None

    @property
    def events_per_second(self) -> float:
        """Events acknowledged per wall-clock second."""
        return self.sent / self.seconds if self.seconds > 0 else float("inf")

    @property
    def stopped_early(self) -> bool:
        """True when ``max_seconds`` ran out before every event was sent."""
        return self.sent < self.requested

    def format(self) -> str:
        """One line for a CLI to print."""
        plural = "" if self.partitions == 1 else "s"
        line = (f"produced {self.sent:,} events in {self.seconds:.2f} s "
                f"({self.events_per_second:,.0f} events/s) to topic {self.topic!r} "
                f"({self.partitions} partition{plural})")
        if self.rate is not None:
            line += f", paced to {self.rate:,.0f}/s"
        if self.stopped_early:
            line += (f"; stopped by --max-seconds {self.max_seconds:g} after {self.sent:,} of "
                     f"{self.requested:,}")
        return line


# --- reading and encoding -------------------------------------------------------------------


def _pl_type(kind: str) -> pl.DataType:
    import polars as pl

    return {"int64": pl.Int64(), "float64": pl.Float64(), "bool": pl.Boolean(),
            "string": pl.String(), "timestamp": pl.Datetime("us", "UTC")}[kind]


def _cast(name: str, kind: str, got: pl.DataType) -> pl.Expr | None:
    """The expression giving column ``name`` its schema type, or None when it cannot.

    The same widenings as the batch engines: any integer to int64, any number to float64,
    categoricals to string, a naive datetime read as UTC, an aware one converted to UTC, a date
    as its UTC midnight, every datetime at microsecond precision.
    """
    import polars as pl

    col = pl.col(name)
    if got == pl.Null:  # a column of nulls only
        return col.cast(_pl_type(kind))
    if kind == "int64" and got.is_integer():
        return col.cast(pl.Int64)
    if kind == "float64" and got.is_numeric():
        return col.cast(pl.Float64)
    if kind == "bool" and got == pl.Boolean:
        return col
    if kind == "string" and (got == pl.String or isinstance(got, pl.Categorical | pl.Enum)):
        return col.cast(pl.String)
    if kind == "timestamp" and isinstance(got, pl.Datetime):
        utc = (col.dt.replace_time_zone("UTC") if got.time_zone is None
               else col.dt.convert_time_zone("UTC"))
        return utc.dt.cast_time_unit("us")
    if kind == "timestamp" and got == pl.Date:
        return col.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    return None


def conform(df: pl.DataFrame, source: Source, where: str = "the events") -> pl.DataFrame:
    """The source schema's columns of ``df``, in schema order, each of its schema type.

    Extra columns are dropped. ``where`` names the data in errors (``"file 'x.parquet'"``).

    Raises:
        ProduceError: a schema column is missing, or its type cannot become the schema's.
    """
    import polars as pl

    missing = [name for name in source.schema if name not in df.columns]
    if missing:
        raise ProduceError(
            f"{where} has no {_columns(missing)} of source {source.name!r} "
            f"(it has: {', '.join(df.columns) or 'no columns'})")
    exprs = []
    for name, kind in source.schema.items():
        expr = _cast(name, kind, df.schema[name])
        if expr is None:
            raise ProduceError(f"{where}: column {name!r} is {df.schema[name]}, but source "
                               f"{source.name!r} declares it {kind}")
        exprs.append(expr.alias(name))
    try:
        return df.select(exprs)
    except pl.exceptions.PolarsError as e:  # e.g. a UInt64 beyond the int64 range
        raise ProduceError(f"{where}: cannot convert to the schema of source "
                           f"{source.name!r}: {_first_line(e)}") from None


def _columns(names: Sequence[str]) -> str:
    """``column 'a'`` or ``columns 'a', 'b'``."""
    return ("column " if len(names) == 1 else "columns ") + ", ".join(map(repr, names))


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def encode_events(df: pl.DataFrame, source: Source) -> list[bytes]:
    """One UTF-8 JSON object per row of ``df``: the source schema's fields (module docstring).

    Vectorised (Polars writes the JSON): about half a million events per second on one core.
    Non-finite floats (NaN, ±inf), which JSON cannot hold, become ``null`` with a
    :class:`ProduceWarning` saying how many and where.

    Raises:
        ProduceError: ``df`` lacks a schema column or has one of an incompatible type.
    """
    import io

    import polars as pl

    frame = conform(df, source)
    floats = [name for name, kind in source.schema.items() if kind == "float64"]
    if floats and frame.height:
        bad = frame.select([(~pl.col(c).is_finite()).sum().alias(c) for c in floats]).row(0)
        found = {c: n for c, n in zip(floats, bad, strict=True) if n}
        if found:
            where = ", ".join(f"{n:,} in {c!r}" for c, n in found.items())
            warnings.warn(f"{sum(found.values()):,} NaN or infinite values ({where}) are sent "
                          f"as JSON null: JSON has no such numbers", ProduceWarning,
                          stacklevel=2)
    stamps = [name for name, kind in source.schema.items() if kind == "timestamp"]
    if stamps:
        frame = frame.with_columns(pl.col(stamps).dt.strftime(TIMESTAMP_FORMAT))
    if not frame.height:
        return []
    buffer = io.BytesIO()
    frame.write_ndjson(buffer)
    lines = buffer.getvalue().split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    if len(lines) != frame.height:  # a raw newline inside a value would break this: never
        raise ProduceError(f"encoding gave {len(lines)} lines for {frame.height} events")
    return lines


def encode_keys(df: pl.DataFrame, field: str) -> list[bytes | None]:
    """Each row's message key: the value of ``field`` as text, UTF-8 (None where null).

    Raises:
        ProduceError: ``field`` is not a column, or neither an integer nor a string column.
    """
    import polars as pl

    if field not in df.columns:
        raise ProduceError(f"key field {field!r} is not a column of the events "
                           f"(columns: {', '.join(df.columns)})")
    column = df.get_column(field)
    if not (column.dtype.is_integer() or column.dtype == pl.String
            or isinstance(column.dtype, pl.Categorical | pl.Enum)):
        raise ProduceError(f"key field {field!r} is {column.dtype}: expected an integer or a "
                           f"string column (an entity join key)")
    return column.cast(pl.String).cast(pl.Binary).to_list()


def event_order(df: pl.DataFrame, timestamp_field: str) -> pl.DataFrame:
    """``df`` sorted by event time, stably: ties keep their order (the source order).

    A row with a null event time stays right after the row it followed (leading ones first),
    the way such a row would arrive in a live stream.
    """
    import polars as pl

    key = pl.col(timestamp_field).forward_fill()
    return df.sort(key, nulls_last=False, maintain_order=True, multithreaded=True)


def read_events_file(path: Path | str, source: Source) -> pl.DataFrame:
    """The events of a Parquet file, or of every ``*.parquet`` below a folder, conformed.

    Files of a folder are read in lexicographic path order (the source order); names starting
    with ``.`` or ``_`` are skipped, like the batch source reader does. Hive partition folders
    (``date=…``) add no column.

    Raises:
        ProduceError: no such file, nothing to read, a file Polars cannot read as Parquet, or a
            file lacking a schema column (the message names the file and the column).
    """
    import polars as pl

    root = Path(path)
    if root.is_dir():
        files = sorted(p for p in root.rglob("*.parquet")
                       if not any(part.startswith((".", "_"))
                                  for part in p.relative_to(root).parts))
        if not files:
            raise ProduceError(f"--file {str(root)!r}: the folder holds no *.parquet file")
    elif root.is_file():
        files = [root]
    else:
        raise ProduceError(f"--file {str(root)!r}: no such file or folder")
    frames = []
    for file in files:
        where = f"file {str(file)!r}"
        try:
            columns = pl.read_parquet_schema(file)
        except Exception as e:  # polars raises ComputeError/OSError on what is not Parquet
            raise ProduceError(f"{where}: cannot read it as Parquet ({_first_line(e)})") from None
        missing = [name for name in source.schema if name not in columns]
        if missing:
            raise ProduceError(f"{where} has no {_columns(missing)} of source "
                               f"{source.name!r} (it has: {', '.join(columns)})")
        try:
            frame = pl.read_parquet(file, columns=list(source.schema), hive_partitioning=False)
        except Exception as e:
            raise ProduceError(f"{where}: cannot read it as Parquet ({_first_line(e)})") from None
        frames.append(conform(frame, source, where))
    return pl.concat(frames, how="vertical") if len(frames) > 1 else frames[0]


def generated_events(events: int, *, days: int = DEFAULT_DAYS, seed: int = 7,
                     start: datetime | None = None, malformed_rate: float = 0.0,
                     now: datetime | None = None) -> pl.DataFrame:
    """``events`` generated card transactions over the ``days`` before ``now`` (or from
    ``start``), in the generator's order: event time, faulty rows where they were made.

    The generator's malformed rows (``malformed_rate``) are kept: a stream has them too.
    """
    from pipelines.datagen import GenSpec, generate

    if events < 1:
        raise ProduceError(f"--events: expected a whole number >= 1, got {events!r}")
    if days < 1:
        raise ProduceError(f"--days: expected a whole number >= 1, got {days!r}")
    if not 0 <= seed < 2**63:
        raise ProduceError(f"--seed: expected a whole number in [0, 2**63), got {seed!r}")
    if not 0 <= malformed_rate <= 1:  # also refuses NaN
        raise ProduceError(f"--malformed-rate: expected a fraction in [0, 1], got "
                           f"{malformed_rate!r}")
    if start is None:
        start = (now or datetime.now(UTC)) - timedelta(days=days)
    try:
        spec = GenSpec(rows=events, start=start, days=days, seed=seed,
                       malformed_rate=malformed_rate)
    except ValueError as e:
        raise ProduceError(str(e)) from None
    return generate(spec).rechunk()


# --- choosing the stream --------------------------------------------------------------------


def resolve_stream(defs: Definitions, topic: str | None = None, source: str | None = None,
                   key: str | None = None) -> tuple[Source, str, str]:
    """The source, topic and key field ``tessera produce`` writes with.

    - the source: the one named; else the one whose ``kafka_topic`` is ``topic``; else the one
      the feature views stream from (several: name one). A ``topic`` no source declares takes
      the events of the repo's only streaming source (e.g. a scratch topic).
    - the topic: ``topic``, else the source's ``kafka_topic``.
    - the key: ``key``, else the first join key of the first feature view reading the source.

    Raises:
        ProduceError: nothing to choose from, an ambiguous choice, or an unknown name.
    """
    views = list(defs.views.values())
    streamed: list[Source] = []
    for s in [v.source for v in views] + list(defs.sources.values()):
        if s.kafka_topic and all(s is not t for t in streamed):
            streamed.append(s)
    chosen: Source | None = None
    if source is not None:
        sources = {s.name: s for s in [v.source for v in views] + list(defs.sources.values())}
        if source not in sources:
            raise ProduceError(f"--source: no source {source!r} (defined: "
                               f"{', '.join(sorted(sources)) or 'none'})")
        chosen = sources[source]
    elif topic is not None:
        matching = [s for s in streamed if s.kafka_topic == topic]
        if len(matching) == 1 or (not matching and len(streamed) == 1):
            chosen = (matching or streamed)[0]
        elif matching:
            raise ProduceError(f"--topic {topic!r}: sources {', '.join(s.name for s in matching)}"
                               f" all use it; choose one with --source")
        else:
            raise ProduceError(f"--topic {topic!r}: no source uses it, and the repo has "
                               f"{len(streamed)} streaming sources; choose one with --source")
    else:
        read = [s for s in streamed if any(v.source is s for v in views)]
        candidates = read or streamed
        if not candidates:
            raise ProduceError("no source has a kafka_topic: give one to a Source "
                               "(kafka_topic=...) or pass --topic and --source")
        if len(candidates) > 1:
            raise ProduceError("feature views stream from several topics ("
                               + ", ".join(f"{s.kafka_topic} ({s.name})" for s in candidates)
                               + "); choose one with --topic or --source")
        chosen = candidates[0]
    out_topic = topic or chosen.kafka_topic
    if not out_topic:
        raise ProduceError(f"source {chosen.name!r} has no kafka_topic; pass --topic")
    if key is None:
        readers = [v for v in views if v.source is chosen
                   or (v.source.kafka_topic and v.source.kafka_topic == chosen.kafka_topic)]
        if not readers:
            raise ProduceError(f"no feature view reads source {chosen.name!r}, so there is no "
                               f"join key to use as message key; pass --key")
        key = readers[0].join_keys[0]
    if key not in chosen.schema:
        raise ProduceError(f"--key {key!r} is not a field of source {chosen.name!r} "
                           f"(fields: {', '.join(chosen.schema)})")
    return chosen, out_topic, key


# --- sending --------------------------------------------------------------------------------


def _producer(bootstrap: str) -> object:
    """A KafkaProducer for event streams: acks=all, idempotent (ordered), large batches."""
    from kafka import KafkaProducer

    from streaming.kafka_admin import connection_errors, refuse_auto_create, unavailable

    try:
        producer = KafkaProducer(
            bootstrap_servers=bootstrap, client_id="tessera-produce",
            acks="all", enable_idempotence=True,  # retries never reorder nor duplicate
            linger_ms=5, batch_size=512 * 1024, compression_type=None,
            max_block_ms=_KAFKA_TIMEOUT_MS, request_timeout_ms=_KAFKA_TIMEOUT_MS,
            bootstrap_timeout_ms=_KAFKA_TIMEOUT_MS, delivery_timeout_ms=3 * _KAFKA_TIMEOUT_MS,
            allow_auto_create_topics=False)
    except connection_errors(OSError) as e:
        raise unavailable(bootstrap, e) from None
    refuse_auto_create(producer)
    return producer


def _partition_of(keys: Sequence[bytes | None], partitions: Sequence[int]) -> list[int | None]:
    """Each key's partition, exactly as Kafka's default (murmur2) partitioner picks it.

    Computed once per distinct key: the producer's own partitioner costs ~a fifth of each
    send. A null key gets None: the producer picks a partition.
    """
    from kafka.partitioner.default import murmur2

    ordered = sorted(partitions)
    of = {k: ordered[(murmur2(k) & 0x7FFFFFFF) % len(ordered)]
          for k in dict.fromkeys(keys) if k is not None}
    of[None] = None  # type: ignore[index]
    return [of[k] for k in keys]  # type: ignore[index]


def produce(bootstrap: str, topic: str, payloads: Sequence[bytes],
            keys: Sequence[bytes | None], rate: float | None = None,
            max_seconds: float | None = None, progress: bool = False,
            headers: list[tuple[str, bytes]] | None = None) -> ProduceSummary:
    """Send ``payloads[i]`` with key ``keys[i]`` to ``topic``, in order; wait for every ack.

    Args:
        bootstrap: ``host:port[,host:port...]``.
        topic: An existing topic (see :func:`streaming.kafka_admin.ensure_topic`).
        payloads: Message values, in the order to send (event-time order, see
            :func:`event_order`): within a partition Kafka keeps it.
        keys: One key per payload (None: no key, any partition).
        rate: Events per second, paced by a token bucket topped up every ~10 ms (bursts of
            at most 0.1 s of events); None sends as fast as possible.
        max_seconds: Stop sending after this many seconds (what was sent is still flushed).
        progress: Show a rich progress bar on stderr.
        headers: Kafka headers for every message, ``[("name", b"value")]``.

    Returns:
        What was sent and acknowledged, how long it took.

    Raises:
        ProduceError: bad arguments, or Kafka did not acknowledge every event (the message
            says how many and the first error).
        KafkaUnavailableError: no broker answered at ``bootstrap``.
    """
    from streaming.kafka_admin import check_topic_name, connection_errors, unavailable

    check_topic_name(topic)
    if len(keys) != len(payloads):
        raise ProduceError(f"{len(payloads)} payloads but {len(keys)} keys")
    if rate is not None and not (rate > 0 and math.isfinite(rate)):
        raise ProduceError(f"--rate: expected events per second > 0, got {rate!r}")
    if max_seconds is not None and not max_seconds > 0:
        raise ProduceError(f"--max-seconds: expected a number of seconds > 0, got "
                           f"{max_seconds!r}")
    if headers is not None and not all(
            isinstance(h, tuple) and len(h) == 2 and isinstance(h[0], str)
            and isinstance(h[1], bytes) for h in headers):
        raise ProduceError("headers must be a list of (str, bytes) pairs")

    import kafka.errors as errors

    from streaming.kafka_admin import partition_count

    # Asked with the admin client, which never creates it: see kafka_admin.refuse_auto_create.
    if partition_count(bootstrap, topic) is None:
        raise ProduceError(f"topic {topic!r} does not exist at {bootstrap}; create it first "
                           f"(tessera produce does; streaming.kafka_admin.ensure_topic)")
    producer = _producer(bootstrap)
    failed: list[BaseException] = []

    def on_error(error: BaseException) -> None:  # runs on the producer's I/O thread
        failed.append(error)

    try:
        try:
            found = producer.partitions_for(topic)  # type: ignore[attr-defined]
        except errors.KafkaTimeoutError:
            found = None
        if not found:
            raise ProduceError(f"topic {topic!r} at {bootstrap} has no partition with a leader "
                               f"after {_KAFKA_TIMEOUT_MS / 1000:g} s")
        partition_of = _partition_of(keys, list(found))
        sent, seconds = _send_all(producer, topic, payloads, keys, partition_of, rate,
                                  max_seconds, progress, headers, on_error)
        t_flush = time.perf_counter()
        try:
            producer.flush(timeout=FLUSH_TIMEOUT_S)  # type: ignore[attr-defined]
        except errors.KafkaTimeoutError:
            raise ProduceError(f"Kafka at {bootstrap} did not acknowledge the last events "
                               f"within {FLUSH_TIMEOUT_S:g} s") from None
        seconds += time.perf_counter() - t_flush
    except connection_errors() as e:
        raise unavailable(bootstrap, e) from None
    finally:
        producer.close(timeout=5)  # type: ignore[attr-defined]
    if failed:
        first = failed[0]
        raise ProduceError(f"{len(failed):,} of {sent:,} events were not written to topic "
                           f"{topic!r} at {bootstrap}: {type(first).__name__}: "
                           f"{_first_line(first)}")
    return ProduceSummary(topic=topic, partitions=len(found), sent=sent,
                          requested=len(payloads), seconds=seconds, rate=rate,
                          max_seconds=max_seconds)


def _send_all(producer: object, topic: str, payloads: Sequence[bytes],
              keys: Sequence[bytes | None], partition_of: Sequence[int | None],
              rate: float | None, max_seconds: float | None, progress: bool,
              headers: list[tuple[str, bytes]] | None,
              on_error: object) -> tuple[int, float]:
    """The send loop of :func:`produce`: (events handed to the producer, seconds)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    send = producer.send  # type: ignore[attr-defined]
    n = len(payloads)
    capacity = max(1.0, (rate or 0.0) * BURST_S)
    tokens = 1.0  # the first event goes at once
    bar = Progress(TextColumn(f"[bold]produce[/] {topic}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
                   disable=not progress)
    i = 0
    with bar:
        task = bar.add_task("", total=n)
        t0 = last = time.perf_counter()
        deadline = t0 + max_seconds if max_seconds is not None else math.inf
        while i < n:
            now = time.perf_counter()
            if now >= deadline:
                break
            if rate is None:
                j = min(n, i + _UNPACED_CHUNK)
            else:
                tokens = min(capacity, tokens + (now - last) * rate)
                last = now
                j = min(n, i + int(tokens))
                tokens -= j - i
            for k in range(i, j):
                send(topic, value=payloads[k], key=keys[k], partition=partition_of[k],
                     headers=headers).add_errback(on_error)
            i = j
            bar.update(task, completed=i)
            if rate is not None and i < n:
                wait = max(SLICE_S, (1.0 - tokens) / rate)
                time.sleep(max(0.0, min(wait, deadline - time.perf_counter())))
    return i, time.perf_counter() - t0


# --- the command ----------------------------------------------------------------------------


def _parse_start(value: datetime | date | str | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    try:
        return datetime.fromisoformat(value.strip())
    except ValueError:
        raise ProduceError(f"--start: expected an ISO date or datetime like 2026-01-05 or "
                           f"2026-01-05T12:00:00Z, got {value!r}") from None


def produce_cli(cfg: RepoConfig, defs: Definitions, *, events: int | None = None,
                file: Path | str | None = None, rate: float | None = None,
                topic: str | None = None, source: str | None = None, key: str | None = None,
                partitions: int | None = None, max_seconds: float | None = None,
                seed: int = 7, days: int = DEFAULT_DAYS,
                start: datetime | date | str | None = None, malformed_rate: float = 0.0,
                progress: bool = True) -> ProduceSummary:
    """Everything ``tessera produce`` does: choose the stream, get the events, write them.

    The events come from ``file`` (a Parquet file or folder with the source's columns) or from
    the example generator: ``events`` card transactions over the ``days`` before now (or from
    ``start``), with ``malformed_rate`` faulty rows kept in. Neither given: 100,000 generated.
    They are sent in event-time order (:func:`event_order`), keyed by ``key``, to ``topic``,
    created with ``partitions`` partitions (6) when it does not exist.

    Raises:
        ProduceError: a bad option, unreadable events, or events Kafka did not acknowledge.
        KafkaAdminError: the topic cannot be created.
        KafkaUnavailableError: Kafka does not answer at ``kafka.bootstrap_servers``.
    """
    from streaming.kafka_admin import check_topic_name, ensure_topic

    if events is not None and file is not None:
        raise ProduceError("give --events (generated events) or --file, not both")
    if partitions is not None and partitions < 1:
        raise ProduceError(f"--partitions: expected a whole number >= 1, got {partitions!r}")
    chosen, out_topic, key_field = resolve_stream(defs, topic, source, key)
    check_topic_name(out_topic)
    bootstrap = cfg.kafka.bootstrap_servers
    if file is not None:
        frame = read_events_file(file, chosen)
    else:
        _check_generator_fits(chosen)
        frame = conform(generated_events(events if events is not None else DEFAULT_EVENTS,
                                         days=days, seed=seed, start=_parse_start(start),
                                         malformed_rate=malformed_rate), chosen)
    frame = event_order(frame, chosen.timestamp_field)
    payloads = encode_events(frame, chosen)
    keys = encode_keys(frame, key_field)
    del frame
    count = ensure_topic(bootstrap, out_topic, partitions or DEFAULT_PARTITIONS)
    if partitions is not None and count != partitions:
        warnings.warn(f"topic {out_topic!r} already exists with {count} partitions; "
                      f"--partitions {partitions} is ignored (an existing topic is never "
                      f"changed)", ProduceWarning, stacklevel=2)
    return produce(bootstrap, out_topic, payloads, keys, rate=rate, max_seconds=max_seconds,
                   progress=progress)


def _check_generator_fits(source: Source) -> None:
    """The generator makes card transactions: refuse a source it cannot fill."""
    from pipelines.datagen import SCHEMA

    kinds = {"Int64": "int64", "Float64": "float64", "Boolean": "bool", "String": "string"}
    made = {name: "timestamp" if dtype.is_temporal() else kinds[str(dtype)]
            for name, dtype in SCHEMA.items()}
    wrong = [f"{name} ({kind})" for name, kind in source.schema.items()
             if made.get(name) != kind]
    if wrong:
        raise ProduceError(f"the generator makes card transactions ({', '.join(made)}), "
                           f"which lack field(s) {', '.join(wrong)} of source "
                           f"{source.name!r}: give the events with --file")
