"""Dead letters: each rejected message, as it came, to ``<topic><dlq_suffix>`` with headers
saying why (``tessera.reason``, ``tessera.detail``), where from (``tessera.topic``,
``tessera.partition``, ``tessera.offset``) and which view rejected it (``tessera.view``).

They are flushed before the batch's offsets are committed, so a dead letter is never lost; a
dead letter Kafka refuses (a message larger than the topic's ``max.message.bytes``) stops the
consumer with that cause, the batch uncommitted (a review found a bare ``Future not done``
traceback instead).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from streaming.decode import Bad
from streaming.errors import StreamError

FLUSH_S = 60


def send_dead_letters(producer: Any, dead: Sequence[tuple[str, Any, Bad]],
                      suffix: str) -> Iterator[str]:
    """Send and flush ``(topic, record, why)`` dead letters; yields each one's reason as it is
    sent. Raises StreamError naming the dead-letter topic and the record when Kafka refuses
    one."""
    if not dead:
        return
    from kafka.errors import KafkaError

    sent = []
    for topic, rec, bad in dead:
        headers = [("tessera.reason", bad.reason.encode()),
                   ("tessera.detail", bad.detail.encode()[:1000]),
                   ("tessera.topic", topic.encode()),
                   ("tessera.partition", str(rec.partition).encode()),
                   ("tessera.offset", str(rec.offset).encode())]
        if bad.view:
            headers.append(("tessera.view", bad.view.encode()))
        dlq = topic + suffix
        try:
            sent.append((dlq, rec, producer.send(dlq, value=rec.value, key=rec.key,
                                                 headers=headers)))
        except KafkaError as e:  # refused before sending (larger than the producer allows)
            raise _refused(dlq, rec, e) from None
        yield bad.reason
    with contextlib.suppress(KafkaError):  # a failed send says why, below
        producer.flush(timeout=FLUSH_S)
    for dlq, rec, future in sent:
        if not future.is_done or future.failed():
            raise _refused(dlq, rec, future.exception if future.is_done else
                           f"no answer from Kafka within {FLUSH_S} s")


def _refused(dlq: str, rec: Any, why: Any) -> StreamError:
    """The consumer cannot go on without its dead letters (a commit would lose them)."""
    reason = f"{type(why).__name__}: {why}" if isinstance(why, BaseException) else why
    return StreamError(f"Kafka refused a dead letter for {dlq!r} (from partition "
                       f"{rec.partition}, offset {rec.offset}, {len(rec.value or b''):,} bytes): "
                       f"{reason}. Nothing of this batch was committed; fix the dead-letter "
                       f"topic (e.g. its max.message.bytes) and restart")


__all__ = ["send_dead_letters"]
