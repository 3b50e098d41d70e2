"""Kafka topic administration for streaming: create a topic, read its end offsets, delete it.

``tessera produce`` calls :func:`ensure_topic` before writing events; tests and benchmarks use
:func:`delete_topic` to clean up their scratch topics and :func:`end_offsets` to see how many
records a topic holds. Every call has bounded timeouts (:data:`TIMEOUT_S`) and turns an
unreachable broker into one :class:`KafkaUnavailableError` line naming the bootstrap servers.

kafka-python is imported inside the functions, so importing this module is cheap.

Example:
    >>> from streaming.kafka_admin import ensure_topic, end_offsets
    >>> ensure_topic("127.0.0.1:9392", "transactions")          # doctest: +SKIP
    6
    >>> end_offsets("127.0.0.1:9392", "transactions")           # doctest: +SKIP
    {0: 0, 1: 0, 2: 0, 3: 0, 4: 0, 5: 0}
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from features.errors import TesseraError

if TYPE_CHECKING:
    from kafka import KafkaAdminClient

__all__ = [
    "TIMEOUT_S",
    "KafkaAdminError",
    "KafkaUnavailableError",
    "admin_client",
    "check_topic_name",
    "connection_errors",
    "delete_topic",
    "end_offsets",
    "ensure_topic",
    "partition_count",
    "refuse_auto_create",
    "unavailable",
]

#: Seconds any single Kafka call here may take: bootstrap, one request, topic readiness.
TIMEOUT_S = 10.0
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


class KafkaAdminError(TesseraError):
    """Kafka answered, but a topic could not be created, described or deleted."""


class KafkaUnavailableError(KafkaAdminError):
    """No Kafka broker answered at the bootstrap servers within the timeout."""


def check_topic_name(topic: str) -> str:
    """``topic`` if Kafka accepts it as a name, else a KafkaAdminError saying why."""
    if not isinstance(topic, str) or not _TOPIC_NAME.match(topic) or topic in {".", ".."}:
        raise KafkaAdminError(
            f"invalid Kafka topic name {topic!r}: expected 1 to 249 characters among ASCII "
            f"letters, digits, '.', '_' and '-' (and not '.' or '..')")
    return topic


def unavailable(bootstrap: str, error: BaseException | None = None) -> KafkaUnavailableError:
    """The one-line error for a broker that does not answer at ``bootstrap``."""
    why = f" ({type(error).__name__}: {_first_line(error)})" if error is not None else ""
    return KafkaUnavailableError(
        f"Kafka is unreachable at {bootstrap} (no answer within {TIMEOUT_S:g} s){why}; "
        f"is it running? (`tessera services up` starts the local one; kafka.bootstrap_servers "
        f"in feature_repo.yaml says where)")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else ""
    prefix = f"{type(error).__name__}: "  # kafka-python repeats the class name in the text
    return (line[len(prefix):] if line.startswith(prefix) else line)[:200]


def _broker_message(error: BaseException) -> str:
    """The broker's own error_message of a kafka-python BrokerResponseError, else its name."""
    match = re.search(r"error_message=(['\"])(.*?)\1", str(error))
    return match.group(2) if match else type(error).__name__


def connection_errors(*extra: type[BaseException]) -> tuple[type[BaseException], ...]:
    """kafka-python's exceptions for "no broker answered" (NoBrokersAvailable up to 2.x),
    and ``extra``."""
    import kafka.errors as errors

    names = ("KafkaTimeoutError", "NoBrokersAvailable", "KafkaConnectionError",
             "NodeNotReadyError")
    return (*(getattr(errors, n) for n in names if hasattr(errors, n)), *extra)


def refuse_auto_create(client: object) -> None:
    """Make a KafkaProducer's or KafkaConsumer's metadata requests never create a topic.

    kafka-python 3.0.12 accepts ``allow_auto_create_topics=False`` but does not pass it on to
    the cluster metadata its requests are built from, so with the broker's
    ``auto.create.topics.enable=true`` a metadata request names a missing topic and the
    broker creates it (with its default partition count) — even a topic deleted a moment
    before, by a consumer closing down. Harmless where the flag already reaches the metadata.
    """
    cluster = getattr(client, "_metadata", None)  # KafkaProducer
    if cluster is None:
        cluster = getattr(getattr(client, "_client", None), "cluster", None)  # KafkaConsumer
    config = getattr(cluster, "config", None)
    if isinstance(config, dict) and "allow_auto_create_topics" in config:
        config["allow_auto_create_topics"] = False


@contextmanager
def admin_client(bootstrap: str) -> Iterator[KafkaAdminClient]:
    """A KafkaAdminClient with bounded timeouts, closed on exit.

    Raises:
        KafkaUnavailableError: no broker answered within :data:`TIMEOUT_S` (also when the
            connection is lost during a request).
    """
    from kafka import KafkaAdminClient

    timeout_ms = int(TIMEOUT_S * 1000)
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="tessera-admin",
                                 request_timeout_ms=timeout_ms, bootstrap_timeout_ms=timeout_ms)
    except connection_errors(OSError) as e:
        raise unavailable(bootstrap, e) from None
    try:
        yield admin
    except connection_errors() as e:
        raise unavailable(bootstrap, e) from None
    finally:
        admin.close()


def _partitions(admin: KafkaAdminClient, topic: str) -> list[dict[str, Any]] | None:
    """The partition descriptions of ``topic``, or None when the topic does not exist."""
    (info,) = admin.describe_topics([topic])
    if info.get("error_code", 0) == 3:  # UNKNOWN_TOPIC_OR_PARTITION
        return None
    if info.get("error_code", 0) != 0:
        import kafka.errors as errors

        name = errors.for_code(info["error_code"]).__name__
        raise KafkaAdminError(f"cannot describe topic {topic!r}: {name}")
    return list(info.get("partitions") or [])


def partition_count(bootstrap: str, topic: str) -> int | None:
    """Number of partitions of ``topic``, or None when it does not exist."""
    check_topic_name(topic)
    with admin_client(bootstrap) as admin:
        parts = _partitions(admin, topic)
    return None if parts is None else len(parts)


def ensure_topic(bootstrap: str, topic: str, partitions: int = 6) -> int:
    """Create ``topic`` (replication factor 1) unless it exists; its number of partitions.

    An existing topic is left exactly as it is (never deleted, never re-partitioned), so the
    count returned may differ from ``partitions``. A new topic is ready when this returns:
    every partition has a leader.

    Raises:
        KafkaAdminError: an invalid name or partition count, or the broker refused.
        KafkaUnavailableError: no broker answered at ``bootstrap``.
    """
    import kafka.errors as errors

    check_topic_name(topic)
    if not isinstance(partitions, int) or partitions < 1:
        raise KafkaAdminError(f"partitions of topic {topic!r} must be a whole number >= 1, "
                              f"got {partitions!r}")
    with admin_client(bootstrap) as admin:
        existing = _partitions(admin, topic)
        if existing is not None:
            return len(existing)
        try:
            admin.create_topics({topic: {"num_partitions": partitions,
                                         "replication_factor": 1}})
        except errors.TopicAlreadyExistsError:
            pass  # created meanwhile by someone else: use theirs
        except errors.BrokerResponseError as e:
            raise KafkaAdminError(f"cannot create topic {topic!r} at {bootstrap}: "
                                  f"{_broker_message(e)}") from None
        try:
            admin.wait_for_topics([topic], timeout_ms=int(TIMEOUT_S * 1000))
        except errors.KafkaTimeoutError:
            raise KafkaAdminError(f"topic {topic!r} was created at {bootstrap} but its "
                                  f"partitions had no leader after {TIMEOUT_S:g} s") from None
        created = _partitions(admin, topic)
    if created is None:  # deleted again between creation and this look-up
        raise KafkaAdminError(f"topic {topic!r} disappeared right after it was created")
    return len(created)


def delete_topic(bootstrap: str, topic: str) -> bool:
    """Delete ``topic``; False when there was no such topic (not an error).

    Kafka deletes asynchronously: re-creating the same name at once may briefly fail.
    """
    import kafka.errors as errors

    check_topic_name(topic)
    with admin_client(bootstrap) as admin:
        try:
            admin.delete_topics([topic])
        except errors.UnknownTopicOrPartitionError:
            return False
        except errors.BrokerResponseError as e:
            raise KafkaAdminError(f"cannot delete topic {topic!r} at {bootstrap}: "
                                  f"{_broker_message(e)}") from None
    return True


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Partition -> offset of the next record (the log end), for every partition of ``topic``.

    The sum over partitions is the number of records ever written (all of them while none
    expired under the topic's retention).

    Raises:
        KafkaAdminError: the topic does not exist.
        KafkaUnavailableError: no broker answered at ``bootstrap``.
    """
    from kafka import OffsetSpec, TopicPartition

    check_topic_name(topic)
    with admin_client(bootstrap) as admin:
        parts = _partitions(admin, topic)
        if parts is None:
            raise KafkaAdminError(f"no topic {topic!r} at {bootstrap}")
        specs = {TopicPartition(topic, p["partition_index"]): OffsetSpec.LATEST for p in parts}
        answer = admin.list_partition_offsets(specs)
    return {tp.partition: int(found.offset)
            for tp, found in sorted(answer.items(), key=lambda item: item[0].partition)}
