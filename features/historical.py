"""Feature values at given instants, from the offline tiles: the point-in-time read.

Given feature views and rows of (entity keys, timestamp) — in any order, with keys never seen —
:func:`get_historical_features` returns every feature's value at each row's timestamp, exactly as
DESIGN.md defines it, from the tiles either batch engine wrote:

- a windowed feature at ``t`` merges the events of the key with ``i(e) > i(t) - w/s`` and
  ``e <= t``: counts, sums, means and standard deviations as differences of running partials
  over the exact layer read with ASOF joins, min and max from the tail tiles plus the current
  tile's exact instants (see :mod:`features.pit_sql`);
- a plain feature is the latest non-null value among the instants in ``[t - ttl, t]``;
- nothing after ``t`` is ever read, so no value from the future leaks.

A read over days the view's current rules never computed is an error (:class:`UncoveredError`)
unless ``allow_uncovered``: "never computed" must not read like "no activity".

DuckDB runs it as one SQL statement over the Parquet files the manifests list, out of core (a
memory limit and a spill folder can be set), so inputs larger than memory still work. Integer
results are exact; floating sums, means and standard deviations agree with
:func:`features.tiles.merge` and :func:`features.tiles.finalize` within DESIGN.md's relative
1e-9, and reading the same state twice gives the same bits (every running sum has a total
order).
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
from features.errors import SUM_HINT, OfflineStoreError, SumOverflowError, UncoveredError
from features.pit_sql import floor_sql, view_plan
from features.sql import quote as _q
from features.tiles import EXACT_TILE_US, layout
from features.windows import US_PER_UNIT

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
            starts.append(f"({floor_sql(t, s)} - {f.window.tiles - 1}) * {s}")
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
                f"{floor_sql(start, DAY_US)} AS lo, {floor_sql(t, DAY_US)} AS hi FROM req")
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


@dataclass
class PointInTimeRead:
    """A planned point-in-time read: one DuckDB statement and what it reads.

    ``sql`` yields the entity rows in their order with one column per feature; run it with
    :meth:`to_arrow` or write it straight to Parquet with :meth:`to_parquet` (out of core).
    """

    con: Any
    sql: str
    manifests: dict[str, offline_store.Manifest]  # view name -> the version read
    rows: int
    time_range_us: tuple[int, int] | None  # the entity rows' first and last instant
    outputs: list[tuple[FeatureView, Feature, str]]  # (view, feature, output column)
    timestamp_field: str  # the entity rows' time column

    def to_arrow(self) -> pa.Table:
        return self._run(lambda: self.con.sql(self.sql).to_arrow_table())

    def to_parquet(self, path: Path) -> None:
        """Write the result to ``path`` (DuckDB's writer; deterministic for the same inputs)."""
        target = str(path).replace("'", "''")
        self._run(lambda: self.con.execute(
            f"COPY ({self.sql}) TO '{target}' (FORMAT parquet, COMPRESSION zstd, "
            f"ROW_GROUP_SIZE 122880)"))

    def _run(self, fn: Any) -> Any:
        import duckdb

        try:
            return fn()
        except duckdb.IOException as e:
            first = str(e).splitlines()[0]
            if "No space left" in first or "temp" in first.lower():
                raise OfflineStoreError(f"the point-in-time read could not spill to disk: "
                                        f"{first}") from None
            raise OfflineStoreError(f"offline files listed by a manifest could not be read "
                                    f"(removed by a writer while this read ran?): "
                                    f"{first}") from None
        except duckdb.ConversionException as e:  # a window's HUGEINT sum cast to BIGINT
            first = str(e).splitlines()[0]
            if "INT128" not in first and "HUGEINT" not in first:
                raise
            raise SumOverflowError(f"a sum of integers leaves int64 in a window of the "
                                   f"point-in-time read ({first}): {SUM_HINT}") from None


def get_historical_features(views: Sequence[FeatureView], entity_rows: Any, offline_path: Path,
                            *, timestamp_field: str | None = None,
                            full_feature_names: bool = False,
                            allow_uncovered: bool = False) -> pa.Table:
    """Every feature of ``views`` at each row's timestamp, from the offline tiles.

    Args:
        views: feature views whose features to read (all of each view's features).
        entity_rows: each view's join keys and ``timestamp_field``, in any shape
            :mod:`features.entity_rows` accepts (DataFrame, Table, list of dicts, file path).
            Any order; unknown keys read as empty windows.
        offline_path: the offline store's root (``offline.path``).
        timestamp_field: the column holding each row's instant (default ``event_ts``, else
            ``event_timestamp``, else the rows' only timestamp column).
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
    return plan_read(views, entity_rows, offline_path, timestamp_field=timestamp_field,
                     full_feature_names=full_feature_names,
                     allow_uncovered=allow_uncovered).to_arrow()


def plan_read(views: Sequence[FeatureView], entity_rows: Any, offline_path: Path, *,
              timestamp_field: str | None = None, full_feature_names: bool = False,
              allow_uncovered: bool = False, versions: dict[str, int] | None = None,
              only: Sequence[tuple[str, str]] | None = None,
              memory_limit: str | None = None, temp_directory: Path | None = None,
              ) -> PointInTimeRead:
    """Check the rows, pick each view's manifest (the newest, or ``versions[view]``), plan SQL.

    ``only`` lists the (view, feature) pairs to compute, in output order (default: every
    feature of every view, in definition order).

    ``memory_limit`` and ``temp_directory`` bound DuckDB: past the limit it spills there.
    """
    import duckdb
    import pyarrow as pa

    outputs: list[tuple[FeatureView, Feature, str]] = []
    seen: set[str] = set()
    by_name = {v.name: v for v in views}
    pairs = ([(v, f) for v in views for f in v.features] if only is None
             else [(by_name[v], by_name[v].feature(f)) for v, f in only])
    for view, f in pairs:
        out = f"{view.name}__{f.name}" if full_feature_names else f.name
        if out in seen:
            raise OfflineStoreError(f"feature name {out!r} appears twice; pass "
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
    if memory_limit:
        con.execute(f"SET memory_limit = '{memory_limit}'")
    if temp_directory is not None:
        temp_directory.mkdir(parents=True, exist_ok=True)
        con.execute(f"SET temp_directory = '{str(temp_directory).replace(chr(39), chr(39) * 2)}'")
    con.execute("SET preserve_insertion_order = true")
    con.execute("SET enable_progress_bar = false")  # callers show their own progress
    con.register("req_in", table)
    con.register("req_t", pa.table({n.rid: table.column(n.rid), n.t: rows.times_us}))
    key_cols = "".join(f", i.{_q(k)}" for k in keys)
    con.execute(f"CREATE TEMP TABLE req AS SELECT t.*{key_cols} FROM req_t t "
                f"JOIN req_in i USING ({_q(n.rid)})")
    lo, hi = _one(con, f"SELECT min({_q(n.t)}), max({_q(n.t)}) FROM req")
    ctes: list[str] = []
    columns: dict[str, tuple[str | None, str]] = {}  # output -> (CTE to join, select item)
    manifests: dict[str, offline_store.Manifest] = {}
    for view in views:
        manifest: offline_store.Manifest | None
        if versions is not None and view.name in versions:
            manifest = offline_store.at_version(offline_path, view.name, view.fingerprint(),
                                                versions[view.name])
        else:
            manifest = offline_store.latest(offline_path, view.name, view.fingerprint())
        if manifest is None:
            raise OfflineStoreError(
                f"feature view {view.name!r}: nothing in the offline store at {offline_path} "
                f"for its current rules (fingerprint {view.fingerprint()[:16]}); run "
                f"`tessera run --view {view.name}` first")
        manifests[view.name] = manifest
        wanted = [(f, out) for v, f, out in outputs if v is view]
        check_coverage(con, view, [f for f, _ in wanted], manifest, n,
                       allow_uncovered=allow_uncovered)
        base = offline_store.view_dir(offline_path, view.name, view.fingerprint())
        files = {size: [str(base / f) for f in manifest.files(size)]
                 for size in (EXACT_TILE_US, *view.tile_sizes())}
        plan = view_plan(view, layout(view), [f for f, _ in wanted], files, n.prefix, n.rid,
                         n.t)
        ctes += [f"{_q(name)} AS {'MATERIALIZED ' if name in plan.shared else ''}({sql})"
                 for name, sql in plan.ctes]
        for f, out in wanted:
            alias, column = plan.columns[f.name]
            typed = f"CAST({_empty_value(view, f, column)} AS {_SQL_TYPES[view.output_dtype(f)]})"
            columns[out] = (_q(alias) if alias and column != "NULL" else None,
                            f"{typed} AS {_q(out)}")
    ordered = [columns[out] for _, _, out in outputs]  # the request's order
    joins = "".join(f" LEFT JOIN {alias} USING ({_q(n.rid)})"
                    for alias in dict.fromkeys(a for a, _ in ordered if a))
    select = ", ".join([f"req_in.* EXCLUDE ({_q(n.rid)})"] + [c for _, c in ordered])
    with_clause = ("WITH " + ", ".join(ctes) + " ") if ctes else ""
    sql = f"{with_clause}SELECT {select} FROM req_in{joins} ORDER BY req_in.{_q(n.rid)}"
    return PointInTimeRead(con, sql, manifests, table.num_rows,
                           None if lo is None else (int(lo), int(hi)), outputs,
                           rows.timestamp_field)
