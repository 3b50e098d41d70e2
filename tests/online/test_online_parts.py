"""Online values built in ranges of entities (pipelines.online_parts) are exactly what one build
of the whole view gives: the same entities, the same bytes, the same expiries; each range holds
about the rows asked for, and the ranges never share an entity."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from features import agg, col, offline_store
from features.definitions import Entity, FeatureView, Source
from features.online.codec import codec
from features.sql import file_list
from features.windows import to_micros
from pipelines import online_build as ob
from pipelines import online_parts as op
from pipelines import online_snapshot as snap
from tests.pipelines.window_harness import materialize

T0 = datetime(2026, 3, 2, tzinfo=UTC)
SCHEMA = {"shop": "string", "till": "int64", "amount": "float64", "event_ts": "timestamp"}
SOURCE = Source(name="sales", path="unused", schema=SCHEMA, timestamp_field="event_ts")
# A string first key with the characters SQL literals must escape, and a second key: a range is
# cut on the first key only, so every till of a shop falls in the same part.
SHOPS = ["o'brien", "a,b", "zed}", "\\back", "Émile", "", "x'; DROP TABLE t; --", "0", "bb"]


def sales_view(src: Source) -> FeatureView:
    return FeatureView(
        name="sales", entities=[Entity(name="shop", join_key="shop", dtype="string"),
                                Entity(name="till", join_key="till")],
        source=src, ttl="30d",
        features=[agg.count(windows=["1d", "7d", "lifetime"]),
                  agg.sum(col("amount"), windows=["1h", "7d"]),
                  agg.last(col("amount"), name="last_amount")])


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[FeatureView, Path, offline_store.Manifest]:
    rows = [{"shop": SHOPS[i % len(SHOPS)], "till": i % 4, "amount": float(i % 17),
             "event_ts": T0 + timedelta(minutes=7 * i)} for i in range(1_500)]
    # a null key: the batch run rejects the row, so no range has to hold it
    rows.append({"shop": None, "till": 1, "amount": 5.0, "event_ts": T0})
    view, cfg = materialize("polars", sales_view, SOURCE, rows,
                            tmp_path_factory.mktemp("parts"))
    root = cfg.resolve(cfg.offline.path)
    manifest = offline_store.latest(root, view.name, view.fingerprint())
    assert manifest is not None
    return view, offline_store.view_dir(root, view.name, view.fingerprint()), manifest


NOW = to_micros(T0 + timedelta(days=7, hours=6))  # 1,500 events 7 minutes apart: ~7.3 days


def rows_of(values_list: list[ob.Values]) -> dict[tuple[str, bool], tuple[bytes, int]]:
    table = pa.concat_tables([snap._table(v) for v in values_list])
    out = {}
    for tag, life, blob, expire in zip(*(table.column(c).to_pylist() for c in
                                         ("tag", "lifetime", "blob", "expire_us")), strict=True):
        assert (tag, life) not in out, f"{tag!r} handed on twice"
        out[tag, life] = (blob, expire)
    return out


@pytest.mark.parametrize("now_us", [NOW, NOW - 3 * 86_400_000_000])
def test_a_build_in_ranges_equals_one_build_byte_for_byte(offline, now_us: int) -> None:
    view, base, manifest = offline
    cod = codec(view)
    whole = ob.build(ob.Reader(view, base, manifest, None), cod, now_us)
    parts = op.built(view, base, manifest, None, cod, now_us, rows=150)
    assert parts.expected() is None  # nothing known before the first range
    got, expected, handed = [], [], 0
    for values in parts:  # what materialize's progress bar shows after each range
        got.append(values)
        handed += len(values.window_tags) + len(values.lifetime_tags)
        expected.append((handed, parts.expected()))
    assert len(got) >= 4, "the rows asked for should have split the view"
    assert all(len(v.window_tags) for v in got)  # no empty range, though keys are few
    rows = len(whole.window_tags) + len(whole.lifetime_tags)
    assert expected[-1] == (rows, rows)  # exact once every range is handed on
    assert all(e is None if h == 0 else e >= h for h, e in expected)
    assert rows_of(got) == rows_of([whole])
    assert sorted(parts.window_tags.to_pylist()) == sorted(whole.window_tags.to_pylist())
    assert sorted(parts.lifetime_tags.to_pylist()) == sorted(whole.lifetime_tags.to_pylist())
    assert parts.entities == len(set(whole.window_tags.to_pylist())
                                 | set(whole.lifetime_tags.to_pylist()))
    # every till of a shop is in one part: the ranges are cut on the first key
    shops = [{t.rsplit(",", 1)[0] for t in v.window_tags.to_pylist()} for v in got]
    for i, a in enumerate(shops):
        for b in shops[i + 1:]:
            assert not a & b


def test_each_range_holds_about_the_rows_asked_for(offline) -> None:
    view, base, manifest = offline
    cod = codec(view)
    reader = ob.Reader(view, base, manifest, None)
    conditions = op.ranges(reader, cod, NOW, rows=150)
    assert len(conditions) >= 4 and "IS NULL" in conditions[0]
    assert op._literal("x'; DROP TABLE t; --") == "'x''; DROP TABLE t; --'"

    def partial_rows(r: ob.Reader) -> int:
        n = 0
        for _, files, first in ob.section_files(r, cod, NOW):
            n += r.query(f"SELECT count(*) AS n FROM read_parquet({file_list(files)}) "
                         f"WHERE tile >= {first}{r.semi}").column("n")[0].as_py()
        return n

    total = partial_rows(reader)
    sizes = [partial_rows(reader.within(c)) for c in conditions]
    assert sum(sizes) == total  # every row in exactly one range
    # a shop is never split, so a range is at most ~2 shops' rows over the ask
    assert max(sizes) <= total / len(SHOPS) * 2 + 150


def test_one_range_when_the_view_is_smaller_than_a_part(offline) -> None:
    view, base, manifest = offline
    reader = ob.Reader(view, base, manifest, None)
    assert op.ranges(reader, codec(view), NOW, rows=10_000_000) == [""]


def test_only_the_wanted_entities_are_built_in_ranges(offline) -> None:
    view, base, manifest = offline
    cod = codec(view)
    wanted = pa.table({"shop": ["o'brien", "zed}", "bb"], "till": [0, 2, 1]})
    whole = ob.build(ob.Reader(view, base, manifest, wanted), cod, NOW)
    got = list(op.built(view, base, manifest, wanted, cod, NOW, rows=20))
    assert rows_of(got) == rows_of([whole])
    assert pc.count_distinct(whole.window_tags).as_py() == 3


def test_a_bad_rows_setting_is_named(offline, monkeypatch: pytest.MonkeyPatch) -> None:
    view, base, manifest = offline
    monkeypatch.setenv("TESSERA_BUILD_ROWS", "0")
    with pytest.raises(ValueError, match="TESSERA_BUILD_ROWS=0: expected a positive"):
        op.ranges(ob.Reader(view, base, manifest, None), codec(view), NOW)
