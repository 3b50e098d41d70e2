"""The online path's client of one Redis (``RedisOnline``) on a real server: what a read
returns, polling or blocking, whole or in pipelined parts, however large its request; how it
fails (a stopped server, a refused write, a password never shown); and when it polls."""

from __future__ import annotations

from pathlib import Path

import pytest

from features.store import FeatureStore
from tests.online.repo import REPO_ROOT


def test_a_password_never_shows_in_errors(tmp_path: Path) -> None:
    from features.errors import OnlineUnavailableError
    from features.online.redis_store import RedisOnline
    from tests.online.private_redis import free_port

    online = RedisOnline(f"redis://me:s3cret@127.0.0.1:{free_port()}/0", timeout_s=0.2)
    with pytest.raises(OnlineUnavailableError) as e:
        online.get(["k"])
    assert "s3cret" not in str(e.value) and "me:***@127.0.0.1" in str(e.value)


def test_a_refused_write_names_the_reply_and_keeps_the_rest(redis_url: str) -> None:
    """Pipelined writes read their replies off the socket: an error reply in the middle of a
    chunk is reported, the commands around it are applied, and the connection stays usable."""
    import uuid

    import redis as redis_py

    from features.errors import OnlineUnavailableError
    from features.online.redis_store import RedisOnline

    online = RedisOnline(redis_url)
    a, b = f"t:{uuid.uuid4().hex}:a", f"t:{uuid.uuid4().hex}:b"

    def set_(key: str, value: bytes) -> bytes:
        k = key.encode()
        return b"*3\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(k), k, len(value), value)

    bad = b"*2\r\n$3\r\nSET\r\n$1\r\nx\r\n"  # SET without a value
    with pytest.raises(OnlineUnavailableError, match="refused a write: ERR wrong number of "
                                                     "arguments for 'set' command"):
        online.write_packed([(set_(a, b"1") + bad, 2), (set_(b, b"\r\n2"), 1)])
    client = redis_py.Redis.from_url(redis_url)
    assert client.mget([a, b]) == [b"1", b"\r\n2"]
    assert online.write([(a, b"3", None)], [b]) == 2  # the pooled connection is still in step
    assert client.mget([a, b]) == [b"3", None]
    client.delete(a)
    client.close()


@pytest.mark.parametrize("spin_us", [200, 1])  # 1 µs: the reply is waited for, blocking
def test_a_polling_read_returns_what_a_blocking_read_returns(redis_url: str,
                                                             spin_us: int) -> None:
    """Reads poll for their reply (``online.spin_us``) before blocking: same bytes, in order,
    None where missing, for replies of one packet and of many (a 3 MB value)."""
    import uuid

    import redis as redis_py

    from features.online.redis_store import RedisOnline

    prefix = f"t:{uuid.uuid4().hex}"
    values = {f"{prefix}:small": b"\x00\r\n1", f"{prefix}:empty": b"",
              f"{prefix}:big": bytes(range(256)) * 12_000}
    client = redis_py.Redis.from_url(redis_url)
    client.mset(values)
    keys = [*values, f"{prefix}:missing"]
    try:
        polling, blocking = RedisOnline(redis_url, spin_us=spin_us), RedisOnline(redis_url)
        want = [*values.values(), None]
        for _ in range(3):  # and the connection stays in step
            assert polling.get(keys) == want
            assert polling.get(keys[::-1]) == want[::-1]
        assert blocking.get(keys) == want
    finally:
        client.delete(*values)
        client.close()


def test_a_request_larger_than_the_send_buffer_is_sent_whole(redis_url: str) -> None:
    """A read writes its request straight to the socket's descriptor; what the send buffer
    does not take at once is sent after, waiting with the timeout. A 4 KB send buffer and a
    ~470 KB ``MGET`` (40,000 keys; the first write takes 32 KB of it): every value comes back,
    in order, polling or not, and the connection stays in step for the next read."""
    import socket
    import uuid

    import redis as redis_py

    from features.online.redis_store import RedisOnline

    prefix = f"t:{uuid.uuid4().hex}"
    stored = {f"{prefix}:{i}": str(i).encode() for i in range(0, 40_000, 997)}
    keys = [f"{prefix}:{i}" for i in range(40_000)]
    client = redis_py.Redis.from_url(redis_url)
    client.mset(stored)
    try:
        for spin_us in (200, 0):
            # a send this slow (delayed ACKs of a 4 KB buffer) needs more than the default
            # timeout: a timeout is not retried (a hung Redis would be waited for twice)
            online = RedisOnline(redis_url, spin_us=spin_us, timeout_s=30.0)
            assert online.get([keys[0]]) == [b"0"]  # connected
            sock = online._connection()._sock
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < 64 * 1024
            got = online.get(keys)
            assert got == [stored.get(k) for k in keys]
            assert online.get(keys[997:998]) == [b"997"]
            online.close()
    finally:
        client.delete(*stored)
        client.close()


def test_a_polling_read_fails_like_a_blocking_one(tmp_path: Path) -> None:
    """An error reply (here NOAUTH) raises what redis-py raises, and a Redis that stops
    answering (SIGSTOP) fails within the timeout, not after the polling: both as
    OnlineUnavailableError naming the store."""
    import redis as redis_py

    from features.errors import OnlineUnavailableError
    from features.online.redis_store import RedisOnline
    from tests.online.private_redis import PrivateRedis

    server = PrivateRedis(tmp_path / "redis")
    server.start()
    try:
        redis_py.Redis(port=server.port).config_set("requirepass", "pw")
        polling = RedisOnline(server.url, timeout_s=0.3, spin_us=200)
        blocking = RedisOnline(server.url, timeout_s=0.3, spin_us=0)
        errors = []
        for online in (polling, blocking):
            with pytest.raises(OnlineUnavailableError) as e:
                online.get(["k"])
            errors.append(str(e.value))
        assert errors[0] == errors[1]
        assert errors[0].startswith(f"online store {server.url} is unavailable: ")
        assert "Authentication required" in errors[0]

        redis_py.Redis(port=server.port, password="pw").config_set("requirepass", "")
        assert polling.get(["k"]) == [None]  # works again: the connection was replaced
        server.fails_while_hung(lambda: polling.get(["k"]), 0.3)
        assert polling.get(["k"]) == [None]
    finally:
        server.stop(save=False)


def test_only_a_lone_read_polls(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads polling at once fight over the GIL (p99 1.5× worse with 4 threads, measured):
    a read polls only when no other read of the process is in flight, and the count of reads
    in flight survives failed reads."""
    from features.errors import OnlineUnavailableError
    from features.online import redis_store
    from tests.online.private_redis import free_port

    polled: list[int] = []
    real = redis_store.call_spinning

    def spy(conn, command, reader, spin_s):  # type: ignore[no-untyped-def]
        if spin_s > 0:  # a blocking read goes through the same function with no spin
            polled.append(1)
        return real(conn, command, reader, spin_s)

    monkeypatch.setattr(redis_store, "call_spinning", spy)
    online = redis_store.RedisOnline(redis_url, spin_us=200)
    assert online.get(["t:absent"]) == [None] and len(polled) == 1
    assert redis_store._IN_FLIGHT.enter()  # another read in flight
    try:
        assert online.get(["t:absent"]) == [None] and len(polled) == 1  # blocked at once
    finally:
        redis_store._IN_FLIGHT.leave()
    down = redis_store.RedisOnline(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2,
                                   spin_us=200)
    with pytest.raises(OnlineUnavailableError):
        down.get(["k"])
    assert redis_store._IN_FLIGHT.reads == 0
    polled.clear()
    assert online.get(["t:absent"]) == [None] and len(polled) == 1  # alone again: polls


def test_an_unset_spin_polls_only_where_the_kernel_does_not(tmp_path: Path,
                                                            redis_url: str) -> None:
    """``online.spin_us`` unset: 1,000 µs for a local Redis and 200 µs for one over the network,
    but 0 on a VM whose kernel already polls before it halts an idle vCPU (haltpoll's
    ``guest_halt_poll_ns`` > 0), where our poll only costs, and on a one-CPU machine reading a
    local Redis, where the poll would hold Redis's CPU; a value in the repo always wins."""
    from features.config import load_config
    from features.online import spin

    knob = tmp_path / "guest_halt_poll_ns"
    knob.write_text("200000\n")
    assert spin.default_spin_us(str(knob)) == 0
    knob.write_text("0\n")  # what this VM ships: every idle vCPU halts at once
    assert spin.default_spin_us(str(knob)) == spin.SPIN_US == 200
    assert spin.default_spin_us(str(tmp_path / "absent")) == 200  # no haltpoll driver
    knob.write_text("garbage")
    assert spin.default_spin_us(str(knob)) == 200
    # One CPU and a local Redis: Redis answers on the CPU the poll would hold.
    knob.write_text("0\n")
    for local in ("redis://127.0.0.1:6390/0", "redis://localhost:6379", "rediss://[::1]:6380",
                  "unix:///run/redis/redis.sock?db=0", "redis://127.8.0.3:6379/1"):
        assert spin.default_spin_us(str(knob), url=local, cpus=1) == 0, local
        assert spin.default_spin_us(str(knob), url=local, cpus=2) == spin.LOCAL_SPIN_US == 1000
        assert spin.default_spin_us(str(tmp_path / "absent"), url=local, cpus=2) == 1000
        knob.write_text("200000\n")  # the kernel polls: no poll of ours, local or not
        assert spin.default_spin_us(str(knob), url=local, cpus=2) == 0, local
        knob.write_text("0\n")
    for remote in ("redis://10.0.0.5:6379/0", "redis://redis.internal:6379",
                   "rediss://[2001:db8::1]:6380"):  # our vCPU's wake-up is still saved
        assert spin.default_spin_us(str(knob), url=remote, cpus=1) == 200, remote
        assert spin.default_spin_us(str(knob), url=remote, cpus=2) == 200, remote

    definitions = REPO_ROOT / "example" / "card_features.py"
    (tmp_path / "unset").mkdir()
    (tmp_path / "unset" / "feature_repo.yaml").write_text(
        f"project: spin\ndefinitions: [{definitions}]\nonline:\n  url: {redis_url}\n")
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "feature_repo.yaml").write_text(
        f"project: spin\ndefinitions: [{definitions}]\nonline:\n  url: {redis_url}\n"
        f"  spin_us: 7\n")
    unset = FeatureStore(config=load_config(tmp_path / "unset"))
    assert unset.online.spin_s == spin.default_spin_us(url=redis_url) / 1e6  # this box's
    assert FeatureStore(config=load_config(tmp_path / "set")).online.spin_s == 7e-6


def test_pipelined_reads_stay_in_step_and_fail_like_one_read(tmp_path: Path) -> None:
    """RedisOnline.get_pipelined: each list's values in order ([] for an empty list); a caller
    that stops early leaves no reply to be read by the next call; a Redis restarted between
    calls is retried; one that stops answering fails within the timeout."""
    import redis as redis_py

    from features.online.redis_store import RedisOnline
    from tests.online.private_redis import PrivateRedis

    server = PrivateRedis(tmp_path / "redis")
    server.start()
    try:
        admin = redis_py.Redis(port=server.port)
        admin.mset({f"k{i}": f"v{i}" for i in range(30)})
        online = RedisOnline(server.url, timeout_s=0.3)
        lists = [["k0", "k1"], [], ["nope", "k29"], ["k5"]]
        want = [[b"v0", b"v1"], [], [None, b"v29"], [b"v5"]]
        for _ in range(2):
            assert list(online.get_pipelined(lists)) == want
        replies = online.get_pipelined(lists)
        assert next(replies) == want[0]
        replies.close()  # three replies unread: the connection must not be reused as is
        assert online.get(["k7", "k8"]) == [b"v7", b"v8"]
        assert list(online.get_pipelined([[], []])) == [[], []]

        assert admin.client_kill_filter(_type="normal", skipme=True) >= 1  # as a restart does
        assert list(online.get_pipelined(lists)) == want
        server.stop()
        server.start()
        assert list(online.get_pipelined(lists)) == want  # the data survived the restart

        server.fails_while_hung(lambda: list(online.get_pipelined(lists)), 0.3)
        assert list(online.get_pipelined(lists)) == want
        online.close()
    finally:
        server.stop(save=False)


def test_a_read_interrupted_before_its_reply_never_hands_it_to_the_next(tmp_path: Path) -> None:
    """Ctrl-C (here a SIGALRM handler raising KeyboardInterrupt) while a read waits for its
    reply: the next reads, single and pipelined, get their own values, not the reply left on
    the socket. A hung Redis costs one timeout, not a retry's second one."""
    import os
    import signal
    import time

    import redis as redis_py

    from features.errors import OnlineUnavailableError
    from features.online.redis_store import RedisOnline
    from tests.online.private_redis import PrivateRedis

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    server = PrivateRedis(tmp_path / "redis")
    server.start()
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        redis_py.Redis(port=server.port).mset({f"k{i}": f"v{i}" for i in range(8)})
        for spin_us in (0, 1000):
            online = RedisOnline(server.url, timeout_s=2.0, spin_us=spin_us)
            assert online.get(["k0"]) == [b"v0"]
            for read in (lambda o=online: o.get(["k1"]),
                         lambda o=online: list(o.get_pipelined([["k1"], ["k2"]]))):
                assert server.proc is not None
                os.kill(server.proc.pid, signal.SIGSTOP)
                signal.setitimer(signal.ITIMER_REAL, 0.1)
                try:
                    with pytest.raises(KeyboardInterrupt):
                        read()
                finally:
                    os.kill(server.proc.pid, signal.SIGCONT)
                assert online.get(["k3"]) == [b"v3"]
                assert list(online.get_pipelined([["k4"], ["k5", "k6"]])) == [
                    [b"v4"], [b"v5", b"v6"]]
            online.close()
        hung = RedisOnline(server.url, timeout_s=0.4, spin_us=0)
        assert hung.get(["k0"]) == [b"v0"]  # connected: the hang is found by the read
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            began = time.monotonic()
            with pytest.raises(OnlineUnavailableError, match="Timeout"):
                hung.get(["k0"])
            assert time.monotonic() - began < 0.4 * 1.5  # one timeout, no retry
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        assert hung.get(["k7"]) == [b"v7"]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        server.stop(save=False)
