"""The serving log: sampled online responses land as Parquet files the drift reader can query,
written in the background, holding exactly the values returned (null where not found), from
the SDK and from ``tessera serve``; a full buffer drops and counts, a broken disk never breaks
a read. Real Redis, real files, real DuckDB."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.config import load_config
from features.config_jobs import ServingLogConfig
from features.online.serving_log import THREAD_NAME, ServingLog
from features.store import FeatureStore, OnlineResponse
from features.windows import to_micros
from pipelines.materialize import materialize
from tests.conftest import delete_project_keys
from tests.online.repo import build, today

pytestmark = pytest.mark.redis

USER_FEATURES = ["user_spend:txn_count_1h", "user_spend:txn_count_7d", "user_spend:spend_eur_7d",
                 "user_spend:spend_eur_mean_1d", "user_spend:spend_eur_std_7d",
                 "user_spend:last_country"]
MERCHANT_FEATURES = ["merchant_activity:txn_count_1d", "merchant_activity:txn_count_lifetime"]
NEVER_SEEN = 424_242_424
FILE_NAME = re.compile(r"^part-\d{8}T\d{6}-[0-9a-f]{32}\.parquet$")
HTTP_LOG = "http_log"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Path]:
    """A materialized repo whose file logs every HTTP response (for ``tessera serve``)."""
    folder = Path(tmp_path_factory.mktemp("serving_log"))
    store = build(folder, redis_url)
    try:
        materialize(store.config, list(store.definitions.views.values()), store.online,
                    now_us=to_micros(today()), show_progress=False)
        with (folder / "feature_repo.yaml").open("a") as f:
            f.write(f"serving_log: {{sample_rate: 1.0, path: {HTTP_LOG}, flush_seconds: 0.2}}\n")
        yield folder
    finally:
        delete_project_keys(store)
        store.close()


@pytest.fixture(scope="module")
def users(repo: Path) -> list[int]:
    """Busy users (values in most windows), quiet ones, and one never seen."""
    events = pl.read_parquet(repo / "data" / "transactions", hive_partitioning=False)
    counts = events["user_id"].value_counts().sort(["count", "user_id"], descending=[True, False])
    ids = counts["user_id"].to_list()
    return [*ids[:6], *ids[-3:], NEVER_SEEN]


def logging_store(repo: Path, folder: Path, **settings: Any) -> FeatureStore:
    cfg = load_config(repo)
    settings = {"sample_rate": 1.0, "path": folder, "flush_seconds": 3600, **settings}
    return FeatureStore(config=cfg.model_copy(
        update={"serving_log": ServingLogConfig(**settings)}))


def files(folder: Path) -> list[Path]:
    return sorted(folder.glob("date=*/*.parquet"))


def read_log(folder: Path) -> list[dict[str, Any]]:
    """Every logged row as the drift reader reads the folder (DuckDB, union by name)."""
    rel = duckdb.sql(f"SELECT * FROM read_parquet('{folder}/*/*.parquet', union_by_name=true, "
                     f"hive_partitioning=true) ORDER BY served_at")
    return [dict(zip(rel.columns, row, strict=True)) for row in rel.fetchall()]


def expected_rows(store: FeatureStore, resp: OnlineResponse, features: list[str] | None,
                  service: str | None = None, full: bool = False) -> list[dict[str, Any]]:
    """The rows the log must hold for a response: full names, null unless PRESENT."""
    plan = store.plan(features, service, full)
    full = [f"{v.view.name}__{s.feature.name}" for v in plan.reads for s in v.steps]
    slots = [slot for s in plan.slots for slot in s]
    rows = []
    for i in range(len(next(iter(resp.entities.values())))):
        row: dict[str, Any] = {k: v[i] for k, v in resp.entities.items()}
        for name, slot in zip(full, slots, strict=True):
            present = resp.statuses[slot][i] == "PRESENT"
            row[name] = resp.values[slot][i] if present else None
        rows.append(row)
    return rows


def same(got: Any, want: Any) -> bool:
    return got == want or (isinstance(got, float) and isinstance(want, float)
                           and got != got and want != want)


def test_logged_rows_equal_the_values_returned(repo: Path, users: list[int],
                                               tmp_path: Path) -> None:
    folder = tmp_path / "log"
    store = logging_store(repo, folder)
    before = datetime.now(UTC)
    first = store.get_online_features(USER_FEATURES, [{"user_id": u} for u in users])
    second = store.get_online_features(USER_FEATURES, {"user_id": users[:2]},
                                       full_feature_names=True)
    after = datetime.now(UTC)
    assert files(folder) == []  # flush_seconds is an hour: nothing written yet
    store.close()

    stats = store.serving_log.stats()
    assert (stats.rows_logged, stats.rows_written, stats.files_written) == (12, 12, 1)
    assert (stats.rows_dropped, stats.write_errors, stats.buffered) == (0, 0, 0)
    [path] = files(folder)
    assert FILE_NAME.match(path.name), path.name
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    table = pq.read_table(path)
    full = [f"user_spend__{f.split(':')[1]}" for f in USER_FEATURES]
    assert table.schema.names == ["served_at", "user_id", *full]
    assert table.schema.field("served_at").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("user_id").type == pa.int64()
    assert table.schema.field("user_spend__txn_count_7d").type == pa.int64()
    assert table.schema.field("user_spend__spend_eur_7d").type == pa.float64()
    assert table.schema.field("user_spend__last_country").type == pa.string()

    rows = table.to_pylist()
    want = (expected_rows(store, first, USER_FEATURES)
            + expected_rows(store, second, USER_FEATURES))
    mismatches = [(i, k, row.get(k), v) for i, (row, w) in enumerate(zip(rows, want, strict=True))
                  for k, v in w.items() if not same(row.get(k), v)]
    assert mismatches == []
    # The never-seen user reads count 0 (NOT_FOUND) in the response; the log says null.
    assert first.to_dict()["txn_count_7d"][-1] == 0
    assert rows[len(users) - 1]["user_spend__txn_count_7d"] is None
    assert sum(r["user_spend__txn_count_7d"] is not None for r in rows) >= 8
    assert all(before <= r["served_at"] <= after for r in rows)
    assert path.parent.name == f"date={rows[0]['served_at']:%Y-%m-%d}"
    assert len({r["served_at"] for r in rows}) == 2  # one instant per request


def test_requests_with_other_features_read_back_by_name(repo: Path, users: list[int],
                                                        tmp_path: Path) -> None:
    folder = tmp_path / "log"
    store = logging_store(repo, folder)
    merchants = [2_000_000_000 + i for i in range(3)]
    a = store.get_online_features(USER_FEATURES, {"user_id": users[:3]})
    store.serving_log.flush()  # a file of its own
    b = store.get_online_features(feature_service="fraud_model_v1", full_feature_names=True,
                                  entity_rows={"user_id": users[:3], "merchant_id": merchants})
    c = store.get_online_features(MERCHANT_FEATURES, {"merchant_id": merchants[:2]})
    store.close()  # b and c in one file: the union of their columns

    schemas = sorted((set(pq.read_schema(p).names) for p in files(folder)), key=len)
    assert len(schemas) == 2
    assert "merchant_id" not in schemas[0]
    assert {"user_id", "merchant_id", "user_spend__last_channel",
            "merchant_activity__txn_count_lifetime"} <= schemas[1]
    rows = read_log(folder)
    assert len(rows) == 3 + 3 + 2
    want = (expected_rows(store, a, USER_FEATURES)
            + expected_rows(store, b, None, "fraud_model_v1", full=True)
            + expected_rows(store, c, MERCHANT_FEATURES))
    for row, w in zip(rows, want, strict=True):
        assert all(same(row[k], v) for k, v in w.items()), (row, w)
        # Columns of the other requests read as null.
        assert all(row[k] is None for k in row if k not in w and k not in ("served_at", "date"))
        assert str(row["date"]) == f"{row['served_at']:%Y-%m-%d}"
    assert rows[0]["merchant_id"] is None and rows[-1]["user_id"] is None


def test_a_flush_across_midnight_writes_one_file_per_utc_date(repo: Path, users: list[int],
                                                              tmp_path: Path) -> None:
    store = logging_store(repo, tmp_path / "unused", enabled=False)
    resp = store.get_online_features(USER_FEATURES, {"user_id": users[:2]})
    slog = ServingLog(ServingLogConfig(sample_rate=1.0, flush_seconds=3600), tmp_path / "log")
    plan = store.plan(USER_FEATURES)
    midnight = to_micros(today())
    slog.record(plan, resp, midnight - 1)
    slog.record(plan, resp, midnight)
    slog.close()
    got = {p.parent.name: pq.read_table(p)["served_at"].to_pylist()
           for p in files(tmp_path / "log")}
    day = today()
    assert got == {f"date={day - timedelta(days=1):%Y-%m-%d}":
                   [day - timedelta(microseconds=1)] * 2,
                   f"date={day:%Y-%m-%d}": [day] * 2}
    store.close()


def test_sample_rate_logs_that_share_of_entity_rows(repo: Path, users: list[int],
                                                    tmp_path: Path) -> None:
    folder = tmp_path / "log"
    store = logging_store(repo, folder, sample_rate=0.1)
    calls, per_call = 1000, 10
    batch = {"user_id": users[:per_call]}
    for _ in range(calls):
        store.get_online_features(USER_FEATURES[:2], batch)
    store.close()
    n = calls * per_call
    logged = store.serving_log.stats().rows_logged
    # Binomial(10,000, 0.1): mean 1,000, sd 30. Six sd either side: a correct sampler fails
    # this about once in 10^9 runs; sampling per call instead of per row, or ignoring the
    # rate, is far outside.
    sd = (n * 0.1 * 0.9) ** 0.5
    assert abs(logged - n * 0.1) < 6 * sd, logged
    rows = read_log(folder)
    assert len(rows) == logged
    per_request: dict[Any, int] = {}
    for r in rows:
        per_request[r["served_at"]] = per_request.get(r["served_at"], 0) + 1
    # Rows are sampled one by one, not whole requests (P(all 10 of a call) = 1e-10).
    assert max(per_request.values()) < per_call
    assert len(per_request) > calls * 0.5  # ~65% of calls log at least one row


@pytest.mark.parametrize("settings", [{"enabled": False}, {"sample_rate": 0.0}])
def test_a_disabled_log_writes_nothing_and_starts_nothing(repo: Path, users: list[int],
                                                          tmp_path: Path, settings: dict) -> None:
    folder = tmp_path / "log"
    store = logging_store(repo, folder, **settings)
    threads = {t.ident for t in threading.enumerate() if t.name == THREAD_NAME}
    for _ in range(20):
        store.get_online_features(USER_FEATURES, {"user_id": users})
    assert store.serving_log is None
    assert {t.ident for t in threading.enumerate() if t.name == THREAD_NAME} <= threads
    store.close()
    assert not folder.exists()


def test_a_full_buffer_drops_and_counts_new_rows(repo: Path, users: list[int],
                                                 tmp_path: Path) -> None:
    folder = tmp_path / "log"
    store = logging_store(repo, folder, max_buffered_rows=25)
    three = {"user_id": users[:3]}
    for _ in range(8):
        store.get_online_features(USER_FEATURES, three)  # 24 rows buffered
    store.get_online_features(USER_FEATURES, three)  # room for one of its three rows
    began = time.perf_counter()
    for _ in range(5):
        resp = store.get_online_features(USER_FEATURES, three)
        assert resp.to_dict()["user_id"] == users[:3]
    assert time.perf_counter() - began < 5  # answered, not waiting for room
    stats = store.serving_log.stats()
    assert (stats.rows_logged, stats.rows_dropped, stats.buffered) == (25, 17, 25)
    store.serving_log.flush()
    assert len(read_log(folder)) == 25
    store.get_online_features(USER_FEATURES, three)  # room again after the flush
    store.close()
    assert store.serving_log.stats().rows_logged == 28
    assert len(read_log(folder)) == 28


def test_a_write_error_is_logged_and_counted_never_raised(repo: Path, users: list[int],
                                                          tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    blocked = tmp_path / "a_file_not_a_folder"
    blocked.write_text("")
    store = logging_store(repo, blocked, flush_seconds=0.05)
    batch = {"user_id": users}
    caplog.set_level(logging.WARNING, logger="tessera.serving_log")
    deadline = time.monotonic() + 20
    while store.serving_log.stats().write_errors < 2 and time.monotonic() < deadline:
        for _ in range(3):
            resp = store.get_online_features(USER_FEATURES, batch)
            assert resp.to_dict()["user_id"] == users
            assert resp.status_dict()["txn_count_7d"][0] == "PRESENT"  # a real read
        time.sleep(0.05)
    stats = store.serving_log.stats()
    # The writer thread went on after its first failure.
    assert stats.write_errors >= 2 and stats.files_written == 0
    store.close()  # the final flush fails too, quietly
    lines = [r.getMessage() for r in caplog.records if r.name == "tessera.serving_log"]
    assert lines and all("\n" not in line and str(blocked) in line for line in lines)
    assert "could not write" in lines[0]
    assert blocked.is_file() and blocked.read_text() == ""


def test_a_writer_that_cannot_import_says_so_and_still_writes(
        repo: Path, users: list[int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A failed import in the writer's start (not an exit) is one warning line; the thread
    goes on, and its flushes import what they need."""
    def broken() -> None:
        raise ImportError("pyarrow: libarrow.so.2200: cannot open shared object file")

    monkeypatch.setattr(ServingLog, "prepare", staticmethod(broken))
    caplog.set_level(logging.WARNING, logger="tessera.serving_log")
    store = logging_store(repo, tmp_path / "log", flush_seconds=0.05)
    store.get_online_features(USER_FEATURES, {"user_id": users})
    deadline = time.monotonic() + 20
    while store.serving_log.stats().files_written == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.serving_log.stats().files_written == 1
    store.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "tessera.serving_log"]
    assert lines == ["serving log: the writer could not import pyarrow: ImportError: pyarrow: "
                     "libarrow.so.2200: cannot open shared object file"]
    assert [r["user_id"] for r in read_log(tmp_path / "log")] == users


@pytest.mark.slow
def test_tessera_serve_logs_its_responses(repo: Path, users: list[int]) -> None:
    from tests.integration.test_server import Server

    folder = repo / HTTP_LOG
    user_body = {"features": USER_FEATURES, "entities": {"user_id": users}}
    merchants = [2_000_000_000, 2_000_000_001]
    service_body = {"feature_service": "fraud_model_v1", "full_feature_names": True,
                    "entities": {"user_id": users[:2], "merchant_id": merchants}}
    with Server(repo / "feature_repo.yaml") as server:
        docs = [server.post(user_body), server.post(service_body)]
        assert [d.status_code for d in docs] == [200, 200]
        deadline = time.monotonic() + 20  # the writer thread flushes every 0.2 s
        while time.monotonic() < deadline and not files(folder):
            time.sleep(0.05)
        assert files(folder), "nothing written while the server runs"
        docs.append(server.post(user_body))  # a third, still buffered when the server stops
        total = len(users) + 2 + len(users)
        metrics = server.metrics()
        assert metrics["tessera_serving_log_rows_logged_total"] == total
        assert metrics["tessera_serving_log_files_written_total"] >= 1
        assert metrics["tessera_serving_log_rows_dropped_total"] == 0
        assert metrics["tessera_serving_log_write_errors_total"] == 0
    rows = read_log(folder)  # after shutdown, every request is on disk
    assert len(rows) == total
    n = len(users)
    by_request = [rows[:n], rows[n:n + 2], rows[n + 2:]]
    for doc, got in zip(docs, by_request, strict=True):
        body = doc.json()
        names = body["metadata"]["feature_names"]
        assert len(names) >= len(USER_FEATURES) + 1
        for i, row in enumerate(got):
            for name, res in zip(names, body["results"], strict=True):
                value = res["values"][i] if res["statuses"][i] == "PRESENT" else None
                # The log always uses full names; the first request asked for short ones.
                column = name if "__" in name or name.endswith("_id") else f"user_spend__{name}"
                assert same(row[column], value), (column, row[column], value)


def test_after_prepare_a_flush_imports_nothing(repo: Path, users: list[int],
                                               tmp_path: Path) -> None:
    """``prepare`` (what ``tessera serve`` runs before its first request) leaves no import to
    the writer's flushes: an import in the writer holds the GIL in long stretches while
    requests are served (pyarrow importing pandas on its first conversion took ~2 s). In a
    fresh process, so that nothing this test module imports hides one."""
    script = textwrap.dedent(f"""
        import sys
        from features.config import load_config
        from features.config_jobs import ServingLogConfig
        from features.online.serving_log import ServingLog
        from features.store import FeatureStore
        cfg = load_config({str(repo)!r})
        log = ServingLogConfig(sample_rate=1.0, path={str(tmp_path)!r}, flush_seconds=3600)
        store = FeatureStore(config=cfg.model_copy(update={{"serving_log": log}}))
        ServingLog.prepare()
        store.get_online_features({USER_FEATURES!r}, [{{"user_id": u}} for u in {users!r}])
        before = set(sys.modules)
        store.serving_log.flush()
        assert store.serving_log.stats().files_written == 1, store.serving_log.stats()
        print(sorted(set(sys.modules) - before))
        """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_script_that_exits_while_the_writer_starts_writes_its_rows_quietly(
        repo: Path, users: list[int], tmp_path: Path) -> None:
    """A short scoring script exits right after its reads, while the writer thread is still
    importing pyarrow and pandas (~2 s): the exit hook writes the sampled rows from the main
    thread, and stderr stays empty. The writer used to die there with a traceback (pandas'
    import registers a thread-exit hook, refused once the interpreter exits)."""
    folder = tmp_path / "log"
    script = textwrap.dedent(f"""
        from features.config import load_config
        from features.config_jobs import ServingLogConfig
        from features.store import FeatureStore
        cfg = load_config({str(repo)!r})
        log = ServingLogConfig(sample_rate=1.0, path={str(folder)!r}, flush_seconds=3600)
        store = FeatureStore(config=cfg.model_copy(update={{"serving_log": log}}))
        store.get_online_features({USER_FEATURES!r}, [{{"user_id": u}} for u in {users!r}])
        """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert [r["user_id"] for r in read_log(folder)] == users
