"""Redis's wire format where redis-py's per-reply path costs more than the work: commands
packed as RESP bytes, and replies read straight off a connection's socket (hiredis parses them,
or, for writes, a count of line ends). Used by :mod:`features.online.redis_store`."""

from __future__ import annotations

import os
import socket
import ssl
import time
from collections.abc import Sequence
from typing import Any


class _SocketErrors:
    """Socket failures while ``doing`` something, as redis-py's exceptions (what callers of
    :class:`features.online.redis_store.RedisOnline` catch), worded as redis-py words them.
    A class with two fixed instances rather than ``contextlib.contextmanager``: a generator
    per use cost ~1 µs of a 1-entity read, twice."""

    __slots__ = ("doing",)

    def __init__(self, doing: str) -> None:
        self.doing = doing

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, error: Any, tb: Any) -> None:
        if kind is None or not issubclass(kind, OSError):
            return
        import redis

        if issubclass(kind, TimeoutError):
            raise redis.TimeoutError(f"Timeout {self.doing}: {error}") from None
        raise redis.ConnectionError(f"Error {self.doing}: {error}") from None


_READING = _SocketErrors("reading from socket")
# A non-blocking socket with nothing to read: TLS sockets (rediss://) raise SSLWantReadError,
# an OSError but not a BlockingIOError (taken for a failure, it failed every TLS read whose
# reply was not there at the first recv).
_NOTHING_YET = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
_WRITING = _SocketErrors("writing to socket")


def pack(args: Sequence[str | bytes]) -> bytes:
    """One command as RESP bytes."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a.encode() if isinstance(a, str) else a
        parts.append(b"$%d\r\n%b\r\n" % (len(b), b))
    return b"".join(parts)


def mget(keys: Sequence[str]) -> bytes:
    """``MGET`` of ``keys`` as RESP bytes (the one command of a single-node read)."""
    parts = [b"*%d\r\n$4\r\nMGET\r\n" % (len(keys) + 1)]
    for key in keys:
        k = key.encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(k), k))
    return b"".join(parts)


class WriteReplies:
    """The replies of pipelined SET/DEL commands, read straight off a connection's socket as
    they are asked for.

    Their replies are one line each (``+OK``, ``:1``, or an error ``-...``), so counting line
    ends tells when enough have arrived, and one search per ``recv`` finds an error: 49k
    replies cost ~10 ms here instead of ~0.3 s through redis-py's parser, one reply per call.
    Replies read beyond those asked for (a ``recv`` that took the next chunk's first replies)
    count toward the next :meth:`read`; :meth:`finish` checks none is left over.
    """

    __slots__ = ("_ahead", "_at_line_start", "_error", "_sock", "error")

    def __init__(self, conn: Any) -> None:
        import redis

        self._sock = conn._sock
        if self._sock is None:
            raise redis.ConnectionError("connection closed while writing")
        self._ahead = 0  # replies read beyond those asked for
        self._at_line_start = True
        self._error: bytearray | None = None  # the first error reply, while it is cut
        self.error: str | None = None  # the first error reply's message, once whole

    def read(self, count: int) -> None:
        """Wait for ``count`` more replies. The first error reply read so far (perhaps among
        replies read ahead) is kept in ``error``."""
        import redis

        need = count - self._ahead
        with _SocketErrors("reading write replies"):
            while need > 0:
                chunk = self._sock.recv(1 << 20)
                if not chunk:
                    raise redis.ConnectionError("Redis closed the connection while writing")
                need -= chunk.count(b"\n")
                self._look_for_error(chunk)
        self._ahead = -need

    def finish(self, count: int) -> None:
        """Wait for the last ``count`` replies: every command sent is answered, none more."""
        import redis

        self.read(count)
        if self._ahead:  # more replies than commands: the stream is out of step
            raise redis.ConnectionError(f"{self._ahead} write replies more than commands")

    def _look_for_error(self, chunk: bytes) -> None:
        """Find the first error reply, a line starting with ``-``, perhaps cut over recvs."""
        if self.error is not None:
            return
        rest = chunk
        if self._error is None:
            if self._at_line_start and chunk.startswith(b"-"):
                at = 0
            else:
                at = chunk.find(b"\n-") + 1
                if at == 0:
                    self._at_line_start = chunk.endswith(b"\n")
                    return
            self._error = bytearray()
            rest = chunk[at + 1:]
        end = rest.find(b"\r")
        self._error += rest if end < 0 else rest[:end]
        if end >= 0:
            self.error = self._error.decode("utf-8", "replace")


def read_replies(conn: Any, count: int, reader: Any, spin_s: float = 0.0) -> list[Any]:
    """``count`` replies read off ``conn``'s socket with a hiredis ``reader``.

    ``spin_s`` > 0: poll the socket that long before blocking. On a virtual machine a process
    that blocks waits for its idle vCPU to be woken when the reply lands: measured here, a
    bare ``PING`` took 117-137 µs at p50 blocking and 42-50 µs polling (docs/online.md, "Spin
    reads"). Past ``spin_s`` it blocks with the connection's own timeout, so a hung Redis
    fails exactly as without.
    """
    sock = conn._sock
    if sock is None:
        import redis

        raise redis.ConnectionError("connection closed before the replies were read")
    # A plain socket with a timeout is polled through its descriptor (already non-blocking,
    # see _plain_with_timeout); any other one is switched to non-blocking for the poll.
    direct = spin_s > 0 and _plain_with_timeout(sock)
    toggled = spin_s > 0 and not direct
    fd = sock.fileno() if direct else -1
    replies: list[Any] = []
    timeout = conn.socket_timeout
    deadline = time.perf_counter() + spin_s
    if toggled:
        sock.settimeout(0.0)
    try:
        with _READING:
            while len(replies) < count:
                reply = reader.gets()
                if reply is not False:
                    replies.append(reply)
                    continue
                try:  # more bytes needed
                    chunk = os.read(fd, 1 << 20) if direct else sock.recv(1 << 20)
                except _NOTHING_YET:  # polling, nothing yet
                    if time.perf_counter() < deadline:
                        continue
                    if toggled:
                        sock.settimeout(timeout)
                    chunk = sock.recv(1 << 20)  # waits with the connection's timeout
                if not chunk:
                    import redis

                    raise redis.ConnectionError("Redis closed the connection")
                reader.feed(chunk)
    finally:
        if toggled:
            sock.settimeout(timeout)
    return replies


def _plain_with_timeout(sock: Any) -> bool:
    """True for a plain (not TLS) socket with a timeout. CPython runs such a socket's file
    descriptor non-blocking and waits in ``poll`` before each ``recv`` or ``send``; a read or
    write on the descriptor itself is one system call, with no ``poll`` before it and no
    ``settimeout`` to switch the socket to polling and back. With :func:`send`'s direct
    write that is three system calls fewer a read: 0.5-1.3 µs of a 1 × 10 read's 55-59 µs at
    p50 here (docs/online.md, "Spin reads")."""
    return type(sock) is socket.socket and bool(sock.gettimeout())


def send(conn: Any, command: bytes) -> None:
    """Send one packed command on ``conn``, connecting it first if needed."""
    if conn._sock is None:
        conn.connect()  # redis-py's handshake (AUTH, SELECT), blocking
    sock = conn._sock
    with _WRITING:
        if _plain_with_timeout(sock):  # one write, no poll before it
            try:
                sent = os.write(sock.fileno(), command)
            except BlockingIOError:  # the send buffer is full: wait with the timeout
                sent = 0
            if sent < len(command):
                sock.sendall(memoryview(command)[sent:])
            return
        sock.sendall(command)  # redis-py's send_packed_command costs ~6 µs more a call


def read_reply(conn: Any, reader: Any, spin_s: float) -> Any:
    """The next reply on ``conn`` (:func:`read_replies`); an error reply is raised as the
    exception redis-py would raise (``reader`` is made with its ``parse_error``)."""
    [reply] = read_replies(conn, 1, reader, spin_s)
    if isinstance(reply, Exception):  # from parse_error: ResponseError, AuthenticationError...
        raise reply
    return reply


def call_spinning(conn: Any, command: bytes, reader: Any, spin_s: float) -> Any:
    """Send one packed command on ``conn`` and read its reply, polling for up to ``spin_s``
    first (:func:`read_replies`)."""
    send(conn, command)
    return read_reply(conn, reader, spin_s)


__all__ = ["WriteReplies", "call_spinning", "mget", "pack", "read_replies", "read_reply",
           "send"]
