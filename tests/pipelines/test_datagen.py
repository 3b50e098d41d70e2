"""The card-transaction generator: determinism, schema, time layout, faults, drift and ties."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.datagen import (
    CHANNELS,
    CURRENCIES,
    FX_PER_EUR,
    MALFORMED_KINDS,
    MCCS,
    SCHEMA,
    GenSpec,
    GenSummary,
    generate,
    generate_cli,
    malformed_kind,
    write_parquet,
)

START = datetime(2025, 1, 6, tzinfo=UTC)  # a Monday
DRIFT = START + timedelta(days=14)


def _num(value: object) -> float:
    assert isinstance(value, int | float), value
    return float(value)


def _ts(value: object) -> datetime:
    assert isinstance(value, datetime), value
    return value


def _bytes(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_ipc(buf)
    return buf.getvalue()


def _read_back(summary: GenSummary) -> pl.DataFrame:
    paths = sorted(summary.paths)
    return pl.concat([pl.read_parquet(p) for p in paths], how="vertical")


@pytest.fixture(scope="module")
def base() -> pl.DataFrame:
    return generate(GenSpec(rows=100_000, start=START))


@pytest.fixture(scope="module")
def big_faulty() -> tuple[GenSpec, pl.DataFrame]:
    spec = GenSpec(rows=100_000, start=START, malformed_rate=0.05)
    return spec, generate(spec)


# --- determinism ----------------------------------------------------------------------------------

def test_same_spec_gives_byte_identical_frames() -> None:
    spec = GenSpec(rows=20_000, start=START, days=7, malformed_rate=0.01, drift_from=START
                   + timedelta(days=3))
    assert _bytes(generate(spec)) == _bytes(generate(spec))


def test_different_seed_gives_different_frame() -> None:
    a = generate(GenSpec(rows=5_000, start=START, days=7, seed=1))
    b = generate(GenSpec(rows=5_000, start=START, days=7, seed=2))
    assert a.height == b.height
    assert not a.equals(b)
    assert not a["amount"].equals(b["amount"])


def test_naive_start_means_utc() -> None:
    naive = GenSpec(rows=1_000, start=datetime(2025, 1, 6), days=2)
    assert naive.start == START
    assert generate(naive).equals(generate(GenSpec(rows=1_000, start=START, days=2)))


# --- schema, counts, range --------------------------------------------------------------------------

def test_schema_is_exact(base: pl.DataFrame) -> None:
    assert list(base.schema.items()) == [
        ("transaction_id", pl.Int64), ("user_id", pl.Int64), ("merchant_id", pl.Int64),
        ("amount", pl.Float64), ("currency", pl.String), ("country", pl.String),
        ("channel", pl.String), ("card_present", pl.Boolean), ("mcc", pl.String),
        ("is_fraud", pl.Boolean), ("event_ts", pl.Datetime("us", "UTC")),
    ]
    assert dict(base.schema) == SCHEMA


@pytest.mark.parametrize("rows", [0, 1, 999, 12_345])
def test_row_count_is_exact(rows: int) -> None:
    df = generate(GenSpec(rows=rows, start=START, days=3))
    assert df.height == rows
    assert dict(df.schema) == SCHEMA


def test_time_range_is_respected() -> None:
    start = datetime(2025, 3, 1, 10, 17, 3, 250, tzinfo=UTC)  # not on an hour
    spec = GenSpec(rows=30_000, start=start, days=5)
    ts = generate(spec)["event_ts"]
    assert _ts(ts.min()) >= start
    assert _ts(ts.max()) < spec.end
    assert ts.is_sorted()


def test_values_are_valid_and_consistent(base: pl.DataFrame) -> None:
    assert base.null_count().sum_horizontal().item() == 0
    assert base["transaction_id"].is_unique().all()
    assert set(base["currency"].unique()) <= set(CURRENCIES)
    assert set(base["channel"].unique()) == set(CHANNELS)
    assert set(base["mcc"].unique()) <= set(MCCS)
    assert _num(base["amount"].min()) >= 0.01
    assert (base["amount"] == base["amount"].round(2)).all()
    # A merchant has one country and one category; cards are present unless online; ATM ⇔ 6011.
    per_merchant = base.group_by("merchant_id").agg(pl.col("country", "mcc").n_unique())
    assert per_merchant["country"].max() == 1
    assert per_merchant["mcc"].max() == 1
    assert (base["card_present"] == (base["channel"] != "online")).all()
    assert ((base["channel"] == "atm") == (base["mcc"] == "6011")).all()


def test_fraud_is_rare_and_looks_like_fraud(base: pl.DataFrame) -> None:
    assert 0.001 < _num(base["is_fraud"].mean()) < 0.006
    by = base.group_by("is_fraud").agg(
        pl.col("amount").median(), (pl.col("channel") == "online").mean().alias("online"))
    fraud, legit = by.filter(pl.col("is_fraud")).row(0), by.filter(~pl.col("is_fraud")).row(0)
    assert fraud[1] > 2 * legit[1]  # higher amounts
    assert fraud[2] > legit[2] + 0.2  # more card-not-present


def test_seasonality(base: pl.DataFrame) -> None:
    hours = base.group_by(pl.col("event_ts").dt.hour().alias("h")).len().sort("h")["len"]
    assert hours[3] * 10 < hours[12]  # quiet nights, busy lunch
    assert hours[18] > hours[15]  # evening peak
    users = base.group_by("user_id").len()["len"]
    assert _num(users.max()) > 10 * _num(users.median())  # a few very active users


# --- ties -----------------------------------------------------------------------------------------

def test_some_users_have_events_at_the_same_instant(base: pl.DataFrame) -> None:
    dup = base.group_by("user_id", "event_ts").len().filter(pl.col("len") > 1)
    assert 0.002 * base.height < dup.height < 0.01 * base.height
    # Tied rows keep a seeded order: increasing transaction ids in a stable position.
    key = dup.row(0)[:2]
    tied = base.filter((pl.col("user_id") == key[0]) & (pl.col("event_ts") == key[1]))
    assert tied["transaction_id"].is_sorted()


# --- malformed rows -------------------------------------------------------------------------------

def test_no_faults_no_nulls(base: pl.DataFrame) -> None:
    assert malformed_kind(base, GenSpec(rows=100_000, start=START)).null_count() == base.height


def test_malformed_rate_and_every_kind(big_faulty: tuple[GenSpec, pl.DataFrame],
                                       base: pl.DataFrame) -> None:
    spec, df = big_faulty
    kinds = malformed_kind(df, spec)
    bad = kinds.is_not_null()
    assert abs(_num(bad.sum()) - 5_000) < 400  # rate 0.05 of 100k; sd ≈ 69
    counts = kinds.drop_nulls().value_counts()
    assert set(counts["malformed_kind"]) == set(MALFORMED_KINDS)
    assert _num(counts["count"].min()) > 500  # ≈ 714 each
    # Faults overlay the clean data: every other row is exactly the row without faults.
    assert df.filter(~bad).equals(base.filter(~bad))
    assert df.schema == base.schema
    assert set(df.filter(kinds == "unknown_currency")["currency"]) == {"XXX", ""}
    odd_channels = df.filter(kinds == "bad_channel")["channel"]
    assert odd_channels.null_count() > 0
    assert set(odd_channels.drop_nulls()) == {"POS", "web", "unknown"}
    assert df.filter(kinds == "absurd_amount")["amount"].unique().to_list() == [1e9]
    future = df.filter(kinds == "future_event_ts")["event_ts"]
    assert _ts(future.min()) > START + timedelta(days=3650)


# --- drift ----------------------------------------------------------------------------------------

def _before_after(df: pl.DataFrame) -> pl.DataFrame:
    fx = pl.col("currency").replace_strict(FX_PER_EUR, return_dtype=pl.Float64)
    return (
        df.group_by((pl.col("event_ts") >= DRIFT).alias("after"))
        .agg((pl.col("amount") / fx).mean().alias("eur"), pl.col("amount").mean(),
             (pl.col("channel") == "online").mean().alias("online"),
             (pl.col("currency") == "USD").mean().alias("usd"),
             (pl.col("event_ts").dt.hour() < 6).mean().alias("night"),
             pl.col("is_fraud").mean().alias("fraud"))
        .sort("after")
    )


def test_drift_is_clearly_measurable() -> None:
    df = generate(GenSpec(rows=100_000, start=START, drift_from=DRIFT, drift_strength=1.0))
    before, after = _before_after(df).rows(named=True)
    assert after["amount"] > 1.1 * before["amount"]
    assert after["eur"] > 1.2 * before["eur"]
    assert after["online"] > before["online"] + 0.15
    assert after["usd"] > before["usd"] + 0.07
    assert after["night"] > 1.8 * before["night"]
    assert after["fraud"] > 2 * before["fraud"]


def test_zero_strength_is_no_drift(base: pl.DataFrame) -> None:
    df = generate(GenSpec(rows=100_000, start=START, drift_from=DRIFT, drift_strength=0.0))
    assert df.equals(base)
    before, after = _before_after(df).rows(named=True)
    assert after["eur"] == pytest.approx(before["eur"], rel=0.08)
    assert after["online"] == pytest.approx(before["online"], abs=0.01)


# --- Parquet --------------------------------------------------------------------------------------

def test_parquet_files_per_day_sorted_and_equal_to_generate(tmp_path: Path) -> None:
    spec = GenSpec(rows=60_000, start=START + timedelta(hours=7, minutes=30), days=4, seed=3,
                   malformed_rate=0.02)
    summary = write_parquet(spec, tmp_path, progress=False, chunk_rows=3_000)
    # 4 days starting 07:30 touch 5 UTC dates: one file each, path order = time order.
    assert summary.files == 5
    assert [p.parent.name for p in summary.paths] == [
        f"date={(spec.start + timedelta(days=i)).date().isoformat()}" for i in range(5)]
    assert list(summary.paths) == sorted(tmp_path.glob("transactions/date=*/part-0000.parquet"))
    assert summary.rows == spec.rows
    assert summary.bytes == sum(p.stat().st_size for p in summary.paths)
    # Chunking does not change a single byte of the data.
    back = _read_back(summary)
    assert back.equals(generate(spec))
    assert dict(back.schema) == SCHEMA
    # Faults are tagged in the summary exactly as found in the files.
    found = malformed_kind(back, spec).drop_nulls().value_counts()
    assert summary.malformed_by_kind == {
        k: dict(found.iter_rows()).get(k, 0) for k in MALFORMED_KINDS}
    assert summary.malformed_rows == sum(summary.malformed_by_kind.values()) > 0
    # Within a file, clean times are sorted; every clean time is on the file's date.
    last: datetime | None = None
    for path in summary.paths:
        day = pl.read_parquet(path)
        clean = day.filter(malformed_kind(day, spec).is_null())
        assert clean["event_ts"].is_sorted()
        dates = clean["event_ts"].dt.date().unique().to_list()
        assert [d.isoformat() for d in dates] == [path.parent.name.removeprefix("date=")]
        if last is not None:
            assert last < _ts(clean["event_ts"].min())
        last = _ts(clean["event_ts"].max())


def test_write_refuses_to_mix_datasets(tmp_path: Path) -> None:
    spec = GenSpec(rows=2_000, start=START, days=3)
    write_parquet(spec, tmp_path, progress=False)
    with pytest.raises(FileExistsError):
        write_parquet(spec, tmp_path, progress=False)
    shorter = write_parquet(GenSpec(rows=500, start=START, days=1), tmp_path, progress=False,
                            overwrite=True)
    assert sorted(tmp_path.glob("transactions/*/*")) == list(shorter.paths)


def test_empty_days_still_get_a_file(tmp_path: Path) -> None:
    summary = write_parquet(GenSpec(rows=3, start=START, days=6), tmp_path, progress=False)
    assert summary.files == 6
    back = _read_back(summary)
    assert back.height == 3
    assert dict(back.schema) == SCHEMA


def test_cli_entry_parses_strings(tmp_path: Path) -> None:
    summary = generate_cli(rows=3_000, out=str(tmp_path), start="2025-01-06", days=2, seed=5,
                           drift_from="2025-01-07T00:00:00Z", malformed_rate=0.01,
                           progress=False)
    assert (summary.rows, summary.files) == (3_000, 2)
    assert "3,000 rows in 2 files" in summary.format()
    again = generate_cli(rows=3_000, out=tmp_path, start="2025-01-06", days=2, seed=5,
                         drift_from="2025-01-07", malformed_rate=0.01, progress=False)
    assert _read_back(again).equals(_read_back(summary))
    with pytest.raises(ValueError, match="drift_from"):
        generate_cli(rows=10, out=tmp_path, drift_from="next tuesday", progress=False)


@pytest.mark.parametrize("kwargs", [
    {"rows": -1}, {"days": 0}, {"users": 0}, {"seed": -3}, {"malformed_rate": 1.5},
    {"drift_strength": -0.1},
])
def test_spec_validation(kwargs: dict[str, float]) -> None:
    args: dict[str, object] = {"rows": 10, "start": START, **kwargs}
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        GenSpec(**args)  # type: ignore[arg-type]


# --- chunking, property-based ----------------------------------------------------------------------

@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.integers(0, 3_000), minutes=st.integers(0, 24 * 60 - 1), days=st.integers(1, 3),
       seed=st.integers(0, 2**32), chunk_rows=st.integers(1, 2_000),
       rate=st.sampled_from([0.0, 0.1]))
def test_any_chunking_writes_the_same_rows(tmp_path_factory: pytest.TempPathFactory, rows: int,
                                           minutes: int, days: int, seed: int, chunk_rows: int,
                                           rate: float) -> None:
    spec = GenSpec(rows=rows, start=START + timedelta(minutes=minutes), days=days, seed=seed,
                   malformed_rate=rate)
    out = tmp_path_factory.mktemp("chunks")
    summary = write_parquet(spec, out, progress=False, chunk_rows=chunk_rows)
    back = _read_back(summary)
    assert back.equals(generate(spec))
    assert back.height == rows
    assert back["transaction_id"].to_list() == list(range(1, rows + 1))
