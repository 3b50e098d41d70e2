"""``tessera produce``: which topic and key a repo's events go to, and the command itself.

:func:`produce_cli` reads events from Parquet or the generator (:mod:`streaming.events`), puts
them in event-time order and sends them with :func:`streaming.produce.produce`.
"""

from __future__ import annotations

import warnings
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from features.windows import parse_instant
from streaming.events import (
    DEFAULT_DAYS,
    ProduceError,
    ProduceWarning,
    conform,
    encode_events,
    encode_keys,
    event_order,
    generated_events,
    read_events_file,
)
from streaming.produce import DEFAULT_EVENTS, DEFAULT_PARTITIONS, ProduceSummary, produce

if TYPE_CHECKING:
    from features.config import RepoConfig
    from features.definitions import Source
    from features.repo import Definitions


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


# --- the command ----------------------------------------------------------------------------


def _parse_start(value: datetime | date | str | None) -> datetime | None:
    try:
        return parse_instant(value)
    except ValueError as e:
        raise ProduceError(f"--start: {e}") from None


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


__all__ = ["produce_cli", "resolve_stream"]
