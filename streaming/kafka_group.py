"""Consumer-group workarounds for kafka-python 3.0.x (the version in ``uv.lock``).

kafka-python 3 runs the group protocol on an IO thread; ``KafkaConsumer.poll(timeout_ms)`` starts
a JoinGroup/SyncGroup round there and waits for it at most ``timeout_ms``. When that wait times
out, the round goes on, and the next ``poll`` is meant to pick its result up. It does not when
the round finished in between:

- if the rejoin was asked for by a metadata change (the group leader at startup: its first
  assignment is made before it knows the topic's partitions), the finished round has already
  made ``need_rejoin()`` false, so nothing ever applies its assignment: the group thinks this
  member owns the partitions, the member fetches none of them, until the next rebalance;
- otherwise the finished round is thrown away and a new JoinGroup is sent (a leader's starts
  another rebalance of the whole group), and under load this can go on for a long time.

:func:`keep_finished_joins` makes the consumer's coordinator apply a round that finished while
nobody waited for it (the listener's ``on_partitions_assigned`` included), exactly as if the
wait had lasted long enough. Nothing is changed if the library's internals are not the ones
this was written against.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("tessera.stream")

_NEEDED = ("_join_task", "join_group_async", "need_rejoin", "_on_join_complete_async",
           "_generation", "_lock", "_enable_heartbeat", "rejoining", "rejoin_needed", "state")


def keep_finished_joins(consumer: Any) -> bool:
    """Patch ``consumer``'s group coordinator (this instance only); whether it applied."""
    coord = getattr(consumer, "_coordinator", None)
    if coord is None or not all(hasattr(coord, name) for name in _NEEDED):
        log.debug("kafka-python group internals differ; join workaround not applied")
        return False
    try:
        from kafka.coordinator.base import MemberState
    except ImportError:
        return False
    join_group_async = coord.join_group_async
    need_rejoin = coord.need_rejoin

    def finished() -> Any:  # the round's kafka.future.Future, once it is done
        task = coord._join_task
        return task if task is not None and task.is_done else None

    def patched_need_rejoin() -> bool:
        return finished() is not None or need_rejoin()

    async def patched_join_group_async(timeout_ms: Any = None) -> bool:
        task = finished()
        if task is not None and task.succeeded() and coord._generation.is_lost():
            coord._join_task = None  # the membership it won is gone meanwhile: join anew
            coord.rejoin_needed = True
        elif task is not None and task.succeeded():
            # what join_group_async does once the round it awaits succeeds
            coord._join_task = None
            with coord._lock:
                coord.rejoining = False
                coord.rejoin_needed = False
                coord.state = MemberState.STABLE
                coord._enable_heartbeat()
            generation = coord._generation
            await coord._on_join_complete_async(generation.generation_id, generation.member_id,
                                                generation.protocol, task.value)
            if not need_rejoin():
                return True
        # a failed round: the library's loop sees it done and starts a new one, as it should
        return await join_group_async(timeout_ms)

    coord.need_rejoin = patched_need_rejoin
    coord.join_group_async = patched_join_group_async
    return True


__all__ = ["keep_finished_joins"]
