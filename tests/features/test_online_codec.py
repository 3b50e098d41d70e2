"""The online layout's pure parts: suffix merges agree with tiles.merge, keys never collide."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from features import Entity, FeatureView, Source, agg, col
from features.online import keys as K
from features.online.codec import codec
from features.tiles import layout, merge, suffix_merge

SRC = Source(name="s", path="x", timestamp_field="ts",
             schema={"k": "int64", "x": "float64", "q": "int64", "ts": "timestamp"})
VIEW = FeatureView(name="v", entities=[Entity(name="e", join_key="k")], source=SRC, ttl="1d",
                   features=[agg.count(windows=["1h"], name="n"),
                             agg.stddev(col("x"), windows=["1h"], name="x_std"),
                             agg.min(col("x"), windows=["1h"], name="x_min"),
                             agg.max(col("q"), windows=["1h"], name="q_max"),
                             agg.sum(col("q"), windows=["1h"], name="q_sum")])


def _tiles(rng: random.Random, groups: int) -> list[list[dict]]:
    lay = layout(VIEW)
    out = []
    for _ in range(groups):
        rows = []
        for _t in range(rng.randint(1, 12)):
            xs = [rng.choice([None, rng.uniform(-1e6, 1e6), 1e6 + rng.random()])
                  for _ in range(rng.randint(0, 5))]
            present = [x for x in xs if x is not None]
            qs = [rng.randint(-50, 50) for _ in range(rng.randint(0, 3))]
            c = len(present)
            mean = math.fsum(present) / c if c else 0.0
            row = {"n": len(xs), "c0": c, "s0": math.fsum(present),
                   "q0": math.fsum((x - mean) ** 2 for x in present),
                   "lo0": min(present) if present else None, "hi1": max(qs) if qs else None,
                   "s1": sum(qs)}
            rows.append({k: row.get(k) for k, _ in lay.partial_columns() if k in row})
        out.append(rows)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_suffix_merge_equals_merging_every_later_tile(seed: int) -> None:
    rng = random.Random(seed)
    lay = layout(VIEW)
    groups = _tiles(rng, 30)
    flat = [r for g in groups for r in g]
    ends = np.repeat(np.cumsum([len(g) for g in groups]), [len(g) for g in groups])
    cols = {}
    for name in flat[0]:
        values = [r[name] for r in flat]
        if name in ("lo0", "hi1"):
            cols[f"{name}?"] = np.array([v is not None for v in values])
            values = [0 if v is None else v for v in values]
        cols[name] = np.array(values)
    got = suffix_merge(lay, cols, ends)
    i = 0
    for g in groups:
        for j in range(len(g)):
            want = merge(lay, g[j:])
            for name in flat[0]:
                value = got[name][i]
                if name in ("lo0", "hi1") and not got[f"{name}?"][i]:
                    value = None
                if name in ("s0", "q0"):
                    assert math.isclose(value, want[name], rel_tol=1e-9, abs_tol=1e-6), name
                else:
                    assert value == want[name], (name, value, want[name])
            i += 1


def test_codec_keeps_only_what_the_features_need() -> None:
    c = codec(VIEW)
    [section] = c.sections
    assert section.tile_us == 60_000_000 and section.horizon == 60
    assert section.record.columns == ("n", "c0", "s0", "q0", "lo0", "s1", "hi1")
    assert section.record.nullable == (False, False, False, False, True, False, True)
    assert c.latest == () and c.lifetime is None


def test_entity_tags_are_unique_and_keep_the_hash_tag_closed() -> None:
    values = [[1], ["1"], ["a,b"], ["a", "b"], ["x}y"], ["x\\]y"], [-5], ["}"], ["\\"]]
    tags = [K.entity_tag(v) for v in values]
    assert len(set(tags)) == len(tags)
    for tag in tags:
        key = K.window_key("p", "v", "0" * 64, tag)
        assert key[key.index("{") + 1:key.index("}")] == tag  # the whole tag hashes


def test_vectorized_entity_tags_equal_the_reference() -> None:
    import pyarrow as pa

    from pipelines.online_build import entity_tags

    ints = [1, -5, 0, 2**62]
    strs = ["a,b", "x}y", "x\\]y", "}", "\\", "plain", "", "é"]
    assert entity_tags([pa.array(ints)]) == [K.entity_tag([v]) for v in ints]
    assert entity_tags([pa.array(strs)]) == [K.entity_tag([v]) for v in strs]
    both = list(zip(ints * 2, strs, strict=True))
    assert entity_tags([pa.array([a for a, _ in both]), pa.array([b for _, b in both])]) == [
        K.entity_tag(list(v)) for v in both]


def test_vectorized_packing_equals_the_reference_encoding() -> None:
    """pipelines.online_pack builds, for many entities at once, the bytes codec encodes one by
    one: entities with and without tiles, with and without a newest value, strings of any size."""
    import struct

    import pyarrow as pa

    from features.online.codec import NO_EVENT
    from pipelines import online_pack as pk

    view = FeatureView(
        name="w", entities=[Entity(name="e", join_key="k")], source=SRC, ttl="1d",
        features=[agg.count(windows=["1h"], name="n"), agg.max(col("x"), windows=["1h"],
                                                             name="x_max"),
                  agg.last(col("x"), name="x_last")])
    c = codec(view)
    [section] = c.sections
    rec = section.record
    # entity 0: two tiles; entity 1: none; entity 2: one tile. Latest: 0 and 1 have one.
    rows = [(0, 100, (3, 1, 2.5)), (0, 101, (1, 1, -1.0)), (2, 7, (2, 0, 0.0))]
    packed = b"".join(struct.pack("<q", t) + rec.struct.pack(*v) for _, t, v in rows)
    sec = pk.Section(["a", "c"], np.array([0, 2]), np.array([2, 3]),
                     np.array([t for _, t, _ in rows]), packed)
    latest = pk.Latest(["a", "b"], np.array([500, 600]), [np.array([True, True])],
                       [np.array([400, 600])], [np.array([1, 2])], [pa.array([9.5, -0.0])])
    blobs = pk.window_blobs(c, 3, [(0, (np.array([0, 2]), sec))], latest, np.array([0, 1]),
                            np.array([500, 600, NO_EVENT]))
    inputs = c.latest
    want = [
        c.encode_window(500, c.encode_latest(inputs, [(9.5, 400, 1)]),
                        [[(100, rec.struct.pack(3, 1, 2.5)), (101, rec.struct.pack(1, 1, -1.0))]]),
        c.encode_window(600, c.encode_latest(inputs, [(-0.0, 600, 2)]), [[]]),
        c.encode_window(NO_EVENT, c.encode_latest(inputs, [None]),
                        [[(7, rec.struct.pack(2, 0, 0.0))]]),
    ]
    assert blobs.to_pylist() == want
    resp = pk.resp_set(pa.array(["k1", "k2"]), pa.array([b"ab", b"\r\n"]),
                       np.array([1700000000000, -1]))
    assert resp.to_pylist() == [
        b"*5\r\n$3\r\nSET\r\n$2\r\nk1\r\n$2\r\nab\r\n$4\r\nPXAT\r\n$13\r\n1700000000000\r\n",
        b"*3\r\n$3\r\nSET\r\n$2\r\nk2\r\n$2\r\n\r\n\r\n"]


def test_the_stream_decodes_many_stored_values_as_the_reference_decoder() -> None:
    """streaming.state reads all of a batch's stored values at once (numpy gathers); it must
    read what codec's per-value decoder reads: newest times, each last input's (value, time,
    seq) including absent ones, unicode and empty strings, bools, and every tile row."""
    from streaming.stored import StoredValues

    src = Source(name="s", path="x", timestamp_field="ts",
                 schema={"k": "int64", "x": "float64", "c": "string", "b": "bool",
                         "ts": "timestamp"})
    view = FeatureView(
        name="w", entities=[Entity(name="e", join_key="k")], source=src, ttl="1d",
        features=[agg.count(windows=["1h", "1d"], name="n"),
                  agg.max(col("x"), windows=["1h"], name="x_max"),
                  agg.last(col("c"), name="c_last"), agg.last(col("b"), name="b_last"),
                  agg.last(col("x"), name="x_last")])
    c = codec(view)
    rng = random.Random(5)
    texts = ["", "é", "naïve ✓", "x" * 300]
    blobs, want = [], []
    for i in range(40):
        if i % 7 == 3:
            blobs.append(None)
            want.append(None)
            continue
        latest = []
        for inp in c.latest:
            if rng.random() < 0.3:
                latest.append(None)
                continue
            value = {"string": rng.choice(texts), "bool": rng.random() < 0.5,
                     "float64": rng.uniform(-1e9, 1e9)}[inp.dtype]
            latest.append((value, rng.randrange(-10**15, 10**15), rng.randrange(2**62)))
        sections = []
        for sec in c.sections:
            rec = sec.record
            rows = []
            for t in sorted(rng.sample(range(1000), rng.randrange(0, 5))):
                values: list[object] = []
                for code, null in zip(rec.codes, rec.nullable, strict=True):
                    if null:
                        values.append(rng.randrange(2))  # the presence byte
                    values.append(rng.randrange(50) if code == "q" else
                                  (rng.random() < 0.5 if code == "?" else rng.uniform(-5, 5)))
                rows.append((t, rec.struct.pack(*values)))
            sections.append(rows)
        newest = rng.randrange(10**15)
        blobs.append(c.encode_window(newest, c.encode_latest(c.latest, latest), sections))
        want.append((newest, latest, sections))
    got = StoredValues(c, blobs)
    for i, w in enumerate(want):
        if w is None:
            assert not any(x.present[i] for x in got.latest)
            continue
        newest, latest, sections = w
        assert got.newest[i] == newest
        for k, item in enumerate(latest):
            x = got.latest[k]
            assert bool(x.present[i]) == (item is not None)
            if item is not None:
                assert (x.values[i].as_py(), int(x.at[i]), int(x.seq[i])) == item
        for k, rows in enumerate(sections):
            entity, stored = got.sections[k]
            mine = stored[entity == i]
            assert [(int(r["tile"]), r.tobytes()[8:]) for r in mine] == rows


@pytest.mark.parametrize("seed", range(3))
def test_one_fill_per_window_equals_finalize_feature_by_feature(seed: int) -> None:
    """The online read finalizes a window's features with one generated function
    (tiles.finalizers); it must give what tiles.finalize gives each feature, bit for bit,
    with nulls (an empty min, a stddev of one value) where finalize has them."""
    from features.tiles import finalize, finalizers

    rng = random.Random(seed)
    lay = layout(VIEW)
    record = codec(VIEW).sections[0].record
    fill = finalizers(lay, [(k, f) for k, f in enumerate(VIEW.features)], record.position)
    rows = [r for g in _tiles(rng, 20) for r in g]
    for row in rows:
        raw: list = []  # the record tuple as struct.unpack gives it: flag before a nullable
        for column, null in zip(record.columns, record.nullable, strict=True):
            if null:
                raw.append(row[column] is not None)
                raw.append(0.0 if row[column] is None else row[column])
            else:
                raw.append(row[column])
        got: list = [object()] * len(VIEW.features)
        fill(tuple(raw), got)
        want = [finalize(lay, f, record.to_dict(raw)) for f in VIEW.features]
        assert [repr(v) for v in got] == [repr(v) for v in want]
    empty = finalizers(lay, [], record.position)
    untouched = [1, 2]
    empty((), untouched)
    assert untouched == [1, 2]


def test_a_value_of_another_format_is_refused_with_the_view_and_both_versions() -> None:
    """A window value written in another byte format is never decoded: the read names the
    view, the version it found and the one it reads, and says to re-materialize."""
    from features.online.codec import VERSION
    from features.online.read import ViewRead

    c = codec(VIEW)
    blob = c.encode_window(1_000, c.encode_latest(c.latest, [None] * len(c.latest)),
                           [[] for _ in c.sections])
    read = ViewRead.of(VIEW, VIEW.features)
    values, statuses, _ = read.evaluate([blob], [None], 2_000)
    assert values[0] == [0] and statuses[0] == ["PRESENT"]  # n: an empty window, but known
    old = bytes([VERSION - 1]) + blob[1:]
    with pytest.raises(ValueError, match=rf"view 'v' has version {VERSION - 1}, expected "
                                         rf"{VERSION} \(re-materialize\)"):
        read.evaluate([blob, old], [None, None], 2_000)
