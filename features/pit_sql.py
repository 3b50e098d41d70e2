"""The point-in-time read as DuckDB SQL: running sums read with ASOF joins, bounded tile scans.

Per feature view, the exact layer (partials per key and instant) is turned into running
partials in one window pass over each key's instants (``pre``):

- running sums of ``n`` and ``c``, and of ``s`` (integers exact in HUGEINT; doubles split into
  an exact fixed-point part and a tiny remainder, so a difference keeps ~1 ulp);
- for lifetime stddev, running sums of the deviations from a per-key reference ``K`` (the key's
  first mean): ``d = s − c·K`` and ``e = q + d²/c`` (each row's M2 about ``K``), so that
  ``M2 = Δe − (Δd)²/Δc`` does not cancel the way ``Σx² − (Σx)²/n`` does for ``1e6 + 0.5``;
- running min and max, for lifetime.

A request row at ``t`` reads the running values at ``t`` (one ASOF join) and just before each
window's first instant ``a = (i(t) − w/s + 1)·s`` (one ASOF join for all windows): counts, sums
and means are the difference. Nothing per row depends on the key's history length.

Windowed ``min``, ``max`` and ``stddev`` merge the tail tiles ``i(t) − w/s < i < i(t)`` of their
tile layer and the exact instants of the current tile (at most ``w/s − 1`` tiles a row, whatever
the key's history). ``last`` (plain TTL, windowed, lifetime) is one ASOF join over the instants
where its input is not null.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from features.definitions import Feature, FeatureView
from features.sql import file_list as _files_sql
from features.sql import quote as _q
from features.tiles import EXACT_TILE_US, Input, Layout
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


# Running sums of doubles are split into an exact fixed-point part (HUGEINT multiples of 2^-32)
# and a tiny remainder, so a window's sum, the difference of two running sums, keeps ~1 ulp
# however large the key's history has grown (a plain double difference loses eps·|history|).
# Values too large for the fixed point (|x| ≥ 9.2e18, ±inf, NaN) are summed apart, with a
# running count: a window holding none of them adds nothing, so one such value in a key's past
# cannot turn every later window's sum into NaN (inf − inf) or wipe out its small values.
_SCALE = "4294967296.0"  # 2^32
_FIXED_MAX = "9.2e18"  # |x| below 2^63: x·2^32 < 2^95, and 2^32 rows of it fit a HUGEINT
_FINE_SCALE = "79228162514264337593543950336.0"  # 2^96: a remainder below 2^-32, exactly


def _split(expr: str, name: str) -> list[str]:
    """Per-row columns ``f<name>`` (exact fixed-point part), ``r<name>`` (the remainder) and,
    for a value too large for the fixed point (or not finite), ``h<name>`` (the value) and
    ``hn<name>`` (1)."""
    small = f"abs({expr}) < {_FIXED_MAX}"  # false for NaN: DuckDB orders it above all
    fixed = f"CASE WHEN {small} THEN round(({expr}) * {_SCALE})::HUGEINT ELSE 0::HUGEINT END"
    return [f"{fixed} AS f{name}",
            f"CASE WHEN {small} THEN ({expr}) - ({fixed})::DOUBLE / {_SCALE} ELSE 0.0 END "
            f"AS r{name}",
            f"CASE WHEN {small} THEN 0.0 ELSE {expr} END AS h{name}",
            f"CASE WHEN {small} THEN 0 ELSE 1 END AS hn{name}"]


def _split_sums(name: str, frame: str) -> list[str]:
    """The running sums of :func:`_split`'s columns, read by :func:`_split_diff`."""
    return [f"sum(f{name}) {frame} AS pf{name}", f"sum(r{name}) {frame} AS pr{name}",
            f"sum(h{name}) {frame} AS ph{name}", f"sum(hn{name}) {frame}::BIGINT AS phn{name}"]


NEEDS = {"count": {"c"}, "sum": {"s"}, "mean": {"c", "s"}, "stddev": {"c", "d", "e"},
         "min": {"lo"}, "max": {"hi"}}  # running partials each function reads


def _prefix_sql(view: FeatureView, lay: Layout, wanted: dict[int, set[str]],
                exact_files: list[str]) -> str:
    """Running partials over each key's instants (the ``pre`` table)."""
    keys = ", ".join(_q(k) for k in view.join_keys)
    frame = f"OVER (PARTITION BY {keys} ORDER BY tile ROWS UNBOUNDED PRECEDING)"
    stds = [i for i in lay.inputs if "d" in wanted.get(i.index, ())]
    inner = f"SELECT * FROM read_parquet({_files_sql(exact_files)}, hive_partitioning = false)"
    if stds:  # the key's reference K: its first mean in time (deterministic, near its values)
        refs = ", ".join(
            f"first_value({i.column('s')}::DOUBLE / nullif({i.column('c')}, 0) IGNORE NULLS) "
            f"OVER (PARTITION BY {keys} ORDER BY tile ROWS BETWEEN UNBOUNDED PRECEDING AND "
            f"UNBOUNDED FOLLOWING) AS k{i.index}" for i in stds)
        inner = f"SELECT *, {refs} FROM ({inner})"
    cols = [f"sum(n) {frame}::BIGINT AS pn"]
    per_row: list[str] = []
    for inp in lay.inputs:
        need = wanted.get(inp.index, set())
        c, s, q, i = inp.column("c"), inp.column("s"), inp.column("q"), inp.index
        exact_ints = inp.dtype in ("int64", "bool")
        if "c" in need:
            cols.append(f"sum({c}) {frame}::BIGINT AS p{c}")
        if "s" in need and exact_ints:
            cols.append(f"sum({s}) {frame} AS p{s}")
        elif "s" in need:
            per_row += _split(f"coalesce({s}, 0.0)", s)
            cols += _split_sums(s, frame)
        if "d" in need:
            dev = f"coalesce({s}::DOUBLE - {c} * k{i}, 0.0)"
            per_row += _split(dev, f"d{i}")
            per_row += _split(f"CASE WHEN {c} > 0 THEN {q} + {dev} * {dev} / {c} ELSE 0.0 END",
                              f"e{i}")
            cols += _split_sums(f"d{i}", frame) + _split_sums(f"e{i}", frame)
        if "lo" in need:
            cols.append(f"min({inp.column('lo')}) {frame} AS p{inp.column('lo')}")
        if "hi" in need:
            cols.append(f"max({inp.column('hi')}) {frame} AS p{inp.column('hi')}")
    if per_row:
        inner = f"SELECT *, {', '.join(per_row)} FROM ({inner})"
    return f"SELECT {keys}, tile AS at, {', '.join(cols)} FROM ({inner})"


def _exact_sum(term: str) -> str:
    """``sum(term)`` that gives the same bits in any order: two exact fixed-point parts.

    The part at 2^-32 and the remainder at 2^-96 are HUGEINT sums (associative, so DuckDB's
    threads cannot change them); only what is below 2^-97 per term is dropped, and terms too
    large for the fixed point (|x| ≥ 2^63) fall back to a plain double sum.
    """
    small = f"abs({term}) < {_FIXED_MAX}"
    hi = f"CASE WHEN {small} THEN round(({term}) * {_SCALE})::HUGEINT ELSE 0::HUGEINT END"
    rest = f"(({term}) - ({hi})::DOUBLE / {_SCALE})"
    lo = f"CASE WHEN {small} THEN round({rest} * {_FINE_SCALE})::HUGEINT END"
    return (f"(sum({hi})::DOUBLE / {_SCALE} + coalesce(sum({lo}), 0)::DOUBLE / {_FINE_SCALE} + "
            f"coalesce(sum(CASE WHEN NOT ({small}) THEN {term} END), 0.0))")


def _diff(end: str, start: str | None, column: str) -> str:
    if start is None:
        return f"coalesce({end}.{column}, 0)"
    return f"(coalesce({end}.{column}, 0) - coalesce({start}.{column}, 0))"


def _split_diff(end: str, start: str | None, name: str) -> str:
    """A window's double sum from the split running sums (:func:`_split_sums`). The values
    too large for the fixed point count only when the window holds some; when values of that
    size lie on both sides of its start, their difference keeps only their magnitude."""
    huge = _diff(end, start, f"ph{name}")
    if start is not None:
        huge = f"CASE WHEN {_diff(end, start, f'phn{name}')} = 0 THEN 0.0 ELSE {huge} END"
    return (f"({_diff(end, start, f'pf{name}')}::DOUBLE / {_SCALE} + "
            f"{_diff(end, start, f'pr{name}')} + {huge})")


def _window_sum(inp: Input, end: str, start: str | None) -> str:
    """The sum of an input over a window (or up to ``end`` when ``start`` is None)."""
    if inp.dtype in ("int64", "bool"):
        return _diff(end, start, f"p{inp.column('s')}")
    return _split_diff(end, start, inp.column("s"))


def _value(lay: Layout, f: Feature, end: str, start: str | None) -> str:
    """One feature's value from the running partials at the end and before the start."""
    inp = lay.input_of(f)
    fn = f.function
    if inp is None:
        return _diff(end, start, "pn")
    c = inp.column("c")
    if fn == "count":
        return _diff(end, start, f"p{c}")
    total = _window_sum(inp, end, start)
    if fn == "sum":
        return total
    if fn == "mean":
        return f"({total})::DOUBLE / nullif({_diff(end, start, f'p{c}')}, 0)"
    if fn == "stddev":
        n = _diff(end, start, f"p{c}")
        d, e = _split_diff(end, start, f"d{inp.index}"), _split_diff(end, start, f"e{inp.index}")
        return (f"CASE WHEN {n} >= 2 THEN sqrt(greatest({e} - ({d}) * ({d}) / {n}, 0) / "
                f"({n} - 1)) END")
    return f"{end}.p{inp.column('lo' if fn == 'min' else 'hi')}"  # lifetime min or max


def _tiled_sql(view: FeatureView, lay: Layout, window: Window, features: Sequence[Feature],
               tile_files: list[str], exact_files: list[str], rid: str, t: str,
               run: str | None) -> str:
    """Windowed min, max and stddev: the tail tiles and the current tile's exact instants.

    Each join has an equality on a time bucket besides the key, so a row meets only the key's
    partials near its instant (at most ``w/s - 1`` tiles), never its whole history: the current
    tile's instants share its tile index; the tail tiles lie in the window-long buckets of its
    first and last tile. A stddev merges the partials' M2 about the window's mean (from the
    running sums, exact to an ulp): ``Σ M2ᵢ + Σ cᵢ (meanᵢ − mean)²``, nonnegative terms summed
    as exact fixed-point parts, so nothing cancels and the same state gives the same bits.
    """
    size, k = window.tile_us, window.tiles
    assert k is not None  # bounded windows only
    ti = floor_sql(f"r.{_q(t)}", size)
    kinds = {"min": ("lo",), "max": ("hi",), "stddev": ("c", "s", "q")}
    cols = sorted({inp.column(kind) for f in features if (inp := lay.input_of(f)) is not None
                   for kind in kinds[f.function]})
    keys = ", ".join(f"p.{_q(c)}" for c in view.join_keys)
    values = ", ".join(f"p.{c}" for c in cols)
    parts = []
    if tile_files:
        read = (f"SELECT {keys}, p.tile, {floor_sql('p.tile', k)} AS bucket, {values} "
                f"FROM read_parquet({_files_sql(tile_files)}, hive_partitioning = false) p")
        req = (f"SELECT r.*, unnest(list_distinct([{floor_sql(f'{ti} - 1', k)}, "
               f"{floor_sql(f'{ti} - {k - 1}', k)}])) AS bucket FROM req r")
        parts.append(f"SELECT r.{_q(rid)}, {values} FROM ({req}) r "
                     f"JOIN ({read}) p ON {_keys(view, 'p', 'r')} AND p.bucket = r.bucket "
                     f"AND p.tile < {ti} AND p.tile > {ti} - {k}")
    if exact_files:
        read = (f"SELECT {keys}, p.tile, {floor_sql('p.tile', size)} AS bucket, {values} "
                f"FROM read_parquet({_files_sql(exact_files)}, hive_partitioning = false) p")
        parts.append(f"SELECT r.{_q(rid)}, {values} FROM req r "
                     f"JOIN ({read}) p ON {_keys(view, 'p', 'r')} AND p.bucket = {ti} "
                     f"AND p.tile <= r.{_q(t)}")
    if not parts:
        return ""
    aggs = []
    for f in features:
        inp = lay.input_of(f)
        assert inp is not None
        if f.function in ("min", "max"):
            column = inp.column("lo" if f.function == "min" else "hi")
            aggs.append(f"{f.function}(p.{column}) AS {_q(f.name)}")
            continue
        n = f"any_value(m.{_q(_helper(window, inp, 'n'))})"
        mean = f"m.{_q(_helper(window, inp, 'm'))}"
        c, s, q = (f"p.{inp.column(x)}" for x in ("c", "s", "q"))
        term = (f"CASE WHEN {c} > 0 THEN {q} + {c} * power({s}::DOUBLE / {c} - {mean}, 2) "
                f"ELSE 0.0 END")
        aggs.append(f"CASE WHEN {n} >= 2 THEN sqrt(greatest({_exact_sum(term)}, 0) / "
                    f"({n} - 1)) END AS {_q(f.name)}")
    join = "" if run is None else f" LEFT JOIN {_q(run)} m USING ({_q(rid)})"
    return (f"SELECT p.{_q(rid)}, {', '.join(aggs)} FROM ({' UNION ALL '.join(parts)}) p"
            f"{join} GROUP BY p.{_q(rid)}")


def _last_sql(view: FeatureView, inp: Input, exact_files: list[str], rid: str, t: str) -> str:
    """The latest non-null value at or before ``t`` and its instant: one ASOF join over the
    instants where the input is not null (``last`` of any window, and plain TTL features)."""
    keys = ", ".join(_q(k) for k in view.join_keys)
    value = inp.column("l")
    rows = (f"SELECT {keys}, tile AS at, {value} FROM read_parquet({_files_sql(exact_files)}, "
            f"hive_partitioning = false) WHERE {value} IS NOT NULL")
    return (f"SELECT r.{_q(rid)}, r.{_q(t)}, e.at AS lt, e.{value} AS lv FROM req r "
            f"ASOF LEFT JOIN ({rows}) e ON {_keys(view, 'e', 'r')} AND e.at <= r.{_q(t)}")


def _helper(window: Window, inp: Input, what: str) -> str:
    """A running-CTE column a tiled stddev reads: the window's count or mean of an input."""
    return f"__{what}_{window.name}_{inp.index}"


def _bounded(f: Feature) -> Window | None:
    """The feature's window if it is bounded (not lifetime, not a plain TTL feature)."""
    return f.window if f.window is not None and f.window.tiles is not None else None


def view_plan(view: FeatureView, lay: Layout, features: Sequence[Feature],
              files: dict[int, list[str]], prefix: str, rid: str, t: str) -> ViewPlan:
    """The CTEs and value expressions of ``features`` (of ``view``) at each request row.

    ``files`` maps each tile size (``EXACT_TILE_US`` for the exact layer) to its Parquet files;
    ``req`` is the request table, with ``rid``, ``t`` (µs) and the join keys.
    """
    exact = files[EXACT_TILE_US]
    ctes: list[tuple[str, str]] = []
    shared: set[str] = set()  # read more than once: materialized
    columns: dict[str, tuple[str, str]] = {}
    tiled = [f for f in features if f.function in ("min", "max", "stddev") and _bounded(f)]
    lasts = [f for f in features if f.function == "last"]
    running = [f for f in features if f not in tiled and f not in lasts]
    wanted: dict[int, set[str]] = {}
    helpers: dict[tuple[Window, Input], None] = {}
    for f in features:
        inp = lay.input_of(f)
        if inp is None or f in lasts or (f.function in ("min", "max") and f in tiled):
            continue
        if f in tiled:  # stddev: the window's count and mean come from the running sums
            wanted.setdefault(inp.index, set()).update({"c", "s"})
            helpers[(f.window, inp)] = None  # type: ignore[index]
        else:
            wanted.setdefault(inp.index, set()).update(NEEDS[f.function])
    run: str | None = None
    if (running or helpers) and exact:
        pre = f"{prefix}_{view.name}_pre"
        ctes.append((pre, _prefix_sql(view, lay, wanted, exact)))
        shared.add(pre)
        joins = [f"ASOF LEFT JOIN {_q(pre)} e ON {_keys(view, 'e', 'r')} AND e.at <= r.{_q(t)}"]
        windows = list(dict.fromkeys([w for f in running if (w := _bounded(f)) is not None]
                                     + [w for w, _ in helpers]))
        starts: dict[Window, str] = {}
        if windows:  # every window's start point, looked up in one ASOF join
            keys = ", ".join(f"r.{_q(k)}" for k in view.join_keys)
            points = " UNION ALL ".join(
                f"SELECT r.{_q(rid)}, {i} AS which, {keys}, "
                f"{window_start_sql(f'r.{_q(t)}', w)} AS point FROM req r"
                for i, w in enumerate(windows))
            found = f"{prefix}_{view.name}_starts"
            key_list = ", ".join(_q(k) for k in view.join_keys)
            ctes.append((found, f"SELECT s.{_q(rid)}, s.which, b.* EXCLUDE ({key_list}) "
                                f"FROM ({points}) s ASOF LEFT JOIN {_q(pre)} b ON "
                                f"{_keys(view, 'b', 's')} AND b.at < s.point"))
            shared.add(found)
            for i, w in enumerate(windows):
                alias = f"b{i}"
                starts[w] = alias
                joins.append(f"LEFT JOIN {_q(found)} {alias} ON {alias}.{_q(rid)} = r.{_q(rid)} "
                             f"AND {alias}.which = {i}")
        values = [f"{_value(lay, f, 'e', starts.get(f.window))} AS {_q(f.name)}"  # type: ignore[arg-type]
                  for f in running]
        for w, inp in helpers:
            n = _diff("e", starts[w], f"p{inp.column('c')}")
            total = _window_sum(inp, "e", starts[w])
            values.append(f"{n} AS {_q(_helper(w, inp, 'n'))}")
            values.append(f"({total})::DOUBLE / nullif({n}, 0) AS {_q(_helper(w, inp, 'm'))}")
        run = f"{prefix}_{view.name}_run"
        ctes.append((run, f"SELECT r.{_q(rid)}, {', '.join(values)} FROM req r "
                          f"{' '.join(joins)}"))
        shared.add(run)
        for f in running:
            columns[f.name] = (run, f"{_q(run)}.{_q(f.name)}")
    by_window: dict[Window, list[Feature]] = {}
    for f in tiled:
        by_window.setdefault(f.window, []).append(f)  # type: ignore[arg-type]
    for i, (window, feats) in enumerate(by_window.items()):
        sql = _tiled_sql(view, lay, window, feats, files[window.tile_us], exact, rid, t, run)
        name = f"{prefix}_{view.name}_x{i}"
        if sql:
            ctes.append((name, sql))
        for f in feats:
            columns[f.name] = (name, f"{_q(name)}.{_q(f.name)}" if sql else "NULL")
    by_input: dict[int, list[Feature]] = {}
    for f in lasts:
        by_input.setdefault(lay.input_of(f).index, []).append(f)  # type: ignore[union-attr]
    for index, feats in by_input.items() if exact else ():
        name = f"{prefix}_{view.name}_last{index}"
        ctes.append((name, _last_sql(view, lay.inputs[index], exact, rid, t)))
        for f in feats:
            if f.window is None:  # plain: the latest non-null value within the TTL
                ttl = view.feature_ttl_us(f)
                lower = None if ttl is None else f"{_q(name)}.{_q(t)} - {ttl}"
            elif f.window.tiles is None:  # lifetime
                lower = None
            else:
                lower = window_start_sql(f"{_q(name)}.{_q(t)}", f.window)
            value = f"{_q(name)}.lv"
            columns[f.name] = (name, value if lower is None
                               else f"CASE WHEN {_q(name)}.lt >= {lower} THEN {value} END")
    for f in features:
        if f.name not in columns:  # no exact files at all
            columns[f.name] = ("", "NULL")
    return ViewPlan(ctes, columns, frozenset(shared))
