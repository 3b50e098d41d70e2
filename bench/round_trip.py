"""Where a Redis round trip's time goes on this machine: the ``send`` that wakes Redis, then the
wait for its reply, over TCP and over the Unix socket, through the read path's own ``send`` and
``read_replies`` (:mod:`features.online.resp`) on redis-py connections, polling as a read does.

    .venv/bin/python bench/round_trip.py [--guest-halt-poll-ns 200000]

On a VM whose idle vCPUs halt at once (``guest_halt_poll_ns`` 0), a request to an idle Redis
wakes Redis's vCPU through the host, and part of that is paid inside the caller's own
``send`` (docs/benchmarks.md, "Where a round trip goes"). Each round is 20,000 ``MGET``s of one
missing key, 20 µs apart; the transports alternate, and the last line gives the ratio of the
two in the same run. Needs the local Redis (``tessera services up``).

``socket_floor`` is the same round trip as ``bench/online.py`` measures it beside the reads: a
bare socket's ``MGET`` of a real key, the floor no client can read under.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import halt_polling
from bench.timing import summarize

ROOT = Path(__file__).resolve().parents[1]
COMMAND = b"*2\r\n$4\r\nMGET\r\n$20\r\ntessera:bench:absent\r\n"
SPIN_S = 200e-6  # online.spin_us's default where the kernel does not poll


def connect(kind: str, port: int, path: str) -> Any:
    """A connected redis-py connection, with a timeout as the online store's have."""
    from redis.connection import Connection, UnixDomainSocketConnection

    unix: Any = UnixDomainSocketConnection  # redis-py's stubs call it abstract; it is not
    conn = (Connection(host="127.0.0.1", port=port, socket_timeout=1.0) if kind == "tcp"
            else unix(path=path, socket_timeout=1.0))
    conn.connect()
    return conn


def one_round(conn: Any, n: int, max_seconds: float) -> dict[str, list[int]]:
    """``n`` round trips (fewer past ``max_seconds``): ns in ``send`` and in the wait."""
    import hiredis

    from features.online.resp import read_replies, send

    reader = hiredis.Reader()
    clock = time.perf_counter_ns
    sends, waits = [], []
    stop = clock() + int(max_seconds * 1e9)
    for _ in range(n):
        until = clock() + 20_000  # a gap, as between a model's calls
        while clock() < until:
            pass
        t0 = clock()
        send(conn, COMMAND)
        t1 = clock()
        [reply] = read_replies(conn, 1, reader, SPIN_S)
        t2 = clock()
        if reply != [None]:
            raise SystemExit(f"unexpected reply from Redis: {reply!r}")
        sends.append(t1 - t0)
        waits.append(t2 - t1)
        if t2 > stop:
            break
    return {"send": sends, "wait": waits, "total": [a + b for a, b in zip(sends, waits,
                                                                          strict=True)]}


def pct(xs: list[int], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] / 1e3


def socket_floor(store: Any, users: list[int], address: int | str, iterations: int,
                 max_seconds: float, gap_us: float = 20.0) -> dict[str, Any]:
    """The round trip alone: one ``MGET`` of a random user's Tessera key, packed beforehand,
    sent on a bare non-blocking socket and polled for with hiredis, nothing else timed. Before
    each call the loop busy-waits ``gap_us`` untimed, standing for the Python a real call runs
    between its round trips (~20 µs of a Tessera 1 × 10 read here): on a VM, Redis's vCPU halts
    in such a gap and each request pays for waking it, which back-to-back calls would hide.
    No client, in any language, reads faster than this on this box. ``address``: the TCP port
    on 127.0.0.1, or the path of a Unix socket."""
    import random
    import socket

    import hiredis

    from features.online import keys as K
    from features.online.resp import mget

    view = store.definitions.views["user_spend"]
    head, tail = K.prefix(store.config.project, view.name, view.fingerprint())
    rng = random.Random(5)
    commands = [mget([head + str(rng.choice(users)) + tail]) for _ in range(min(iterations,
                                                                                5000))]
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(address)
    else:
        sock = socket.create_connection(("127.0.0.1", address))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    reader = hiredis.Reader()
    clock = time.perf_counter_ns
    gap_ns = int(gap_us * 1000)

    def call(command: bytes) -> Any:
        sock.sendall(command)
        while True:
            reply = reader.gets()
            if reply is not False:
                return reply
            try:
                reader.feed(sock.recv(1 << 16))
            except BlockingIOError:  # polling: nothing yet
                continue

    try:
        if call(commands[0])[0] is None:
            raise RuntimeError(f"no Tessera value at {commands[0]!r}")
        for command in commands[:100]:  # warm-up
            call(command)
        lat: list[int] = []
        began = clock()
        deadline = began + int(max_seconds * 1e9)
        for i in range(iterations):
            until = clock() + gap_ns
            while clock() < until:
                pass
            t0 = clock()
            call(commands[i % len(commands)])
            t1 = clock()
            lat.append(t1 - t0)
            if t1 > deadline:
                break
        seconds = (clock() - began) / 1e9
    finally:
        sock.close()
    return summarize(lat, seconds, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=6390)
    parser.add_argument("--unix-socket", default=str(ROOT / ".tessera" / "redis" / "redis.sock"))
    parser.add_argument("--iterations", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-seconds", type=float, default=10.0)
    parser.add_argument("--guest-halt-poll-ns", type=int, default=None,
                        help="set the guest kernel's idle polling for the run (root)")
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    with halt_polling(args.guest_halt_poll_ns) as poll:
        conns = {k: connect(k, args.port, args.unix_socket) for k in ("tcp", "unix")}
        got: dict[str, dict[str, list[int]]] = {k: {"send": [], "wait": [], "total": []}
                                                for k in conns}
        for _ in range(args.rounds):
            for kind, conn in conns.items():
                for part, xs in one_round(conn, args.iterations, args.max_seconds).items():
                    got[kind][part] += xs
        for conn in conns.values():
            conn.disconnect()
    table = Table(title=f"Redis round trip, MGET of one key; guest_halt_poll_ns "
                        f"{'n/a' if poll is None else f'{poll:,}'}")
    for col in ("transport", "part", "n", "p50 µs", "p90 µs", "p99 µs"):
        table.add_column(col, justify="left" if col in ("transport", "part") else "right")
    for kind, parts in got.items():
        for part, xs in parts.items():
            table.add_row(kind, part, f"{len(xs):,}", f"{pct(xs, .5):.1f}", f"{pct(xs, .9):.1f}",
                          f"{pct(xs, .99):.1f}")
    console = Console()
    console.print(table)
    tcp, unix = got["tcp"]["total"], got["unix"]["total"]
    share = pct(got["tcp"]["send"], .5) / pct(tcp, .5)
    console.print(f"tcp / unix round trip: p50 {pct(tcp, .5) / pct(unix, .5):.2f}×, p99 "
                  f"{pct(tcp, .99) / pct(unix, .99):.2f}×; the send's share of a tcp round "
                  f"trip at p50: {share:.0%}")


if __name__ == "__main__":
    main()
