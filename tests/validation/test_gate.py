"""The batch gate: a batch that fails an expectation is quarantined and nothing of it is
published; a clean batch passes; warn-only failures are reported and let through; rows that fail
within ``mostly`` are dropped by the engine exactly as Great Expectations counts them."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest

from features import agg, col, expect
from features import offline_store as store
from features.config import OfflineConfig, RepoConfig
from features.definitions import Entity, FeatureView, Source
from features.errors import DefinitionError
from features.validate import source_problems
from pipelines.batch import run_view
from pipelines.datagen import CHANNELS, CURRENCIES, GenSpec, write_parquet
from validation.gate import BatchGate, BatchRejected

START = date(2026, 1, 5)
END = date(2026, 1, 12)
SCHEMA = {"transaction_id": "int64", "user_id": "int64", "merchant_id": "int64",
          "amount": "float64", "currency": "string", "country": "string", "channel": "string",
          "card_present": "bool", "mcc": "string", "is_fraud": "bool", "event_ts": "timestamp"}
STRICT = [
    expect.not_null("user_id", "event_ts"),
    expect.between("amount", min=0, max=100_000, strict_min=True),
    expect.in_set("currency", CURRENCIES),
    expect.unique("transaction_id"),
    expect.row_count(min=100),
    expect.fresh(max_age="1d"),
]


def generated(tmp: Path, name: str, malformed_rate: float) -> Path:
    spec = GenSpec(rows=20_000, start=datetime(2026, 1, 5, tzinfo=UTC), days=7, seed=5,
                   malformed_rate=malformed_rate)
    write_parquet(spec, tmp / name, progress=False)
    return tmp / name / "transactions"


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generated(tmp_path_factory.mktemp("clean"), "data", 0.0)


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generated(tmp_path_factory.mktemp("broken"), "data", 0.01)


def view_of(path: Path, expectations: list) -> FeatureView:
    src = Source(name="transactions", path=str(path), schema=SCHEMA, timestamp_field="event_ts",
                 expectations=expectations)
    return FeatureView(name="user_spend", entities=[Entity(name="user", join_key="user_id")],
                       source=src, ttl="30d",
                       features=[agg.count(windows=["1d"], name="txn_count"),
                                 agg.sum(col("amount"), windows=["1d"], name="amount_sum")])


def config(tmp: Path) -> RepoConfig:
    return RepoConfig(project="t", offline=OfflineConfig(path=tmp / "offline"), root=tmp)


def test_a_clean_batch_passes_and_is_published(clean: Path, tmp_path: Path) -> None:
    cfg = config(tmp_path)
    gate = BatchGate(cfg)
    summary = run_view(cfg, view_of(clean, STRICT), "polars", START, END, gate=gate)
    assert summary.manifest_version is not None
    assert summary.rows_rejected == 0 and summary.notes == ()
    (report,) = gate.reports.values()
    assert report.rows == 20_000 and not report.blocking
    assert {o.expectation.name for o in report.outcomes} == {e.name for e in
                                                            view_of(clean, STRICT).source.expectations}
    assert not (tmp_path / ".tessera" / "quarantine").exists()


def test_a_broken_batch_is_quarantined_and_nothing_is_published(clean: Path, broken: Path,
                                                                tmp_path: Path) -> None:
    cfg = config(tmp_path)
    root = cfg.resolve(cfg.offline.path)
    first = run_view(cfg, view_of(clean, STRICT), "polars", START, END, gate=BatchGate(cfg))
    fp = view_of(clean, STRICT).fingerprint()
    before = store.latest(root, "user_spend", fp)
    assert before is not None
    files_before = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())

    with pytest.raises(BatchRejected) as caught:
        run_view(cfg, view_of(broken, STRICT), "polars", START, END, gate=BatchGate(cfg))
    message = str(caught.value)
    # A readable summary: each failed expectation, its column, the failing count, examples.
    assert "failed 4 of 7 expectations; nothing was published" in message
    assert "user_id not null [not_null on user_id]:" in message
    assert "0 < amount <= 100000 [between on amount]:" in message
    assert "e.g." in message and "quarantined in" in message

    # Nothing was written: the offline store holds exactly what the clean run committed.
    after = store.latest(root, "user_spend", fp)
    assert after is not None and after.version == before.version == first.manifest_version
    assert sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file()) == files_before

    (folder,) = (tmp_path / ".tessera" / "quarantine" / "transactions").iterdir()
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["success"] is False and summary["rows"] == pl.scan_parquet(
        folder / "batch.parquet").select(pl.len()).collect().item()
    failing = {e["name"]: e["failing"] for e in summary["expectations"] if not e["success"]}
    failed_rows = pl.read_parquet(folder / "failing_rows.parquet")
    for name in ("user_id not null", "0 < amount <= 100000", "currency in {"):
        key = next(k for k in failing if k.startswith(name))
        # Great Expectations' count and Tessera's own row check agree row for row in number.
        assert failed_rows.filter(pl.col("__failed").list.contains(key)).height == failing[key]
    assert json.loads((folder / "validation_result.json").read_text())  # GX's own result


def test_warn_only_expectations_are_reported_and_let_through(broken: Path,
                                                             tmp_path: Path) -> None:
    cfg = config(tmp_path)
    warn = [expect.in_set("channel", CHANNELS, severity="warn"),
            expect.between("amount", min=0, strict_min=True, severity="warn")]
    summary = run_view(cfg, view_of(broken, warn), "polars", START, END, gate=BatchGate(cfg))
    assert summary.manifest_version is not None
    assert len(summary.notes) == 2
    assert all(n.startswith("source 'transactions': warning: expectation ") for n in summary.notes)
    assert any("channel in {'pos'" in n and "values fail" in n for n in summary.notes)
    assert summary.rows_rejected == summary.rows_read - pl.scan_parquet(broken).filter(
        pl.col("user_id").is_not_null() & pl.col("event_ts").is_not_null()
        & (pl.col("event_ts") < datetime(2026, 1, 12, tzinfo=UTC))
    ).select(pl.len()).collect().item()  # warn-only rows are kept: only null keys and times go


@pytest.mark.parametrize("engine", ["polars", "spark"])
def test_rows_failing_within_mostly_are_dropped_like_the_stream_does(
        broken: Path, tmp_path: Path, engine: str, request: pytest.FixtureRequest) -> None:
    if engine == "spark":
        request.getfixturevalue("spark")  # the session's local[2] Spark
    cfg = config(tmp_path)
    lax = [expect.between("amount", min=0, max=100_000, strict_min=True, mostly=0.95),
           expect.in_set("currency", CURRENCIES, mostly=0.95)]
    gate = BatchGate(cfg)
    summary = run_view(cfg, view_of(broken, lax), engine, START, END, gate=gate)  # type: ignore[arg-type]
    (report,) = gate.reports.values()
    assert not report.blocking and all(o.failing > 0 for o in report.outcomes)
    events = pl.scan_parquet(broken).filter(pl.col("event_ts") < datetime(2026, 1, 12, tzinfo=UTC))
    amount_ok = (pl.col("amount") > 0) & (pl.col("amount") <= 100_000) | pl.col("amount").is_null()
    currency_ok = pl.col("currency").is_in(list(CURRENCIES)) | pl.col("currency").is_null()
    keys_ok = pl.col("user_id").is_not_null()
    kept = events.filter(amount_ok & currency_ok & keys_ok).select(pl.len()).collect().item()
    assert summary.rows_read - summary.rows_rejected - summary.rows_filtered == kept


def test_bad_expectations_are_one_line_each_at_apply() -> None:
    src = Source(name="transactions", path="x", schema=SCHEMA, timestamp_field="event_ts",
                 expectations=[expect.not_null("user"),
                               expect.between("currency", min=0),
                               expect.between("amount", min=10, max=1),
                               expect.in_set("user_id", ["a"]),
                               expect.fresh(max_age="1d", column="amount"),
                               expect.row_count(min=5, max=2),
                               expect.not_null("amount", mostly=1.5)])
    problems = source_problems(src)
    assert problems == [
        "source 'transactions': expectation not_null: no column 'user' in the source's schema "
        "(did you mean 'user_id'?)",
        "source 'transactions': expectation between on 'currency': the column is string; "
        "between needs a number or a timestamp",
        "source 'transactions': expectation between on 'amount': min 10 is above max 1",
        "source 'transactions': expectation in_set on 'user_id': value 'a' is not whole "
        "numbers (the column is int64)",
        "source 'transactions': expectation fresh on 'amount': the column is float64; fresh "
        "needs a timestamp",
        "source 'transactions': expectation row_count: min 5 is above max 2",
        "source 'transactions': expectation not_null on 'amount': mostly=1.5 must be in (0, 1]",
    ]
    with pytest.raises(DefinitionError, match=r"source 'x': expectations must be built with "
                                              r"features.expect"):
        Source(name="x", path="x", schema=SCHEMA, timestamp_field="event_ts",
               expectations=["amount > 0"])  # type: ignore[list-item]
    with pytest.raises(DefinitionError, match="severity='fatal': expected 'error' or 'warn'"):
        expect.unique("transaction_id", severity="fatal")  # type: ignore[arg-type]
