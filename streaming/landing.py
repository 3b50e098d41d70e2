"""Streamed events appended to the offline store, once each, so batch runs cover them.

Accepted events of a micro-batch are written per partition as one Parquet file::

    <offline.path>/landed/<source>/<topic>/p0003/<first offset>-<last offset>.parquet

with the source's columns (plus ``_tessera_partition`` and ``_tessera_offset``), rows in offset
order, written to a temporary name and renamed (a crash leaves no partial file). Zero-padded
names sort in (partition, offset) order, which is the order the batch engines use to break
event-time ties, the same order the stream uses.

Exactly once: the largest landed offset per partition is read from the file names when the
partition is assigned, and a replayed batch lands only the events after it.
``tessera run`` reads these files together with the source's own
(:func:`pipelines.sources.source_files`).
"""

from __future__ import annotations

import os
import re
import uuid
from typing import TYPE_CHECKING

from features.config import RepoConfig
from features.definitions import Source
from pipelines.sources import landing_root

if TYPE_CHECKING:
    import polars as pl

_NAME = re.compile(r"^(\d{20})-(\d{20})\.parquet$")
PARTITION = "_tessera_partition"
OFFSET = "_tessera_offset"


class Landing:
    """Appends one topic's accepted events for one source."""

    def __init__(self, cfg: RepoConfig, source: Source, topic: str) -> None:
        self.source = source
        self.root = landing_root(cfg.resolve(cfg.offline.path), source) / topic
        self._through: dict[int, int] = {}

    def forget(self) -> None:
        """Re-read the landed offsets (after a rebalance another process may have landed)."""
        self._through.clear()

    def landed_through(self, partition: int) -> int:
        """Largest offset landed for ``partition`` (-1: none)."""
        if partition not in self._through:
            folder = self.root / f"p{partition:04d}"
            last = -1
            if folder.is_dir():
                for p in folder.iterdir():
                    m = _NAME.match(p.name)
                    if m:
                        last = max(last, int(m.group(2)))
            self._through[partition] = last
        return self._through[partition]

    def write(self, events: pl.DataFrame) -> int:
        """Land the rows of ``events`` (source columns, ``_tessera_partition``,
        ``_tessera_offset``) not landed yet; returns rows written."""
        import polars as pl

        written = 0
        columns = [*self.source.schema, PARTITION, OFFSET]
        for (partition,), part in events.partition_by(PARTITION, as_dict=True).items():
            part = part.filter(pl.col(OFFSET) > self.landed_through(partition)).sort(OFFSET)
            if not part.height:
                continue
            first, last = part[OFFSET][0], part[OFFSET][-1]
            folder = self.root / f"p{partition:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            final = folder / f"{first:020d}-{last:020d}.parquet"
            tmp = folder / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
            part.select(columns).write_parquet(tmp, statistics=True)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, final)
            self._through[partition] = last
            written += part.height
        return written


__all__ = ["OFFSET", "PARTITION", "Landing"]
