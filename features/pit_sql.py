"""The point-in-time read as DuckDB SQL: prefix sums read with ASOF joins, bounded tile scans.

Per feature view, the exact layer (partials per key and instant) is turned into running
partials in one window pass over each key's instants (``pre``):

- running sums of ``n``, ``c``, ``s`` (integer sums stay exact in HUGEINT);
- for stddev, running sums of the deviations from a per-key reference ``K`` (the key's first
  mean): ``d = s − c·K`` and ``e = q + d²/c`` (each row's M2 about ``K``), so that
  ``M2 = Δe − (Δd)²/Δc`` does not cancel the way ``Σx² − (Σx)²/n`` does for ``1e6 + 0.5``;
- running min, max and the last non-null value with its instant, for lifetime and plain TTL
  features.

A request row at ``t`` then reads, with one ASOF join per distinct window start, the running
values at ``t`` and just before its window's first instant ``a = (i(t) − w/s + 1)·s``: counts
and sums are the difference, ``last`` is the running last if its instant is ``≥ a``. Nothing
per row depends on the key's history length.

Windowed ``min`` and ``max`` cannot be subtracted: they merge the tail tiles
``i(t) − w/s < i < i(t)`` of their tile layer and the exact instants of the current tile (at most
``w/s − 1`` tiles a row, whatever the key's history).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from features.definitions import Feature, FeatureView
from features.sql import file_list as _files_sql
from features.sql import quote as _q
from features.tiles import Input, Layout
from features.windows import Window


def floor_sql(expr: str, size: int) -> str:
    """floor(expr / size) on BIGINTs (DuckDB's ``//`` truncates toward zero)."""
    return f"(({expr}) - ((({expr}) % {size}) + {size}) % {size}) // {size}"


def window_start_sql(t: str, window: Window) -> str:
    """The first instant a bounded window at ``t`` covers: ``(i(t) − w/s + 1)·s``."""
    s = window.tile_us
    return f"(({floor_sql(t, s)}) - {window.tiles - 1}) * {s}"  # type: ignore[operator]


@dataclass(frozen=True)
class ViewPlan:
    """Output column expressions and the CTEs that compute them, for one view."""

    ctes: list[tuple[str, str]]  # (name, SQL); each has the request id column
    columns: dict[str, tuple[str, str]]  # feature name -> (cte name, SQL of its value)
    shared: frozenset[str]  # CTEs read more than once: materialize them


def _keys(view: FeatureView, a: str, b: str) -> str:
    return " AND ".join(f"{a}.{_q(k)} = {b}.{_q(k)}" for k in view.join_keys)


def _stddev_inputs(lay: Layout, features: Sequence[Feature]) -> list[Input]:
    found = {lay.input_of(f) for f in features if f.function == "stddev"}
    return sorted((i for i in found if i is not None), key=lambda i: i.index)


def _prefix_sql(view: FeatureView, lay: Layout, features: Sequence[Feature],
                exact_files: list[str]) -> str:
    """Running partials over each key's instants (the ``pre`` table)."""
    keys = ", ".join(_q(k) for k in view.join_keys)
    frame = f"OVER (PARTITION BY {keys} ORDER BY tile ROWS UNBOUNDED PRECEDING)"
    stds = _stddev_inputs(lay, features)
    inner = f"SELECT * FROM read_parquet({_files_sql(exact_files)}, hive_partitioning = false)"
    if stds:  # the key's reference K: its first mean in time (deterministic, near its values)
        refs = ", ".join(
            f"first_value({i.column('s')}::DOUBLE / nullif({i.column('c')}, 0) IGNORE NULLS) "
            f"OVER (PARTITION BY {keys} ORDER BY tile ROWS BETWEEN UNBOUNDED PRECEDING AND "
            f"UNBOUNDED FOLLOWING) AS k{i.index}" for i in stds)
        inner = f"SELECT *, {refs} FROM ({inner})"
    cols = [f"sum(n) {frame} AS pn"]
    wanted: dict[int, set[str]] = {}
    for f in features:
        inp = lay.input_of(f)
        if inp is None:
            continue
        need = wanted.setdefault(inp.index, set())
        need.update({"count": {"c"}, "sum": {"s"}, "mean": {"c", "s"},
                     "stddev": {"c", "d", "e"}, "min": {"lo"}, "max": {"hi"},
                     "last": {"l"}}[f.function])
    for inp in lay.inputs:
        need = wanted.get(inp.index, set())
        c, s, q = inp.column("c"), inp.column("s"), inp.column("q")
        if "c" in need:
            cols.append(f"sum({c}) {frame} AS p{c}")
        if "s" in need:
            cols.append(f"sum({s}) {frame} AS p{s}")
        if "d" in need:
            dev = f"({s}::DOUBLE - {c} * k{inp.index})"
            cols.append(f"coalesce(sum({dev}) {frame}, 0.0) AS pd{inp.index}")
            cols.append(f"coalesce(sum(CASE WHEN {c} > 0 THEN {q} + {dev} * {dev} / {c} "
                        f"ELSE 0 END) {frame}, 0.0) AS pe{inp.index}")
        if "lo" in need:
            cols.append(f"min({inp.column('lo')}) {frame} AS p{inp.column('lo')}")
        if "hi" in need:
            cols.append(f"max({inp.column('hi')}) {frame} AS p{inp.column('hi')}")
        if "l" in need:
            value = inp.column("l")
            cols.append(f"last_value({value} IGNORE NULLS) {frame} AS p{value}")
            cols.append(f"last_value(CASE WHEN {value} IS NOT NULL THEN tile END IGNORE NULLS) "
                        f"{frame} AS pt{value}")
    return f"SELECT {keys}, tile AS at, {', '.join(cols)} FROM ({inner})"


def _diff(end: str, start: str | None, column: str) -> str:
    if start is None:
        return f"coalesce({end}.{column}, 0)"
    return f"(coalesce({end}.{column}, 0) - coalesce({start}.{column}, 0))"


def _value(view: FeatureView, lay: Layout, f: Feature, end: str, start: str | None,
           lower: str | None) -> str:
    """One feature's value from the running partials at the end and before the start."""
    inp = lay.input_of(f)
    fn = f.function
    if inp is None:
        return _diff(end, start, "pn")
    c, s = inp.column("c"), inp.column("s")
    if fn == "count":
        return _diff(end, start, f"p{c}")
    if fn == "sum":
        return _diff(end, start, f"p{s}")
    if fn == "mean":
        return f"({_diff(end, start, f'p{s}')})::DOUBLE / nullif({_diff(end, start, f'p{c}')}, 0)"
    if fn == "stddev":
        n = _diff(end, start, f"p{c}")
        d, e = _diff(end, start, f"pd{inp.index}"), _diff(end, start, f"pe{inp.index}")
        return (f"CASE WHEN {n} >= 2 THEN sqrt(greatest({e} - ({d}) * ({d}) / {n}, 0) / "
                f"({n} - 1)) END")
    if fn in ("min", "max"):  # lifetime only: windowed ones come from the tiles
        return f"{end}.p{inp.column('lo' if fn == 'min' else 'hi')}"
    value = inp.column("l")
    if lower is None:
        return f"{end}.p{value}"
    return f"CASE WHEN {end}.pt{value} >= {lower} THEN {end}.p{value} END"


def _extreme_sql(view: FeatureView, lay: Layout, window: Window, features: Sequence[Feature],
                 tile_files: list[str], exact_files: list[str], rid: str, t: str) -> str:
    """Windowed min/max: the tail tiles and the current tile's exact instants.

    Each join has an equality on a time bucket besides the key, so a row meets only the key's
    partials near its instant, never the key's whole history: the current tile's instants share
    its tile index; the tail tiles lie in the window-long buckets of its first and last tile.
    """
    size, k = window.tile_us, window.tiles
    ti = floor_sql(f"r.{_q(t)}", size)
    picked = sorted({lay.input_of(f).column("lo" if f.function == "min" else "hi")  # type: ignore[union-attr]
                     for f in features})
    keys = ", ".join(f"p.{_q(c)}" for c in view.join_keys)
    parts = []
    if tile_files:
        read = (f"SELECT {keys}, p.tile, {floor_sql('p.tile', k)} AS bucket, "  # type: ignore[arg-type]
                f"{', '.join(f'p.{c}' for c in picked)} FROM read_parquet("
                f"{_files_sql(tile_files)}, hive_partitioning = false) p")
        req = (f"SELECT r.*, unnest(list_distinct([{floor_sql(f'{ti} - 1', k)}, "  # type: ignore[arg-type]
               f"{floor_sql(f'{ti} - {k - 1}', k)}])) AS bucket FROM req r")  # type: ignore[operator]
        parts.append(f"SELECT r.{_q(rid)}, {', '.join(f'p.{c}' for c in picked)} FROM ({req}) r "
                     f"JOIN ({read}) p ON {_keys(view, 'p', 'r')} AND p.bucket = r.bucket "
                     f"AND p.tile < {ti} AND p.tile > {ti} - {k}")
    if exact_files:
        read = (f"SELECT {keys}, p.tile, {floor_sql('p.tile', size)} AS bucket, "
                f"{', '.join(f'p.{c}' for c in picked)} FROM read_parquet("
                f"{_files_sql(exact_files)}, hive_partitioning = false) p")
        parts.append(f"SELECT r.{_q(rid)}, {', '.join(f'p.{c}' for c in picked)} FROM req r "
                     f"JOIN ({read}) p ON {_keys(view, 'p', 'r')} AND p.bucket = {ti} "
                     f"AND p.tile <= r.{_q(t)}")
    if not parts:
        return ""
    aggs = ", ".join(
        f"{f.function}(p.{lay.input_of(f).column('lo' if f.function == 'min' else 'hi')}) "  # type: ignore[union-attr]
        f"AS {_q(f.name)}" for f in features)
    return (f"SELECT p.{_q(rid)}, {aggs} FROM ({' UNION ALL '.join(parts)}) p "
            f"GROUP BY p.{_q(rid)}")


def view_plan(view: FeatureView, lay: Layout, features: Sequence[Feature],
              files: dict[int, list[str]], exact_size: int, prefix: str, rid: str,
              t: str) -> ViewPlan:
    """The CTEs and value expressions of ``features`` (of ``view``) at each request row."""
    exact = files[exact_size]
    ctes: list[tuple[str, str]] = []
    columns: dict[str, tuple[str, str]] = {}
    extremes = [f for f in features if f.function in ("min", "max") and f.window is not None
                and f.window.tiles is not None]
    running = [f for f in features if f not in extremes]
    if running and exact:
        pre = f"{prefix}_{view.name}_pre"
        ctes.append((pre, _prefix_sql(view, lay, running, exact)))
        joins = [f"ASOF LEFT JOIN {_q(pre)} e ON {_keys(view, 'e', 'r')} AND e.at <= r.{_q(t)}"]
        starts: dict[Window, str] = {}
        for f in running:
            if f.window is not None and f.window.tiles is not None and f.window not in starts:
                alias = f"b{len(starts)}"
                starts[f.window] = alias
                point = window_start_sql(f"r.{_q(t)}", f.window)
                joins.append(f"ASOF LEFT JOIN {_q(pre)} {alias} ON {_keys(view, alias, 'r')} "
                             f"AND {alias}.at < {point}")
        values = []
        for f in running:
            if f.window is None:  # plain: the latest non-null value within the TTL
                ttl = view.feature_ttl_us(f)
                lower = None if ttl is None else f"r.{_q(t)} - {ttl}"
                sql = _value(view, lay, f, "e", None, lower)
            elif f.window.tiles is None:  # lifetime
                sql = _value(view, lay, f, "e", None, None)
            else:
                sql = _value(view, lay, f, "e", starts[f.window],
                             window_start_sql(f"r.{_q(t)}", f.window))
            values.append(f"{sql} AS {_q(f.name)}")
        name = f"{prefix}_{view.name}_run"
        ctes.append((name, f"SELECT r.{_q(rid)}, {', '.join(values)} FROM req r "
                           f"{' '.join(joins)}"))
        for f in running:
            columns[f.name] = (name, f"{_q(name)}.{_q(f.name)}")
    by_window: dict[Window, list[Feature]] = {}
    for f in extremes:
        by_window.setdefault(f.window, []).append(f)  # type: ignore[arg-type]
    for i, (window, feats) in enumerate(by_window.items()):
        sql = _extreme_sql(view, lay, window, feats, files[window.tile_us], exact, rid, t)
        name = f"{prefix}_{view.name}_x{i}"
        if sql:
            ctes.append((name, sql))
        for f in feats:
            columns[f.name] = (name, f"{_q(name)}.{_q(f.name)}" if sql else "NULL")
    for f in running:
        if f.name not in columns:  # no exact files at all
            columns[f.name] = ("", "NULL")
    return ViewPlan(ctes, columns, frozenset(n for n, _ in ctes if n.endswith("_pre")))
