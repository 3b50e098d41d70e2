"""Online and offline must agree: the same feature, key and instant read equal on both paths.

``tessera check-consistency`` samples entity keys from a view's offline tiles (recently active
ones, any others, and a couple never seen) and instants, reads every feature online
(:meth:`features.store.FeatureStore.get_online_features` with ``now=``, from Redis) and offline
(:meth:`features.store.FeatureStore.get_historical_features`, the point-in-time read of the
tiles), and
counts, per feature, the pairs that differ by DESIGN.md's equality rule (:func:`equal`).

Online values are exact only for instants at or after the newest event of the view (a newer
event would be counted online but not offline) and after the materialization instant (the
materialization keeps only the tiles still inside a window then); and keys that Redis has
already expired read as empty. So instants start at the latest of these and of the current
time (``since`` may move the start earlier, never before the first two), and spread
log-uniformly from it to past the longest window or TTL: short windows partly full, then
expired; long windows and TTLs expiring too.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from features import offline_store
from features.definitions import FeatureView
from features.online import keys as K
from features.sql import file_list, quote
from features.tiles import EXACT_TILE_US
from features.windows import US_PER_UNIT, from_micros, to_micros
from pipelines.online_state import read_state

if TYPE_CHECKING:
    from rich.console import Console

    from features.config import RepoConfig
    from features.store import FeatureStore

FLOAT_FUNCTIONS = ("sum", "mean", "stddev")
EXAMPLES = 3  # per feature
UNSEEN = 2  # never-seen keys per view
RECENT_US = 7 * US_PER_UNIT["d"]  # half the keys come from those active this close to the end
_AT = "__tessera_check_at"


def equal(function: str, a: Any, b: Any) -> bool:
    """DESIGN.md's equality rule: exact (value and type) for counts, min, max, last and integer
    sums; within a relative 1e-9 for floating sums, means and standard deviations."""
    if isinstance(a, float) and isinstance(b, float) and function in FLOAT_FUNCTIONS:
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b and type(a) is type(b)


@dataclass
class FeatureCheck:
    view: str
    feature: str
    function: str
    compared: int = 0
    nonempty: int = 0  # pairs whose offline value is neither null nor zero
    mismatches: int = 0
    examples: list[tuple[Any, int, Any, Any]] = field(default_factory=list)  # key, µs, on, off


@dataclass
class ViewCheck:
    view: str
    problem: str | None = None  # why it could not be checked, and the command to run
    note: str | None = None
    keys: int = 0
    unseen: int = 0
    instants: list[int] = field(default_factory=list)
    features: list[FeatureCheck] = field(default_factory=list)


@dataclass
class Report:
    views: list[ViewCheck]
    seed: int

    @property
    def mismatches(self) -> int:
        return sum(f.mismatches for v in self.views for f in v.features)

    @property
    def exit_code(self) -> int:
        """1: some value differs; 2: some view could not be checked; 0: all equal."""
        return 1 if self.mismatches else 2 if any(v.problem for v in self.views) else 0


def sample_instants(view: FeatureView, start_us: int, count: int, rng: Any) -> list[int]:
    """``start_us``, then one instant per stratum of a log-uniform spread from 1 s after it to
    past the view's longest window or TTL (at least 6 hours)."""
    spans = [w.length_us for w in view.windows() if w.length_us is not None]
    spans += [t for t in (view.feature_ttl_us(f) for f in view.features if f.plain) if t]
    hi = math.log(max([6 * US_PER_UNIT["h"], *spans]) * 1.1)
    lo = math.log(US_PER_UNIT["s"])
    steps = max(count - 1, 1)
    offsets = [math.exp(lo + (hi - lo) * (k + rng.random()) / steps) for k in range(count - 1)]
    second = US_PER_UNIT["s"]
    return [start_us] + [start_us + int(o) // second * second for o in offsets]


def _newest_event(con: Any, base: Any, manifest: offline_store.Manifest) -> int | None:
    prefix = f"{EXACT_TILE_US}/"
    days = sorted(k for k, fs in manifest.partitions.items() if k.startswith(prefix) and fs)
    if not days:
        return None
    files = [str(base / f) for f in manifest.partitions[days[-1]]]
    return con.sql(f"SELECT max(tile) FROM read_parquet({file_list(files)})").fetchall()[0][0]


def sample_keys(con: Any, view: FeatureView, base: Any, manifest: offline_store.Manifest,
                newest_us: int, n: int, salt: int) -> tuple[list[tuple[Any, ...]], int]:
    """Up to ``n`` keys of the offline tiles, in DuckDB (a hash order salted by the seed): half
    of them active in the last week of data when there are that many, the rest any; then a
    couple never seen. Returns the keys and how many were never seen."""
    size = max(view.tile_sizes(), default=EXACT_TILE_US)  # the coarsest layer: fewest rows
    files = [str(base / f) for f in manifest.files(size)]
    keys = ", ".join(quote(k) for k in view.join_keys)
    rows: list[tuple[Any, ...]] = []
    top: list[Any] = [0] * len(view.join_keys)
    if files:
        con.execute(f"CREATE OR REPLACE TEMP TABLE k AS SELECT {keys}, max(tile) >= "
                    f"{(newest_us - RECENT_US) // size} AS recent, hash({keys}, {salt}) AS h "
                    f"FROM read_parquet({file_list(files)}) GROUP BY {keys}")
        rows = con.sql(f"SELECT {keys} FROM (SELECT *, recent AND row_number() OVER ("
                       f"PARTITION BY recent ORDER BY h) <= {n // 2} AS first FROM k) "
                       f"ORDER BY first DESC, h LIMIT {n}").fetchall()
        top = list(con.sql(f"SELECT {', '.join(f'max({quote(k)})' for k in view.join_keys)} "
                           f"FROM k").fetchall()[0])
    unseen = []
    for i in range(UNSEEN):
        key = tuple(top[j] + 1 + i if e.dtype == "int64" else f"~tessera-never-seen-{i}"
                    for j, e in enumerate(view.entities) if e.dtype in ("int64", "string"))
        if len(key) == len(view.entities):
            unseen.append(key)
    return sorted(rows) + unseen, len(unseen)


def check_view(store: FeatureStore, view: FeatureView, *, sample: int, rng: Any,
               instants: int, since_us: int | None) -> ViewCheck:
    """Compare every feature of ``view`` online and offline at sampled keys and instants."""
    import duckdb
    import pyarrow as pa

    out = ViewCheck(view.name)
    cfg, fp = store.config, view.fingerprint()
    root = cfg.resolve(cfg.offline.path)
    manifest = offline_store.latest(root, view.name, fp)
    if manifest is None:
        out.problem = (f"nothing in the offline store for its current rules (fingerprint "
                       f"{fp[:16]}): run `tessera run --view {view.name} --materialize`")
        return out
    state, problem = read_state(store.online, K.state_key(cfg.project, view.name, fp))
    if state is None:
        problem = problem or f"never materialized for its current rules (fingerprint {fp[:16]})"
        out.problem = f"{problem}: run `tessera materialize --view {view.name}`"
        return out
    if state.get("version") != manifest.version:
        out.note = (f"the offline store changed since the last materialization (manifest "
                    f"{manifest.version}, materialized {state.get('version')}): run `tessera "
                    f"materialize --view {view.name}`; until then online values may differ")
    base = offline_store.view_dir(root, view.name, fp)
    con = duckdb.connect()
    newest = _newest_event(con, base, manifest)
    bounds = [b for b in (newest, state.get("at_us")) if b is not None]
    start = max([*bounds, time.time_ns() // 1000 if since_us is None else since_us])
    start = -(-start // US_PER_UNIT["s"]) * US_PER_UNIT["s"]  # whole seconds: easy to repeat
    out.instants = sample_instants(view, start, instants, rng)
    keys, out.unseen = sample_keys(con, view, base, manifest,
                                   start if newest is None else newest, sample,
                                   int(rng.integers(2**31)))
    out.keys = len(keys)
    columns = {k: [key[j] for key in keys] for j, k in enumerate(view.join_keys)}
    refs = [f"{view.name}:{f.name}" for f in view.features]
    online: dict[str, list[Any]] = {f.name: [] for f in view.features}
    for t in out.instants:
        got = store.get_online_features(refs, columns, now=t).to_dict()
        for f in view.features:
            online[f.name] += got[f.name]
    types = {"int64": pa.int64(), "string": pa.string()}
    rows = pa.table({**{k: pa.array(v * len(out.instants),
                                    types.get(e.dtype))
                        for (k, v), e in zip(columns.items(), view.entities, strict=True)},
                     _AT: pa.array([t for t in out.instants for _ in keys],
                                   pa.timestamp("us", tz="UTC"))})
    with warnings.catch_warnings():  # instants after the last computed day read as no events
        warnings.simplefilter("ignore")
        offline = store.get_historical_features(rows, refs, timestamp_field=_AT,
                                                allow_uncovered=True).to_arrow().to_pydict()
    where = [(key if len(key) > 1 else key[0], t) for t in out.instants for key in keys]
    for f in view.features:
        check = FeatureCheck(view.name, f.name, f.function)
        found: list[tuple[Any, int, Any, Any]] = []
        for (key, t), a, b in zip(where, online[f.name], offline[f.name], strict=True):
            check.compared += 1
            check.nonempty += b is not None and (isinstance(b, bool) or b != 0)
            if not equal(f.function, a, b):
                check.mismatches += 1
                found.append((key, t, a, b))
        keys_first = {e[0]: i for i, e in reversed(list(enumerate(found)))}  # one per key,
        ranked = sorted(keys_first.values()) + [i for i in range(len(found))  # then the rest
                                                if i not in keys_first.values()]
        check.examples = [found[i] for i in ranked[:EXAMPLES]]
        out.features.append(check)
    return out


def check_consistency(store: FeatureStore, views: Sequence[str] | None = None, *,
                      sample: int = 200, seed: int | None = None, instants: int = 6,
                      since: Any = None) -> Report:
    """Compare online and offline values of ``views`` (default all) at sampled keys and instants.

    Args:
        sample: keys per view (plus a couple never seen).
        seed: same seed, same keys and instants (default: a random one, reported).
        instants: instants per view (each key is read at each).
        since: earliest instant (datetime or µs; default now); clamped to the newest event and
            the materialization instant, before which online values are not exact.
    """
    import numpy as np

    seed = int(np.random.default_rng().integers(2**31)) if seed is None else seed
    rng = np.random.default_rng(seed)
    since_us = since if since is None or isinstance(since, int) else to_micros(since)
    checks = [check_view(store, v, sample=sample, rng=rng, instants=instants, since_us=since_us)
              for v in store.definitions.select(list(views or []))]
    return Report(checks, seed)


def _show(value: Any) -> str:
    return "null" if value is None else value.isoformat() if hasattr(value, "isoformat") \
        else repr(value)


def _offset(us: int) -> str:
    for unit in ("d", "h", "m", "s"):
        if us >= US_PER_UNIT[unit]:
            return f"+{us / US_PER_UNIT[unit]:.3g}{unit}"
    return "+0" if us == 0 else f"+{us}µs"


def render(report: Report, console: Console) -> None:
    """One line per view, a table of mismatches per feature, then a few examples."""
    from rich.markup import escape
    from rich.table import Table

    for v in report.views:
        if v.problem:
            console.print(f"[bold]{v.view}[/]: [red]{escape(v.problem)}[/]")
            continue
        start = v.instants[0]
        offsets = ", ".join(_offset(t - start) for t in v.instants)
        console.print(f"[bold]{v.view}[/]: {v.keys} keys ({v.unseen} never seen) × "
                      f"{len(v.instants)} instants from {from_micros(start).isoformat()} "
                      f"({offsets})")
        if v.note:
            console.print(f"  [yellow]{escape(v.note)}[/]")
    table = Table(title=f"online vs offline (seed {report.seed})")
    for name in ("view", "feature", "agg", "compared", "non-empty", "mismatches"):
        table.add_column(name, justify="left" if name in ("view", "feature", "agg") else "right")
    examples = Table(title="examples")
    for name in ("view:feature", "key", "instant", "online", "offline"):
        examples.add_column(name)
    for v in report.views:
        for f in v.features:
            mark = "red" if f.mismatches else "green"
            table.add_row(f.view, f.feature, f.function, f"{f.compared:,}", f"{f.nonempty:,}",
                          f"[{mark}]{f.mismatches:,}[/]")
            for key, t, a, b in f.examples:
                examples.add_row(f"{f.view}:{f.feature}", escape(str(key)),
                                 from_micros(t).isoformat(), escape(_show(a)), escape(_show(b)))
    if table.row_count:
        console.print(table)
    if examples.row_count:
        console.print(examples)
    compared = sum(f.compared for v in report.views for f in v.features)
    if report.mismatches:
        console.print(f"[bold red]{report.mismatches:,} of {compared:,} values differ[/]")
    elif any(v.problem for v in report.views):
        console.print("[bold yellow]some views could not be checked[/]")
    else:
        console.print(f"[bold green]all {compared:,} values equal[/]")


def check_repo(cfg: RepoConfig, console: Console, views: Sequence[str] | None, sample: int,
               seed: int | None) -> int:
    """``tessera check-consistency``: check, print, and return the exit code."""
    from features.store import FeatureStore

    store = FeatureStore(config=cfg)
    try:
        report = check_consistency(store, views, sample=sample, seed=seed)
    finally:
        store.close()
    render(report, console)
    return report.exit_code
