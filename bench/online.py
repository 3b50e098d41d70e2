"""Online serving: Tessera against Feast 0.67 and raw redis-py, same data, same Redis, one run.

Data: the example's card transactions (``pipelines.datagen``), ``--rows`` events over the 28
days before today's midnight, run on Polars. Features: 10 windowed features of ``user_spend``
(counts, sums, a mean, a max and a stddev over 1h, 1d and 7d), merged at request time.

Feast gets the same values: one row per user holding these 10 features' values at today's
midnight (read from Tessera), registered in a Feast repo with its Redis online store on db 1 of
the same Redis (``bench/feast_side.py``). Measured in this order, all loops bounded:

1. materialization: Tessera from the batch run's online snapshot (the default) and from the
   tiles (``offline.online_snapshot`` off), and Feast (rows → Redis), entity-rows/s; the batch
   run's time with the cost of building the snapshot;
2. SDK, 1 entity × 10 features and 100 × 10: Tessera (with its default ``online.spin_us``,
   which depends on the machine's ``guest_halt_poll_ns``, and with reads that block at once),
   Feast, and the raw floor (a redis-py ``HMGET`` of 10 fields of Feast's hash; pipelined for
   100), and for 1 × 10 the round trip alone (``bench/round_trip.py``'s ``socket_floor``: a
   bare socket's ``MGET``);
   the four 1 × 10 measures again over the Redis's Unix socket (``--unix-socket``; by default
   the one of ``tessera services up``), Feast's client connecting over it too;
3. HTTP, 1 × 10, sequential and with ``--concurrency`` clients: ``tessera serve`` (as
   configured, and with both its polls off: ``online.spin_us`` and ``serve.poll_us`` 0) and
   ``feast serve``.

    .venv/bin/python bench/online.py --rows 2000000

The guest kernel's idle polling (``guest_halt_poll_ns`` of the ``haltpoll`` cpuidle driver)
is printed with the results: on a VM it moves every short round trip (docs/benchmarks.md, "The
VM's idle vCPUs"). ``--guest-halt-poll-ns N`` sets it for the run and restores it (root).
``--share-core-with-redis CPU`` runs the benchmark and the local Redis's main thread on one
CPU, so neither waits for the other's vCPU to be woken (docs/benchmarks.md, "Where a round
trip goes").

Results print as a table with the ratios the goals are stated in (``bench/online_report.py``),
and go to ``.tessera/bench/online.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.feast_baseline import raw_hmget_latency
from bench.feast_side import FeastSide
from bench.http_client import CLIENTS
from bench.machine import core_shared_with_redis, halt_polling, snapshots_paused
from bench.online_report import median_round, report
from bench.round_trip import socket_floor
from bench.timing import _batches, summarize, timed_loop

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".tessera" / "bench" / "online"
FEATURES = ["txn_count_1h", "txn_count_1d", "txn_count_7d", "spend_eur_1h", "spend_eur_1d",
            "spend_eur_7d", "spend_eur_mean_7d", "spend_eur_max_7d", "spend_eur_std_7d",
            "online_txn_count_7d"]


def midnight() -> datetime:
    now = datetime.now(UTC)
    return datetime(now.year, now.month, now.day, tzinfo=UTC)


BATCH_RUN: dict[str, float | None] = {}


def make_repo(folder: Path, rows: int, redis_url: str) -> Any:
    """Generate, run on Polars; returns the FeatureStore (not materialized). The run's time and
    its snapshot's are in ``BATCH_RUN``."""
    import shutil

    from features.config import load_config
    from features.store import FeatureStore
    from pipelines.batch import run
    from pipelines.datagen import GenSpec, write_parquet

    if folder.exists():
        shutil.rmtree(folder)
    (folder / "example").mkdir(parents=True)
    shutil.copy(ROOT / "example" / "card_features.py", folder / "example")
    (folder / "feature_repo.yaml").write_text(
        "project: onlinebench\ndefinitions: [example/card_features.py]\n"
        f"offline: {{path: offline}}\nonline: {{url: '{redis_url}'}}\n")
    write_parquet(GenSpec(rows=rows, start=midnight() - timedelta(days=28), days=28, seed=7),
                  folder / "data", progress=True)
    cfg = load_config(folder)
    store = FeatureStore(config=cfg)
    [summary] = run(cfg, [store.definitions.views["user_spend"]], "polars")
    BATCH_RUN.update(seconds=summary.seconds, snapshot_seconds=None if summary.snapshot is None
                     else summary.snapshot.seconds)
    return store


def tessera_materialize(store: Any, rounds: int = 5) -> dict[str, Any]:
    """Full materializations from an empty Redis, alternating the two sources: the batch run's
    snapshot (the default) and the tiles (snapshots off); the median run of each (five runs:
    on this shared box one run in three or four takes twice the others)."""
    from features.online import keys as K
    from pipelines.materialize import materialize

    view = store.definitions.views["user_spend"]
    client = store.online.client
    state = K.state_key("onlinebench", view.name, view.fingerprint())
    tiles_cfg = store.config.model_copy(update={"offline": store.config.offline.model_copy(
        update={"online_snapshot": False})})
    configs = {"snapshot": store.config, "tiles": tiles_cfg}

    def emptied() -> None:
        keys = list(client.scan_iter("onlinebench:*", count=10_000))
        for lo in range(0, len(keys), 1000):  # one DEL per key took ~8 s a round
            client.delete(*keys[lo:lo + 1000])
        client.delete(state)

    # A first full run of each source pays the imports (numpy, pyarrow.compute, pandas via
    # pyarrow: ~3 s here, as Feast pays its own in setup). From an empty Redis: on a Redis
    # that already holds the values, materialize is incremental and may write nothing, which
    # warms nothing (a standalone loop's first timed run after such a call took 5.1 s). The
    # timed runs start from an empty Redis too.
    for cfg in configs.values():
        emptied()
        materialize(cfg, [view], store.online, show_progress=False)
    runs: dict[str, list[Any]] = {"snapshot": [], "tiles": []}
    for _ in range(rounds):
        for source, cfg in configs.items():
            emptied()
            [summary] = materialize(cfg, [view], store.online, show_progress=False)
            assert summary.source == source, (summary.source, summary.note)
            runs[source].append(summary)
    out = {}
    for source, done in runs.items():
        summary = sorted(done, key=lambda m: m.seconds)[len(done) // 2]
        out[source] = {"rows": summary.entities, "seconds": summary.seconds,
                       "rows_per_s": summary.rate, "runs_s": [m.seconds for m in done]}
    return out


def feast_table(store: Any, users: list[int]) -> Any:
    """One row per user: its 10 feature values at midnight, read from Tessera."""
    import pyarrow as pa

    refs = [f"user_spend:{f}" for f in FEATURES]
    columns: dict[str, list[Any]] = {f: [] for f in FEATURES}
    for lo in range(0, len(users), 2000):
        out = store.get_online_features(refs, {"user_id": users[lo:lo + 2000]},
                                        now=midnight()).to_dict()
        for f in FEATURES:
            columns[f] += out[f]
    at = midnight() - timedelta(seconds=1)
    table = {"user_id": pa.array(users, pa.int64()),
             "event_ts": pa.array([at] * len(users), pa.timestamp("us", tz="UTC"))}
    for f in FEATURES:
        dtype = pa.int64() if "count" in f else pa.float64()
        table[f] = pa.array(columns[f], dtype)  # nulls stay null (an empty window's mean)
    return pa.table(table)


def tessera_latency(store: Any, users: list[int], batch: int, iterations: int,
                    max_seconds: float) -> dict[str, Any]:
    refs = [f"user_spend:{f}" for f in FEATURES]
    payloads = [[{"user_id": u} for u in b]
                for b in _batches(users, batch, min(iterations, 5000), seed=3)]

    def call(rows: list[dict[str, int]]) -> Any:
        return store.get_online_features(refs, rows).to_dict()

    lat, seconds = timed_loop(call, payloads, iterations, max_seconds)
    return summarize(lat, seconds, batch)


def without_spin(store: Any, fn: Any) -> Any:
    """``fn()`` with the store's reads blocking at once (``online.spin_us: 0``), to show what
    polling for the reply changes."""
    saved, store.online.spin_s = store.online.spin_s, 0.0
    try:
        return fn()
    finally:
        store.online.spin_s = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--max-seconds", type=float, default=20.0)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--redis-port", type=int, default=6390)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--unix-socket", default=str(ROOT / ".tessera" / "redis" / "redis.sock"),
                        help="the same Redis's Unix socket, for the 1 x 10 measures over it "
                             "(default: the one `tessera services up` makes; '' to skip)")
    parser.add_argument("--http-client", choices=tuple(CLIENTS), default="raw")
    parser.add_argument("--guest-halt-poll-ns", type=int, default=None,
                        help="set the guest kernel's idle polling (haltpoll cpuidle driver) "
                             "for the run and restore it after; needs root (default: as is)")
    parser.add_argument("--share-core-with-redis", type=int, default=None, metavar="CPU",
                        help="run this process and the local Redis's main thread on CPU "
                             "number CPU for the run, restored after (default: where the "
                             "scheduler puts them)")
    args = parser.parse_args()

    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 160)
    url = f"redis://127.0.0.1:{args.redis_port}/0"
    with snapshots_paused(url) as saved, halt_polling(args.guest_halt_poll_ns) as poll, \
            core_shared_with_redis(url, args.share_core_with_redis) as cpu:
        console.print(f"Redis snapshots (save {saved!r}) paused for the run; guest_halt_poll_ns "
                      f"{'n/a (no haltpoll driver)' if poll is None else f'{poll:,}'}; "
                      f"{'CPUs as scheduled' if cpu is None else f'this process and Redis on CPU {cpu}'}")
        args.halt_poll_ns, args.shared_cpu = poll, cpu
        measure(args, url, console)


def measure(args: Any, url: str, console: Any) -> None:
    store = make_repo(WORK / "repo", args.rows, url)
    results: dict[str, Any] = {"rows": args.rows, "features": FEATURES,
                               "guest_halt_poll_ns": args.halt_poll_ns,
                               "cpu shared with redis": args.shared_cpu}
    results["batch run"] = dict(BATCH_RUN)
    results["spin_us"] = round(store.online.spin_s * 1e6)  # unset in the repo: chosen by the box
    mat = tessera_materialize(store)
    results["materialize tessera"] = mat["snapshot"]
    results["materialize tessera (tiles)"] = mat["tiles"]
    for source, m in mat.items():
        console.print(f"tessera materialize from the {source}: {m['rows']:,} entities, runs "
                      f"{', '.join(f'{x:.2f}' for x in m['runs_s'])} s; median "
                      f"{m['rows_per_s']:,.0f}/s")
    console.print(f"batch run {BATCH_RUN['seconds']:.2f} s, of which building the "
                  f"snapshot {BATCH_RUN['snapshot_seconds'] or 0:.2f} s")
    import polars as pl

    users = (pl.read_parquet(WORK / "repo" / "data" / "transactions", hive_partitioning=False)
             ["user_id"].unique().sort().to_list())
    table = feast_table(store, users)
    with console.status("importing Feast and applying its repo (~13 s)"):
        side = FeastSide.setup(table, "user_id", "event_ts", WORK / "feast", "127.0.0.1",
                               args.redis_port, 1)
    try:
        results["materialize feast"] = side.materialize()
        side.verify()
        it, sec, bt = args.iterations, args.max_seconds, args.batch
        client = side.redis_client()
        keys, fields = side.redis_keys(users), side.redis_fields()
        n = max(1, it // args.rounds)
        runs = [
            ("raw HMGET 1x10", lambda: raw_hmget_latency(client, keys, fields, 1, n, sec)),
            ("tessera sdk 1x10", lambda: tessera_latency(store, users, 1, n, sec)),
            ("bare socket MGET, 20 µs gaps",
             lambda: socket_floor(store, users, args.redis_port, n, sec)),
            ("tessera sdk 1x10, spin off",
             lambda: without_spin(store, lambda: tessera_latency(store, users, 1, n, sec))),
            ("feast sdk 1x10", lambda: side.online_latency(users, 1, n, sec)),
            (f"raw pipelined HMGET {bt}x10",
             lambda: raw_hmget_latency(client, keys, fields, bt, n // 4, sec)),
            (f"tessera sdk {bt}x10", lambda: tessera_latency(store, users, bt, n // 4, sec)),
            (f"tessera sdk {bt}x10, spin off", lambda: without_spin(
                store, lambda: tessera_latency(store, users, bt, n // 4, sec))),
            (f"feast sdk {bt}x10", lambda: side.online_latency(users, bt, n // 4, sec)),
        ]
        runs[5:5] = unix_runs(store, side, users, keys, fields, args.unix_socket, n, sec,
                              console)  # after the 1 x 10 measures over TCP
        # Interleaved rounds: the machine is shared, so each ratio is taken within a round
        # (the measures a few seconds apart) and the median round is reported.
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in runs}
        for r in range(args.rounds):
            for name, fn in runs:
                with console.status(f"round {r + 1}/{args.rounds}: {name}"):
                    rounds[name].append(fn())
        for name, got in rounds.items():
            results[name] = median_round(got)
        results["rounds"] = rounds
        results["read path"] = read_path()
        if not args.skip_http:
            results.update(http_runs(store, side, users, args, console))
    finally:
        side.clear_online()
        side.close()
        store.close()
    report(console, results, args)
    out = ROOT / ".tessera" / "bench" / "online.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    console.print(f"results: {out}")


def read_path() -> str:
    """How the SDK's read path ran: its modules compiled (``tessera compile``) or Python."""
    from features.compiled import HOT, is_compiled

    done = [m for m in HOT if m in sys.modules and is_compiled(sys.modules[m])]
    return (f"compiled ({len(done)} of {len(HOT)} modules)" if done else
            "Python (not compiled, or TESSERA_PURE_PYTHON=1)")


def unix_runs(store: Any, side: Any, users: list[int], keys: list[bytes], fields: list[bytes],
              path: str, n: int, sec: float, console: Any) -> list[tuple[str, Any]]:
    """The 1 × 10 measures over the Unix socket at ``path`` (none when it is '' or missing):
    raw HMGET, Tessera's SDK, the bare socket and Feast's SDK, each client connecting over it."""
    if not path:
        return []
    if not Path(path).is_socket():
        console.print(f"[yellow]no Unix socket at {path}: the measures over it are skipped "
                      f"(`tessera services down && make services` makes one)[/yellow]")
        return []
    from features.store import FeatureStore

    cfg = store.config
    unix = FeatureStore(config=cfg.model_copy(update={
        "online": cfg.online.model_copy(update={"url": f"unix://{path}?db=0"})}))
    feast = side.over_socket(path)
    client = feast.redis_client()
    return [
        ("raw HMGET 1x10, unix", lambda: raw_hmget_latency(client, keys, fields, 1, n, sec)),
        ("tessera sdk 1x10, unix", lambda: tessera_latency(unix, users, 1, n, sec)),
        ("bare socket MGET, unix", lambda: socket_floor(unix, users, path, n, sec)),
        ("feast sdk 1x10, unix", lambda: feast.online_latency(users, 1, n, sec)),
    ]


def http_runs(store: Any, side: Any, users: list[int], args: Any, console: Any) -> dict:
    """``tessera serve`` and ``feast serve``, 1 × 10, sequential and concurrent."""
    from bench.http_client import all_present
    from bench.servers import TesseraServer

    out: dict[str, Any] = {}
    refs = [f"user_spend:{f}" for f in FEATURES]
    it, sec, conc = args.iterations // args.rounds, args.max_seconds, args.concurrency
    # A bare-socket keep-alive client per thread (``raw``, as wrk does): httpx alone costs ~1
    # ms p50 and up to 3 ms p99 here, more than the server being measured, and http.client
    # ~0.1-0.16 ms (its header parsing); both land in each server's latency alike.
    kw = {"client": args.http_client}
    tests = [
        ("tessera http 1x10", lambda t, f: t.http_latency(
            users, refs, "user_id", iterations=it, max_seconds=sec, **kw)),
        ("feast http 1x10", lambda t, f: f.http_latency(users, it, sec, concurrency=1, **kw)),
        (f"tessera http 1x10 x{conc}", lambda t, f: t.http_latency(
            users, refs, "user_id", iterations=it * 2, max_seconds=sec, concurrency=conc,
            **kw)),
        (f"feast http 1x10 x{conc}", lambda t, f: f.http_latency(
            users, it * 2, sec, concurrency=conc, **kw)),
    ]
    # Tessera's server as configured (its reads poll for Redis's reply, online.spin_us, and
    # its loop for the next request, serve.poll_us), and with both polls off.
    variants = {"": {}, ", polls off": {"TESSERA__ONLINE__SPIN_US": "0",
                                        "TESSERA__SERVE__POLL_US": "0"}}
    rounds: dict[str, list[dict[str, Any]]] = {
        name + (suffix if name.startswith("tessera") else ""): []
        for name, _ in tests for suffix in variants}
    import gc

    from features.heap import freeze_heap

    # The load generator shares this process with Feast, Polars and 2M rows: its garbage
    # collections would land in both servers' measured latencies. Freeze what exists now.
    frozen = freeze_heap()
    # One server up at a time: with an idle `feast serve` beside it (gunicorn heartbeats,
    # registry refresh threads), Tessera's sequential p99 measured ~3 ms in two runs, against
    # ~1.1 ms alone. So no interleaving here: all rounds of one server, then of the other.
    try:
        for suffix, env in variants.items():
            with TesseraServer(store.config.root, env=env) as tessera:
                tessera.http_latency(users, refs, "user_id", iterations=50, max_seconds=5,
                                     check=all_present(), **kw)
                for r in range(args.rounds):
                    for name, fn in tests:
                        if name.startswith("tessera"):
                            with console.status(f"round {r + 1}/{args.rounds}: {name}{suffix}"):
                                rounds[name + suffix].append(fn(tessera, None))
        with side.serve() as feast:
            for r in range(args.rounds):
                for name, fn in tests:
                    if name.startswith("feast"):
                        with console.status(f"round {r + 1}/{args.rounds}: {name}"):
                            rounds[name].append(fn(None, feast))
    finally:
        if frozen:
            gc.unfreeze()
    for name, got in rounds.items():
        out[name] = median_round(got)
    out["http rounds"] = rounds
    return out


if __name__ == "__main__":
    main()
