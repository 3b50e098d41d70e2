"""Online reads on an asyncio event loop: one ``MGET`` per call, pipelined on one connection.

The synchronous read (:meth:`features.online.redis_store.RedisOnline.get`) holds its thread
until Redis answers. In ``tessera serve`` that thread is the event loop: with requests waiting,
each one's round trip was time the loop did nothing else (43% of the server's samples under an
8-client load, docs/benchmarks.md). Here a call writes its command and awaits its reply; the
loop serves other requests meanwhile, and their commands follow on the same connection. Redis
answers in order, so replies are matched to calls by a queue.

Same failure contract as the synchronous read: a dropped connection is retried once on a new
one (a restarted Redis works on the next call), a Redis that does not answer within the
timeout fails the call, and either becomes :class:`~features.errors.OnlineUnavailableError`
naming the store. Only single-node ``redis://`` over TCP reads this way; Redis Cluster, TLS
and Unix sockets use the synchronous read (:func:`supported`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from features.online.resp import mget

if TYPE_CHECKING:
    from features.online.redis_store import RedisOnline


def supported(online: RedisOnline) -> bool:
    """Whether ``online`` can be read from an event loop (single node, plain TCP)."""
    return not online.cluster and online.url.startswith("redis://")


class _Timeout(Exception):
    """A reply that did not come within the timeout (the connection is closed: out of step)."""


class _Replies(asyncio.Protocol):
    """One connection to Redis: replies parsed by hiredis as they land, each handed to the
    oldest waiting call."""

    def __init__(self) -> None:
        import hiredis
        from redis._parsers.base import BaseParser

        self.reader = hiredis.Reader(replyError=BaseParser.parse_error)
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader, waiting = self.reader, self.waiting
        reader.feed(data)
        while (reply := reader.gets()) is not False:
            if not waiting:  # a reply nobody asked for: the stream is out of step
                self.fail(ConnectionError("Redis sent a reply no read was waiting for"))
                return
            future = waiting.popleft()
            if future.done():  # its call was cancelled or timed out: drop the reply
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail_waiting(exc or ConnectionError("Redis closed the connection"))

    def fail(self, error: BaseException) -> None:
        """Close the connection and fail every call waiting on it."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        self._fail_waiting(error)

    def _fail_waiting(self, error: BaseException) -> None:
        import redis

        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(redis.ConnectionError(f"Error reading from socket: "
                                                           f"{error}"))


def _expire(replies: _Replies, future: asyncio.Future[Any], timeout_s: float) -> None:
    if not future.done():
        future.set_exception(_Timeout(f"Timeout reading from socket ({timeout_s} s)"))
        replies.fail(ConnectionError("a read timed out"))  # later replies would be misread


class AsyncReads:
    """``await reads.get(keys)``: :meth:`RedisOnline.get` for an event loop. One connection per
    loop, opened on first use (its handshake, AUTH and SELECT, by redis-py in a thread)."""

    def __init__(self, online: RedisOnline) -> None:
        if not supported(online):
            raise ValueError(f"{online.shown_url}: async reads need a single-node redis:// URL")
        self.online = online
        self._replies: _Replies | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: Any = None
        self._lock: asyncio.Lock | None = None  # one connect at a time, on self._lock_loop
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    async def _connection(self, loop: asyncio.AbstractEventLoop) -> _Replies:
        """This loop's open connection; a new one if it has none. Calls that find none at
        once (after Redis restarted) wait for one connect rather than each making its own."""
        replies = self._replies
        if replies is not None and not replies.closed and self._loop is loop:
            return replies
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        async with self._lock:
            replies = self._replies
            if replies is not None and not replies.closed and self._loop is loop:
                return replies  # another call connected meanwhile
            return await self._connect()

    async def _connect(self) -> _Replies:
        self.close()  # a connection of an earlier loop (asyncio.run closes its loop)
        loop = asyncio.get_running_loop()
        conn = self.online.client.connection_pool.make_connection()
        await loop.run_in_executor(None, conn.connect)  # a down Redis must not stall the loop
        sock, conn._sock = conn._sock, None  # the loop's from here (redis-py set TCP_NODELAY)
        _, replies = await loop.create_connection(_Replies, sock=sock)
        self._replies, self._loop, self._sock = replies, loop, sock
        return replies

    async def get(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values of ``keys`` (None where missing), in one round trip."""
        if not keys:
            return []
        command = mget(keys)
        errors: tuple[type[BaseException], ...] = (*self.online._errors, OSError)
        loop = asyncio.get_running_loop()
        for attempt in (0, 1):  # one retry on a dropped connection (a restarted Redis)
            replies: _Replies | None = None
            try:
                replies = await self._connection(loop)
                future = loop.create_future()
                replies.waiting.append(future)
                assert replies.transport is not None
                replies.transport.write(command)
                timeout_s = self.online.timeout_s
                timer = loop.call_later(timeout_s, _expire, replies, future, timeout_s)
                try:
                    reply: list[bytes | None] = await future
                finally:
                    timer.cancel()
                return reply
            except _Timeout as e:
                if attempt:
                    raise self.online._unavailable(e) from None
            except errors as e:
                if replies is not None and not replies.closed:  # this call's, not a newer one
                    replies.fail(e)
                if attempt:
                    raise self.online._unavailable(e) from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the connection: through its loop when called on it, else (the loop closed or
        elsewhere) the socket itself."""
        replies, loop, sock = self._replies, self._loop, self._sock
        self._replies = self._loop = self._sock = None
        if replies is None or replies.closed:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            replies.fail(ConnectionError("closed"))
        else:
            replies.closed = True
            sock.close()


__all__ = ["AsyncReads", "supported"]
