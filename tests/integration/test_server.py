"""``tessera serve`` over real HTTP and real Redis: Feast's JSON, the same values and statuses as
``FeatureStore.get_online_features``, a one-line 4xx for every malformed request, a token when
configured, metrics that move, and a 503 while Redis is down that heals by itself.

Servers run as ``tessera serve`` subprocesses on free ports (the CLI path users run). The repo
is the card example plus a view keyed by a string (country), generated for the last ten days,
run with Polars and materialized into the project's Redis under a project name of its own.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from features.store import FeatureStore, OnlineResponse
from tests.conftest import REPO_ROOT
from tests.online.private_redis import PrivateRedis, free_port

pytestmark = [pytest.mark.redis, pytest.mark.slow]

PROJECT = f"httptest{os.getpid()}"  # keys of its own: parallel runs never share them
MAX_ENTITIES = 50
MAX_BODY = 8192
TOKEN_VAR = "TESSERA_TEST_SERVE_TOKEN"
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6})?Z$")
USER_FEATURES = ["user_spend:txn_count_1h", "user_spend:txn_count_1d", "user_spend:txn_count_7d",
                 "user_spend:spend_eur_1d", "user_spend:spend_eur_7d",
                 "user_spend:spend_eur_mean_7d", "user_spend:spend_eur_max_7d",
                 "user_spend:spend_eur_std_7d", "user_spend:last_country",
                 "user_spend:last_channel"]

COUNTRY_VIEW = '''
from features import Entity, FeatureView, Source, agg, col

country = Entity(name="country", join_key="country", dtype="string")
by_country = Source(
    name="transactions_by_country", path="data/transactions", timestamp_field="event_ts",
    schema={"transaction_id": "int64", "user_id": "int64", "merchant_id": "int64",
            "amount": "float64", "currency": "string", "country": "string",
            "channel": "string", "card_present": "bool", "mcc": "string", "is_fraud": "bool",
            "event_ts": "timestamp"})
country_activity = FeatureView(
    name="country_activity", entities=[country], source=by_country, ttl="30d",
    features=[agg.count(windows=["1d"], name="txn_count"),
              agg.last(col("channel"), name="last_channel")])
'''


def write_repo(folder: Path, redis_url: str, offline: Path, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "example" / "card_features.py", folder / "card_features.py")
    (folder / "country_features.py").write_text(COUNTRY_VIEW)
    (folder / "feature_repo.yaml").write_text(
        f"project: {PROJECT}\n"
        "definitions: [card_features.py, country_features.py]\n"
        f"offline: {{path: {offline}}}\n"
        f"online: {{url: '{redis_url}', timeout_ms: 200}}\n"
        f"serve: {{max_entities: {MAX_ENTITIES}, max_body_bytes: {MAX_BODY}{extra}}}\n")
    return folder / "feature_repo.yaml"


class Server:
    """``tessera serve`` in a subprocess (own process group), always stopped on exit."""

    def __init__(self, repo: Path, env: dict[str, str] | None = None, workers: int = 1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = repo.parent / f"serve-{self.port}.log"
        self.cmd = [sys.executable, "-m", "tessera.cli", "serve", "--repo", str(repo),
                    "--port", str(self.port), "--workers", str(workers)]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.env, cwd=REPO_ROOT,
                                         start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tessera serve exited: {self.log.read_text()[-2000:]}")
            try:
                httpx.get(self.url + "/metrics", timeout=1.0)
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        self.__exit__()
        raise TimeoutError(f"tessera serve did not answer in 60 s: {self.log.read_text()}")

    def __exit__(self, *exc: object) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def post(self, body: Any, **kw: Any) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.post(self.url + "/get-online-features", content=content, timeout=10, **kw)

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics, ``name{labels}`` -> value."""
        text = httpx.get(self.url + "/metrics", timeout=5).text
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines() if line and not line.startswith("#")}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Path]:
    """The repo file: ten days of transactions up to today, materialized into Redis."""
    from pipelines.batch import run
    from pipelines.datagen import generate_cli

    root = tmp_path_factory.mktemp("serve")
    path = write_repo(root / "repo", redis_url, root / "offline")
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    generate_cli(rows=20_000, out=root / "repo" / "data", start=start - timedelta(days=10),
                 days=10, seed=5, progress=False)
    store = FeatureStore(path)
    try:
        run(store.config, list(store.definitions.views.values()), "polars", show_progress=False)
        store.materialize()
        yield path
    finally:
        client = store.online.client
        keys = list(client.scan_iter(match=f"{PROJECT}:*", count=1000))
        if keys:
            client.delete(*keys)
        store.close()


@pytest.fixture(scope="module")
def store(repo: Path) -> Iterator[FeatureStore]:
    s = FeatureStore(repo)
    yield s
    s.close()


@pytest.fixture(scope="module")
def users(store: FeatureStore) -> list[int]:
    """The busiest users (with values in every window) and one never seen."""
    import polars as pl

    events = pl.read_parquet(store.config.root / "data" / "transactions" / "**" / "*.parquet")
    busiest = events["user_id"].value_counts().sort("count", descending=True)["user_id"]
    return [*busiest.head(4).to_list(), 424242]


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[Server]:
    with Server(repo) as s:
        yield s


def as_feast_json(resp: OnlineResponse, keys: list[str]) -> tuple[list, list, list]:
    """(names, values, statuses) the server must answer for this Python result."""
    n = len(resp.entities[keys[0]])
    names = keys + resp.feature_names
    values = [resp.entities[k] for k in keys] + resp.values
    statuses = [["PRESENT"] * n for _ in keys] + resp.statuses
    return names, values, statuses


def same_as_python(server: Server, store: FeatureStore, body: dict[str, Any],
                   keys: list[str], **call: Any) -> dict[str, Any]:
    """POST ``body``; assert it answers what the Python call answers around it. A window edge
    passing between the calls changes the values, so try again then (at most 3 times)."""
    for _ in range(3):
        before = store.get_online_features(**call)
        r = server.post(body)
        after = store.get_online_features(**call)
        if (before.values, before.statuses) != (after.values, after.statuses):
            continue
        assert r.status_code == 200, r.text
        doc = r.json()
        names, values, statuses = as_feast_json(before, keys)
        assert doc["metadata"]["feature_names"] == names
        assert [res["values"] for res in doc["results"]] == values
        assert [res["statuses"] for res in doc["results"]] == statuses
        return doc
    raise AssertionError("the values kept changing between calls")


def test_a_response_equals_the_python_call_in_feasts_shape(server: Server, store: FeatureStore,
                                                           users: list[int]) -> None:
    body = {"features": USER_FEATURES, "entities": {"user_id": users}}
    doc = same_as_python(server, store, body, ["user_id"], features=USER_FEATURES,
                         entity_rows={"user_id": users})
    assert set(doc) == {"metadata", "results"}
    assert all(set(res) == {"values", "statuses", "event_timestamps"} for res in doc["results"])
    # The join key comes first, PRESENT, with Feast's zero timestamp.
    assert doc["results"][0] == {"values": users, "statuses": ["PRESENT"] * len(users),
                                 "event_timestamps": ["1970-01-01T00:00:00Z"] * len(users)}
    # The busiest users are found (counts are ints, sums floats); the unknown one is not.
    count_7d, spend_7d = doc["results"][3], doc["results"][5]
    assert all(isinstance(v, int) and v > 0 for v in count_7d["values"][:4])
    assert all(isinstance(v, float) for v in spend_7d["values"][:4])
    assert count_7d["statuses"][-1] == "NOT_FOUND"
    assert count_7d["event_timestamps"][-1] == "1970-01-01T00:00:00Z"
    # Event times: RFC 3339 in UTC, the newest event of each entity.
    python = store.get_online_features(USER_FEATURES, {"user_id": users})
    for res, times in zip(doc["results"][1:], python.event_times_us, strict=True):
        for text, us in zip(res["event_timestamps"], times, strict=True):
            assert TS.match(text), text
            if us is not None:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
                assert parsed == datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def test_feature_service_and_full_feature_names(server: Server, store: FeatureStore,
                                                users: list[int]) -> None:
    merchants = [2_000_000_000 + i for i in range(len(users))]
    entities = {"user_id": users, "merchant_id": merchants}
    body = {"feature_service": "fraud_model_v1", "entities": entities,
            "full_feature_names": True}
    doc = same_as_python(server, store, body, ["user_id", "merchant_id"],
                         feature_service="fraud_model_v1", entity_rows=entities,
                         full_feature_names=True)
    names = doc["metadata"]["feature_names"]
    assert names[:3] == ["user_id", "merchant_id", "user_spend__txn_count_1h"]
    assert "merchant_activity__txn_count_lifetime" in names
    # The join keys come in the request's order, as Feast answers them.
    swapped = {"merchant_id": merchants, "user_id": users}
    r = server.post({**body, "entities": swapped})
    assert r.json()["metadata"]["feature_names"][:2] == ["merchant_id", "user_id"]
    # Feast clients send "features": [] beside a service.
    r = server.post({**body, "features": []})
    assert r.status_code == 200 and r.json()["metadata"]["feature_names"] == names


def test_string_join_keys(server: Server, store: FeatureStore) -> None:
    feats = ["country_activity:txn_count_1d", "country_activity:last_channel"]
    countries = ["FR", "DE", "nowhere", "a,b}\\"]
    body = {"features": feats, "entities": {"country": countries}}
    doc = same_as_python(server, store, body, ["country"], features=feats,
                         entity_rows={"country": countries})
    assert doc["results"][2]["statuses"][:2] == ["PRESENT", "PRESENT"]
    assert doc["results"][2]["statuses"][2:] == ["NOT_FOUND", "NOT_FOUND"]


def one_line_error(r: httpx.Response, status: int, *fragments: str) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert "\n" not in r.text
    doc = r.json()
    assert set(doc) == {"error"} and doc["error"], doc
    for fragment in fragments:
        assert fragment in doc["error"], doc["error"]
    return str(doc["error"])


USER = {"user_id": [1]}
MALFORMED: list[tuple[str, bytes | dict[str, Any], int, str, tuple[str, ...]]] = [
    ("not JSON", b"{features: nope", 400, "bad_json", ("not valid JSON", "line 1 column 2")),
    ("empty body", b"", 400, "bad_json", ("not valid JSON",)),
    ("bad UTF-8", b'{"features": "\xff"}', 400, "bad_json", ("not valid JSON",)),
    ("deeply nested", b"[" * 5000, 400, "bad_json", ("not valid JSON",)),
    ("a list", b"[1, 2]", 400, "bad_json", ("JSON list, expected an object",)),
    ("a number", b"12", 400, "bad_json", ("JSON int",)),
    ("unknown field", {"features": ["user_spend:txn_count_1h"], "entitys": USER}, 400,
     "bad_request", ("'entitys'", "did you mean 'entities'")),
    ("features not a list", {"features": "user_spend:txn_count_1h", "entities": USER}, 400,
     "bad_request", ("list of 'view:feature'",)),
    ("both", {"features": ["user_spend:txn_count_1h"], "feature_service": "fraud_model_v1",
              "entities": USER}, 400, "bad_request", ("not both",)),
    ("neither", {"entities": USER}, 400, "bad_request", ("not neither",)),
    ("flag not a bool", {"features": ["user_spend:txn_count_1h"], "entities": USER,
                         "full_feature_names": "yes"}, 400, "bad_request", ("true or false",)),
    ("unknown feature", {"features": ["user_spend:txn_cnt_1h"], "entities": USER}, 400,
     "unknown_feature", ("'txn_cnt_1h'", "did you mean 'txn_count_1h'")),
    ("unknown view", {"features": ["user_spnd:txn_count_1h"], "entities": USER}, 400,
     "unknown_feature", ("'user_spnd'", "did you mean 'user_spend'")),
    ("not view:feature", {"features": ["txn_count_1h"], "entities": USER}, 400,
     "unknown_feature", ("'txn_count_1h' is not 'view:feature'",)),
    ("unknown service", {"feature_service": "fraud_model", "entities": USER}, 400,
     "unknown_feature", ("'fraud_model'", "did you mean 'fraud_model_v1'")),
    ("a name twice", {"feature_service": "fraud_model_v1",
                      "entities": {"user_id": [1], "merchant_id": [2]}}, 400, "bad_request",
     ("'txn_count_1h' is requested twice",)),
    ("no entities", {"features": ["user_spend:txn_count_1h"]}, 400, "bad_entities",
     ("'entities' must be an object",)),
    ("entities a list", {"features": ["user_spend:txn_count_1h"], "entities": [{"user_id": 1}]},
     400, "bad_entities", ("'entities' must be an object",)),
    ("entity not a list", {"features": ["user_spend:txn_count_1h"], "entities": {"user_id": 1}},
     400, "bad_entities", ("entities['user_id'] is a JSON int",)),
    ("missing join key", {"features": ["user_spend:txn_count_1h"],
                          "entities": {"userid": [1]}}, 400, "bad_entities",
     ("no join key 'user_id'", "given: userid")),
    ("string for int key", {"features": ["user_spend:txn_count_1h"],
                            "entities": {"user_id": ["1"]}}, 400, "bad_entities",
     ("'user_id' is str '1'", "expects int64")),
    ("float for int key", {"features": ["user_spend:txn_count_1h"],
                           "entities": {"user_id": [1.5]}}, 400, "bad_entities",
     ("is float 1.5",)),
    ("int past int64", {"features": ["user_spend:txn_count_1h"],
                        "entities": {"user_id": [1, 2**64]}}, 400, "bad_entities",
     ("entity row 1", "is 18446744073709551616, outside int64",)),
    ("bool for int key", {"features": ["user_spend:txn_count_1h"],
                          "entities": {"user_id": [True]}}, 400, "bad_entities", ("is bool",)),
    ("int for string key", {"features": ["country_activity:txn_count_1d"],
                            "entities": {"country": [7]}}, 400, "bad_entities", ("expects string",)),
    ("lone surrogate", b'{"features": ["country_activity:txn_count_1d"], '
                       b'"entities": {"country": ["\\ud800"]}}', 400, "bad_entities",
     ("not valid UTF-8 text",)),
    ("uneven columns", {"feature_service": "fraud_model_v1", "full_feature_names": True,
                        "entities": {"user_id": [1, 2], "merchant_id": [3]}}, 400,
     "bad_entities", ("different lengths",)),
    ("too many entities", {"features": ["user_spend:txn_count_1h"],
                           "entities": {"user_id": list(range(MAX_ENTITIES + 1))}}, 400,
     "too_many_entities", (f"{MAX_ENTITIES + 1} entities", f"limit is {MAX_ENTITIES}")),
    ("body too large", b'{"features": []' + b" " * MAX_BODY + b"}", 413, "body_too_large",
     (f"limit is {MAX_BODY}",)),
]


@pytest.mark.parametrize(("case", "body", "status", "kind", "fragments"), MALFORMED,
                         ids=[m[0] for m in MALFORMED])
def test_every_malformed_request_gets_a_one_line_4xx(server: Server, case: str,
                                                     body: bytes | dict[str, Any], status: int,
                                                     kind: str, fragments: tuple[str, ...]) -> None:
    key = f'tessera_http_errors_total{{kind="{kind}"}}'
    before = server.metrics()
    one_line_error(server.post(body), status, *fragments)
    after = server.metrics()
    assert after[key] == before[key] + 1
    code = f'tessera_http_requests_total{{code="{status}",endpoint="/get-online-features"}}'
    assert after[code] == before.get(code, 0) + 1


def test_a_chunked_body_is_cut_at_the_limit_without_a_content_length(server: Server) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"features": ["user_spend:txn_count_1h"], "entities": {"user_id": ['
        for _ in range(MAX_BODY // 8 + 10):
            yield b"1234567,"
        yield b"1]}"

    r = httpx.post(server.url + "/get-online-features", content=chunks(), timeout=10)
    assert "content-length" not in r.request.headers
    one_line_error(r, 413, f"over {MAX_BODY} bytes")
    # The connection state is sane afterwards: the next request is answered.
    assert server.post({"features": ["user_spend:txn_count_1h"], "entities": USER}
                       ).status_code == 200


def test_unknown_paths_and_methods(server: Server) -> None:
    one_line_error(httpx.get(server.url + "/nope"), 404, "'/nope'", "POST /get-online-features")
    r = httpx.get(server.url + "/get-online-features")
    one_line_error(r, 405, "use POST")
    assert r.headers["allow"] == "POST"
    one_line_error(httpx.post(server.url + "/health"), 405, "use GET")


def test_health_and_metrics(server: Server) -> None:
    r = httpx.get(server.url + "/health")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})
    before = server.metrics()
    for _ in range(3):
        assert server.post({"features": ["user_spend:txn_count_1h"], "entities": USER}
                           ).status_code == 200
    after = server.metrics()
    ok = 'tessera_http_requests_total{code="200",endpoint="/get-online-features"}'
    assert after[ok] == before[ok] + 3
    count = 'tessera_http_request_duration_seconds_count{endpoint="/get-online-features"}'
    assert after[count] >= before[count] + 3
    assert after["tessera_online_entities_total"] == before["tessera_online_entities_total"] + 3
    # Sub-millisecond buckets exist, and a request is counted in a bucket at or above its time.
    buckets = [k for k in after if k.startswith("tessera_http_request_duration_seconds_bucket")
               and '"/get-online-features"' in k]
    assert any('le="0.0001"' in k for k in buckets) and any('le="0.0005"' in k for k in buckets)
    inf = 'tessera_http_request_duration_seconds_bucket{endpoint="/get-online-features",le="+Inf"}'
    assert after[inf] == after[count]


def test_a_configured_token_is_required_for_features_only(repo: Path) -> None:
    token = "s3cret-Token"
    with Server(repo, env={"TESSERA__SERVE__TOKEN_ENV": TOKEN_VAR, TOKEN_VAR: token}) as s:
        body = {"features": ["user_spend:txn_count_1h"], "entities": USER}
        r = s.post(body)
        one_line_error(r, 401, "needs a bearer token")
        assert r.headers["www-authenticate"] == "Bearer"
        one_line_error(s.post(body, headers={"authorization": "Bearer nope"}), 401, "wrong")
        one_line_error(s.post(body, headers={"authorization": token}), 401, "wrong")
        assert s.post(body, headers={"authorization": f"Bearer {token}"}).status_code == 200
        assert s.post(body, headers={"authorization": f"bearer  {token}"}).status_code == 200
        assert httpx.get(s.url + "/health").status_code == 200
        assert s.metrics()['tessera_http_errors_total{kind="unauthorized"}'] == 3
        assert token not in s.log.read_text()


def test_an_unset_token_variable_stops_the_server_at_start(repo: Path) -> None:
    env = {**os.environ, "TESSERA__SERVE__TOKEN_ENV": TOKEN_VAR}
    env.pop(TOKEN_VAR, None)
    r = subprocess.run([sys.executable, "-m", "tessera.cli", "serve", "--repo", str(repo),
                        "--port", str(free_port())], env=env, capture_output=True, text=True,
                       timeout=60, cwd=REPO_ROOT)
    assert r.returncode == 1
    assert f"'{TOKEN_VAR}' is not set" in r.stderr


def test_two_workers_share_the_port_and_the_metrics(repo: Path) -> None:
    with Server(repo, workers=2) as s:
        body = {"features": ["user_spend:txn_count_1h"], "entities": USER}
        codes = [s.post(body).status_code for _ in range(20)]
        assert codes == [200] * 20
        # Every worker writes its own files; a scrape adds them up, whichever worker answers.
        key = 'tessera_http_requests_total{code="200",endpoint="/get-online-features"}'
        assert s.metrics()[key] == 20


def private_repo(repo: Path, folder: Path) -> tuple[PrivateRedis, Path]:
    """A redis-server of the test's own (stopped and restarted at will), and the test repo
    pointed at it."""
    redis = PrivateRedis(folder / "redis")
    cfg = FeatureStore(repo).config
    path = write_repo(folder / "private", redis.url, cfg.resolve(cfg.offline.path))
    redis.start()
    return redis, path


def test_redis_down_is_a_quick_503_and_the_server_heals_itself(
        repo: Path, tmp_path: Path, users: list[int]) -> None:
    redis, path = private_repo(repo, tmp_path)
    try:
        FeatureStore(path).materialize(views=["user_spend"])
        body = {"features": USER_FEATURES, "entities": {"user_id": users[:2]}}
        with Server(path) as s:
            r = s.post(body)
            assert r.status_code == 200 and r.json()["results"][1]["statuses"][0] == "PRESENT"

            redis.stop(save=False)
            began = time.monotonic()
            r = s.post(body)
            elapsed = time.monotonic() - began
            one_line_error(r, 503, f"127.0.0.1:{redis.port}", "unavailable")
            assert elapsed < 1.5  # 200 ms timeout, one retry: far below
            assert r.headers["retry-after"] == "1"
            health = httpx.get(s.url + "/health", timeout=5)
            assert health.status_code == 503 and "unavailable" in health.json()["error"]
            # While it stays down, a burst of concurrent requests all get a quick 503.
            codes: list[int] = []
            began = time.monotonic()
            threads = [threading.Thread(target=lambda: codes.append(s.post(body).status_code))
                       for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=10)
            assert codes == [503] * 8 and time.monotonic() - began < 1.5

            redis.start()  # empty: it never saved
            deadline = time.monotonic() + 10
            while (code := s.post(body).status_code) != 200 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert code == 200
            assert httpx.get(s.url + "/health").status_code == 200
            FeatureStore(path).materialize(views=["user_spend"])
            assert s.post(body).json()["results"][1]["statuses"][0] == "PRESENT"
            assert s.metrics()['tessera_http_errors_total{kind="unavailable"}'] >= 9
    finally:
        redis.stop(save=False)


def test_a_hung_redis_costs_one_timeout_then_quick_503s(repo: Path, tmp_path: Path) -> None:
    """A Redis that accepts connections but never answers (SIGSTOP): the request that finds out
    waits for the timeout; the ones after it get the 503 at once, not one timeout each."""
    redis, path = private_repo(repo, tmp_path)
    try:
        body = {"features": USER_FEATURES, "entities": USER}
        with Server(path) as s:
            assert s.post(body).status_code == 200
            os.kill(redis.proc.pid, signal.SIGSTOP)
            try:
                began = time.monotonic()
                one_line_error(s.post(body), 503, "unavailable", "Timeout")
                assert time.monotonic() - began < 2.0  # 200 ms, one retry
                began = time.monotonic()
                codes = [s.post(body).status_code for _ in range(10)]
                assert codes == [503] * 10 and time.monotonic() - began < 1.0
                # /health and /metrics answer during the outage (nothing blocks the loop).
                assert httpx.get(s.url + "/health", timeout=5).status_code == 503
                assert httpx.get(s.url + "/metrics", timeout=5).status_code == 200
            finally:
                os.kill(redis.proc.pid, signal.SIGCONT)
            deadline = time.monotonic() + 10
            while (code := s.post(body).status_code) != 200 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert code == 200
        assert "answering 503 until it is reachable again" in s.log.read_text()
        assert "online store reachable again" in s.log.read_text()
    finally:
        redis.stop(save=False)


# --------------------------------------------------------------------------------------------
# The JSON encoding, without a server
# --------------------------------------------------------------------------------------------

def test_timestamps_use_feasts_precision_rules() -> None:
    from tessera.feast_json import rfc3339

    base = int(datetime(2026, 3, 1, 12, 30, 5, tzinfo=UTC).timestamp()) * 1_000_000
    assert rfc3339(base) == "2026-03-01T12:30:05Z"
    assert rfc3339(base + 250_000) == "2026-03-01T12:30:05.250Z"
    assert rfc3339(base + 7) == "2026-03-01T12:30:05.000007Z"
    assert rfc3339(0) == "1970-01-01T00:00:00Z"
    assert rfc3339(-1) == "1969-12-31T23:59:59.999999Z"


def test_timestamp_values_are_rfc3339_text_like_event_times() -> None:
    from tessera.feast_json import encode_response

    us = int(datetime(2026, 3, 1, 12, tzinfo=UTC).timestamp()) * 1_000_000 + 5
    resp = OnlineResponse(["seen"], ["timestamp"], {"k": [1, 2]}, [[us, None]],
                          [["PRESENT", "NULL_VALUE"]], [[us, us]])
    doc = json.loads(encode_response(resp, ["k"]))
    assert doc["results"][1] == {"values": ["2026-03-01T12:00:00.000005Z", None],
                                 "statuses": ["PRESENT", "NULL_VALUE"],
                                 "event_timestamps": ["2026-03-01T12:00:00.000005Z"] * 2}


def test_non_finite_floats_are_spelled_as_feast_does() -> None:
    from tessera.feast_json import encode_response

    resp = OnlineResponse(["a", "b"], ["float64", "float64"], {"k": [1, 2]},
                          [[math.nan, 1.5], [math.inf, -math.inf]],
                          [["PRESENT", "PRESENT"]] * 2, [[None, 10**6]] * 2)
    doc = json.loads(encode_response(resp, ["k"]))
    assert [r["values"] for r in doc["results"]] == [[1, 2], ["NaN", 1.5],
                                                     ["Infinity", "-Infinity"]]
    assert doc["results"][1]["event_timestamps"] == ["1970-01-01T00:00:00Z",
                                                     "1970-01-01T00:00:01Z"]
