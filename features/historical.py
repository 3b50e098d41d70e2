"""Feature values at given instants, from the offline tiles: the point-in-time read.

Given feature views and rows of (entity keys, timestamp) — in any order, with keys never seen —
:func:`get_historical_features` returns every feature's value at each row's timestamp, exactly as
DESIGN.md defines it, from the tiles either batch engine wrote:

- a windowed feature at ``t`` merges the stored tiles ``i(t) - w/s < i < i(t)`` (the tail) with
  the exact layer's instants in ``[i(t)·s, t]`` (the current tile, exactly up to ``t``);
- a plain feature is the latest non-null value among the instants in ``[t - ttl, t]``;
- nothing after ``t`` is ever read, so no value from the future leaks.

DuckDB runs it as one SQL statement over the Parquet files the newest manifests list, so inputs
larger than memory still work. The merge and finalize rules are the SQL spelling of
:func:`features.tiles.merge` and :func:`features.tiles.finalize`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features import offline_store
from features.definitions import Feature, FeatureView
from features.errors import OfflineStoreError
from features.tiles import EXACT_TILE_US, Input, Layout, layout
from features.windows import Window

if TYPE_CHECKING:
    import pyarrow as pa

RID = "__rid"
_SQL_TYPES = {"int64": "BIGINT", "float64": "DOUBLE", "bool": "BOOLEAN", "string": "VARCHAR",
              "timestamp": "TIMESTAMPTZ"}


def _as_arrow(rows: Any) -> pa.Table:
    import pyarrow as pa

    if isinstance(rows, pa.Table):
        return rows
    if hasattr(rows, "to_arrow"):  # polars
        return rows.to_arrow()
    return pa.Table.from_pandas(rows, preserve_index=False)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _files_sql(files: list[str]) -> str:
    return "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"


def _floor(expr: str, size: int) -> str:
    """floor(expr / size) on BIGINTs (DuckDB's ``//`` truncates toward zero)."""
    return f"(({expr}) - ((({expr}) % {size}) + {size}) % {size}) // {size}"


def _merge_selects(lay: Layout, features: Sequence[Feature]) -> list[str]:
    """Aggregates over partial rows (alias ``p``) giving each feature's merged value."""
    out = []
    for f in features:
        inp = lay.input_of(f)
        name = _q(f.name)
        if inp is None:
            out.append(f"sum(p.n)::BIGINT AS {name}")
            continue
        c, s = inp.column("c"), inp.column("s")
        fn = f.function
        if fn == "count":
            out.append(f"sum(p.{c})::BIGINT AS {name}")
        elif fn == "sum":
            out.append(f"sum(p.{s})::{_SQL_TYPES['int64' if inp.dtype == 'int64' else 'float64']}"
                       f" AS {name}")
        elif fn == "mean":
            out.append(f"sum(p.{s})::DOUBLE / nullif(sum(p.{c}), 0) AS {name}")
        elif fn == "stddev":
            m2 = (f"sum(p.{inp.column('q')}) + sum(CASE WHEN p.{c} > 0 THEN p.{c} * "
                  f"power(p.{s}::DOUBLE / p.{c} - p.__mean{inp.index}, 2) ELSE 0 END)")
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


def _mean_columns(lay: Layout, features: Sequence[Feature]) -> str:
    """Window columns with each stddev input's grand mean, for the two-pass M2 merge."""
    cols = []
    for inp in {lay.input_of(f) for f in features if f.function == "stddev"} - {None}:
        assert inp is not None
        c, s = inp.column("c"), inp.column("s")
        cols.append(f", sum({s}) OVER (PARTITION BY {RID})::DOUBLE / "
                    f"nullif(sum({c}) OVER (PARTITION BY {RID}), 0) AS __mean{inp.index}")
    return "".join(cols)


def _key_join(view: FeatureView) -> str:
    return " AND ".join(f"p.{_q(k)} = r.{_q(k)}" for k in view.join_keys)


def _window_cte(view: FeatureView, lay: Layout, window: Window, features: Sequence[Feature],
                tile_files: list[str], exact_files: list[str]) -> str:
    size = window.tile_us
    ti = _floor("r.__t", size)
    parts = []
    if tile_files:
        lower = "" if window.tiles is None else f" AND p.tile > {ti} - {window.tiles}"
        parts.append(f"SELECT r.{RID}, p.* FROM req r JOIN read_parquet({_files_sql(tile_files)}) p "
                     f"ON {_key_join(view)} AND p.tile < {ti}{lower}")
    if exact_files:
        parts.append(f"SELECT r.{RID}, p.* FROM req r JOIN read_parquet({_files_sql(exact_files)}) p "
                     f"ON {_key_join(view)} AND p.tile >= ({ti}) * {size} AND p.tile <= r.__t")
    if not parts:
        return ""
    union = " UNION ALL BY NAME ".join(parts)
    selects = ", ".join(_merge_selects(lay, features))
    return (f"SELECT p.{RID}, {selects} FROM (SELECT *{_mean_columns(lay, features)} "
            f"FROM ({union})) p GROUP BY p.{RID}")


def _plain_cte(view: FeatureView, lay: Layout, features: Sequence[Feature],
               exact_files: list[str]) -> str:
    if not exact_files:
        return ""
    ttl = view.ttl_us
    lower = "" if ttl is None else f" AND p.tile >= r.__t - {ttl}"
    selects = ", ".join(_last_sql(lay.input_of(f), _q(f.name)) for f in features)  # type: ignore[arg-type]
    return (f"SELECT r.{RID}, {selects} FROM req r JOIN read_parquet({_files_sql(exact_files)}) p "
            f"ON {_key_join(view)} AND p.tile <= r.__t{lower} GROUP BY r.{RID}")


def _empty_value(view: FeatureView, f: Feature, column: str) -> str:
    """Finalize: an empty window gives 0 for count and sum, null otherwise."""
    if f.function in ("count", "sum"):
        zero = "0" if view.output_dtype(f) == "int64" else "0.0"
        return f"coalesce({column}, {zero})"
    return column


def get_historical_features(views: Sequence[FeatureView], entity_rows: Any, offline_path: Path,
                            *, timestamp_field: str = "event_ts",
                            full_feature_names: bool = False) -> pa.Table:
    """Every feature of ``views`` at each row's timestamp, from the offline tiles.

    Args:
        views: feature views whose features to read (all of each view's features).
        entity_rows: a pyarrow Table, polars or pandas DataFrame with each view's join keys and
            ``timestamp_field`` (naive timestamps are UTC). Any order; unknown keys are fine.
        offline_path: the offline store's root (``offline.path``).
        timestamp_field: the column holding each row's instant.
        full_feature_names: name outputs ``view__feature`` instead of ``feature``.

    Returns:
        The input rows, in their order, with one column per feature.

    Raises:
        OfflineStoreError: a view has never been written (run ``tessera run`` first), or two
            views share a feature name and ``full_feature_names`` is False.
    """
    import duckdb
    import pyarrow as pa

    table = _as_arrow(entity_rows)
    if timestamp_field not in table.column_names:
        raise OfflineStoreError(f"entity rows: no column {timestamp_field!r} "
                                f"(columns: {', '.join(table.column_names)})")
    table = table.append_column(RID, pa.array(range(table.num_rows), pa.int64()))
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("req_in", table)
    con.execute(f"CREATE TEMP TABLE req AS SELECT *, epoch_us({_q(timestamp_field)}) AS __t "
                f"FROM req_in")
    ctes, outputs, names = [], [], set()
    for view in views:
        missing = [k for k in view.join_keys if k not in table.column_names]
        if missing:
            raise OfflineStoreError(f"entity rows: view {view.name!r} needs column(s) "
                                    f"{', '.join(map(repr, missing))}")
        lay = layout(view)
        manifest = offline_store.latest(offline_path, view.name, view.fingerprint())
        if manifest is None:
            raise OfflineStoreError(
                f"feature view {view.name!r}: nothing in the offline store at {offline_path} "
                f"for its current rules (fingerprint {view.fingerprint()[:16]}); run "
                f"`tessera run` first")
        base = offline_store.view_dir(offline_path, view.name, view.fingerprint())
        files = {size: [str(base / f) for f in manifest.files(size)]
                 for size in (EXACT_TILE_US, *view.tile_sizes())}
        groups: list[tuple[str, str, list[Feature]]] = []
        plain = [f for f in view.features if f.plain]
        if plain:
            groups.append((f"{view.name}__ttl", _plain_cte(view, lay, plain, files[EXACT_TILE_US]),
                           plain))
        for i, window in enumerate(view.windows()):
            feats = [f for f in view.features if f.window == window]
            groups.append((f"{view.name}__w{i}", _window_cte(
                view, lay, window, feats, files[window.tile_us], files[EXACT_TILE_US]), feats))
        for cte_name, sql, feats in groups:
            alias = _q(cte_name)
            if sql:
                ctes.append(f"{alias} AS ({sql})")
            for f in feats:
                out = f"{view.name}__{f.name}" if full_feature_names else f.name
                if out in names:
                    raise OfflineStoreError(f"feature name {out!r} appears in two views; pass "
                                            f"full_feature_names=True")
                names.add(out)
                column = f"{alias}.{_q(f.name)}" if sql else "NULL"
                typed = f"CAST({_empty_value(view, f, column)} AS " \
                        f"{_SQL_TYPES[view.output_dtype(f)]})"
                outputs.append((alias if sql else None, f"{typed} AS {_q(out)}"))
    joins = "".join(f" LEFT JOIN {alias} USING ({RID})"
                    for alias in dict.fromkeys(a for a, _ in outputs if a))
    select = ", ".join([f"req_in.* EXCLUDE ({RID})"] + [o for _, o in outputs])
    with_clause = ("WITH " + ", ".join(ctes) + " ") if ctes else ""
    sql = f"{with_clause}SELECT {select} FROM req_in{joins} ORDER BY req_in.{RID}"
    return con.sql(sql).to_arrow_table()
