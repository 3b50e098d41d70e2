"""The stored window values of a micro-batch's entities, decoded to numpy and Arrow columns.

:class:`StoredValues` reads every entity's value of one view at once (the newest event time,
the newest ``last`` values, each section's tile rows), for :mod:`streaming.state` to merge the
batch into. It gives what the per-value decoder of :mod:`features.online.codec` gives; a test
holds the two equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from features.online.codec import _CODES, COUNTS_AT, NO_EVENT, NUMPY_CODES, VERSION, Codec, Record


def row_dtype(rec: Record) -> Any:
    """numpy dtype of one stored section row: tile index, then the record."""
    import numpy as np

    return np.dtype([("tile", "<i8"), *rec.numpy_dtype().descr])


def arrow_type(dtype: str) -> Any:
    import pyarrow as pa

    return {"string": pa.large_string(), "float64": pa.float64(), "bool": pa.bool_()}.get(
        dtype, pa.int64())  # int64 and timestamps (µs)


@dataclass
class LatestColumns:
    present: Any
    at: Any
    seq: Any
    values: Any  # Arrow


class StoredValues:
    """The stored window values of the batch's entities, decoded to columns.

    Decoded for all entities at once: the values are laid end to end in one buffer and each
    field is read at every entity's current position with a numpy gather, the positions then
    advancing by each entity's field length; the tile rows are sliced whole from each value.
    (A Python loop over entities, field by field, cost ~30 µs per entity, the largest share of
    a small batch's merge.) Gives what the per-value decoder of :mod:`features.online.codec`
    gives.
    """

    def __init__(self, cod: Codec, blobs: Sequence[bytes | None]) -> None:
        import numpy as np
        import pyarrow as pa

        n = len(blobs)
        self.newest = np.full(n, NO_EVENT, np.int64)
        arr = pa.array(blobs, pa.large_binary())
        have = np.flatnonzero(arr.is_valid().to_numpy(zero_copy_only=False))
        offsets = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset:arr.offset + n + 1]
        raw = arr.buffers()[2]
        data = np.frombuffer(raw, np.uint8) if raw is not None else np.zeros(0, np.uint8)
        data = np.concatenate([data, np.zeros(32, np.uint8)])  # fixed-width reads may overrun
        pos = offsets[have].copy()
        if len(have):
            version = data[pos]
            if (version != VERSION).any():
                bad = int(version[version != VERSION][0])
                raise ValueError(f"online value of view {cod.view.name!r} has version {bad}, "
                                 f"expected {VERSION} (re-materialize)")
            self.newest[have] = _read(data, pos + 1, "<i8")
        first = pos
        pos = pos + cod.head.size
        self.latest = []
        for inp in cod.latest:
            flag = data[pos] != 0
            at, seq = np.zeros(n, np.int64), np.zeros(n, np.int64)
            present = np.zeros(n, bool)
            present[have] = flag
            at[have] = np.where(flag, _read(data, pos + 1, "<i8"), 0)
            seq[have] = np.where(flag, _read(data, pos + 9, "<i8"), 0)
            start = pos + 17
            if inp.dtype == "string":
                size = np.where(flag, _read(data, start, "<u4"), 0).astype(np.int64)
                values = _strings(data, start + 4, size, have, present, n)
                pos = np.where(flag, start + 4 + size, pos + 1)
            else:
                code = NUMPY_CODES[_CODES[inp.dtype]]
                column = np.zeros(n, code)
                column[have] = np.where(flag, _read(data, start, code), 0)
                values = pa.array(column.astype(bool) if code == "u1" else column,
                                  mask=~present).cast(arrow_type(inp.dtype))
                pos = np.where(flag, start + np.dtype(code).itemsize, pos + 1)
            self.latest.append(LatestColumns(present, at, seq, values))
        self.sections = []
        for j, sec in enumerate(cod.sections):
            dtype = row_dtype(sec.record)
            count = _read(data, first + COUNTS_AT + 4 * j, "<u4").astype(np.int64)
            size = count * dtype.itemsize
            # whole slices of each value (a memcpy each) beat a gather byte by byte here
            rows = np.frombuffer(b"".join([
                blobs[i][r:r + k]  # type: ignore[index]  # `have`: only present values
                for i, r, k in zip(have.tolist(), (pos - first).tolist(), size.tolist(),
                                   strict=True) if k]), dtype)
            self.sections.append((np.repeat(have, count), rows))
            pos = pos + size


def _read(data: Any, at: Any, code: str) -> Any:
    """The ``code`` value (numpy dtype) at each byte position ``at`` of ``data``."""
    import numpy as np

    width = np.dtype(code).itemsize
    return data[np.asarray(at)[:, None] + np.arange(width)].view(code).ravel()


def _ranges(data: Any, starts: Any, lengths: Any) -> Any:
    """The bytes ``data[s:s + l]`` of every (start, length), end to end (one gather)."""
    import numpy as np

    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.uint8)
    ends = np.cumsum(lengths)
    return data[np.repeat(starts - (ends - lengths), lengths) + np.arange(total)]


def _strings(data: Any, starts: Any, sizes: Any, have: Any, present: Any, n: int) -> Any:
    """An Arrow string array of ``n`` rows: row ``have[i]`` holds ``data[starts[i]:][:sizes[i]]``
    where ``present``, null elsewhere."""
    import numpy as np
    import pyarrow as pa

    lengths = np.zeros(n, np.int64)
    lengths[have] = sizes
    chars = _ranges(data, starts, sizes)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    validity = pa.array(present).buffers()[1]
    out = pa.LargeBinaryArray.from_buffers(pa.large_binary(), n, [
        validity, pa.py_buffer(offsets), pa.py_buffer(chars.tobytes())])
    return out.cast(pa.large_string())
