"""What materialize's pipelined writes leave in Redis: the replies of commands sent but not yet
read wait in Redis's output buffer for the writing client. Replies read ``WRITE_LAG`` chunks
behind the sending (the default, 8) and 1 chunk behind, against all read at the end (the code
before, the baseline in the same run: ``WRITE_LAG`` above the chunk count), on the same Redis.

Each round writes ``--values`` SETs of 100-byte values in chunks of 5,000 commands (as
materialize sends them) into its own database (``--db``, emptied before and after), and samples
the writer's output buffer (``CLIENT LIST``: ``omem``, and ``tot-mem``) from a second connection
every 50 chunks.

    .venv/bin/python bench/write_replies.py [--values 2000000] [--rounds 3] [--db 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHUNK = 5_000
SAMPLE_EVERY = 50  # chunks


def one(url: str, values: int, lag: int) -> dict[str, Any]:
    import redis

    from features.online import redis_write
    from features.online.redis_store import RedisOnline

    redis_write.WRITE_LAG = lag
    online = RedisOnline(url)
    watcher = redis.Redis.from_url(url)
    watcher.flushdb()
    value = b"v" * 100
    name = f"bench-writer-{lag}"
    peak = {"omem": 0, "tot-mem": 0, "seen": 0}

    def sample() -> None:
        for client in cast(list, watcher.client_list()):
            if client.get("name") == name:
                peak["seen"] += 1
                for field in ("omem", "tot-mem"):
                    peak[field] = max(peak[field], int(client[field]))

    def chunks() -> Any:
        for c in range(0, values, CHUNK):
            cmds = []
            for i in range(c, min(c + CHUNK, values)):
                k = b"bench:w:%d" % i
                cmds.append(b"*3\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$100\r\n%b\r\n" % (len(k), k, value))
            yield b"".join(cmds), len(cmds)
            if (c // CHUNK) % SAMPLE_EVERY == SAMPLE_EVERY - 1:
                sample()

    online.client.client_setname(name)  # the pooled connection write_packed takes
    began = time.perf_counter()
    written = online.write_packed(chunks())
    seconds = time.perf_counter() - began
    assert written == values and watcher.dbsize() == values
    assert peak["seen"], "the writer's connection was not found by its name"
    watcher.flushdb()
    online.close()
    watcher.close()
    return {"seconds": seconds, "omem": peak["omem"], "tot_mem": peak["tot-mem"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=2_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--db", type=int, default=4)
    parser.add_argument("--redis-port", type=int, default=6390)
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    url = f"redis://127.0.0.1:{args.redis_port}/{args.db}"
    chunks = -(-args.values // CHUNK)
    from features.online import redis_write

    lags = {f"{redis_write.WRITE_LAG} chunks behind (default)": redis_write.WRITE_LAG,
            "1 chunk behind": 1, "all at the end": chunks + 1}
    got: dict[str, list[dict[str, Any]]] = {how: [] for how in lags}
    for _ in range(args.rounds):  # interleaved: the machine is shared
        for how, lag in lags.items():
            got[how].append(one(url, args.values, lag))
    table = Table(title=f"{args.values:,} SETs of 100 bytes in {chunks:,} chunks of {CHUNK:,} "
                        f"(medians of {args.rounds})")
    for col in ("replies read", "values/s", "writer's peak omem (runs)", "peak tot-mem"):
        table.add_column(col, justify="left" if col == "replies read" else "right")
    for how, runs in got.items():
        table.add_row(how, f"{args.values / statistics.median(r['seconds'] for r in runs):,.0f}",
                      f"{statistics.median(r['omem'] for r in runs) / 2**20:,.1f} MiB ("
                      + ", ".join(f"{r['omem'] / 2**20:.1f}" for r in runs) + ")",
                      f"{statistics.median(r['tot_mem'] for r in runs) / 2**20:,.1f} MiB")
    Console().print(table)


if __name__ == "__main__":
    main()
