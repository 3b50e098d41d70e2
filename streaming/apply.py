"""One view's share of a micro-batch: rules, dead letters, and the exactly-once Redis write.

For the decoded events of the view's topic (:mod:`streaming.decode`), in order:

1. rows with a null entity key, and rows older than the view's retention (its longest window,
   or TTL, plus ``stream.allowed_lateness``), become dead letters for this view;
2. the view's rules run on the rest with the batch engine's own compiled projection
   (:func:`pipelines.engine_polars.project`: derived columns, filter, inputs);
3. the entities' stored values and offsets are read in one ``MGET``; events at or below an
   entity's stored offset for their partition are dropped (already applied);
4. :func:`streaming.state.merge_batch` computes the new values, and each entity's values and
   offsets are written by one compare-and-set script call (:data:`streaming.offsets.CAS_SCRIPT`).
   An entity whose offsets changed since the read (another consumer wrote it) is read and
   merged again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from features.definitions import FeatureView
from features.errors import SUM_HINT, SumOverflowError
from features.online import keys as K
from features.online.codec import Codec, codec
from features.online.redis_store import RedisOnline
from pipelines import online_pack as pk
from pipelines.engine_polars import project
from pipelines.online_build import entity_tag_array
from streaming import offsets as O
from streaming.decode import NULL_KEY, OVERFLOW, RULE_ERROR, TOO_EARLY, TOO_LATE, Bad
from streaming.state import merge_batch

if TYPE_CHECKING:
    import polars as pl

OFFSET_BITS = 44  # stream seq = partition << 44 | offset: the (partition, offset) order
CAS_SHA = hashlib.sha1(O.CAS_SCRIPT.encode()).hexdigest()
CAS_MANY_SHA = hashlib.sha1(O.CAS_MANY_SCRIPT.encode()).hexdigest()
MAX_CONFLICT_ROUNDS = 20


@dataclass
class ApplyResult:
    applied: int = 0  # events merged into online values
    skipped: int = 0  # events already applied (a replay)
    entities: int = 0  # entities written
    conflicts: int = 0  # compare-and-set retries


def retention_us(view: FeatureView) -> int | None:
    """How far back an event still changes some online value (None: forever, e.g. lifetime)."""
    spans: list[int] = []
    for f in view.features:
        if f.window is None:
            ttl = view.feature_ttl_us(f)
            if ttl is None:
                return None
            spans.append(ttl)
        elif f.window.tiles is None:
            return None
        else:
            spans.append((f.window.length_us or 0) + f.window.tile_us)
    return max(spans) if spans else None


class ViewWriter:
    """Applies micro-batches of one view (one topic) to Redis, exactly once per event."""

    def __init__(self, project_name: str, view: FeatureView, topic: str, online: RedisOnline,
                 allowed_lateness_us: int, max_future_us: int = 86_400_000_000) -> None:
        self.view = view
        self.topic = topic
        self.online = online
        self.cod: Codec = codec(view)
        self.fp = view.fingerprint()
        self.head, self.tail = K.prefix(project_name, view.name, self.fp)
        keep = retention_us(view)
        self.retention = None if keep is None else keep + allowed_lateness_us
        self.max_future_us = max_future_us

    def reject(self, events: pl.DataFrame, now_us: int) -> tuple[pl.DataFrame, list[Bad]]:
        """(events this view can use, its dead letters): null keys, too late, too early (a
        time far in the future would be a tile no window reaches, and the merge's packed
        (entity, tile) numbers have 32 bits for the tile)."""
        import polars as pl

        ts = self.view.source.timestamp_field
        null_key = pl.any_horizontal(pl.col(k).is_null() for k in self.view.join_keys)
        at = pl.col(ts).dt.epoch("us")
        late = pl.lit(False)
        if self.retention is not None:
            late = at < now_us - self.retention
        early = at > now_us + self.max_future_us
        flags = events.select(null_key.alias("k"), (~null_key & late).alias("l"),
                              (~null_key & early).alias("f"))
        if not flags["k"].any() and not flags["l"].any() and not flags["f"].any():
            return events, []  # the common case: one pass, no copy
        bad = [Bad(i, NULL_KEY, f"join key {', '.join(self.view.join_keys)} is null",
                   self.view.name)
               for i in events.filter(flags["k"])["__i"].to_list()]
        bad += [Bad(i, TOO_LATE, f"event time {t} is older than the view's retention "
                    f"(longest window + allowed lateness) at {_iso(now_us)}", self.view.name)
                for i, t in events.filter(flags["l"]).select("__i", ts).iter_rows()]
        bad += [Bad(i, TOO_EARLY, f"event time {t} is more than stream.max_future after the "
                    f"consumer's clock ({_iso(now_us)})", self.view.name)
                for i, t in events.filter(flags["f"]).select("__i", ts).iter_rows()]
        return events.filter(~flags["k"] & ~flags["l"] & ~flags["f"]), bad

    def rules(self, events: pl.DataFrame) -> tuple[pl.DataFrame, list[Bad]]:
        """Projected rows (keys, ``__ts``, ``__seq``, inputs), and rows whose rules failed.
        The batch is evaluated at once; only if that raises is it split row by row."""
        import polars as pl

        def run(frame: pl.DataFrame) -> pl.DataFrame:
            out, _counts = project(self.view, frame.lazy())
            return out.collect(engine="in-memory")

        try:
            return run(events), []
        except Exception:  # an engine error on some row: find it, keep the others
            good, bad = [], []
            for k in range(events.height):
                row = events.slice(k, 1)
                try:
                    good.append(run(row))
                except Exception as e:
                    bad.append(Bad(int(row["__i"][0]), RULE_ERROR,
                                   f"{type(e).__name__}: {str(e).splitlines()[0]}",
                                   self.view.name))
            frame = pl.concat(good) if good else run(events.clear())
            return frame.sort(["__ts", "__seq"]), bad

    def apply_or_reject(self, rows: pl.DataFrame, events: pl.DataFrame, now_us: int
                        ) -> tuple[ApplyResult, list[Bad]]:
        """:meth:`apply` of ``rows`` (projected from ``events``); when the batch's merge would
        take an integer sum out of int64, the events of the entities it would (found one
        entity at a time) become dead letters and the others are applied: the stream goes
        on, never writing a wrapped value."""
        try:
            return self.apply(rows, now_us), []
        except SumOverflowError:
            rows, bad = self._overflowing(rows, events, now_us)
            return self.apply(rows, now_us), bad

    def _overflowing(self, rows: pl.DataFrame, events: pl.DataFrame, now_us: int
                     ) -> tuple[pl.DataFrame, list[Bad]]:
        """(the rows of the other entities, dead letters for the events of the entities
        whose merge raises SumOverflowError)."""
        import numpy as np
        import polars as pl

        coded = entity_tag_array([rows[k].to_arrow() for k in self.view.join_keys]
                                 ).dictionary_encode()
        entity = coded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        tags = coded.dictionary.to_pylist()
        stored = self._read(tags)
        over = np.zeros(len(tags), bool)
        for e, tag in enumerate(tags):
            one = rows.filter(pl.Series(entity == e)).with_columns(pl.lit(0, pl.Int64)
                                                                   .alias("__e"))
            life = None if self.cod.lifetime is None else [stored.lifetime[e]]
            try:
                merge_batch(self.cod, [tag], [stored.window[e]], life, one, now_us)
            except SumOverflowError:
                over[e] = True
        drop = pl.Series(over[entity])
        seqs = rows.filter(drop)["__seq"]
        bad = [Bad(int(i), OVERFLOW, f"it would take a sum of integers of this entity out of "
                   f"int64: {SUM_HINT}", self.view.name)
               for i in events.filter(pl.col("__seq").is_in(seqs.implode()))["__i"].to_list()]
        return rows.filter(~drop), bad

    def apply(self, rows: pl.DataFrame, now_us: int) -> ApplyResult:
        """Merge projected rows into Redis; retries entities another writer changed.

        Bookkeeping is numpy over entity numbers (a Polars call costs ~1 ms here, a visible
        share of a small batch): ``entity[i]`` is row ``i``'s entity, ``part``/``offset`` its
        Kafka position.
        """
        import numpy as np
        import polars as pl

        result = ApplyResult()
        if not rows.height:
            return result
        coded = entity_tag_array([rows[k].to_arrow() for k in self.view.join_keys]
                                 ).dictionary_encode()  # numbers in C, a string per entity
        entity = coded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        tags = coded.dictionary.to_pylist()
        seq = rows["__seq"].to_numpy()
        part, offset = seq >> OFFSET_BITS, seq & ((1 << OFFSET_BITS) - 1)
        pending = np.arange(len(tags))  # entities still to write
        for _round in range(MAX_CONFLICT_ROUNDS):
            stored = self._read([tags[e] for e in pending])
            # done[e, p]: the last offset of partition p applied to entity e (-1: none); every
            # stored partition has a column, so rewriting the offsets keeps them all
            at_e, at_p, at_o = O.decode_many(stored.offsets, self.topic)
            width = max(int(part.max()), int(at_p.max()) if len(at_p) else 0) + 1
            done = np.full((len(tags), width), -1, np.int64)
            done[pending[at_e], at_p] = at_o
            wanted = np.zeros(len(tags), bool)
            wanted[pending] = True
            mask = wanted[entity] & (offset > done[entity, part])
            result.skipped += int((wanted[entity] & ~mask).sum())
            if not mask.any():
                return result
            live = np.unique(entity[mask])  # entities left with rows, renumbered 0..n-1
            renumber = np.full(len(tags), -1, np.int64)
            renumber[live] = np.arange(len(live))
            fresh = rows.filter(pl.Series(mask)).with_columns(
                pl.Series("__e", renumber[entity[mask]]))
            high = done.copy()
            np.maximum.at(high, (entity[mask], part[mask]), offset[mask])
            at = np.searchsorted(pending, live)  # where each live entity is in `stored`
            live_tags = [tags[e] for e in live]
            mine = high[live]  # stored offsets, advanced by this batch
            own_e, own_p = np.nonzero(mine >= 0)  # by entity, then partition
            offsets = O.encode_many(self.topic, len(live), own_e, own_p, mine[own_e, own_p])
            life = (None if self.cod.lifetime is None
                    else [stored.lifetime[i] for i in at.tolist()])
            merged = merge_batch(self.cod, live_tags, [stored.window[i] for i in at.tolist()],
                                 life, fresh, now_us)
            written = np.asarray(self._write(live_tags, [stored.offsets[i] for i in
                                                         at.tolist()], offsets, merged, now_us))
            ok = np.zeros(len(tags), bool)
            ok[live[written]] = True
            result.entities += int(written.sum())
            result.applied += int((mask & ok[entity]).sum())
            if written.all():
                return result
            result.conflicts += int((~written).sum())
            pending = live[~written]  # read again: another writer changed them
        raise RuntimeError(f"view {self.view.name!r}: entities kept changing under the stream "
                           f"for {MAX_CONFLICT_ROUNDS} rounds (another writer?)")

    # --- Redis ------------------------------------------------------------------------------

    def _keys(self, tag: str) -> tuple[str, str, str]:
        window = self.head + tag + self.tail
        return window + K.OFFSETS, window, window + K.LIFETIME

    def _read(self, tags: Sequence[str]) -> _Stored:
        with_life = self.cod.lifetime is not None
        keys = []
        for t in tags:
            o, w, life = self._keys(t)
            keys += [o, w, life] if with_life else [o, w]
        values = self.online.get(keys)
        step = 3 if with_life else 2
        return _Stored(values[0::step], values[1::step],
                       values[2::step] if with_life else [None] * len(tags))

    def _write(self, tags: Sequence[str], expected: Sequence[bytes | None],
               offsets: Sequence[bytes], merged: Any, now_us: int) -> list[bool]:
        """Compare-and-set every entity's values and offsets (one script call per group of
        entities on a single node, per entity on a cluster); True where written."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        life = merged.lifetime
        expire = merged.expire_us
        never = expire == -1
        dead = ~never & (expire <= now_us)
        window_ms = np.where(never, -1, np.where(dead, 0, -((-expire) // 1000)))
        if life is not None:
            offsets_ms = np.full(len(tags), -1, np.int64)
        else:  # keep offsets while an event could still be replayed into a live value
            floor = (now_us + (self.retention or 0)) // 1000
            offsets_ms = np.where(never, -1, np.maximum(window_ms, floor))
        nkeys = 2 if life is None else 3
        if self.online.cluster:
            window = merged.window.to_pylist()
            lives = None if life is None else life.to_pylist()
            commands: list[Any] = []
            for i, tag in enumerate(tags):
                o, w, lk = self._keys(tag)
                args = [expected[i] or b"", offsets[i], b"%d" % offsets_ms[i],
                        window[i], b"%d" % window_ms[i]]
                if lives is not None:
                    args += [lives[i], b"-1"]
                commands.append(["EVALSHA", CAS_SHA, str(nkeys), o, w,
                                 *([lk] if lives is not None else []), *args])
            replies = self.online.call_many(commands, script=O.CAS_SCRIPT)
            return [r == 1 for r in replies]
        # single node: groups of entities per script call (one call per entity cost more than
        # the merge); every entity's keys and arguments are built as RESP with Arrow kernels
        # (no Python formatting per entity), and a group is a slice of those bytes
        per = 2 * nkeys + 1
        w = pc.binary_join_element_wise(self.head, pa.array(tags, pa.string()), self.tail, "")
        key_parts = [pk.bulk(pc.binary_join_element_wise(w, K.OFFSETS, "")), pk.bulk(w)]
        arg_parts = [pk.bulk(pa.array([e or b"" for e in expected], pa.large_binary())),
                     pk.bulk(pa.array(offsets, pa.large_binary())),
                     pk.bulk(pa.array(offsets_ms).cast(pa.string())),
                     pk.bulk(merged.window), pk.bulk(pa.array(window_ms).cast(pa.string()))]
        if life is not None:
            key_parts.append(pk.bulk(pc.binary_join_element_wise(w, K.LIFETIME, "")))
            arg_parts += [pk.bulk(life), pk.bulk(pk.lb_array(b"-1", len(tags)))]
        keys, args = pk.join(key_parts), pk.join(arg_parts)
        packed = []
        for lo in range(0, len(tags), O.GROUP):
            hi = min(lo + O.GROUP, len(tags))
            m = hi - lo
            count = b"%d" % (m * nkeys)
            packed.append(b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%b\r\n$%d\r\n%b\r\n"
                          % (3 + m * nkeys + 1 + m * per, CAS_MANY_SHA.encode(), len(count),
                             count)
                          + pk.span(keys, lo, hi) + b"$1\r\n%d\r\n" % nkeys
                          + pk.span(args, lo, hi))
        replies = self.online.call_many(packed, script=O.CAS_MANY_SCRIPT)
        return [r == 1 for group in replies for r in group]


@dataclass
class _Stored:
    offsets: list[bytes | None]
    window: list[bytes | None]
    lifetime: list[bytes | None]


def _iso(us: int) -> str:
    from features.windows import from_micros

    return from_micros(us).isoformat().replace("+00:00", "Z")


__all__ = ["OFFSET_BITS", "ApplyResult", "ViewWriter", "retention_us"]
