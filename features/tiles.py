"""Tiles of mergeable partial aggregates: the one representation every path shares.

A feature view's aggregations read a few *inputs* (distinct expressions: ``amount``,
``amount * fx``…; input 0 is "the row itself", for ``count()``). Per group of events — a tile of
size ``s`` or, at ``s = 1 µs``, the events of one instant — each input keeps only the partials
its functions need:

=========  ==========  ==============================================  ===========
column     partial     per group                                       merge
=========  ==========  ==============================================  ===========
``n``      rows        events (after the row filter)                   sum
``c{k}``   count       non-null values                                 sum
``s{k}``   sum         sum of non-null values (0 when none)            sum
``q{k}``   M2          sum of squared deviations from the group mean   Chan et al.
``lo{k}``  min         smallest non-null value                         min
``hi{k}``  max         largest non-null value                          max
``l{k}``   last        latest non-null value by (event time, seq)      arg-max
``lt{k}``  last time   its event time (µs)                             (with l)
``ls{k}``  last seq    its source order (file rank, row) or offset     (with l)
=========  ==========  ==============================================  ===========

We keep M2 instead of the sum of squares the design first named: ``Σx² − (Σx)²/n`` loses every
digit when the mean is large against the spread (amounts in cents around 1e6 ± 1), while Chan's
pairwise update of M2 stays exact to rounding. See docs/tiles.md.

Batch engines build partials from events (``pipelines``), the streaming consumer updates them,
the online read and the point-in-time export merge them: the merge and finalize rules below are
the only definition of what a partial means.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from features import expr as ex
from features.definitions import Feature, FeatureView
from features.errors import SUM_HINT, SumOverflowError

NEEDS: dict[str, frozenset[str]] = {
    "count": frozenset({"c"}),
    "sum": frozenset({"s"}),
    "mean": frozenset({"c", "s"}),
    "stddev": frozenset({"c", "s", "q"}),
    "min": frozenset({"lo"}),
    "max": frozenset({"hi"}),
    "last": frozenset({"l", "lt", "ls"}),
}
KIND_ORDER = ("c", "s", "q", "lo", "hi", "l", "lt", "ls")
EXACT_TILE_US = 1  # "tiles" of one microsecond: the events of one instant, merged


@dataclass(frozen=True, slots=True)
class Input:
    """One aggregation input: an expression and the partial kinds kept for it."""

    index: int
    node: ex.Node
    dtype: str
    kinds: tuple[str, ...]

    def column(self, kind: str) -> str:
        return f"{kind}{self.index}"

    @property
    def value_column(self) -> str:
        """Name of the projected column holding the input's value per event."""
        return f"x{self.index}"


@dataclass(frozen=True, slots=True)
class Layout:
    """How one feature view's partials are laid out, and which feeds each feature."""

    view: FeatureView
    inputs: tuple[Input, ...]
    feature_input: Mapping[str, int]  # feature name -> input index (0-based in inputs; -1: rows)

    def input_of(self, feature: Feature) -> Input | None:
        k = self.feature_input[feature.name]
        return None if k < 0 else self.inputs[k]

    def partial_columns(self) -> list[tuple[str, str]]:
        """(column, dtype) of every partial, in storage order; ``n`` first."""
        cols = [("n", "int64")]
        for inp in self.inputs:
            for kind in inp.kinds:
                cols.append((inp.column(kind), partial_dtype(kind, inp.dtype)))
        return cols


def partial_dtype(kind: str, input_dtype: str) -> str:
    if kind in ("c", "lt", "ls"):
        return "int64"
    if kind == "q":
        return "float64"
    if kind == "s":
        return "int64" if input_dtype in ("int64", "bool") else "float64"
    return input_dtype  # lo, hi, l keep the input's type


@cache
def layout(view: FeatureView) -> Layout:
    """The partial layout of a view (deterministic: same rules, same columns)."""
    schema = view.row_schema()
    by_fp: dict[str, tuple[ex.Node, set[str]]] = {}
    feature_fp: dict[str, str | None] = {}
    for f in view.features:
        if f.function == "count" and f.expr is None:
            feature_fp[f.name] = None
            continue
        if f.expr is None:
            raise ValueError(f"{view.name}.{f.name}: {f.function} needs an expression")
        fp = ex.fingerprint(f.expr)
        node, kinds = by_fp.setdefault(fp, (f.expr, set()))
        kinds.update(NEEDS[f.function])
        feature_fp[f.name] = fp
    inputs = []
    index_of: dict[str, int] = {}
    for k, (fp, (node, kinds)) in enumerate(by_fp.items()):
        dtype = ex.infer_dtype(node, schema)
        inputs.append(Input(k, node, dtype, tuple(x for x in KIND_ORDER if x in kinds)))
        index_of[fp] = k
    return Layout(view, tuple(inputs),
                  {name: (-1 if fp is None else index_of[fp]) for name, fp in feature_fp.items()})


# --- pure-Python merge and finalize: the reference for every engine's compiled form ----------

def merge(lay: Layout, partials: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Merge partial rows (tiles, or instants) into one partial row."""
    rows = list(partials)
    out: dict[str, Any] = {"n": sum(int(r["n"]) for r in rows)}
    for inp in lay.inputs:
        col = inp.column
        if "c" in inp.kinds:
            out[col("c")] = sum(int(r[col("c")]) for r in rows)
        if "s" in inp.kinds:
            values = [r[col("s")] for r in rows]
            out[col("s")] = sum(values) if inp.dtype in ("int64", "bool") else math.fsum(values)
        if "q" in inp.kinds:
            out[col("q")] = merge_m2([(int(r[col("c")]), r[col("s")], r[col("q")]) for r in rows])
        for kind, pick in (("lo", min), ("hi", max)):
            if kind in inp.kinds:
                present = [r[col(kind)] for r in rows if r[col(kind)] is not None]
                out[col(kind)] = pick(present) if present else None
        if "l" in inp.kinds:
            present = [r for r in rows if r[col("l")] is not None]
            best = max(present, key=lambda r: (r[col("lt")], r[col("ls")]), default=None)
            out[col("l")] = None if best is None else best[col("l")]
            out[col("lt")] = None if best is None else best[col("lt")]
            out[col("ls")] = None if best is None else best[col("ls")]
    return out


def merge_m2(groups: Sequence[tuple[int, float, float]]) -> float:
    """M2 of the union of groups given each group's (count, sum, M2).

    ``M2 = Σ M2_i + Σ n_i (mean_i − mean)²`` — the two-pass form of Chan's update, stable in
    any order.
    """
    total_n = sum(n for n, _, _ in groups)
    if total_n == 0:
        return 0.0
    grand_mean = math.fsum(float(s) for n, s, _ in groups if n) / total_n
    return math.fsum(float(q) for n, _, q in groups if n) + math.fsum(
        n * (float(s) / n - grand_mean) ** 2 for n, s, _ in groups if n)


def finalize(lay: Layout, feature: Feature, merged: Mapping[str, Any] | None) -> Any:
    """A feature's value from merged partials (``None``: no events, an empty window)."""
    return finalizer(lay, feature)(empty(lay) if merged is None else merged)


def finalizer(lay: Layout, feature: Feature,
              position: Mapping[str, int] | None = None) -> Callable[[Any], Any]:
    """:func:`finalize` for one feature with its columns bound.

    With ``position``, the function reads a tuple instead of a dict: ``position[column]`` is
    the column's index, and ``position[column + "?"]``, when present, the index of a flag that
    is false where the column is null.
    """
    return _compiled(f"lambda m: {_final_expression(lay, feature, position)}")


def finalizers(lay: Layout, features: Sequence[tuple[int, Feature]],
               position: Mapping[str, int]) -> Callable[[Any, list[Any]], None]:
    """One function ``fill(m, values)`` that puts each ``(at, feature)``'s :func:`finalize` of
    the record tuple ``m`` (``position`` as in :func:`finalizer`) into ``values[at]``.

    The online hot path: the features of one window share a record, and one call for all of
    them costs a third of a call per feature (measured in docs/online.md).
    """
    body = "".join(f"\n    v[{int(at)}] = {_final_expression(lay, f, position)}"
                   for at, f in features) or "\n    pass"
    return _compiled(f"def fill(m, v):{body}\n", "fill")


def _final_expression(lay: Layout, feature: Feature,
                      position: Mapping[str, int] | None) -> str:
    """The finalize rule of one feature as a Python expression over its partials ``m`` (the
    one definition: :func:`finalizer` and :func:`finalizers` compile it)."""
    def at(column: str) -> str:
        return repr(column if position is None else int(position[column]))

    inp = lay.input_of(feature)
    if inp is None:
        return f"int(m[{at('n')}])"
    fn = feature.function
    if fn == "count":
        return f"int(m[{at(inp.column('c'))}])"
    if fn == "sum":
        return f"m[{at(inp.column('s'))}]"
    if fn == "mean":
        c, s = at(inp.column("c")), at(inp.column("s"))
        return f"(None if m[{c}] == 0 else float(m[{s}]) / m[{c}])"
    if fn == "stddev":
        c, q = at(inp.column("c")), at(inp.column("q"))
        return f"(None if m[{c}] < 2 else _sqrt(max(float(m[{q}]), 0.0) / (m[{c}] - 1)))"
    if fn in ("min", "max"):
        column = inp.column("lo" if fn == "min" else "hi")
        if position is None or column + "?" not in position:
            return f"m[{at(column)}]"
        return f"(m[{at(column)}] if m[{int(position[column + '?'])}] else None)"
    return f"m[{at(inp.column('l'))}]"


@cache
def _compiled(source: str, name: str | None = None) -> Any:
    """A function from generated source. The source is built above from column names and
    indices of a layout, never from user text."""
    scope: dict[str, Any] = {"_sqrt": math.sqrt}
    if name is None:
        return eval(source, scope)
    exec(source, scope)
    return scope[name]


def empty(lay: Layout) -> dict[str, Any]:
    """Partials of no events at all."""
    out: dict[str, Any] = {"n": 0}
    for inp in lay.inputs:
        for kind in inp.kinds:
            zero: Any = None
            if kind == "c":
                zero = 0
            elif kind == "s":
                zero = 0 if inp.dtype in ("int64", "bool") else 0.0
            elif kind == "q":
                zero = 0.0
            out[inp.column(kind)] = zero
    return out


# --- suffix merges: what the online store keeps per tile ---------------------------------------

def suffix_merge(lay: Layout, columns: Mapping[str, Any], group_end: Any) -> dict[str, Any]:
    """Per row ``i``, the merge of rows ``i..`` to the end of its group (vectorized, numpy).

    ``columns`` holds partial columns as numpy arrays, rows sorted by (group, tile) ascending;
    nullable ``lo``/``hi`` columns come with a boolean ``"<column>?"`` presence array.
    ``group_end[i]`` is one past the last row of row ``i``'s group. The result at the first row
    of a window's tiles is the window's merged partial, so a read at any instant costs one
    lookup instead of a merge. ``last`` is not here: the newest value alone answers every window.

    Same rules as :func:`merge` (sums; min; max; M2 by Chan's pairwise form), up to
    the rounding of floating sums, which DESIGN.md's equality rule allows.
    """
    import numpy as np

    rows = len(group_end)
    out = {name: np.array(values, copy=True) for name, values in columns.items()}
    if rows == 0:
        return out
    rank = np.asarray(group_end) - 1 - np.arange(rows)  # rows after this one in its group
    order = np.argsort(rank, kind="stable")
    bounds = np.searchsorted(rank[order], np.arange(1, int(rank.max()) + 2))
    for j in range(1, len(bounds)):
        a = order[bounds[j - 1]:bounds[j]]  # rows with j later rows; a + 1 is already final
        if a.size == 0:
            continue
        merged = merge_pairs(lay, {k: v[a] for k, v in out.items()},
                             {k: v[a + 1] for k, v in out.items()})
        for name, values in merged.items():
            out[name][a] = values
    return out


def merge_pairs(lay: Layout, a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Row ``i`` of the result is the merge of row ``i`` of ``a`` and of ``b`` (numpy columns,
    same names and lengths; nullable ``lo``/``hi`` with their ``"<column>?"`` presence arrays).

    The vectorized twin of :func:`merge` for two partials (no ``last``: see
    :func:`suffix_merge`); the streaming consumer merges a micro-batch into stored suffixes
    with it.
    """
    import numpy as np

    out: dict[str, Any] = {}
    for inp in lay.inputs:  # M2 first: it needs both sides' own count and sum
        c, s, q = inp.column("c"), inp.column("s"), inp.column("q")
        if q not in a:
            continue
        na, nb = a[c].astype(np.float64), b[c].astype(np.float64)
        sa, sb = a[s].astype(np.float64), b[s].astype(np.float64)
        total = na + nb
        # Chan's pairwise form, na·nb/(na+nb)·(mean_a − mean_b)², equal to the two-pass terms
        # about the grand mean but never through (sa + sb), which overflows for values near
        # 1e308 (two of 1e308 read a stddev of inf, not 0)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            delta = sa / na - sb / nb
            cross = np.where((na > 0) & (nb > 0), delta * delta * (na * nb / total), 0.0)
        out[q] = np.where(total > 0, a[q] + b[q] + cross, 0.0)
    for name in a:
        kind = name.rstrip("0123456789")
        if kind in ("n", "c", "s"):
            with np.errstate(over="ignore"):  # a float sum past 1e308 is inf, as anywhere
                out[name] = total = a[name] + b[name]
            if kind == "s" and total.dtype.kind == "i" and (
                    ((a[name] ^ total) & (b[name] ^ total)) < 0).any():  # int64 wrapped round
                raise SumOverflowError(f"a sum of integers leaves int64 where tiles merge "
                                       f"into a window (partial {name!r}): {SUM_HINT}")
        elif kind in ("lo", "hi"):
            present = f"{name}?"
            pa_, pb = a[present], b[present]
            both = (np.minimum if kind == "lo" else np.maximum)(a[name], b[name])
            out[name] = np.where(pa_ & pb, both, np.where(pa_, a[name], b[name]))
            out[present] = pa_ | pb
    return out
