"""``tessera serve`` over real HTTP and real Redis: Feast's JSON, the same values and statuses as
``FeatureStore.get_online_features``, a one-line 4xx for every malformed request, a token when
configured, and metrics that move (Redis down or hung: test_server_faults.py).

Servers run as ``tessera serve`` subprocesses on free ports (the CLI path users run). The repo
is the card example plus a view keyed by a string (country), generated for the last ten days,
run with Polars and materialized into the project's Redis under a project name of its own.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from features.store import FeatureStore, OnlineResponse
from features.windows import to_micros
from tessera.feast_json import rfc3339
from tests.conftest import REPO_ROOT
from tests.integration.serve_harness import (
    MAX_BODY,
    MAX_ENTITIES,
    USER_FEATURES,
    Server,
    one_line_error,
)
from tests.online.private_redis import free_port

pytestmark = [pytest.mark.redis, pytest.mark.slow]

TOKEN_VAR = "TESSERA_TEST_SERVE_TOKEN"
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6})?Z$")


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[Server]:
    with Server(repo) as s:
        yield s


def as_feast_json(resp: OnlineResponse, keys: list[str]) -> tuple[list, list, list]:
    """(names, values, statuses) the server must answer for this Python result."""
    n = len(resp.entities[keys[0]])
    names = keys + resp.feature_names
    values = [resp.entities[k] for k in keys] + [
        [rfc3339(to_micros(v)) if isinstance(v, datetime) else v for v in column]
        for column in resp.values]  # a timestamp feature's values are RFC 3339 text
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


def test_string_join_keys_and_a_timestamp_feature(server: Server, store: FeatureStore) -> None:
    feats = ["country_activity:txn_count_1d", "country_activity:last_channel",
             "country_activity:last_seen"]
    countries = ["FR", "DE", "nowhere", "a,b}\\"]
    body = {"features": feats, "entities": {"country": countries}}
    doc = same_as_python(server, store, body, ["country"], features=feats,
                         entity_rows={"country": countries})
    assert doc["results"][2]["statuses"][:2] == ["PRESENT", "PRESENT"]
    assert doc["results"][2]["statuses"][2:] == ["NOT_FOUND", "NOT_FOUND"]
    seen = doc["results"][3]
    assert all(TS.match(v) for v in seen["values"][:2]) and seen["values"][2:] == [None, None]
    assert seen["values"][:2] == seen["event_timestamps"][:2]  # last(event_ts): the newest


def test_join_keys_given_are_echoed_in_the_requests_order(server: Server, store: FeatureStore,
                                                          users: list[int]) -> None:
    """As Feast answers: a join key of the repo that no requested view needs is echoed, in
    the request's order; a column that is no join key is not."""
    merchants = [2_000_000_000 + i for i in range(len(users))]
    entities = {"merchant_id": merchants, "label": users, "user_id": users}
    doc = same_as_python(server, store, {"features": USER_FEATURES, "entities": entities},
                         ["merchant_id", "user_id"], features=USER_FEATURES,
                         entity_rows=entities)
    assert doc["metadata"]["feature_names"][:3] == ["merchant_id", "user_id", "txn_count_1h"]
    assert doc["results"][0]["values"] == merchants


USER = {"user_id": [1]}
MALFORMED: list[tuple[str, bytes | dict[str, Any], int, str, tuple[str, ...]]] = [
    ("not JSON", b"{features: nope", 400, "bad_json", ("not valid JSON", "line 1 column 2")),
    ("empty body", b"", 400, "bad_json", ("not valid JSON",)),
    ("bad UTF-8", b'{"features": "\xff"}', 400, "bad_json", ("not valid JSON",)),
    ("deeply nested", b"[" * 5000, 400, "bad_json", ("not valid JSON",)),
    ("a list", b"[1, 2]", 400, "bad_json", ("the body is an array, expected a JSON object",)),
    ("a number", b"12", 400, "bad_json", ("the body is a number",)),
    ("NaN is not JSON", b'{"features": ["user_spend:txn_count_1h"], '
                        b'"entities": {"user_id": [NaN]}}', 400, "bad_json",
     ("not valid JSON", "NaN is not a JSON value")),
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
     ("'entities' is null; it must be an object",)),
    ("entities a list", {"features": ["user_spend:txn_count_1h"], "entities": [{"user_id": 1}]},
     400, "bad_entities", ("'entities' is an array; it must be an object",)),
    ("empty entities", {"features": ["user_spend:txn_count_1h"], "entities": {}}, 400,
     "bad_entities", ("no join key 'user_id' (feature view 'user_spend' needs it; given: none)",)),
    ("entity not a list", {"features": ["user_spend:txn_count_1h"], "entities": {"user_id": 1}},
     400, "bad_entities", ("entities['user_id'] is a number, expected an array",)),
    ("entity null", {"features": ["user_spend:txn_count_1h"], "entities": {"user_id": None}},
     400, "bad_entities", ("entities['user_id'] is null",)),
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


def test_huge_names_get_a_short_answer(server: Server) -> None:
    """A name, key or field of 5,000 characters is echoed cut: the answer stays small."""
    huge = "x" * 5000
    for body, kind in (({"features": [f"user_spend:{huge}"], "entities": USER}, "unknown_feature"),
                       ({"features": [f"{huge}:txn_count_1h"], "entities": USER},
                        "unknown_feature"),
                       ({"features": ["user_spend:txn_count_1h"], "entities": {huge: [1]}},
                        "bad_entities"),
                       ({"features": ["user_spend:txn_count_1h"], "entities": USER, huge: 1},
                        "bad_request"),
                       ({"features": ["user_spend:txn_count_1h"], "entities": {"user_id": [huge]}},
                        "bad_entities")):
        r = server.post(body)
        error = one_line_error(r, 400, "characters)")
        assert len(r.content) < 400, (kind, error)


def test_a_body_shorter_than_its_content_length_gets_a_408(repo: Path) -> None:
    """A client that declares more bytes than it sends is answered 408 after
    ``serve.body_timeout_ms`` and its connection closed; the server goes on serving."""
    import socket

    with Server(repo, env={"TESSERA__SERVE__BODY_TIMEOUT_MS": "400"}) as s:
        body = b'{"features": ["user_spend:txn_count_1h"], "entities": {"user_id": [1]}}'
        head = (f"POST /get-online-features HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body) + 10}\r\n\r\n")
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as sock:
            began = time.monotonic()
            sock.sendall(head.encode() + body)
            answer = b""
            while chunk := sock.recv(65536):  # until the server closes the connection
                answer += chunk
            elapsed = time.monotonic() - began
        status, _, rest = answer.partition(b"\r\n")
        assert status == b"HTTP/1.1 408 Request Timeout", answer[:300]
        assert b"connection: close" in rest.lower()
        assert b"the body had not all arrived after 0.4 s (serve.body_timeout_ms" in rest
        assert 0.4 <= elapsed < 3.0
        assert s.post(json.loads(body)).status_code == 200
        assert s.metrics()['tessera_http_errors_total{kind="body_timeout"}'] == 1


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
    head = httpx.head(server.url + "/health")  # probes that ask with HEAD: the status, no body
    assert head.status_code == 200 and head.content == b""


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
