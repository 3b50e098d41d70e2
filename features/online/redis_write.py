"""Writes to the online store: pipelined ``SET``/``DEL``, packed as RESP on a single node
(:meth:`RedisWrites.write_packed`: materialize), and counted ``DEL``s (:meth:`RedisWrites.delete`:
materialize's and ``online gc``'s), through
redis-py's pipeline on a cluster. A mixin of :class:`features.online.redis_store.RedisOnline`,
which holds the connection."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from features.errors import OnlineUnavailableError
from features.online.resp import WriteReplies

WRITE_BATCH = 2_000  # commands per pipeline flush when writing
# Chunks of write_packed sent before the oldest one's replies are read: Redis applies one while
# the next are packed and sent, and its replies are read once they are surely there. 8 chunks
# of 5,000 wrote 2M values as fast as reading every reply at the end; 1-4 were ~5% slower
# (bench/write_replies.py, docs/benchmarks.md)
WRITE_LAG = 8
DELETE_ROUND = 1_000  # keys per DEL (single node), and commands per pipelined round


class RedisWrites:
    """The write half of :class:`features.online.redis_store.RedisOnline`."""

    if TYPE_CHECKING:  # what RedisOnline provides
        client: Any
        cluster: bool
        _errors: tuple[type[BaseException], ...]

        @property
        def shown_url(self) -> str: ...

        def _unavailable(self, e: BaseException) -> OnlineUnavailableError: ...

        def call_many(self, commands: Any, *, script: str | None = None) -> list[Any]: ...

    def delete(self, keys: list[str]) -> int:
        """``DEL`` the keys; how many there were (one already expired is not counted). One
        ``DEL`` of up to ``DELETE_ROUND`` keys on a single node; one a key on a cluster, whose
        keys live on different nodes."""
        n = DELETE_ROUND
        commands = ([("DEL", k) for k in keys] if self.cluster else
                    [("DEL", *keys[lo:lo + n]) for lo in range(0, len(keys), n)])
        return sum(sum(self.call_many(commands[lo:lo + n])) for lo in range(0, len(commands), n))

    def write(self, sets: Iterable[tuple[str, bytes, int | None]],
              deletes: Iterable[str] = ()) -> int:
        """``SET key value [PXAT ms]`` for each item and ``DEL`` each key, pipelined."""
        if not self.cluster:
            return self.write_packed(self._resp_chunks(sets, deletes))
        return self._write_pipeline(sets, deletes)

    @staticmethod
    def _resp_chunks(sets: Iterable[tuple[str, bytes, int | None]],
                     deletes: Iterable[str]) -> Iterator[tuple[bytes, int]]:
        """The single-node write as RESP, ``WRITE_BATCH`` commands per chunk.

        redis-py's pipeline spends ~10 µs per command packing and checking arguments; the
        values here are bytes and ints already, so packing them directly is 5× cheaper.
        """
        buf: list[bytes] = []
        for key, value, expire_ms in sets:
            k = key.encode()
            if expire_ms is None:
                buf.append(b"*3\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
                           % (len(k), k, len(value), value))
            else:
                e = b"%d" % expire_ms
                buf.append(b"*5\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
                           b"$4\r\nPXAT\r\n$%d\r\n%b\r\n"
                           % (len(k), k, len(value), value, len(e), e))
            if len(buf) >= WRITE_BATCH:
                yield b"".join(buf), len(buf)
                buf = []
        for key in deletes:
            k = key.encode()
            buf.append(b"*2\r\n$3\r\nDEL\r\n$%d\r\n%b\r\n" % (len(k), k))
        if buf:
            yield b"".join(buf), len(buf)

    def write_packed(self, chunks: Iterable[tuple[bytes | memoryview, int]]) -> int:
        """Send ready-made RESP commands (single node): each chunk is (bytes or a
        memoryview of them, commands).

        A chunk's replies are read once ``WRITE_LAG`` more chunks were sent: Redis applies a
        chunk while the next ones are built and sent, and its replies wait neither in Redis
        (its output buffer would hold ~5 bytes per command to the end, 50 MB for 10M values)
        nor in the socket. A refused write (``-OOM ...`` when Redis is full) stops the sending
        within ``WRITE_LAG`` chunks; the replies of what was sent are read, so the connection
        stays in step, and the first error is raised. Any other exception part-way drops the
        connection, so no unread reply is left for the pool's next user.
        """
        import redis

        if self.cluster:
            raise TypeError("write_packed needs a single node; use write() on a cluster")
        pool = self.client.connection_pool
        try:
            conn = pool.get_connection()
        except self._errors as e:
            raise self._unavailable(e) from None
        sent = 0
        unread: deque[int] = deque()  # commands of each chunk sent whose replies are not read
        try:
            replies = WriteReplies(conn)
            for data, commands in chunks:
                conn.send_packed_command([data])
                sent += commands
                unread.append(commands)
                if len(unread) > WRITE_LAG:
                    replies.read(unread.popleft())
                    if replies.error is not None:
                        break
            replies.finish(sum(unread))
            if replies.error is not None:
                raise redis.ResponseError(replies.error)
        except self._errors as e:
            conn.disconnect()
            raise self._unavailable(e) from None
        except redis.ResponseError as e:
            raise OnlineUnavailableError(
                f"online store {self.shown_url} refused a write: {e}") from None
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)
        return sent

    def _write_pipeline(self, sets: Iterable[tuple[str, bytes, int | None]],
                        deletes: Iterable[str]) -> int:
        done = 0
        try:
            pipe = self.client.pipeline(transaction=False)
            pending = 0
            for key, value, expire_ms in sets:
                if expire_ms is None:
                    pipe.execute_command("SET", key, value)
                else:
                    pipe.execute_command("SET", key, value, "PXAT", expire_ms)
                pending += 1
                if pending >= WRITE_BATCH:
                    pipe.execute()
                    done += pending
                    pending = 0
            for key in deletes:
                pipe.execute_command("DEL", key)
                pending += 1
                if pending >= WRITE_BATCH:
                    pipe.execute()
                    done += pending
                    pending = 0
            if pending:
                pipe.execute()
                done += pending
        except self._errors as e:
            raise self._unavailable(e) from None
        return done


__all__ = ["WRITE_BATCH", "WRITE_LAG", "RedisWrites"]
