"""Where a Redis round trip's time goes on this machine: the ``send`` that wakes Redis, then the
wait for its reply, over TCP and over the Unix socket, as the reads of ``get_online_features``
do them (a polling ``recv``, the socket toggled non-blocking and back).

    .venv/bin/python bench/round_trip.py [--guest-halt-poll-ns 200000]

On a VM whose idle vCPUs halt at once (``guest_halt_poll_ns`` 0), a request to an idle Redis
wakes Redis's vCPU through the host, and part of that is paid inside the caller's own
``send`` (docs/benchmarks.md, "Where a round trip goes"). Each round is 20,000 ``MGET``s of one
missing key, 20 µs apart; the transports alternate, and the last line gives the ratio of the
two in the same run. Needs the local Redis (``tessera services up``).
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.feast_baseline import halt_polling

ROOT = Path(__file__).resolve().parents[1]
COMMAND = b"*2\r\n$4\r\nMGET\r\n$20\r\ntessera:bench:absent\r\n"


def connect(kind: str, port: int, path: str) -> socket.socket:
    if kind == "tcp":
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)
    sock.settimeout(1.0)  # as redis-py leaves it: blocking with a timeout
    return sock


def one_round(sock: socket.socket, n: int, max_seconds: float) -> dict[str, list[int]]:
    """``n`` round trips (fewer past ``max_seconds``): ns in ``send`` and in the wait."""
    clock = time.perf_counter_ns
    sends, waits = [], []
    stop = clock() + int(max_seconds * 1e9)
    for _ in range(n):
        until = clock() + 20_000  # a gap, as between a model's calls
        while clock() < until:
            pass
        t0 = clock()
        sock.sendall(COMMAND)
        t1 = clock()
        sock.settimeout(0.0)
        while True:
            try:
                reply = sock.recv(1 << 16)
                break
            except BlockingIOError:
                continue
        t2 = clock()
        sock.settimeout(1.0)
        if not reply.startswith(b"*1\r\n"):
            raise SystemExit(f"unexpected reply from Redis: {reply[:40]!r}")
        sends.append(t1 - t0)
        waits.append(t2 - t1)
        if t2 > stop:
            break
    return {"send": sends, "wait": waits, "total": [a + b for a, b in zip(sends, waits, strict=True)]}


def pct(xs: list[int], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] / 1e3


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
        socks = {k: connect(k, args.port, args.unix_socket) for k in ("tcp", "unix")}
        got: dict[str, dict[str, list[int]]] = {k: {"send": [], "wait": [], "total": []}
                                                for k in socks}
        for _ in range(args.rounds):
            for kind, sock in socks.items():
                for part, xs in one_round(sock, args.iterations, args.max_seconds).items():
                    got[kind][part] += xs
        for sock in socks.values():
            sock.close()
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
