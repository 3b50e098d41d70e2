"""Feature values at given instants, from the offline tiles: the point-in-time read.

Given feature views and rows of (entity keys, timestamp) — in any order, with keys never seen —
:func:`get_historical_features` returns every feature's value at each row's timestamp, exactly as
DESIGN.md defines it, from the tiles either batch engine wrote:

- a windowed feature at ``t`` merges the stored tiles ``i(t) - w/s < i < i(t)`` (the tail) with
  the exact layer's instants in ``[i(t)·s, t]`` (the current tile, exactly up to ``t``);
- a plain feature is the latest non-null value among the instants in ``[t - ttl, t]``;
- nothing after ``t`` is ever read, so no value from the future leaks.

A read over days the view's current rules never computed is an error (:class:`UncoveredError`)
unless ``allow_uncovered``: "never computed" must not read like "no activity".

DuckDB runs it as one SQL statement over the Parquet files the newest manifests list, so inputs
larger than memory still work. The merge and finalize rules are the SQL spelling of
:func:`features.tiles.merge` and :func:`features.tiles.finalize`. Floating sums are ordered
aggregates, so reading the same state twice gives the same bits whatever DuckDB's threads do.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features import entity_rows as er
from features import offline_store
from features.definitions import Feature, FeatureView
from features.errors import OfflineStoreError, UncoveredError
from features.sql import file_list as _files_sql
from features.sql import quote as _q
from features.tiles import EXACT_TILE_US, Input, Layout, layout
from features.windows import US_PER_UNIT, Window

if TYPE_CHECKING:
    import pyarrow as pa

DAY_US = US_PER_UNIT["d"]
_SQL_TYPES = {"int64": "BIGINT", "float64": "DOUBLE", "bool": "BOOLEAN", "string": "VARCHAR",
              "timestamp": "TIMESTAMPTZ"}


@dataclass(frozen=True)
class _Names:
    """Internal column names, chosen so that none can be (a prefix of) a user's column."""

    prefix: str

    @classmethod
    def avoiding(cls, columns: Sequence[str]) -> _Names:
        prefix = "__tessera"
        while any(c.startswith(prefix) for c in columns):
            prefix += "_"
        return cls(prefix)

    @property
    def rid(self) -> str:
        return f"{self.prefix}_rid"

    @property
    def t(self) -> str:
        return f"{self.prefix}_t"

    @property
    def layer(self) -> str:
        return f"{self.prefix}_layer"

    def mean(self, k: int) -> str:
        return f"{self.prefix}_mean{k}"


def _floor(expr: str, size: int) -> str:
    """floor(expr / size) on BIGINTs (DuckDB's ``//`` truncates toward zero)."""
    return f"(({expr}) - ((({expr}) % {size}) + {size}) % {size}) // {size}"


def _order(n: _Names, *columns: str) -> str:
    """A total order of a request's partial rows: rows that tie hold equal values."""
    return " ORDER BY " + ", ".join([f"p.{_q(n.layer)}", "p.tile", *(f"p.{c}" for c in columns)])


def _merge_selects(lay: Layout, features: Sequence[Feature], n: _Names) -> list[str]:
    """Aggregates over partial rows (alias ``p``) giving each feature's merged value."""
    out = []
    for f in features:
        inp = lay.input_of(f)
        name = _q(f.name)
        if inp is None:
            out.append(f"sum(p.n)::BIGINT AS {name}")
            continue
        c, s, q = inp.column("c"), inp.column("s"), inp.column("q")
        fn = f.function
        if fn == "count":
            out.append(f"sum(p.{c})::BIGINT AS {name}")
        elif fn == "sum" and inp.dtype == "int64":
            out.append(f"sum(p.{s})::BIGINT AS {name}")
        elif fn == "sum":
            out.append(f"sum(p.{s}{_order(n, s)})::DOUBLE AS {name}")
        elif fn == "mean":
            out.append(f"sum(p.{s}::DOUBLE{_order(n, s)}) / nullif(sum(p.{c}), 0) AS {name}")
        elif fn == "stddev":
            dev = (f"CASE WHEN p.{c} > 0 THEN p.{c} * power(p.{s}::DOUBLE / p.{c} - "
                   f"p.{_q(n.mean(inp.index))}, 2) ELSE 0 END")
            m2 = f"sum(p.{q}{_order(n, s, q)}) + sum({dev}{_order(n, s, q)})"
            out.append(f"CASE WHEN sum(p.{c}) >= 2 THEN sqrt(greatest({m2}, 0) / "
                       f"(sum(p.{c}) - 1)) END AS {name}")
        elif fn == "min":
            out.append(f"min(p.{inp.column('lo')}) AS {name}")
        elif fn == "max":
            out.append(f"max(p.{inp.column('hi')}) AS {name}")
        else:
            out.append(_last_sql(inp, name))
    return out


def _last_sql(inp: Input, name: str) -> str:
    value, at, seq = inp.column("l"), inp.column("lt"), inp.column("ls")
    return (f"arg_max(p.{value}, {{'t': p.{at}, 'q': p.{seq}}}) FILTER (WHERE p.{value} IS NOT NULL) "
            f"AS {name}")


def _mean_columns(lay: Layout, features: Sequence[Feature], n: _Names) -> str:
    """Window columns with each stddev input's grand mean, for the two-pass M2 merge."""
    cols = []
    inputs = {lay.input_of(f) for f in features if f.function == "stddev"}
    for inp in sorted((i for i in inputs if i is not None), key=lambda i: i.index):
        c, s = inp.column("c"), inp.column("s")
        frame = (f"PARTITION BY {_q(n.rid)} ORDER BY {_q(n.layer)}, tile, {s} "
                 f"ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING")
        cols.append(f", sum({s}::DOUBLE) OVER ({frame}) / nullif(sum({c}) OVER ({frame}), 0) "
                    f"AS {_q(n.mean(inp.index))}")
    return "".join(cols)


def _key_join(view: FeatureView) -> str:
    return " AND ".join(f"p.{_q(k)} = r.{_q(k)}" for k in view.join_keys)


def _window_cte(view: FeatureView, lay: Layout, window: Window, features: Sequence[Feature],
                tile_files: list[str], exact_files: list[str], n: _Names) -> str:
    size = window.tile_us
    t = f"r.{_q(n.t)}"
    ti = _floor(t, size)
    parts = []
    if tile_files:
        lower = "" if window.tiles is None else f" AND p.tile > {ti} - {window.tiles}"
        parts.append(f"SELECT r.{_q(n.rid)}, 0 AS {_q(n.layer)}, p.* FROM req r JOIN "
                     f"read_parquet({_files_sql(tile_files)}) p "
                     f"ON {_key_join(view)} AND p.tile < {ti}{lower}")
    if exact_files:
        parts.append(f"SELECT r.{_q(n.rid)}, 1 AS {_q(n.layer)}, p.* FROM req r JOIN "
                     f"read_parquet({_files_sql(exact_files)}) p "
                     f"ON {_key_join(view)} AND p.tile >= ({ti}) * {size} AND p.tile <= {t}")
    if not parts:
        return ""
    union = " UNION ALL BY NAME ".join(parts)
    selects = ", ".join(_merge_selects(lay, features, n))
    return (f"SELECT p.{_q(n.rid)}, {selects} FROM (SELECT *{_mean_columns(lay, features, n)} "
            f"FROM ({union})) p GROUP BY p.{_q(n.rid)}")


def _plain_cte(view: FeatureView, lay: Layout, features: Sequence[Feature], ttl_us: int | None,
               exact_files: list[str], n: _Names) -> str:
    if not exact_files:
        return ""
    t = f"r.{_q(n.t)}"
    lower = "" if ttl_us is None else f" AND p.tile >= {t} - {ttl_us}"
    selects = ", ".join(_last_sql(lay.input_of(f), _q(f.name)) for f in features)  # type: ignore[arg-type]
    return (f"SELECT r.{_q(n.rid)}, {selects} FROM req r JOIN read_parquet("
            f"{_files_sql(exact_files)}) p ON {_key_join(view)} AND p.tile <= {t}{lower} "
            f"GROUP BY r.{_q(n.rid)}")


def _empty_value(view: FeatureView, f: Feature, column: str) -> str:
    """Finalize: an empty window gives 0 for count and sum, null otherwise."""
    if f.function in ("count", "sum"):
        zero = "0" if view.output_dtype(f) == "int64" else "0.0"
        return f"coalesce({column}, {zero})"
    return column


def _need_start_sql(view: FeatureView, features: Sequence[Feature], t: str) -> str | None:
    """SQL for the earliest instant the features need at ``t`` (None: unbounded, lifetime)."""
    starts = []
    for f in features:
        if f.window is None:
            ttl = view.feature_ttl_us(f)
            if ttl is None:
                return None
            starts.append(f"{t} - {ttl}")
        elif f.window.tiles is None:
            return None
        else:
            s = f.window.tile_us
            starts.append(f"({_floor(t, s)} - {f.window.tiles - 1}) * {s}")
    return f"least({', '.join(starts)})" if len(starts) > 1 else starts[0]


def _one(con: Any, sql: str) -> tuple[Any, ...]:
    """The single row of a query (DuckDB 2 wants every result fetched to the end)."""
    return tuple(con.execute(sql).fetchall()[0])


def check_coverage(con: Any, view: FeatureView, features: Sequence[Feature],
                   manifest: offline_store.Manifest, n: _Names, *,
                   allow_uncovered: bool = False) -> None:
    """Fail (or warn) when some request row needs days the manifest's rules never computed."""
    epoch = date(1970, 1, 1)
    t = _q(n.t)
    start = _need_start_sql(view, features, t)
    if start is None:  # lifetime: every day up to t, from the source's very first event
        start = str((date.min - epoch).days * DAY_US)
    con.execute(f"CREATE OR REPLACE TEMP TABLE need AS SELECT {_q(n.rid)} AS rid, "
                f"{_floor(start, DAY_US)} AS lo, {_floor(t, DAY_US)} AS hi FROM req")
    lo, hi, total = _one(con, "SELECT min(lo), max(hi), count(*) FROM need")
    if hi is None:
        return
    gaps = manifest.gaps(epoch + timedelta(days=lo), epoch + timedelta(days=hi))
    if not gaps:
        return
    ranges = " UNION ALL ".join(f"SELECT {(a - epoch).days} AS a, {(b - epoch).days} AS b"
                                for a, b in gaps)
    hits = con.execute(f"SELECT g.a, g.b, count(*) FROM need r JOIN ({ranges}) g "
                   f"ON r.lo < g.b AND r.hi >= g.a GROUP BY g.a, g.b ORDER BY g.a").fetchall()
    rows = _one(con, f"SELECT count(DISTINCT r.rid) FROM need r JOIN ({ranges}) g "
                     f"ON r.lo < g.b AND r.hi >= g.a")[0]
    spans = [(epoch + timedelta(days=a), epoch + timedelta(days=b - 1)) for a, b, _ in hits]
    text = ", ".join(f"every day before {(b + timedelta(days=1)).isoformat()}" if a == date.min
                     else a.isoformat() if a == b else f"{a.isoformat()}..{b.isoformat()}"
                     for a, b in spans[:5]) + (" …" if len(spans) > 5 else "")
    first_day, end_day = spans[0][0], spans[-1][1] + timedelta(days=1)
    # Without --start a run begins at the source's first event, which covers "before".
    start_flag = "" if first_day == date.min else f" --start {first_day.isoformat()}"
    message = (f"feature view {view.name!r}: {rows:,} of {total:,} entity rows need days its "
               f"current rules (fingerprint {view.fingerprint()[:16]}) never computed: {text}; "
               f"fill them with `tessera run --view {view.name}{start_flag} "
               f"--end {end_day.isoformat()}`, or pass --allow-uncovered (allow_uncovered=True) "
               f"to read them as if they had no events")
    if not allow_uncovered:
        raise UncoveredError(message)
    warnings.warn(message, stacklevel=3)


def get_historical_features(views: Sequence[FeatureView], entity_rows: Any, offline_path: Path,
                            *, timestamp_field: str = "event_ts",
                            full_feature_names: bool = False,
                            allow_uncovered: bool = False) -> pa.Table:
    """Every feature of ``views`` at each row's timestamp, from the offline tiles.

    Args:
        views: feature views whose features to read (all of each view's features).
        entity_rows: each view's join keys and ``timestamp_field``, in any shape
            :mod:`features.entity_rows` accepts (DataFrame, Table, list of dicts, file path).
            Any order; unknown keys read as empty windows.
        offline_path: the offline store's root (``offline.path``).
        timestamp_field: the column holding each row's instant.
        full_feature_names: name outputs ``view__feature`` instead of ``feature``.
        allow_uncovered: read days the rules never computed as if they had no events (with a
            warning) instead of failing.

    Returns:
        The input rows, in their order, with all their columns and one column per feature.

    Raises:
        OfflineStoreError: a view has never been written (run ``tessera run`` first), or two
            views share a feature name and ``full_feature_names`` is False.
        UncoveredError: rows need days never computed (and ``allow_uncovered`` is False).
        EntityRowsError: the entity rows are malformed (named column, expected type).
    """
    import duckdb
    import pyarrow as pa

    outputs: list[tuple[FeatureView, Feature, str]] = []
    seen: set[str] = set()
    for view in views:
        for f in view.features:
            out = f"{view.name}__{f.name}" if full_feature_names else f.name
            if out in seen:
                raise OfflineStoreError(f"feature name {out!r} appears in two views; pass "
                                        f"full_feature_names=True")
            seen.add(out)
            outputs.append((view, f, out))
    keys = {k: (e.dtype, f"feature view {v.name!r}")
            for v in views for e, k in zip(v.entities, v.join_keys, strict=True)}
    rows = er.check(entity_rows, timestamp_field=timestamp_field, keys=keys,
                    outputs=[o for _, _, o in outputs])
    n = _Names.avoiding(rows.table.column_names)
    table = rows.table.append_column(n.rid, pa.array(range(rows.table.num_rows), pa.int64()))
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("req_in", table)
    con.register("req_t", pa.table({n.rid: table.column(n.rid), n.t: rows.times_us}))
    key_cols = "".join(f", i.{_q(k)}" for k in keys)
    con.execute(f"CREATE TEMP TABLE req AS SELECT t.*{key_cols} FROM req_t t "
                f"JOIN req_in i USING ({_q(n.rid)})")
    ctes, columns = [], []
    for view in views:
        lay = layout(view)
        manifest = offline_store.latest(offline_path, view.name, view.fingerprint())
        if manifest is None:
            raise OfflineStoreError(
                f"feature view {view.name!r}: nothing in the offline store at {offline_path} "
                f"for its current rules (fingerprint {view.fingerprint()[:16]}); run "
                f"`tessera run --view {view.name}` first")
        check_coverage(con, view, view.features, manifest, n, allow_uncovered=allow_uncovered)
        base = offline_store.view_dir(offline_path, view.name, view.fingerprint())
        files = {size: [str(base / f) for f in manifest.files(size)]
                 for size in (EXACT_TILE_US, *view.tile_sizes())}
        groups: list[tuple[str, str, list[Feature]]] = []
        by_ttl: dict[int | None, list[Feature]] = {}
        for f in view.features:
            if f.plain:
                by_ttl.setdefault(view.feature_ttl_us(f), []).append(f)
        for i, (ttl, feats) in enumerate(by_ttl.items()):
            groups.append((f"{n.prefix}_{view.name}_ttl{i}",
                           _plain_cte(view, lay, feats, ttl, files[EXACT_TILE_US], n), feats))
        for i, window in enumerate(view.windows()):
            feats = [f for f in view.features if f.window == window]
            groups.append((f"{n.prefix}_{view.name}_w{i}", _window_cte(
                view, lay, window, feats, files[window.tile_us], files[EXACT_TILE_US], n),
                feats))
        by_feature: dict[str, tuple[str | None, str]] = {}
        for cte_name, sql, feats in groups:
            alias = _q(cte_name)
            if sql:
                ctes.append(f"{alias} AS ({sql})")
            for f in feats:
                out = f"{view.name}__{f.name}" if full_feature_names else f.name
                column = f"{alias}.{_q(f.name)}" if sql else "NULL"
                typed = (f"CAST({_empty_value(view, f, column)} AS "
                         f"{_SQL_TYPES[view.output_dtype(f)]})")
                by_feature[f.name] = (alias if sql else None, f"{typed} AS {_q(out)}")
        columns += [by_feature[f.name] for f in view.features]  # in definition order
    joins = "".join(f" LEFT JOIN {alias} USING ({_q(n.rid)})"
                    for alias in dict.fromkeys(a for a, _ in columns if a))
    select = ", ".join([f"req_in.* EXCLUDE ({_q(n.rid)})"] + [c for _, c in columns])
    with_clause = ("WITH " + ", ".join(ctes) + " ") if ctes else ""
    sql = f"{with_clause}SELECT {select} FROM req_in{joins} ORDER BY req_in.{_q(n.rid)}"
    try:
        return con.sql(sql).to_arrow_table()
    except duckdb.IOException as e:
        raise OfflineStoreError(f"offline files listed by a manifest could not be read (removed "
                                f"by a writer while this read ran?): "
                                f"{str(e).splitlines()[0]}") from None
