"""`tessera drift`: the generator's injected drift is flagged and nothing else is, a clean
window passes, a training manifest works as the reference, the serving log as the current
side, and every bad input is one line with exit code 2.

Data: 30,000 generated card transactions over three weeks from Monday 2025-01-06; the drifted
repo has ``drift_from`` = 2025-01-20 (the third week), the clean one none. Reference: week 2,
current: week 3 (whole weeks, so both have the same weekday mix; week 1 is history for the
7-day windows). The features compared are a service ``drift_probe`` added to the example
definitions, chosen because the generator decides their behaviour (docs/datagen.md, Drift):

- moved by the drift: ``online_txn_count_1d`` and ``last_channel`` (online share 25 % → 47 %),
  ``spend_eur_max_1d`` and merchant ``amount_eur_mean_1d`` (amounts of six categories x1.6,
  more USD);
- left alone: ``last_country`` (the merchant's country: drift changes the billing currency,
  not the country), ``txn_count_1h`` per user and ``txn_count_10m`` per merchant (the event
  rate per entity: drift moves events between hours but keeps the daily totals).

Not in the probe: counts over 30 days and lifetime grow with the history whatever the
generator does, and fraud counts are too sparse at this size; they drift in a clean repo too.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from features.config import load_config
from features.store import FeatureStore
from pipelines.batch import run
from pipelines.datagen import GenSpec, write_parquet
from tessera.cli import app
from validation.drift import FeatureColumn, Side, compare, sample_indices

REPO_ROOT = Path(__file__).resolve().parents[2]
START = datetime(2025, 1, 6, tzinfo=UTC)  # a Monday
WEEK2, WEEK3 = "2025-01-13..2025-01-20", "2025-01-20..2025-01-27"
DRIFTED = ["user_spend:online_txn_count_1d", "user_spend:last_channel",
           "user_spend:spend_eur_max_1d", "merchant_activity:amount_eur_mean_1d"]
STEADY = ["user_spend:last_country", "user_spend:txn_count_1h",
          "merchant_activity:txn_count_10m"]
PROBE = f"""

drift_probe = FeatureService(name="drift_probe", features={DRIFTED + STEADY!r})
"""


def make_repo(folder: Path, *, drift: bool) -> Path:
    (folder / "example").mkdir(parents=True)
    text = (REPO_ROOT / "example" / "card_features.py").read_text()
    (folder / "example" / "card_features.py").write_text(text + PROBE)
    (folder / "feature_repo.yaml").write_text(
        "project: drifttest\ndefinitions: [example/card_features.py]\n"
        "offline: {path: offline}\nonline: {url: 'redis://127.0.0.1:1/0'}\n")
    spec = GenSpec(rows=30_000, start=START, days=21, seed=5,
                   drift_from=datetime(2025, 1, 20, tzinfo=UTC) if drift else None)
    write_parquet(spec, folder / "data", progress=False)
    cfg = load_config(folder)
    run(cfg, list(FeatureStore(config=cfg).definitions.views.values()), "polars",
        show_progress=False)
    return folder


@pytest.fixture(scope="module")
def drifted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("drifted"), drift=True)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("clean"), drift=False)


@pytest.fixture(scope="module")
def manifest(drifted: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A training set of week 2 (each transaction just before it happened, as a model scoring
    it saw it), exported with the export API."""
    import polars as pl

    events = pl.read_parquet(drifted / "data" / "transactions" / "*" / "*.parquet")
    rows = events.filter((pl.col("event_ts") >= datetime(2025, 1, 13, tzinfo=UTC))
                         & (pl.col("event_ts") < datetime(2025, 1, 20, tzinfo=UTC)))
    rows = rows.select("user_id", "merchant_id",
                       pl.col("event_ts") - timedelta(microseconds=1), "is_fraud")
    folder = tmp_path_factory.mktemp("train")
    rows.write_parquet(folder / "rows.parquet")
    store = FeatureStore(drifted)
    store.get_historical_features(folder / "rows.parquet",
                                  feature_service="drift_probe").to_parquet(
        folder / "train.parquet")
    return folder / "train.manifest.json"


def drift(repo: Path, out: Path, *args: str) -> tuple[int, str, dict]:
    result = CliRunner().invoke(app, ["drift", *args, "--out", str(out), "--repo",
                                      str(repo / "feature_repo.yaml")])
    path = out / "summary.json"
    return (result.exit_code, result.output,
            json.loads(path.read_text()) if path.exists() else {})


def verdicts(summary: dict) -> dict[str, bool]:
    return {f["ref"]: f["drifted"] for f in summary["features"]}


def test_injected_drift_is_flagged_and_the_rest_is_not(drifted: Path, tmp_path: Path) -> None:
    code, output, summary = drift(drifted, tmp_path, "--reference", WEEK2, "--current", WEEK3,
                                  "--service", "drift_probe")
    assert verdicts(summary) == {**dict.fromkeys(DRIFTED, True), **dict.fromkeys(STEADY, False)}
    assert code == 1, output  # 4 of 7 drifted >= drift.threshold 0.5
    assert summary["exit_code"] == 1 and summary["drifted"] == 4
    for f in summary["features"]:  # Evidently's default tests on > 1000 rows, kinds declared
        categorical = f["ref"].split(":")[1].startswith("last_")
        assert f["kind"] == ("categorical" if categorical else "numerical")
        assert f["test"] == ("Jensen-Shannon distance" if categorical
                             else "Wasserstein distance (normed)")
    ref, cur = summary["reference"], summary["current"]
    assert ref["rows_used"] == ref["rows"] == ref["events"] > 9000  # below sample_rows: all
    assert cur["window"] == {"start": "2025-01-20T00:00:00+00:00",
                             "end": "2025-01-27T00:00:00+00:00"}
    html = (tmp_path / "report.html").read_text()
    assert "Drift for column user_spend:last_channel" in html  # Evidently's page
    evidently = json.loads((tmp_path / "report.json").read_text())
    assert len([m for m in evidently["metrics"] if "ValueDrift" in m["metric_name"]]) == 7
    for ref_ in DRIFTED + STEADY:
        assert ref_ in output
    assert "drift: 4 of 7 features drifted (57%; threshold 50%)" in output
    assert f"{ref['rows']:,} of {ref['rows']:,} rows used" in output


def test_a_clean_window_passes(clean: Path, tmp_path: Path) -> None:
    code, output, summary = drift(clean, tmp_path, "--reference", WEEK2, "--current", WEEK3,
                                  "--service", "drift_probe")
    assert verdicts(summary) == dict.fromkeys(DRIFTED + STEADY, False)
    assert code == 0, output
    assert "no drift: 0 of 7 features drifted" in output


def test_a_training_manifest_as_reference(drifted: Path, manifest: Path,
                                          tmp_path: Path) -> None:
    code, output, summary = drift(drifted, tmp_path / "a", "--reference", str(manifest),
                                  "--current", WEEK3)
    assert verdicts(summary) == {**dict.fromkeys(DRIFTED, True), **dict.fromkeys(STEADY, False)}
    assert code == 1, output
    doc = json.loads(manifest.read_text())
    assert summary["reference"]["rows"] == doc["rows"]
    assert summary["reference"]["sha256"] == doc["output"]["sha256"]
    # the training period itself against the training set: no drift
    code, output, summary = drift(drifted, tmp_path / "b", "--reference", str(manifest),
                                  "--current", WEEK2, "--view", "user_spend")
    assert code == 0, output
    assert not any(verdicts(summary).values())
    # --view keeps the manifest's features of that view, and says which of it are not there
    assert {f["ref"].split(":")[0] for f in summary["features"]} == {"user_spend"}
    assert "left out user_spend:txn_count_7d: not in the training set" in output


def test_a_feature_whose_fingerprint_changed_is_left_out_with_a_line(
        drifted: Path, manifest: Path, tmp_path: Path) -> None:
    doc = json.loads(manifest.read_text())
    for f in doc["features"]:
        if f["ref"] == "user_spend:last_country":
            f["fingerprint"] = "0" * 64  # as if its rule had changed after the export
    edited = tmp_path / "edited.manifest.json"
    edited.write_text(json.dumps(doc))
    code, output, summary = drift(drifted, tmp_path / "r", "--reference", str(edited),
                                  "--current", WEEK3)
    assert "user_spend:last_country" not in verdicts(summary)
    assert summary["excluded"] == [{"ref": "user_spend:last_country", "reason":
                                    summary["excluded"][0]["reason"]}]
    assert summary["excluded"][0]["reason"].startswith("changed meaning since the export "
                                                       "(fingerprint 000000000000 then")
    assert "left out user_spend:last_country: changed meaning since the export" in output
    assert code == 1


def write_serving_log(repo: Path, columns: list[str]) -> None:
    """Week 3's values at sampled events, logged as the feature server would (its contract:
    date=YYYY-MM-DD/*.parquet, served_at, join keys, view__feature columns)."""
    import polars as pl

    store = FeatureStore(repo)
    events = pl.read_parquet(repo / "data" / "transactions" / "*" / "*.parquet").filter(
        pl.col("event_ts") >= datetime(2025, 1, 20, tzinfo=UTC))
    rows = events.select("user_id", "merchant_id",  # served just before each event
                         pl.col("event_ts") - timedelta(microseconds=1))[::3]
    values = pl.from_arrow(store.get_historical_features(
        rows, [c.replace("__", ":") for c in columns], full_feature_names=True).to_arrow())
    log = values.rename({"event_ts": "served_at"}).select("served_at", "user_id", "merchant_id",
                                                          *columns)
    root = repo / ".tessera" / "serving_log"
    for (day,), part in log.group_by(pl.col("served_at").dt.date(), maintain_order=True):
        folder = root / f"date={day.isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        part.write_parquet(folder / "part-0.parquet")


def test_the_serving_log_as_current(drifted: Path, manifest: Path, tmp_path: Path) -> None:
    logged = [r.replace(":", "__") for r in DRIFTED + STEADY if r != "user_spend:last_country"]
    write_serving_log(drifted, logged)
    try:
        code, output, summary = drift(drifted, tmp_path / "a", "--reference", str(manifest),
                                      "--current", "serving-log", "--since", "2025-01-20")
        assert verdicts(summary) == {**dict.fromkeys(DRIFTED, True),
                                     **dict.fromkeys(STEADY[1:], False)}
        assert "left out user_spend:last_country: not in the serving log" in output
        assert code == 1, output
        # a range of the log without any response is bad input
        code, output, _ = drift(drifted, tmp_path / "b", "--reference", str(manifest),
                                "--current", "serving-log", "--since", "2025-03-01")
        assert code == 2 and output.startswith("error: --current serving-log: no files of the "
                                               "serving log from 2025-03-01T00:00:00+00:00")
    finally:
        shutil.rmtree(drifted / ".tessera" / "serving_log")


@pytest.mark.parametrize(("args", "line"), [
    (["--reference", "missing.manifest.json", "--current", WEEK3],
     "error: --reference 'missing.manifest.json': no such file"),
    (["--reference", WEEK2, "--current", "2025-01-20..2025-01-20", "--view", "user_spend"],
     "error: --current '2025-01-20..2025-01-20': the window is empty (END must be after "
     "START)"),
    (["--reference", WEEK2, "--current", "2025-01-20..soon", "--view", "user_spend"],
     "error: --current: expected an ISO date or datetime like 2026-01-05 or "
     "2026-01-05T12:00:00Z, got 'soon'"),
    (["--reference", WEEK2, "--current", WEEK3, "--view", "user_spnd"],
     "error: --view 'user_spnd': no such feature view (did you mean 'user_spend'?) (defined: "
     "merchant_activity, user_spend)"),
    (["--reference", WEEK2, "--current", WEEK3, "--service", "fraud_model"],
     "error: --service 'fraud_model': no such feature service (did you mean 'fraud_model_v1'?)"
     " (defined: drift_probe, fraud_model_v1)"),
    (["--reference", WEEK2, "--current", WEEK3],
     "error: with a window as --reference, give the features to compare: --view VIEW or "
     "--service SERVICE"),
    (["--reference", "2024-01-01..2024-01-08", "--current", WEEK3, "--view", "user_spend"],
     "error: --reference 2024-01-01T00:00:00+00:00..2024-01-08T00:00:00+00:00: no events of "
     "source 'transactions' in this window (its events span 2025-01-06"),
    (["--reference", "last-week", "--current", WEEK3, "--view", "user_spend"],
     "error: --reference 'last-week': expected an export manifest (NAME.manifest.json) or a "
     "window START..END"),
])
def test_bad_input_is_one_line_and_exit_2(drifted: Path, tmp_path: Path, args: list[str],
                                          line: str) -> None:
    code, output, _ = drift(drifted, tmp_path, *args)
    assert code == 2, output
    assert output.startswith(line), output
    assert output.count("\n") == 1, output


def test_a_manifest_of_a_view_no_longer_defined_is_one_line(drifted: Path, manifest: Path,
                                                            tmp_path: Path) -> None:
    doc = json.loads(manifest.read_text())
    for f in doc["features"]:
        if f["view"] == "merchant_activity":
            f["view"] = "merchant_stats"
    edited = tmp_path / "old.manifest.json"
    edited.write_text(json.dumps(doc))
    code, output, _ = drift(drifted, tmp_path / "r", "--reference", str(edited), "--current",
                            WEEK3)
    assert (code, output) == (2, f"error: --reference {str(edited)!r}: its feature view "
                                 f"'merchant_stats' is no longer defined (did you mean "
                                 f"'merchant_activity'?); expected a manifest "
                                 f"of the current definitions (export a new training set)\n")


def test_large_sides_are_sampled_uniformly_with_the_seed() -> None:
    rng = np.random.default_rng(0)
    n = 5000
    ref = pa.table({"v:x": rng.normal(0, 1, n), "v:c": rng.choice(["a", "b"], n)})
    cur = pa.table({"v:x": rng.normal(1, 1, n), "v:c": rng.choice(["a", "b"], n)})
    cols = [FeatureColumn("v:x", "float64", "numerical"),
            FeatureColumn("v:c", "string", "categorical")]
    one = compare(Side("r", ref, n), Side("c", cur, n), cols, sample_rows=1500, seed=3,
                  drift_share=0.5)
    two = compare(Side("r", ref, n), Side("c", cur, n), cols, sample_rows=1500, seed=3,
                  drift_share=0.5)
    assert one.rows_used == (1500, 1500)
    assert [f.score for f in one.features] == [f.score for f in two.features]  # seeded
    assert [f.drifted for f in one.features] == [True, False]
    picked = sample_indices(n, 1500, 3)
    assert len(set(picked.tolist())) == 1500 and list(picked) == sorted(picked)
    assert not np.array_equal(picked, sample_indices(n, 1500, 4))
    assert list(sample_indices(10, 1500, 3)) == list(range(10))  # small sides: every row
