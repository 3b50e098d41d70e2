"""The serving log's files: buffered rows turned into one Arrow table (the union of their
columns, NOT_FOUND values as null), split by the UTC day they were served, and each day written
as a new Parquet file (hidden, then renamed). The layout these files follow is in
:mod:`features.online.serving_log` and docs/serving_log.md. pyarrow is imported inside the
functions: the writer thread calls them, never the caller of ``get_online_features``.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.online.read import NOT_FOUND

if TYPE_CHECKING:
    from features.online.serving_log import _Batch

_DAY_US = 86_400_000_000
_ARROW = {"int64": "int64", "float64": "float64", "bool": "bool_", "string": "string"}


def _arrow_type(pa: Any, dtype: str) -> Any:
    if dtype == "timestamp":
        return pa.timestamp("us", tz="UTC")
    return getattr(pa, _ARROW[dtype])()


SLICE_ROWS = 1_000  # Python objects converted per GIL hold (~0.1 ms), see _array


def _array(pa: Any, values: list[Any], type_: Any) -> Any:
    """``pa.array(values, type_)``, converted a slice at a time with the GIL let go in between.

    Converting Python objects holds the GIL: a 10,000-row column in one piece held it for
    milliseconds, long enough to show in the p99 of a concurrent get_online_features call.
    """
    if len(values) <= SLICE_ROWS:
        return pa.array(values, type_)
    parts = []
    for i in range(0, len(values), SLICE_ROWS):
        parts.append(pa.array(values[i:i + SLICE_ROWS], type_))
        time.sleep(0)  # a waiting caller gets the GIL now, not after the switch interval
    return pa.chunked_array(parts, type_).combine_chunks()


def _table(batches: list[_Batch]) -> Any:
    """One Arrow table of the batches: the union of their columns (missing: null), ordered
    served_at, join keys, features (each in first-seen order)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    tables = []
    keys: dict[str, None] = {}
    features: dict[str, None] = {}
    for b in batches:
        plan = b.plan
        served = np.repeat(np.asarray(b.served_us, np.int64), np.asarray(b.served_n, np.int64))
        arrays = {"served_at": pa.array(served).cast(pa.timestamp("us", tz="UTC"))}
        nk, nv = len(plan.join_keys), len(plan.names)
        for name, column in zip(plan.join_keys, b.columns[:nk], strict=True):
            arrays[name] = _array(pa, column, _arrow_type(pa, plan.key_types[name][0]))
            keys[name] = None
        names, outs = [""] * nv, [None] * nv
        for r, (read, slots) in enumerate(zip(plan.reads, plan.slots, strict=True)):
            # NOT_FOUND (never seen, expired) reads 0 for counts and sums: logged as null.
            # It is per view and entity row; other statuses' values are already null when
            # they must be (docs/online.md), so one status column per view decides.
            found = pc.not_equal(_array(pa, b.columns[nk + nv + r], pa.string()), NOT_FOUND)
            for step, slot in zip(read.steps, slots, strict=True):
                names[slot] = f"{read.view.name}__{step.feature.name}"
                values = _array(pa, b.columns[nk + slot], _arrow_type(pa, plan.dtypes[slot]))
                outs[slot] = pc.if_else(found, values, pa.scalar(None, values.type))
        for name, array in zip(names, outs, strict=True):
            arrays[name] = array
            features[name] = None
        tables.append(pa.table(arrays))
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables,
                                                                promote_options="default")
    return table.select(["served_at", *keys, *features])


def _by_day(table: Any) -> list[tuple[str, Any]]:
    """(UTC date, its rows) of a table, by served_at."""
    import numpy as np
    import pyarrow as pa

    day = table["served_at"].cast(pa.int64()).to_numpy() // _DAY_US
    days = np.unique(day)
    return [(time.strftime("%Y-%m-%d", time.gmtime(int(d) * 86_400)),
             table if len(days) == 1 else table.filter(pa.array(day == d))) for d in days]


def _write(table: Any, folder: Path) -> Path:
    """``table`` as a new file in ``folder``: written hidden, then renamed (atomic)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    first = pc.min(table["served_at"]).value // 1_000_000
    name = (f"part-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(first))}-"
            f"{uuid.uuid4().hex}.parquet")
    folder.mkdir(parents=True, exist_ok=True)
    final, tmp = folder / name, folder / f".{name}.tmp"
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final
