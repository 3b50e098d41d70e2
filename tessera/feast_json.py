"""Feast's feature-server JSON: the request parser and the response encoder.

The request is Feast's ``POST /get-online-features`` body; the response has Feast's shape and
JSON values (not its bytes: docs/serving.md lists the differences): the join keys first
(``PRESENT``, with the zero timestamp ``1970-01-01T00:00:00Z``), then one result per feature
with its values, statuses and event timestamps (RFC 3339 in UTC, with no fraction, milliseconds or microseconds, whichever is
exact, as protobuf's JSON writes them). Non-finite floats are the strings ``"NaN"``,
``"Infinity"`` and ``"-Infinity"``, as Feast answers them.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from features.names import shown
from features.windows import to_micros
from tessera.server_metrics import ERROR_KINDS

if TYPE_CHECKING:
    from features.store import OnlineResponse

EPOCH = "1970-01-01T00:00:00Z"  # Feast's event timestamp of "none" (a zero protobuf Timestamp)
REQUEST_KEYS = ("features", "feature_service", "entities", "full_feature_names",
                "include_feature_view_version_metadata")


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number",
               float: "a number", bool: "a boolean", type(None): "null"}


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON value")


# Strict JSON: NaN and Infinity (which Python's json reads by default) are refused.
_decode = json.JSONDecoder(parse_constant=_not_json).decode


def _loads(body: bytes) -> Any:
    """``json.loads`` of a body in UTF-8, -16 or -32 (with or without a BOM), strict."""
    return _decode(body.decode(json.detect_encoding(body), "surrogatepass"))


class RequestError(Exception):
    """An answer other than 200: status, metrics kind, one-line reason."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = ERROR_KINDS[kind]


def parse_request(body: bytes, max_entities: int) -> tuple[list[str] | None, str | None,
                                                           dict[str, list[Any]], bool]:
    """(features, feature_service, entities, full_feature_names) of a request body.

    Checks the shape only; names and join keys are checked by the store, which knows them.
    """
    try:
        req = _loads(body)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, bad UTF-8, >4300-digit ints
        raise RequestError("bad_json", f"the body is not valid JSON: {e}") from None
    if not isinstance(req, dict):
        raise RequestError("bad_json", f"the body is {_json_type(req)}, expected a JSON "
                           f"object like {{\"features\": [...], \"entities\": {{...}}}}")
    unknown = [k for k in req if k not in REQUEST_KEYS]
    if unknown:
        import difflib

        near = difflib.get_close_matches(unknown[0][:100], REQUEST_KEYS, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise RequestError("bad_request", f"unknown field {shown(unknown[0])}{hint}; a request has "
                           f"{', '.join(REQUEST_KEYS)}")
    features = req.get("features") or None  # Feast sends [] with a feature service
    service = req.get("feature_service")
    if features is not None and (not isinstance(features, list)
                                 or not all(isinstance(f, str) for f in features)):
        raise RequestError("bad_request", "'features' must be a list of 'view:feature' strings")
    if service is not None and not isinstance(service, str):
        raise RequestError("bad_request", "'feature_service' must be a string")
    if (features is None) == (service is None):
        raise RequestError("bad_request", "give either 'features' (a list of 'view:feature') "
                           "or 'feature_service' (a name), not both and not neither")
    for flag in ("full_feature_names", "include_feature_view_version_metadata"):
        if not isinstance(req.get(flag, False), bool):
            raise RequestError("bad_request", f"{flag!r} must be true or false")
    entities = req.get("entities")
    if not isinstance(entities, dict):  # {} is the store's to answer: it names the keys needed
        raise RequestError("bad_entities", f"'entities' is {_json_type(entities)}; it must be an "
                           f"object of join key -> array of values, like {{\"user_id\": [1, 2]}}")
    for key, values in entities.items():
        if not isinstance(values, list):
            raise RequestError("bad_entities", f"entities[{shown(key)}] is "
                               f"{_json_type(values)}, expected an array of values")
        if len(values) > max_entities:
            raise RequestError("too_many_entities", f"{len(values)} entities in one request; "
                               f"the limit is {max_entities} (serve.max_entities): split it")
    return features, service, entities, req.get("full_feature_names", False)


_DATES: dict[int, str] = {}  # day since the epoch -> "YYYY-MM-DDT" (a bounded memo)


def rfc3339(us: int) -> str:
    """Feast's timestamp text: no fraction, milliseconds or microseconds, whichever is exact."""
    seconds, micros = divmod(us, 1_000_000)
    day, second = divmod(seconds, 86_400)
    date = _DATES.get(day)
    if date is None:  # the calendar once per day: 5x faster than datetime.strftime each time
        if len(_DATES) >= 4096:
            _DATES.clear()
        t = time.gmtime(day * 86_400)
        date = _DATES[day] = f"{t[0]:04d}-{t[1]:02d}-{t[2]:02d}T"
    hour, second = divmod(second, 3600)
    minute, second = divmod(second, 60)
    base = f"{date}{hour:02d}:{minute:02d}:{second:02d}"
    if micros == 0:
        return base + "Z"
    if micros % 1000 == 0:
        return f"{base}.{micros // 1000:03d}Z"
    return f"{base}.{micros:06d}Z"


def _finite(value: Any) -> Any:
    """Protobuf JSON's spelling of non-finite floats, as Feast answers them."""
    if isinstance(value, float) and value != value:
        return "NaN"
    if value == float("inf"):
        return "Infinity"
    if value == float("-inf"):
        return "-Infinity"
    return value


_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
try:  # 2-3x faster than the stdlib for a response (measured: docs/serving.md); same values
    import ujson

    def _fast(obj: Any) -> str:
        return ujson.dumps(obj, escape_forward_slashes=False, allow_nan=False)
except ImportError:  # pragma: no cover - ujson is a dependency
    _fast = _encode  # type: ignore[assignment]


def dumps(obj: Any) -> bytes:
    """Compact JSON bytes, ASCII only (a lone surrogate echoed from a request stays valid)."""
    try:
        return _fast(obj).encode()
    except (OverflowError, ValueError):  # NaN or ±inf: rare, so only then pay for the rewrite
        for r in obj.get("results", ()):
            r["values"] = [_finite(v) for v in r["values"]]
        return _encode(obj).encode()


# Event time -> its text, across requests: a hot entity's newest event is formatted once. Bounded
# (cleared when full: ~10 MB at most), and only a memo of a pure function.
_TEXTS: dict[int | None, str] = {None: EPOCH}
_TEXTS_MAX = 1 << 16


def encode_response(resp: OnlineResponse) -> bytes:
    """Feast's response JSON: the join keys given, in the request's order (PRESENT, epoch
    timestamps), then each feature."""
    keys = list(resp.entities)
    n = len(resp.entities[keys[0]]) if keys else 0
    epoch, present = [EPOCH] * n, ["PRESENT"] * n
    results: list[dict[str, Any]] = [
        {"values": resp.entities[k], "statuses": present, "event_timestamps": epoch}
        for k in keys]
    # The features of one view share their entities' event times: format each column once.
    columns: dict[tuple[int | None, ...], list[str]] = {}
    texts = _TEXTS
    for values, statuses, times, dtype in zip(resp.values, resp.statuses, resp.event_times_us,
                                              resp.dtypes, strict=True):
        column = tuple(times)
        stamps = columns.get(column)
        if stamps is None:
            missing = set(column).difference(texts)
            if missing:
                if len(texts) + len(missing) > _TEXTS_MAX:
                    texts.clear()
                    texts[None] = EPOCH
                for t in missing:
                    texts[t] = rfc3339(t)  # type: ignore[arg-type]
            stamps = columns[column] = [texts[t] for t in column]
        if dtype == "timestamp":  # datetimes: RFC 3339 text, as for event times
            values = [None if v is None else rfc3339(to_micros(v)) for v in values]
        results.append({"values": values, "statuses": statuses, "event_timestamps": stamps})
    return dumps({"metadata": {"feature_names": keys + resp.feature_names},
                  "results": results})
