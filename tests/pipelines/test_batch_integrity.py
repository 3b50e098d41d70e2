"""Everyday situations must not lose stored features or read wrong ones with exit code 0:
a daily run landing inside a backfill, source days gone missing, reads over days never
computed, leftovers beside the source files, corrupt files, runs without dates."""

from __future__ import annotations

import shutil
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features import agg, col
from features import offline_store as store
from features.config import OfflineConfig, RepoConfig
from features.definitions import Entity, FeatureView, Source
from features.errors import UncoveredError
from features.historical import get_historical_features
from pipelines import engine_polars
from pipelines.batch import run_view
from pipelines.datagen import GenSpec, write_parquet
from pipelines.errors import PipelineError

START = date(2026, 1, 5)
DAYS = 28
SCHEMA = {"transaction_id": "int64", "user_id": "int64", "merchant_id": "int64",
          "amount": "float64", "currency": "string", "country": "string", "channel": "string",
          "card_present": "bool", "mcc": "string", "is_fraud": "bool", "event_ts": "timestamp"}


def spend_view(path: Path, amount_min: float = 0.0) -> FeatureView:
    src = Source(name="transactions", path=str(path), schema=SCHEMA, timestamp_field="event_ts")
    return FeatureView(
        name="user_spend", entities=[Entity(name="user", join_key="user_id")], source=src,
        ttl="30d", filter=col("amount") > amount_min,
        features=[agg.count(windows=["1d", "7d"], name="txn_count"),
                  agg.sum(col("amount"), windows=["7d"], name="amount_sum"),
                  agg.count(windows=["lifetime"], name="txn_count"),
                  agg.last(col("country"), name="last_country")])


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("src")
    spec = GenSpec(rows=30_000, start=datetime(2026, 1, 5, tzinfo=UTC), days=DAYS, seed=11)
    write_parquet(spec, out, progress=False)
    return out / "transactions"


def config(tmp: Path) -> RepoConfig:
    return RepoConfig(project="t", offline=OfflineConfig(path=tmp / "offline"), root=tmp)


def requests(source: Path, n: int = 300) -> pl.DataFrame:
    """Rows at random instants of the busiest users, plus the busiest user at every noon."""
    events = pl.read_parquet(source, hive_partitioning=False)
    busy = events.group_by("user_id").len().sort(["len", "user_id"], descending=True)
    users = busy["user_id"].head(20).to_list()
    noons = [datetime.combine(START + timedelta(days=d), datetime.min.time(), UTC)
             + timedelta(hours=12) for d in range(DAYS)]
    rows = [(users[0], t) for t in noons]
    rows += [(users[i % len(users)], noons[(i * 7) % DAYS] + timedelta(minutes=(37 * i) % 700))
             for i in range(n)]
    return pl.DataFrame({"user_id": [u for u, _ in rows], "event_ts": [t for _, t in rows]},
                        schema={"user_id": pl.Int64, "event_ts": pl.Datetime("us", "UTC")})


def read(view: FeatureView, cfg: RepoConfig, rows: pl.DataFrame, **kw: object) -> pl.DataFrame:
    return pl.from_arrow(get_historical_features([view], rows, cfg.resolve(cfg.offline.path),
                                                 **kw))  # type: ignore[return-value]


def test_a_daily_run_inside_a_backfill_loses_nothing(source: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    view = spend_view(source)
    clean = config(tmp_path / "clean")
    run_view(clean, view, "polars", START, START + timedelta(days=DAYS))
    cfg = config(tmp_path / "raced")
    # The backfill writes chunk by chunk; after its first chunk it waits until the daily run
    # (started later, so its run folder sorts after the backfill's) has committed.
    monkeypatch.setattr(engine_polars, "CHUNK_ROWS", 2_000)
    backfill_wrote, daily_done = threading.Event(), threading.Event()
    real_write = engine_polars.write_tiles

    def write_then_wait(frames, out_dir):  # type: ignore[no-untyped-def]
        written = real_write(frames, out_dir)
        if threading.current_thread().name == "backfill" and not backfill_wrote.is_set():
            backfill_wrote.set()
            assert daily_done.wait(120)
        return written

    monkeypatch.setattr(engine_polars, "write_tiles", write_then_wait)
    errors: list[BaseException] = []

    def backfill() -> None:
        try:
            run_view(cfg, view, "polars", START, START + timedelta(days=DAYS))
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=backfill, name="backfill")
    thread.start()
    assert backfill_wrote.wait(120)
    day = START + timedelta(days=9)
    run_view(cfg, view, "polars", day, day + timedelta(days=1))
    daily_done.set()
    thread.join(300)
    assert not errors, errors
    manifest = store.latest(cfg.resolve(cfg.offline.path), view.name, view.fingerprint())
    assert manifest is not None
    layers = 1 + len(view.tile_sizes())
    assert len(manifest.partitions) == layers * DAYS  # every day of every layer is live
    rows = requests(source)
    assert read(view, cfg, rows).equals(read(view, clean, rows))


def test_missing_source_days_never_replace_stored_days(source: Path, tmp_path: Path) -> None:
    copy = tmp_path / "transactions"
    shutil.copytree(source, copy)
    view = spend_view(copy)
    cfg = config(tmp_path)
    run_view(cfg, view, "polars", START, START + timedelta(days=DAYS))
    rows = requests(copy)
    before = read(view, cfg, rows)
    gone = [START + timedelta(days=d) for d in (3, 4, 12)]
    for d in gone:
        shutil.rmtree(copy / f"date={d.isoformat()}")
    summary = run_view(cfg, view, "polars", START, START + timedelta(days=DAYS))
    assert summary.empty_days == tuple(gone)
    assert "2026-01-08..2026-01-09, 2026-01-17" in summary.warnings()[0]
    assert read(view, cfg, rows).equals(before)  # nothing stored was lost
    # Saying the days are truly empty replaces them: the values now match the thinned source.
    run_view(cfg, view, "polars", START, START + timedelta(days=DAYS), allow_empty_days=True)
    after = read(view, cfg, rows)
    noon = datetime.combine(gone[-1], datetime.min.time(), UTC) + timedelta(hours=12)
    user = rows["user_id"][0]
    got = after.filter((pl.col("event_ts") == noon) & (pl.col("user_id") == user))
    assert got["txn_count_1d"].to_list() == [count_1d(copy, user, noon)]
    assert got["txn_count_1d"][0] < before.filter(
        (pl.col("event_ts") == noon) & (pl.col("user_id") == user))["txn_count_1d"][0]


def count_1d(source: Path, user: int, t: datetime) -> int:
    """txn_count_1d by DESIGN.md's words: 24-minute tiles, tile(e) > tile(t) - 60, e <= t."""
    tile = 24 * 60 * 1_000_000
    t_us = int(t.timestamp()) * 1_000_000
    events = pl.read_parquet(source, hive_partitioning=False).filter(
        (pl.col("user_id") == user) & (pl.col("amount") > 0))
    us = events["event_ts"].dt.epoch("us")
    return int(((us // tile > t_us // tile - 60) & (us <= t_us)).sum())


def test_reads_over_days_never_computed_are_an_error(source: Path, tmp_path: Path) -> None:
    view = spend_view(source)
    cfg = config(tmp_path)
    run_view(cfg, view, "polars", START + timedelta(days=10), START + timedelta(days=20))
    root = cfg.resolve(cfg.offline.path)
    inside = pl.DataFrame({"user_id": [1], "event_ts": [datetime(2026, 1, 22, 12, tzinfo=UTC)]})
    with pytest.raises(UncoveredError, match="never computed") as e:
        get_historical_features([view], inside, root)
    # A lifetime count needs every day since the source's first event: the run from Jan 15
    # did not start there, so its lifetime values would silently miss Jan 5..14.
    assert "every day before 2026-01-15" in str(e.value)
    assert "tessera run --view user_spend --end 2026-01-15`" in str(e.value)
    windowed = FeatureView(name=view.name, entities=view.entities, source=view.source,
                           ttl=view.ttl, filter=view.filter,
                           features=[f for f in view.features if f.window is not None
                                     and f.window.tiles is not None])
    run_view(cfg, windowed, "polars", START + timedelta(days=10), START + timedelta(days=20))
    early = pl.DataFrame({"user_id": [1], "event_ts": [datetime(2026, 1, 16, 12, tzinfo=UTC)]})
    with pytest.raises(UncoveredError, match=r"2026-01-09\.\.2026-01-14") as e:
        get_historical_features([windowed], early, root)  # its 7d window reaches Jan 9
    assert "tessera run --view user_spend --start 2026-01-09 --end 2026-01-15`" in str(e.value)
    with pytest.warns(UserWarning, match="never computed"):
        out = get_historical_features([view], inside, root, allow_uncovered=True)
    assert out.num_rows == 1
    # Filling the days from the source's start makes the same read work.
    run_view(cfg, view, "polars", START, START + timedelta(days=10))
    before_first = pl.DataFrame({"user_id": [1], "event_ts": [datetime(2025, 12, 1,
                                                                       tzinfo=UTC)]})
    zeros = pl.from_arrow(get_historical_features([view], before_first, root))
    assert zeros["txn_count_lifetime"].to_list() == [0]  # before the source's first event
    after_last = pl.DataFrame({"user_id": [1], "event_ts": [datetime(2026, 1, 26, tzinfo=UTC)]})
    with pytest.raises(UncoveredError, match=r"2026-01-25\.\.2026-01-26"):
        get_historical_features([view], after_last, root)


def test_a_rule_change_reads_only_what_its_own_rules_computed(source: Path,
                                                              tmp_path: Path) -> None:
    cfg = config(tmp_path)
    run_view(cfg, spend_view(source), "polars", START, START + timedelta(days=DAYS))
    changed = spend_view(source, amount_min=5.0)  # new filter: new fingerprint
    run_view(cfg, changed, "polars", START + timedelta(days=25), START + timedelta(days=DAYS))
    rows = pl.DataFrame({"user_id": [1], "event_ts": [datetime(2026, 1, 20, tzinfo=UTC)]})
    with pytest.raises(UncoveredError, match="never computed"):
        get_historical_features([changed], rows, cfg.resolve(cfg.offline.path))


def _events(folder: Path, day: date, rows: list[tuple[int, int]], name: str) -> Path:
    """Write (user, minute-of-day) events to ``folder/name`` (creating folders)."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    base = datetime.combine(day, datetime.min.time(), UTC)
    n = len(rows)
    table = pa.table({
        "transaction_id": pa.array(range(n), pa.int64()),
        "user_id": pa.array([u for u, _ in rows], pa.int64()),
        "merchant_id": pa.array([7] * n, pa.int64()), "amount": pa.array([10.0] * n),
        "currency": ["EUR"] * n, "country": ["FR"] * n, "channel": ["pos"] * n,
        "card_present": [True] * n, "mcc": ["5411"] * n, "is_fraud": [False] * n,
        "event_ts": pa.array([base + timedelta(minutes=m) for _, m in rows],
                             pa.timestamp("us", tz="UTC")),
    })
    pq.write_table(table, path)
    return path


def test_leftovers_beside_the_source_files_are_not_read(tmp_path: Path) -> None:
    src = tmp_path / "src"
    real = _events(src, START, [(1, 60), (1, 61), (1, 62)], "date=2026-01-05/part-0.parquet")
    for stray in ("_temporary/0/part-0.parquet", "date=2026-01-05/.part-0.parquet",
                  "date=2026-01-05/_part-copy.parquet", ".staging/part-0.parquet"):
        (src / stray).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(real, src / stray)
    (src / "_SUCCESS").write_text("")
    view, cfg = spend_view(src), config(tmp_path)
    summary = run_view(cfg, view, "polars", START, START + timedelta(days=1))
    assert summary.files_total == 1 and summary.rows_read == 3
    out = read(view, cfg, pl.DataFrame({"user_id": [1], "event_ts": [
        datetime(2026, 1, 5, 23, tzinfo=UTC)]}))
    assert out["txn_count_1d"].to_list() == [3]


def test_a_corrupt_file_is_named_and_blocks_only_runs_that_need_it(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _events(src, START, [(1, 60)], "date=2026-01-05/part-0.parquet")
    bad = _events(src, date(2026, 1, 20), [(1, 60)] * 50, "date=2026-01-20/part-0.parquet")
    bad.write_bytes(bad.read_bytes()[:200])  # truncated: no footer
    view, cfg = spend_view(src), config(tmp_path)
    summary = run_view(cfg, view, "polars", START, START + timedelta(days=1))
    assert summary.skipped_files == (str(bad),)
    assert "skipped unreadable file" in summary.warnings()[-1]
    with pytest.raises(PipelineError, match=f"{bad}: not a readable Parquet file"):
        run_view(cfg, view, "polars", date(2026, 1, 19), date(2026, 1, 22))
    manifest = store.latest(cfg.resolve(cfg.offline.path), view.name, view.fingerprint())
    assert manifest is not None and manifest.version == 1  # nothing committed by the failure


def test_a_file_with_a_good_footer_and_bad_pages_is_named(tmp_path: Path) -> None:
    src = tmp_path / "src"
    path = _events(src, START, [(u, u % 1440) for u in range(5000)],
                   "date=2026-01-05/part-0.parquet")
    chunk = pq.read_metadata(path).row_group(0).column(1)  # user_id: the view reads it
    data = bytearray(path.read_bytes())
    for i in range(chunk.data_page_offset + 20, chunk.data_page_offset + 2000):
        data[i] = 0xFF  # scribble over its pages, keep the footer
    path.write_bytes(bytes(data))
    with pytest.raises(PipelineError, match=str(path)):
        run_view(config(tmp_path), spend_view(src), "polars", START, START + timedelta(days=1))


def test_a_run_without_dates_covers_the_source_and_counts_rows_outside(source: Path,
                                                                        tmp_path: Path) -> None:
    view, cfg = spend_view(source), config(tmp_path)
    everything = run_view(cfg, view, "polars")
    assert (everything.first_day, everything.days) == (START, DAYS)
    assert everything.rows_outside == 0 and everything.rows_read == 30_000
    some = run_view(cfg, view, "polars", START + timedelta(days=2), START + timedelta(days=4))
    in_range = pl.scan_parquet(source, hive_partitioning=False).filter(
        pl.col("event_ts").dt.date().is_between(START + timedelta(days=2),
                                               START + timedelta(days=3))).select(pl.len())
    inside = in_range.collect().item()
    assert some.rows_read == inside and some.rows_outside == 30_000 - inside
    assert some.files < some.files_total  # files of other days were not opened


def test_reading_the_same_state_twice_gives_the_same_bits(source: Path, tmp_path: Path) -> None:
    view, cfg = spend_view(source), config(tmp_path)
    run_view(cfg, view, "polars")
    events = pl.read_parquet(source, hive_partitioning=False).filter(
        pl.col("event_ts") < datetime(2026, 2, 1, 18, tzinfo=UTC))
    sample = events.sample(2_000, seed=3).select(
        "user_id", (pl.col("event_ts") + pl.duration(hours=5)).alias("event_ts"))
    reads = [read(view, cfg, sample)["amount_sum_7d"].to_list() for _ in range(3)]
    assert reads[0] == reads[1] == reads[2]
    assert any(v != 0.0 for v in reads[0])


def test_rerunning_a_view_writes_the_same_bits(source: Path, tmp_path: Path) -> None:
    """Same source, same rules: the same partials, float sums included (reproducible tiles)."""
    view = spend_view(source)
    tables = []
    for name in ("a", "b"):
        cfg = config(tmp_path / name)
        run_view(cfg, view, "polars")
        root = cfg.resolve(cfg.offline.path)
        manifest = store.latest(root, view.name, view.fingerprint())
        assert manifest is not None
        base = store.view_dir(root, view.name, view.fingerprint())
        tables.append([pq.read_table(base / f) for size in view.tile_sizes()
                       for f in manifest.files(size)])
    assert len(tables[0]) == len(tables[1]) > 0
    assert all(a.equals(b) for a, b in zip(*tables, strict=True))
