"""HTTP load for any feature server speaking Feast's JSON: ``tessera serve`` and ``feast serve``.

One measurement loop for both servers, so their numbers compare like for like: the same request
bodies (seeded draws of entity ids), the same client (one keep-alive client per thread: httpx,
or the stdlib's ``http.client`` with ``client="stdlib"``), the same bounds and the same result
dict as ``bench/feast_baseline.py`` (``bench/timing.py``'s ``summarize`` and ``_batches``;
``FeastServer.http_latency`` calls :func:`http_latency`). ``TesseraServer`` is in
``bench/servers.py``.

Interface::

    http_latency(url, feature_refs, "user_id", ids, iterations=2000, max_seconds=20)
    http_latency(url, feature_refs, "user_id", ids, iterations=5000, concurrency=8)
    with TesseraServer(Path("feature_repo.yaml")) as server:   # `tessera serve`, a free port
        server.http_latency(ids, feature_refs, "user_id", iterations=2000, max_seconds=20)

Every result is a dict: ``n``, ``seconds``, ``p50_ms``, ``p99_ms``, ``max_ms``, ``mean_ms``,
``ops_per_s`` (requests/s over the wall time of the load), ``entities_per_s`` and
``concurrency``. Each loop is bounded by ``iterations`` requests and ``max_seconds``.

Run alone against a repo whose features are materialized (``make services`` first)::

    .venv/bin/python bench/http_client.py --repo /path/to/repo --features 10 --concurrency 8
    # and `feast serve` in the same run, interleaved, both clients, medians of 3 rounds:
    .venv/bin/python bench/http_client.py --repo /path/to/repo --iterations 2000 \
        --feast-entities 10000 --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script too

from bench.servers import TesseraServer
from bench.timing import _batches, summarize

ROOT = Path(__file__).resolve().parents[1]
Progress = Callable[[int], None]
Check = Callable[[dict[str, Any]], None]


def http_latency(url: str, feature_refs: Sequence[str], join_key: str,
                 entity_ids: Sequence[Any], iterations: int = 2000, max_seconds: float = 20.0,
                 concurrency: int = 1, batch: int = 1, seed: int = 0,
                 path: str = "/get-online-features", progress: Progress | None = None,
                 token: str | None = None, full_feature_names: bool = False,
                 check: Check | None = None, client: str = "httpx") -> dict[str, Any]:
    """POST ``path`` with ``batch`` entities × ``feature_refs``, from ``concurrency`` threads
    (one keep-alive client each) sharing ``iterations`` requests and one deadline.

    Latency is per request, client side; ``ops_per_s`` is requests over the wall time of the
    load. ``path="/health"`` (a GET) measures the HTTP stack alone. ``check`` (optional) is
    called with the first response's JSON before the timed loop and raises if it is wrong; every
    timed response must have status 200.

    ``client="httpx"`` (the default, as ``feast_baseline`` always measured) or ``"stdlib"``
    (``http.client``): httpx spends ~0.5-0.8 ms of client CPU per request on a small machine,
    more than Tessera's server does, so it caps req/s and hides server differences; the stdlib
    client costs a fraction of that. Compare two servers with the same client only.
    """
    if client not in CLIENTS:
        raise ValueError(f"client must be one of {', '.join(CLIENTS)}, got {client!r}")
    bodies = [json.dumps({"features": list(feature_refs), "entities": {join_key: b},
                          "full_feature_names": full_feature_names}).encode()
              for b in _batches(entity_ids, batch, min(iterations, 20_000), seed)]
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    is_get = path == "/health"

    open_client = CLIENTS[client]
    with open_client(url, path, headers, is_get) as call:
        first = call(bodies[0])
        if not is_get and check is not None:
            check(json.loads(first))

    counter = itertools.count()
    lock = threading.Lock()
    lats: list[int] = []
    errors: list[BaseException] = []
    start_gate = threading.Barrier(concurrency + 1)
    warm = min(50, iterations // (10 * concurrency) + 1)
    clock = time.perf_counter_ns

    def worker(tid: int) -> None:
        mine: list[int] = []
        try:
            with open_client(url, path, headers, is_get) as call:
                for i in range(warm):
                    call(bodies[(tid * warm + i) % len(bodies)])
                start_gate.wait(timeout=120)
                deadline = clock() + int(max_seconds * 1e9)
                while True:
                    i = next(counter)
                    if i >= iterations:
                        break
                    t0 = clock()
                    call(bodies[i % len(bodies)])
                    t1 = clock()
                    mine.append(t1 - t0)
                    if progress is not None and len(mine) % 50 == 0:
                        progress(50)
                    if t1 > deadline:
                        break
        except BaseException as e:
            errors.append(e)
            with contextlib.suppress(threading.BrokenBarrierError):
                start_gate.abort()
        finally:
            with lock:
                lats.extend(mine)

    threads = [threading.Thread(target=worker, args=(t,), daemon=True)
               for t in range(concurrency)]
    for t in threads:
        t.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        start_gate.wait(timeout=120)
    began = time.perf_counter()
    for t in threads:
        t.join(timeout=max_seconds + 60)
    seconds = time.perf_counter() - began
    if errors:
        raise RuntimeError(f"{len(errors)} load thread(s) failed") from errors[0]
    out = summarize(lats, seconds, batch)
    out["concurrency"] = concurrency
    return out


@contextlib.contextmanager
def _httpx_client(url: str, path: str, headers: dict[str, str],
                  is_get: bool) -> Iterator[Callable[[bytes], bytes]]:
    import httpx

    with httpx.Client(base_url=url, timeout=30.0) as client:
        def call(body: bytes) -> bytes:
            r = (client.get(path, headers=headers) if is_get
                 else client.post(path, content=body, headers=headers))
            if r.status_code != 200:
                raise RuntimeError(f"{path}: HTTP {r.status_code}: {r.text[:500]}")
            return r.content
        yield call


@contextlib.contextmanager
def _stdlib_client(url: str, path: str, headers: dict[str, str],
                   is_get: bool) -> Iterator[Callable[[bytes], bytes]]:
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80,
                                      timeout=30.0)
    method = "GET" if is_get else "POST"
    try:
        def call(body: bytes) -> bytes:
            conn.request(method, path, body=None if is_get else body, headers=headers)
            r = conn.getresponse()
            data = r.read()
            if r.status != 200:
                raise RuntimeError(f"{path}: HTTP {r.status}: {data[:500]!r}")
            return data
        yield call
    finally:
        conn.close()


@contextlib.contextmanager
def _raw_client(url: str, path: str, headers: dict[str, str],
                is_get: bool) -> Iterator[Callable[[bytes], bytes]]:
    """HTTP/1.1 keep-alive on a bare socket, as load tools such as wrk do: the request written
    in one ``sendall``, the response read by its ``Content-Length``. ``http.client`` parses
    every response's headers with the ``email`` package; that client-side cost lands in both
    servers' latencies alike and hides their difference (bench/http_client.py --clients)."""
    import re
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    sock = socket.create_connection((host, port), timeout=30.0)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head = f"{'GET' if is_get else 'POST'} {path} HTTP/1.1\r\nhost: {host}:{port}\r\n{lines}"
    length = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)

    def call(body: bytes) -> bytes:
        sock.sendall(f"{head}\r\n".encode() if is_get else
                     f"{head}content-length: {len(body)}\r\n\r\n".encode() + body)
        buf = b""
        while (end := buf.find(b"\r\n\r\n")) < 0:
            buf += _recv(sock)
        header, rest = buf[:end + 2], buf[end + 4:]
        m = length.search(header)
        if m is None:
            raise RuntimeError(f"{path}: no Content-Length (this client reads no chunked "
                               f"responses): {header[:300]!r}")
        n = int(m.group(1))
        while len(rest) < n:
            rest += _recv(sock)
        if len(rest) > n:
            raise RuntimeError(f"{path}: {len(rest) - n} bytes past the response body")
        status = int(header[9:12])
        if status != 200:
            raise RuntimeError(f"{path}: HTTP {status}: {rest[:500]!r}")
        return rest

    try:
        yield call
    finally:
        sock.close()


def _recv(sock: Any) -> bytes:
    chunk = sock.recv(1 << 16)
    if not chunk:
        raise RuntimeError("the server closed the connection")
    return chunk


CLIENTS = {"httpx": _httpx_client, "stdlib": _stdlib_client, "raw": _raw_client}


def all_present(min_present: float = 0.5) -> Check:
    """A ``check``: the response has Feast's shape and most values are found."""
    def check(doc: dict[str, Any]) -> None:
        statuses = [s for r in doc["results"] for s in r["statuses"]]
        if not statuses or statuses.count("NOT_FOUND") > (1 - min_present) * len(statuses):
            raise RuntimeError(f"mostly NOT_FOUND (materialized?): {json.dumps(doc)[:500]}")
    return check


def repo_sample(repo: Path, view: str | None, features: int,
                entities: int = 10_000) -> tuple[list[str], str, list[Any]]:
    """(feature refs, join key, entity ids): the first ``features`` of ``view`` (default: the
    first view) and up to ``entities`` distinct keys of its batch source."""
    import polars as pl

    from features.store import FeatureStore

    store = FeatureStore(repo)
    v = store.definitions.views[view] if view else next(iter(store.definitions.views.values()))
    key = v.join_keys[0]
    src = store.config.resolve(Path(v.source.path))
    ids = (pl.scan_parquet(src / "**" / "*.parquet", hive_partitioning=False).select(key)
           .unique().sort(key).head(entities).collect()[key].to_list())
    return [f"{v.name}:{f.name}" for f in v.features[:features]], key, ids


def _row(name: str, r: dict[str, Any]) -> str:
    return (f"{name:46s} {r['n']:6d} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} {r['max_ms']:8.2f} "
            f"{r['ops_per_s']:8,.0f} {r['entities_per_s']:11,.0f}")


HEADER = (f"{'measure':46s} {'n':>6s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s} "
          f"{'req/s':>8s} {'entities/s':>11s}")


def compare_with_feast(args: argparse.Namespace, refs: list[str], key: str,
                       ids: list[Any]) -> None:
    """``tessera serve`` and ``feast serve`` (``FeastSide``: a synthetic 10-column view on the
    same Redis, db 1), 1 × N, sequential and concurrent, interleaved for ``--rounds`` rounds;
    prints every round and the medians."""
    import statistics

    from bench.feast_side import WORK, FeastSide, synthetic_table

    side = FeastSide.setup(synthetic_table(args.feast_entities), "user_id", "event_ts", WORK,
                           redis_db=1)
    try:
        side.materialize()
        it, sec, c = args.iterations, args.max_seconds, args.concurrency
        results: dict[str, list[dict[str, Any]]] = {}
        with side.serve() as feast, TesseraServer(args.repo, workers=args.workers) as tessera:
            runs: list[tuple[str, Callable[[], dict[str, Any]]]] = []
            for client in args.clients.split(","):
                for conc, n in ((1, it), (c, it * 5 // 2)):
                    def f_run(conc: int = conc, n: int = n, client: str = client) -> Any:
                        return feast.http_latency(side.entity_ids, iterations=n,
                                                  max_seconds=sec, concurrency=conc,
                                                  client=client)

                    def t_run(conc: int = conc, n: int = n, client: str = client) -> Any:
                        return tessera.http_latency(ids, refs, key, iterations=n,
                                                    max_seconds=sec, concurrency=conc,
                                                    client=client, check=all_present())
                    what = f"{len(refs)} features, {conc} client{'s' * (conc > 1)}, {client}"
                    runs += [(f"feast serve, {what}", f_run), (f"tessera serve, {what}", t_run)]
            print(HEADER)
            for r in range(args.rounds):
                for name, run in runs:
                    out = run()
                    results.setdefault(name, []).append(out)
                    print(_row(f"{r} {name}", out), flush=True)
        print(f"medians over {args.rounds} rounds:")
        print(HEADER)
        for name, outs in results.items():
            med = {k: statistics.median(o[k] for o in outs)
                   for k in ("p50_ms", "p99_ms", "max_ms", "ops_per_s", "entities_per_s")}
            print(_row(name, {"n": sum(o["n"] for o in outs), **med}))
    finally:
        side.clear_online()
        side.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=ROOT / "feature_repo.yaml")
    parser.add_argument("--url", help="measure this running server instead of starting one")
    parser.add_argument("--view", help="feature view (default: the first one)")
    parser.add_argument("--features", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--max-seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--token", default=os.environ.get("TESSERA_BENCH_TOKEN"))
    parser.add_argument("--client", choices=tuple(CLIENTS), default="httpx")
    parser.add_argument("--feast-entities", type=int, default=0,
                        help="also measure `feast serve` on this many synthetic entities, "
                             "interleaved with tessera serve (imports Feast, ~15 s)")
    parser.add_argument("--clients", default="httpx,stdlib",
                        help="with --feast-entities: the load clients to compare with")
    parser.add_argument("--rounds", type=int, default=3, help="with --feast-entities")
    args = parser.parse_args()

    refs, key, ids = repo_sample(args.repo, args.view, args.features)
    if args.feast_entities:
        compare_with_feast(args, refs, key, ids)
        return
    it, sec = args.iterations, args.max_seconds
    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(TesseraServer(args.repo, workers=args.workers)).url
        kw: dict[str, Any] = {"max_seconds": sec, "token": args.token, "client": args.client}
        runs = {
            "GET /health (a Redis PING)": dict(iterations=it, path="/health"),
            f"1 entity × {len(refs)}": dict(iterations=it, check=all_present()),
            f"1 entity × {len(refs)}, {args.concurrency} clients":
                dict(iterations=it * 5 // 2, concurrency=args.concurrency),
            f"{args.batch} entities × {len(refs)}": dict(iterations=it // 4, batch=args.batch),
        }
        print(f"tessera serve at {url}: {len(ids):,} entities of {key!r}, features {refs}")
        print(HEADER)
        for name, run in runs.items():
            print(_row(name, http_latency(url, refs, key, ids, **kw, **run)))


if __name__ == "__main__":
    main()
