"""`tessera export`: every entity row kept in order with its labels, no future value, a manifest
that re-runs to the same bytes, one-line errors, and no partial file when interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from features.config import load_config
from features.store import FeatureStore
from pipelines.batch import run
from tessera.cli import app
from tests.online.repo import make_repo, today

REPO_ROOT = Path(__file__).resolve().parents[2]
NO_REDIS = "redis://127.0.0.1:1/0"  # exports never touch the online store


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = make_repo(tmp_path_factory.mktemp("export"), NO_REDIS, rows=20_000, days=10)
    cfg = load_config(folder)
    store = FeatureStore(config=cfg)
    run(cfg, list(store.definitions.views.values()), "polars", show_progress=False)
    return folder


def entity_rows(repo: Path, n: int, seed: int = 3) -> pl.DataFrame:
    """Known and never-seen users and merchants at instants over the data, shuffled, with
    duplicates and a label column."""
    events = pl.read_parquet(repo / "data" / "transactions" / "*" / "*.parquet")
    rng = np.random.default_rng(seed)
    users = events["user_id"].unique().sort().to_numpy()
    merchants = events["merchant_id"].unique().sort().to_numpy()
    lo = int((today() - timedelta(days=10)).timestamp() * 1e6)
    hi = int(today().timestamp() * 1e6) - 1
    user = np.where(rng.random(n) < 0.03, 10**12 + rng.integers(0, 99, n),
                    users[rng.integers(0, len(users), n)])
    ts = rng.integers(lo, hi, n)
    ts[: n // 10] = ts[n // 10: 2 * (n // 10)]  # duplicated instants
    return pl.DataFrame({
        "label": rng.random(n) < 0.2,
        "user_id": user,
        "merchant_id": merchants[rng.integers(0, len(merchants), n)],
        "event_ts": pl.Series(ts).cast(pl.Datetime("us", "UTC")),
        "note": [f"row{i}" for i in range(n)],
    })


def cli(repo: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, [*args, "--repo", str(repo)])
    return result.exit_code, result.output


def test_export_keeps_rows_labels_and_order_and_writes_a_complete_manifest(
        repo: Path, tmp_path: Path) -> None:
    rows = entity_rows(repo, 5000)
    rows.write_parquet(tmp_path / "rows.parquet")
    code, out = cli(repo, "export", "--entities", str(tmp_path / "rows.parquet"),
                    "--feature-service", "fraud_model_v1", "--full-feature-names",
                    "--out", str(tmp_path / "train.parquet"))
    assert code == 0, out
    train = pl.read_parquet(tmp_path / "train.parquet")
    assert train.height == rows.height
    assert train.select(rows.columns).equals(rows)  # same rows, same order, labels kept
    store = FeatureStore(repo)
    service = store.definitions.services["fraud_model_v1"]
    refs = list(service.features)
    feature_cols = [c for c in train.columns if c not in rows.columns]
    assert feature_cols == [r.replace(":", "__") for r in refs]
    # the same read through the SDK, in memory, gives the same values
    sdk = store.get_historical_features(rows, features=refs, full_feature_names=True).to_arrow()
    assert pl.from_arrow(sdk).equals(train)

    manifest = json.loads((tmp_path / "train.manifest.json").read_text())
    assert manifest["rows"] == 5000 and manifest["entities"]["rows"] == 5000
    assert manifest["feature_service"] == "fraud_model_v1"
    assert [f["ref"] for f in manifest["features"]] == refs
    views = store.definitions.views
    for f in manifest["features"]:
        view = views[f["view"]]
        assert f["view_fingerprint"] == view.fingerprint()
        assert f["fingerprint"] == view.feature_fingerprint(view.feature(f["ref"].split(":")[1]))
        assert f["nulls"] == train[f["column"]].null_count()
    for name, info in manifest["offline"]["views"].items():
        assert info["fingerprint"] == views[name].fingerprint()
        assert info["manifest_version"] >= 1
    times = rows["event_ts"]
    assert manifest["time_range"] == {"first": times.min().isoformat(),
                                      "last": times.max().isoformat()}
    assert manifest["command"].startswith("tessera export")
    assert manifest["tessera_version"]
    assert manifest["output"]["bytes"] == (tmp_path / "train.parquet").stat().st_size


def test_lifetime_counts_see_exactly_the_events_up_to_each_row(repo: Path,
                                                                tmp_path: Path) -> None:
    """Independent check on the raw events: nothing after a row's instant is counted."""
    rows = entity_rows(repo, 3000, seed=9)
    train = pl.from_arrow(FeatureStore(repo).get_historical_features(
        rows, features=["merchant_activity:txn_count_lifetime"]).to_arrow())
    con = duckdb.connect()
    con.register("r", rows.with_row_index("i").to_arrow())
    want = con.sql(
        f"SELECT r.i, count(e.merchant_id) AS n FROM r LEFT JOIN read_parquet("
        f"'{repo}/data/transactions/*/*.parquet') e ON e.merchant_id = r.merchant_id "
        f"AND e.event_ts <= r.event_ts GROUP BY r.i ORDER BY r.i").pl()
    assert train["txn_count_lifetime"].to_list() == want["n"].to_list()


def test_manifest_re_runs_to_the_same_bytes_even_after_new_runs(repo: Path,
                                                                  tmp_path: Path) -> None:
    entity_rows(repo, 4000, seed=5).write_parquet(tmp_path / "rows.parquet")
    out = tmp_path / "a" / "train.parquet"
    code, text = cli(repo, "export", "--entities", str(tmp_path / "rows.parquet"), "--features",
                     "user_spend:spend_eur_7d,user_spend:spend_eur_std_7d,"
                     "merchant_activity:txn_count_lifetime,user_spend:last_country",
                     "--out", str(out))
    assert code == 0, text
    # a new run commits a new offline version: the manifest still names the one it read
    cfg = load_config(repo)
    store = FeatureStore(config=cfg)
    run(cfg, [store.definitions.views["user_spend"]], "polars", show_progress=False)
    again = tmp_path / "b" / "again.parquet"
    code, text = cli(repo, "export", "--manifest", str(out.with_name("train.manifest.json")),
                     "--out", str(again))
    assert code == 0, text
    assert again.read_bytes() == out.read_bytes()


def test_entity_rows_from_csv_with_iso_times(repo: Path, tmp_path: Path) -> None:
    rows = entity_rows(repo, 200, seed=4)
    csv_rows = rows.with_columns(pl.col("event_ts").dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ"))
    csv_rows.write_csv(tmp_path / "rows.csv")
    code, text = cli(repo, "export", "--entities", str(tmp_path / "rows.csv"), "--features",
                     "user_spend:txn_count_7d", "--out", str(tmp_path / "t.parquet"))
    assert code == 0, text
    got = pl.read_parquet(tmp_path / "t.parquet")["txn_count_7d"]
    want = pl.from_arrow(FeatureStore(repo).get_historical_features(
        rows, features=["user_spend:txn_count_7d"]).to_arrow())["txn_count_7d"]
    assert got.to_list() == want.to_list()


@pytest.mark.parametrize(("change", "expected"), [
    (lambda t: t.drop("event_ts"), "no timestamp column and none named event_ts"),
    (lambda t: t.drop("user_id"), "join key column 'user_id'"),
    (lambda t: t.set_column(t.column_names.index("event_ts"), "event_ts",
                            pa.array(["yesterday"] * t.num_rows)), "'event_ts'"),
    (lambda t: t.set_column(t.column_names.index("user_id"), "user_id",
                            pa.array([str(x) for x in t.column("user_id").to_pylist()])),
     "join key 'user_id' is string"),
])
def test_bad_entity_rows_are_one_line_naming_the_column(repo: Path, tmp_path: Path, change,
                                                         expected: str) -> None:
    table = change(entity_rows(repo, 50).to_arrow())
    pq.write_table(table, tmp_path / "rows.parquet")
    out = tmp_path / "t.parquet"
    code, text = cli(repo, "export", "--entities", str(tmp_path / "rows.parquet"), "--features",
                     "user_spend:txn_count_7d", "--out", str(out))
    assert code == 1
    assert expected in text and text.strip().count("\n") == 0, text
    assert not out.exists()


def test_unknown_feature_and_view_never_run(repo: Path, tmp_path: Path) -> None:
    entity_rows(repo, 20).write_parquet(tmp_path / "rows.parquet")
    code, text = cli(repo, "export", "--entities", str(tmp_path / "rows.parquet"), "--features",
                     "user_spend:txn_count_7days", "--out", str(tmp_path / "t.parquet"))
    assert code == 1 and "no feature 'txn_count_7days'" in text and "txn_count_7d" in text
    fresh = make_repo(tmp_path / "fresh", NO_REDIS, rows=500, days=2)
    code, text = cli(fresh, "export", "--entities", str(tmp_path / "rows.parquet"),
                     "--features", "user_spend:txn_count_7d", "--out", str(tmp_path / "t.parquet"))
    assert code == 1 and "`tessera run --view user_spend`" in text, text
    assert not (tmp_path / "t.parquet").exists()


def test_killed_export_leaves_no_partial_file(repo: Path, tmp_path: Path) -> None:
    entity_rows(repo, 1_500_000, seed=8).write_parquet(tmp_path / "rows.parquet")
    out = tmp_path / "train.parquet"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tessera.cli", "export", "--repo", str(repo), "--entities",
         str(tmp_path / "rows.parquet"), "--feature-service", "fraud_model_v1",
         "--full-feature-names", "--out", str(out)],
        cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    seen_tmp = False
    while time.monotonic() < deadline and proc.poll() is None:
        if any(p.name.startswith(".train.parquet.") for p in tmp_path.iterdir()):
            seen_tmp = True
            break
        time.sleep(0.005)
    assert seen_tmp, "the export finished (or failed) before it began writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert not out.exists() and not out.with_name("train.manifest.json").exists()
