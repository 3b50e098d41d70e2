"""Materialize's pipelined writes read their replies as they go (features.online.resp
.WriteReplies, RedisOnline.write_packed): every count of replies, however the bytes are cut,
the first error whole, and on real Redis a refused write stops the sending and leaves the
connection in step."""

from __future__ import annotations

import itertools
import socket
import uuid
from types import SimpleNamespace

import pytest
import redis as redis_py

from features.errors import OnlineUnavailableError
from features.online import redis_write
from features.online.redis_store import RedisOnline
from features.online.resp import WriteReplies


class Cut:
    """A real socket whose recv returns the stream in the pieces given (then what is left)."""

    def __init__(self, sock: socket.socket, pieces: list[int]) -> None:
        self.sock, self.pieces = sock, pieces

    def recv(self, size: int) -> bytes:
        return self.sock.recv(min(size, self.pieces.pop(0)) if self.pieces else size)


def replies_over(stream: bytes, cuts: list[int]) -> tuple[WriteReplies, socket.socket]:
    """A WriteReplies reading ``stream`` off a real socket, each recv ending at the next of
    ``cuts`` (byte offsets)."""
    ours, theirs = socket.socketpair()
    ours.settimeout(5)
    theirs.sendall(stream)
    edges = [0, *cuts]
    pieces = [hi - lo for lo, hi in itertools.pairwise(edges)]
    return WriteReplies(SimpleNamespace(_sock=Cut(ours, pieces))), theirs


@pytest.mark.parametrize("cuts", [[], [1], [3, 4, 5], list(range(1, 60))])
def test_replies_are_counted_and_the_first_error_kept_however_they_are_cut(cuts) -> None:
    stream = (b"+OK\r\n" * 3 + b":1\r\n" + b"-OOM command not allowed when used memory > "
              b"'maxmemory'.\r\n" + b"+OK\r\n" + b"-ERR second\r\n")
    reader, theirs = replies_over(stream, [c for c in cuts if c < len(stream)])
    reader.read(2)
    reader.read(2)  # up to the fourth reply, ":1"
    if cuts == list(range(1, 60)):  # a byte per recv: nothing read beyond the fourth reply
        assert reader.error is None
    reader.finish(3)  # exactly 7 replies: not out of step
    assert reader.error == "OOM command not allowed when used memory > 'maxmemory'."
    theirs.close()


def test_an_error_first_in_the_stream_is_found() -> None:
    reader, theirs = replies_over(b"-ERR at once\r\n+OK\r\n", [2])
    reader.finish(2)
    assert reader.error == "ERR at once"
    theirs.close()


def test_replies_beyond_the_commands_sent_are_out_of_step() -> None:
    reader, theirs = replies_over(b"+OK\r\n" * 5, [])
    with pytest.raises(redis_py.ConnectionError, match="2 write replies more than commands"):
        reader.finish(3)
    theirs.close()


def test_a_connection_closed_before_the_replies_is_a_connection_error() -> None:
    reader, theirs = replies_over(b"+OK\r\n", [])
    theirs.close()
    with pytest.raises(redis_py.ConnectionError, match="closed the connection while writing"):
        reader.finish(2)


def set_(key: str, value: bytes) -> bytes:
    k = key.encode()
    return b"*3\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(k), k, len(value), value)


def test_a_refused_write_stops_the_sending_and_keeps_the_connection_in_step(
        redis_url: str) -> None:
    """Chunk 0 holds a refused command: chunks up to WRITE_LAG after it were sent before its
    replies were read and are applied; the later ones are never sent."""
    online = RedisOnline(redis_url)
    keys = [f"t:{uuid.uuid4().hex}:{i}" for i in range(12)]
    bad = b"*2\r\n$3\r\nSET\r\n$1\r\nx\r\n"  # SET without a value
    handed: list[int] = []

    def chunks():
        for i, key in enumerate(keys):
            handed.append(i)
            yield (set_(key, b"v") + (bad if i == 0 else b""), 2 if i == 0 else 1)

    with pytest.raises(OnlineUnavailableError, match="refused a write: ERR wrong number of "
                                                     "arguments for 'set' command"):
        online.write_packed(chunks())
    lag = redis_write.WRITE_LAG
    assert handed == list(range(lag + 1))  # the error was seen when chunk `lag` was sent
    client = redis_py.Redis.from_url(redis_url)
    assert client.mget(keys) == [b"v"] * (lag + 1) + [None] * (len(keys) - lag - 1)
    assert online.write([(keys[0], b"w", None)], keys[1:]) == len(keys)  # still in step
    assert client.mget(keys) == [b"w"] + [None] * (len(keys) - 1)
    client.delete(keys[0])
    client.close()


def test_many_chunks_are_all_answered(redis_url: str) -> None:
    """Replies read a chunk behind the sending: 300 chunks of 1 to 7 commands, every one
    applied, the count returned, and nothing left unread on the pooled connection."""
    online = RedisOnline(redis_url)
    prefix = f"t:{uuid.uuid4().hex}"
    chunks, every = [], []
    for c in range(300):
        keys = [f"{prefix}:{c}:{i}" for i in range(1 + c % 7)]
        every += keys
        chunks.append((b"".join(set_(k, k.encode()) for k in keys), len(keys)))
    assert online.write_packed(chunks) == len(every)
    client = redis_py.Redis.from_url(redis_url)
    assert client.mget(every) == [k.encode() for k in every]
    assert online.write((), every) == len(every)  # the pooled connection is in step
    assert client.exists(*every) == 0
    client.close()
