"""The JSON ``tessera serve`` writes (``tessera.feast_json``), without a server: Feast's
timestamp precision, timestamp values as RFC 3339 text, non-finite floats spelled as Feast does.
The server's own tests (tests/integration/test_server.py) check the same JSON over HTTP."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

from features.store import OnlineResponse
from features.windows import from_micros


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
    # The store's values of a timestamp feature are datetimes (as to_dict gives them).
    resp = OnlineResponse(["seen"], ["timestamp"], {"k": [1, 2]}, [[from_micros(us), None]],
                          [["PRESENT", "NULL_VALUE"]], [[us, us]])
    doc = json.loads(encode_response(resp))
    assert doc["results"][1] == {"values": ["2026-03-01T12:00:00.000005Z", None],
                                 "statuses": ["PRESENT", "NULL_VALUE"],
                                 "event_timestamps": ["2026-03-01T12:00:00.000005Z"] * 2}


def test_non_finite_floats_are_spelled_as_feast_does() -> None:
    from tessera.feast_json import encode_response

    resp = OnlineResponse(["a", "b"], ["float64", "float64"], {"k": [1, 2]},
                          [[math.nan, 1.5], [math.inf, -math.inf]],
                          [["PRESENT", "PRESENT"]] * 2, [[None, 10**6]] * 2)
    doc = json.loads(encode_response(resp))
    assert [r["values"] for r in doc["results"]] == [[1, 2], ["NaN", 1.5],
                                                     ["Infinity", "-Infinity"]]
    assert doc["results"][1]["event_timestamps"] == ["1970-01-01T00:00:00Z",
                                                     "1970-01-01T00:00:01Z"]
