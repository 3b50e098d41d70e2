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
naming the store. On Redis Cluster each master gets its own connection and, as ``MGET`` cannot
span slots, one ``MGET`` per hash slot (an entity's keys share one); a reply that says the
slot moved sends the call to the synchronous read, which follows it. ``redis://`` (TCP),
``rediss://`` (TLS, single node or cluster) and ``unix://`` (a Unix socket) all read this way.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from features.online.resp import mget, pack

if TYPE_CHECKING:
    from features.online.redis_store import RedisOnline


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
        self.heard = 0.0  # time.monotonic() (the loop's clock) of the last bytes received

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader, waiting = self.reader, self.waiting
        self.heard = time.monotonic()
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


def _expire(pending: list[tuple[_Replies, asyncio.Future[Any], Any]], timeout_s: float,
            loop: asyncio.AbstractEventLoop) -> None:
    """A call's time is up: fail what it still waits for, and close those connections (their
    later replies would be misread) -- unless its connection received bytes within the
    timeout. Replies come in order, so then Redis is answering, and the call waits behind
    others' replies or the loop's own work (a burst of thousands of awaited reads): that is
    not Redis being unavailable. The timeout is the time without a byte, as a blocking
    socket's is; checked again when it would next run out."""
    now = loop.time()  # time.monotonic(), as _Replies.heard
    for replies, future, _ in pending:
        if not future.done() and now - replies.heard >= timeout_s and _unread(replies):
            replies.heard = now  # Redis's bytes wait on the socket: the loop is behind, not Redis
    later = [(r, f, at) for r, f, at in pending if not f.done() and now - r.heard < timeout_s]
    for replies, future, _ in pending:
        if not future.done() and now - replies.heard >= timeout_s:
            future.set_exception(_Timeout(f"Timeout reading from socket ({timeout_s} s)"))
            replies.fail(ConnectionError("a read timed out"))
    if later:
        due = min(r.heard for r, _, _ in later) + timeout_s
        loop.call_at(due, _expire, later, timeout_s, loop)


def _unread(replies: _Replies) -> bool:
    """Whether bytes wait unread on the connection's socket: a loop busy running the calls
    before this one (thousands started together) has not read them yet, so the time since
    ``heard`` is the loop's, not Redis's. One ``select`` with no wait, only when a timer
    would fail a call."""
    import select

    transport = replies.transport
    sock = None if transport is None else transport.get_extra_info("socket")
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock.fileno()], [], [], 0)
    except (OSError, ValueError):  # closed meanwhile
        return False
    return bool(readable)


class AsyncReads:
    """``await reads.get(keys)``: :meth:`RedisOnline.get` for an event loop. One connection per
    node and loop, opened on first use (its handshake, AUTH and SELECT, by redis-py in a
    thread; over TLS by :meth:`_open_tls`): on a cluster, one per master, each sent its keys'
    ``MGET``s, one per hash slot."""

    def __init__(self, online: RedisOnline) -> None:
        self.online = online
        self._conns: dict[str, tuple[_Replies, Any]] = {}  # node name ("": single node)
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop they belong to
        # per node, the connect in progress: calls that find no connection share its outcome
        self._connecting: dict[str, asyncio.Task[_Replies]] = {}
        self._refresh: asyncio.Future[Any] | None = None  # a cluster slot map being read again

    async def _connection(self, loop: asyncio.AbstractEventLoop, node: Any) -> _Replies:
        """This loop's open connection to ``node`` (None: the single node); a new one if it
        has none. Calls that find none at once (after Redis restarted) share one connect, and
        its failure: a node that hangs costs them one timeout together, not one each in turn."""
        name = "" if node is None else node.name
        if self._loop is not loop:
            self.close()  # connections of an earlier loop (asyncio.run closes its loop)
            self._loop = loop
        got = self._conns.get(name)
        if got is not None and not got[0].closed:
            return got[0]
        task = self._connecting.get(name)
        if task is None:
            task = self._connecting[name] = loop.create_task(self._open(loop, name, node))
            task.add_done_callback(lambda t: self._connected(name, t))
        return await asyncio.shield(task)

    async def _open(self, loop: asyncio.AbstractEventLoop, name: str, node: Any) -> _Replies:
        got = self._conns.pop(name, None)
        if got is not None:
            got[1].close()  # a closed connection's socket
        if self.online.url.startswith("rediss://"):
            replies, sock = await self._open_tls(loop, node)
        else:
            client = self.online.client
            pool = (client if node is None else client.get_redis_connection(node)
                    ).connection_pool
            conn = pool.make_connection()
            await loop.run_in_executor(None, conn.connect)  # a down Redis must not stall it
            sock, conn._sock = conn._sock, None  # the loop's from here (TCP_NODELAY is set)
            if sock.family == socket.AF_UNIX:
                _, replies = await loop.create_unix_connection(_Replies, sock=sock)
            else:
                _, replies = await loop.create_connection(_Replies, sock=sock)
        self._conns[name] = (replies, sock)
        return replies

    async def _open_tls(self, loop: asyncio.AbstractEventLoop, node: Any
                        ) -> tuple[_Replies, Any]:
        """A TLS connection to ``node`` (None: the single node). asyncio cannot take over a
        socket that redis-py's blocking client already wrapped in TLS, so: a socket of our own
        (closed as the plain one is), asyncio's TLS on it with the SSL context redis-py makes
        for the URL (its certificates and checks; on a cluster every node is reached with the
        URL's settings, as redis-py's cluster client does), then the ``AUTH`` and ``SELECT``
        redis-py would send (a cluster has database 0 only: no ``SELECT``)."""
        import redis
        from redis.asyncio import Redis

        online = self.online
        # the URL as redis-py reads it (host, port, db, credentials, ssl_* options); never
        # connected itself
        spec = Redis.from_url(online.url).connection_pool.make_connection()
        timeout = online.timeout_s
        context = await loop.run_in_executor(None, spec.ssl_context.get)  # reads cert files
        host, port = (spec.host, spec.port) if node is None else (node.host, node.port)
        sock = await loop.run_in_executor(
            None, lambda: socket.create_connection((host, port), timeout))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            _, replies = await loop.create_connection(
                _Replies, sock=sock, ssl=context, server_hostname=host,
                ssl_handshake_timeout=timeout)
        except BaseException:
            sock.close()
            raise
        handshake: list[list[str]] = []
        if spec.username or spec.password:
            handshake.append(["AUTH", *([spec.username] if spec.username else []),
                              spec.password or ""])
        if spec.db and node is None:
            handshake.append(["SELECT", str(spec.db)])
        futures = [loop.create_future() for _ in handshake]
        replies.waiting.extend(futures)
        try:
            assert replies.transport is not None
            replies.transport.write(b"".join(pack(command) for command in handshake))
            async with asyncio.timeout(timeout):
                for future in futures:
                    await future
        except BaseException as e:
            replies.fail(e)  # closes the connection (and the socket)
            if isinstance(e, redis.ResponseError):  # ERR invalid DB index...: as redis-py
                raise redis.ConnectionError(f"Error during the handshake: {e}") from None
            raise
        return replies, sock

    def _connected(self, name: str, task: asyncio.Task[_Replies]) -> None:
        """A connect ended: the next call that finds no connection tries again."""
        if self._connecting.get(name) is task:
            del self._connecting[name]
        if not task.cancelled():
            task.exception()  # retrieved here too: its callers may all have been cancelled

    def _batches(self, keys: Sequence[str]
                 ) -> list[tuple[Any, list[tuple[Sequence[int], Sequence[str]]]]]:
        """Per node, the ``MGET``s to send it, each as (its keys' positions, its keys): one of
        every key on a single node; on a cluster, where ``MGET`` cannot span slots, one per
        hash slot (an entity's keys share one), grouped by the master owning the slot."""
        if not self.online.cluster:
            return [(None, [(range(len(keys)), keys)])]
        from redis.crc import key_slot

        by_slot: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            by_slot.setdefault(key_slot(key.encode()), []).append(i)
        slots = list(by_slot)
        return [(node, [(at, [keys[i] for i in at])
                        for at in (by_slot[slots[j]] for j in positions)])
                for node, positions in self.online._by_master(slots)]

    async def get(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values of ``keys`` (None where missing), in one round trip per node."""
        if not keys:
            return []
        import redis

        online = self.online
        errors: tuple[type[BaseException], ...] = (*online._errors, OSError)
        loop = asyncio.get_running_loop()
        for attempt in (0, 1):  # one retry on a dropped connection (a restarted Redis)
            pending: list[tuple[_Replies, asyncio.Future[Any], Sequence[int]]] = []
            try:
                for node, batches in self._batches(keys):
                    replies = await self._connection(loop, node)
                    for at, _ in batches:
                        pending.append((replies, loop.create_future(), at))
                        replies.waiting.append(pending[-1][1])
                    assert replies.transport is not None
                    replies.transport.write(b"".join(mget(some) for _, some in batches))
                timer = loop.call_later(online.timeout_s, _expire, pending, online.timeout_s,
                                        loop)
                try:
                    if len(pending) == 1:
                        got: list[bytes | None] = await pending[0][1]
                        return got
                    out: list[bytes | None] = [None] * len(keys)
                    for _, future, at in pending:
                        for i, value in zip(at, await future, strict=True):
                            out[i] = value
                    return out
                finally:
                    timer.cancel()
            except redis.ResponseError:
                if not online.cluster:
                    raise
                # MOVED/ASK while slots move: the blocking read refreshes the map and follows
                await self._forget_slots(loop)
                return await loop.run_in_executor(None, online.get, keys)
            except _Timeout as e:  # _expire closed the connections that did not answer: a
                raise online._unavailable(e) from None  # hung Redis, not retried (twice the wait)
            except errors as e:  # its connection closed (the others stay: their calls go on)
                if online.cluster:  # a node failed, maybe in a failover
                    await self._forget_slots(loop)
                if attempt:
                    raise online._unavailable(e) from None
            finally:
                for _, future, _ in pending:
                    future.cancel()  # after a failure: the replies still to come are dropped
        raise AssertionError("unreachable")

    async def _forget_slots(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read the cluster's slot map again, in a thread; calls that fail together (a
        failover, a reshard) share one reading instead of queueing one each."""
        refresh = self._refresh
        if refresh is None or refresh.done() or refresh.get_loop() is not loop:
            refresh = self._refresh = loop.run_in_executor(None, self.online._forget_slots)
        await asyncio.shield(refresh)

    def close(self) -> None:
        """Close the connections: through their loop when called on it, else (the loop closed
        or elsewhere) the sockets themselves."""
        conns, loop = list(self._conns.values()), self._loop
        self._conns.clear()
        self._connecting.clear()  # an earlier loop's: never awaited again
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for replies, sock in conns:
            if replies.closed:
                continue
            if running is loop:
                replies.fail(ConnectionError("closed"))
            else:
                replies.closed = True
                sock.close()


__all__ = ["AsyncReads"]
