"""Online reads from real Redis equal the point-in-time read at the same instant, for every
feature of the example, with windows merged at request time; bad requests fail in one line."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from features.errors import OnlineRequestError
from features.online import keys as K
from features.store import FeatureStore
from features.windows import to_micros
from pipelines.materialize import materialize
from tests.online.repo import REPO_ROOT, build, equal, historical, ids, today

ORPHAN = 987654321  # a merchant id with only a lifetime value


@pytest.mark.parametrize("after", [timedelta(minutes=10), timedelta(hours=1, minutes=5),
                                   timedelta(days=1, hours=3), timedelta(days=8),
                                   timedelta(days=31)])
@pytest.mark.parametrize(("view", "key"), [("user_spend", "user_id"),
                                           ("merchant_activity", "merchant_id")])
def test_online_equals_historical_for_every_feature(materialized: FeatureStore, view: str,
                                                     key: str, after: timedelta) -> None:
    at = today() + after  # every event is before today's midnight
    keys = ids(materialized, key)
    fv = materialized.definitions.views[view]
    feats = [f"{view}:{f.name}" for f in fv.features]
    online = materialized.get_online_features(feats, [{key: k} for k in keys], now=at)
    got = online.to_dict()
    want = historical(materialized, view, key, keys, at)
    mismatches = [(f.name, k, got[f.name][i], want[f.name][i])
                  for f in fv.features for i, k in enumerate(keys)
                  if not equal(f.function, got[f.name][i], want[f.name][i])]
    assert mismatches == [], mismatches[:5]
    statuses = online.status_dict()
    assert all(statuses[f.name][-1] == "NOT_FOUND" for f in fv.features)
    assert all(s != "NOT_FOUND" for s in statuses[fv.features[0].name][:-1])


def test_a_quiet_key_reads_zero_an_hour_later_without_any_write(
        materialized: FeatureStore) -> None:
    at = today() + timedelta(minutes=1)
    keys = ids(materialized, "user_id", 400)
    feats = ["user_spend:txn_count_1h", "user_spend:txn_count_1d"]
    before = materialized.get_online_features(feats, {"user_id": keys}, now=at).to_dict()
    active = [i for i, c in enumerate(before["txn_count_1h"]) if c]
    assert active, "some user must have an event in the last hour before midnight"
    later = materialized.get_online_features(feats, {"user_id": keys},
                                             now=at + timedelta(hours=1)).to_dict()
    assert all(later["txn_count_1h"][i] == 0 for i in active)
    assert any(later["txn_count_1d"][i] for i in active)


def test_plain_feature_past_its_ttl_is_outside_max_age(materialized: FeatureStore) -> None:
    [user] = ids(materialized, "user_id", 2)[:1]
    feats = ["user_spend:last_country", "user_spend:txn_count_7d"]
    fresh = materialized.get_online_features(feats, [{"user_id": user}], now=today())
    assert fresh.status_dict()["last_country"] == ["PRESENT"]
    assert isinstance(fresh.to_dict()["last_country"][0], str)
    stale = materialized.get_online_features(feats, [{"user_id": user}],
                                             now=today() + timedelta(days=31))
    assert stale.status_dict()["last_country"] == ["OUTSIDE_MAX_AGE"]
    assert stale.to_dict()["last_country"] == [None]
    assert stale.to_dict()["txn_count_7d"] == [0]


def test_feature_service_full_names_and_output_shapes(materialized: FeatureStore) -> None:
    [user] = ids(materialized, "user_id", 2)[:1]
    [merchant] = ids(materialized, "merchant_id", 2)[:1]
    resp = materialized.get_online_features(
        feature_service="fraud_model_v1", entity_rows=[{"user_id": user, "merchant_id": merchant}],
        full_feature_names=True)
    service = materialized.definitions.services["fraud_model_v1"]
    assert resp.feature_names == [ref.replace(":", "__") for ref in service.features]
    out = resp.to_dict(include_event_timestamps=True)
    assert out["user_id"] == [user] and out["merchant_id"] == [merchant]
    assert out["user_spend__txn_count_7d__ts"][0] is not None
    table = resp.to_arrow()
    assert table.num_rows == 1
    assert str(table.schema.field("user_spend__spend_eur_7d").type) == "double"
    assert str(table.schema.field("merchant_activity__txn_count_lifetime").type) == "int64"
    assert list(resp.to_df().columns) == list(table.column_names)


@pytest.mark.parametrize("after", [timedelta(minutes=10), timedelta(days=1, hours=3),
                                   timedelta(days=31)])
def test_one_entity_reads_as_it_does_among_many(materialized: FeatureStore,
                                                after: timedelta) -> None:
    """A one-entity read (evaluated without per-entity columns, the usual call of a model)
    gives every value, status and event time a many-entity read gives that entity: every
    feature of both views (windows, lifetime, last within a window, a plain TTL feature, fresh
    and past its TTL), keys known, never seen and null."""
    users = ids(materialized, "user_id", 6)
    merchants = ids(materialized, "merchant_id", 6)
    rows = [{"user_id": u, "merchant_id": m} for u, m in zip(users, merchants, strict=True)]
    rows += [{"user_id": None, "merchant_id": merchants[0]},
             {"user_id": users[0], "merchant_id": None},
             {"user_id": users[0], "merchant_id": ORPHAN}]  # a lifetime value, no window value
    view = materialized.definitions.views["merchant_activity"]
    head, tail = K.prefix(materialized.config.project, view.name, view.fingerprint())
    client = materialized.online.client
    client.set(f"{head}{ORPHAN}{tail}{K.LIFETIME}",
               client.get(f"{head}{merchants[0]}{tail}{K.LIFETIME}"))
    try:
        _one_by_one_equals_many(materialized, rows, today() + after)
    finally:
        client.delete(f"{head}{ORPHAN}{tail}{K.LIFETIME}")


def _one_by_one_equals_many(materialized: FeatureStore, rows: list[dict], at: datetime) -> None:
    """Each row read alone gives its row of the many-row read, by values, statuses and times."""
    many = materialized.get_online_features(feature_service="fraud_model_v1",
                                            entity_rows=rows, full_feature_names=True, now=at)
    want, want_status = many.to_dict(include_event_timestamps=True), many.status_dict()
    assert {"PRESENT", "NOT_FOUND"} <= {s for c in want_status.values() for s in c}
    assert want["merchant_activity__txn_count_lifetime__ts"][-1] is not None  # the orphan's
    for i, row in enumerate(rows):
        one = materialized.get_online_features(feature_service="fraud_model_v1",
                                               entity_rows=[row], full_feature_names=True,
                                               now=at)
        assert one.to_dict(include_event_timestamps=True) == {
            k: [v[i]] for k, v in want.items()}, row
        assert one.status_dict() == {k: [v[i]] for k, v in want_status.items()}, row
    spend = materialized.definitions.views["user_spend"]  # one view: its features in any order
    feats = [f"user_spend:{f.name}" for f in reversed(spend.features)]
    many = materialized.get_online_features(feats, rows[:3], now=at)
    for i, row in enumerate(rows[:3]):
        one = materialized.get_online_features(feats, [row], now=at)
        assert one.to_dict() == {k: [v[i]] for k, v in many.to_dict().items()}
        assert one.status_dict() == {k: [v[i]] for k, v in many.status_dict().items()}


def test_entity_rows_of_any_mapping_or_int_type_read_alike(materialized: FeatureStore) -> None:
    """Rows as plain dicts, as other mappings, and keys as numpy ints read the same, few or
    many (many rows take C-level loops first)."""
    from types import MappingProxyType

    import numpy as np

    users = ids(materialized, "user_id", 8)
    feats = ["user_spend:txn_count_7d", "user_spend:spend_eur_7d"]
    want = materialized.get_online_features(feats, [{"user_id": u} for u in users]).to_dict()
    assert want["txn_count_7d"][0] > 0
    for rows in ([MappingProxyType({"user_id": u}) for u in users],
                 [{"user_id": np.int64(u)} for u in users],
                 [{"user_id": u, "other": "x"} for u in users]):
        got = materialized.get_online_features(feats, rows).to_dict()
        assert got["txn_count_7d"] == want["txn_count_7d"]
        assert got["spend_eur_7d"] == want["spend_eur_7d"]
        assert [int(u) for u in got["user_id"]] == users


def test_entity_rows_as_a_data_frame_read_as_its_columns(materialized: FeatureStore) -> None:
    """pandas, Polars and pyarrow frames read as their columns (as get_historical_features
    takes them), their nulls as null keys (NOT_FOUND), the keys echoed as Python values."""
    import pandas as pd
    import polars as pl
    import pyarrow as pa

    users = ids(materialized, "user_id", 5)
    feats = ["user_spend:txn_count_7d", "user_spend:spend_eur_7d"]
    want = materialized.get_online_features(feats, {"user_id": [*users, None]})
    assert want.status_dict()["txn_count_7d"][-1] == "NOT_FOUND"
    frames = [pd.DataFrame({"user_id": pd.array([*users, None], dtype="Int64"), "x": 1.5}),
              pl.DataFrame({"user_id": [*users, None], "x": [1.5] * 6}),
              pa.table({"user_id": [*users, None], "x": [1.5] * 6})]
    for frame in frames:
        got = materialized.get_online_features(feats, frame)
        assert got.to_dict() == want.to_dict(), type(frame)
        assert got.status_dict() == want.status_dict()
        assert [type(u) for u in got.to_dict()["user_id"][:-1]] == [int] * 5
    with pytest.raises(OnlineRequestError, match=r"entity row 0: join key 'user_id' is float "
                                                 r"1\.0; feature view 'user_spend' expects int64"):
        materialized.get_online_features(feats, pd.DataFrame({"user_id": [1.0, 2.0]}))
    with pytest.raises(OnlineRequestError, match=r"polars LazyFrame; expected a DataFrame "
                                                 r"\(call \.collect\(\)\)"):
        materialized.get_online_features(feats, pl.DataFrame({"user_id": users}).lazy())


def test_null_key_reads_not_found(materialized: FeatureStore) -> None:
    resp = materialized.get_online_features(["user_spend:txn_count_7d", "user_spend:spend_eur_7d"],
                                            [{"user_id": None}])
    assert resp.to_dict()["txn_count_7d"] == [0]
    assert resp.status_dict()["txn_count_7d"] == ["NOT_FOUND"]
    # typed by the entity's declared dtype, not inferred from the values (all null here)
    assert str(resp.to_arrow().schema.field("user_id").type) == "int64"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"features": ["user_spend:txn_count_7"]}, r"no feature 'txn_count_7' \(did you mean "
                                               r"'txn_count_7d'"),
    ({"features": ["user_spnd:txn_count_7d"]}, r"unknown feature view 'user_spnd'.*'user_spend'"),
    ({"features": ["txn_count_7d"]}, r"'txn_count_7d' is not 'view:feature'"),
    ({"feature_service": "fraud_model"}, r"unknown feature service 'fraud_model'.*fraud_model_v1"),
    ({"features": ["user_spend:txn_count_7d"], "entity_rows": [{"user": 1}]},
     r"entity row 0 has no join key 'user_id'"),
    ({"features": ["user_spend:txn_count_7d"], "entity_rows": [{"user_id": 1}, {"user_id": "2"}]},
     r"entity row 1: join key 'user_id' is str '2'; feature view 'user_spend' expects int64"),
    ({"features": ["user_spend:txn_count_7d"], "entity_rows": [{"user_id": True}]},
     r"entity row 0: join key 'user_id' is bool"),
    ({"features": ["user_spend:txn_count_7d"], "entity_rows": [{"user_id": -(2**63) - 1}]},
     r"entity row 0: join key 'user_id' is -9223372036854775809, outside int64"),
    # many rows (checked by C-level loops first): the same errors, naming the same row
    ({"features": ["user_spend:txn_count_7d"],
      "entity_rows": {"user_id": [*range(7), None, 2**63, 5]}},
     r"entity row 8: join key 'user_id' is 9223372036854775808, outside int64 \(feature view "
     r"'user_spend' keys are -2\*\*63 \.\. 2\*\*63-1\)"),
    ({"features": ["user_spend:txn_count_7d"],
      "entity_rows": [{"user_id": i} for i in range(7)] + [{"user": 1}, {"user_id": 9}]},
     r"entity row 7 has no join key 'user_id' \(feature view 'user_spend' needs it; the row "
     r"has: user\)"),
    ({"features": ["user_spend:txn_count_7d"],
      "entity_rows": [{"user_id": i} for i in range(7)] + [{"user_id": False}]},
     r"entity row 7: join key 'user_id' is bool False"),
    ({"features": ["user_spend:txn_count_7d"],
      "entity_rows": {"user_id": [*range(9), 2.0]}},
     r"entity row 9: join key 'user_id' is float 2.0"),
])
def test_bad_requests_fail_in_one_line(materialized: FeatureStore, kwargs: dict,
                                       message: str) -> None:
    kwargs.setdefault("entity_rows", [{"user_id": 1}])
    with pytest.raises(OnlineRequestError, match=message) as e:
        materialized.get_online_features(**kwargs)
    assert "\n" not in str(e.value)


def test_now_accepts_datetime_or_micros(materialized: FeatureStore) -> None:
    """``now`` as a datetime (naive: UTC), a pandas Timestamp, an ISO 8601 string, a numpy
    datetime64 or µs (int or numpy int) reads the same instant; anything else is one line."""
    import numpy as np
    import pandas as pd

    user = ids(materialized, "user_id", 2)[0]
    feats = ["user_spend:spend_eur_7d", "user_spend:txn_count_1h"]
    at = today() + timedelta(hours=2)
    want = materialized.get_online_features(feats, [{"user_id": user}], now=at).to_dict()
    assert want["spend_eur_7d"][0] > 0
    for now in (to_micros(at), np.int64(to_micros(at)), at.replace(tzinfo=None),
                pd.Timestamp(at).tz_convert("Europe/Paris"), at.isoformat(),
                at.strftime("%Y-%m-%dT%H:%M:%SZ"), np.datetime64(to_micros(at), "us")):
        got = materialized.get_online_features(feats, [{"user_id": user}], now=now)
        assert got.to_dict() == want, repr(now)
    for now, shown in ((at.date(), "date"), (1.7e15, "float"), (True, "bool"),
                       ("an hour ago", "str 'an hour ago'"), (pd.NaT, "NaTType")):
        with pytest.raises(OnlineRequestError, match=rf"^now is {shown}.*; expected a "
                                                     r"datetime, an ISO 8601 string or µs"):
            materialized.get_online_features(feats, [{"user_id": user}], now=now)


def test_timestamp_and_bool_features_round_trip(tmp_path: Path, redis_url: str) -> None:
    """last() of a timestamp or a bool, max() of a timestamp: online equals offline."""
    text = (REPO_ROOT / "example" / "card_features.py").read_text()
    extra = ('agg.last(col("event_ts"), name="last_seen"),\n'
             '        agg.last(col("card_present"), name="last_card_present"),\n'
             '        agg.max(col("event_ts"), windows=["7d"], name="latest_event"),\n'
             '        agg.last(col("channel"), name="last_channel"),')
    store = build(tmp_path / "repo", redis_url, rows=3_000, days=5,
                  definitions=text.replace('agg.last(col("channel"), name="last_channel"),',
                                           extra))
    materialize(store.config, [store.definitions.views["user_spend"]], store.online,
                now_us=to_micros(today()), show_progress=False)
    keys = ids(store, "user_id", 40)
    feats = ["user_spend:last_seen", "user_spend:last_card_present", "user_spend:latest_event_7d"]
    at = today() + timedelta(hours=3)
    got = store.get_online_features(feats, {"user_id": keys}, now=at).to_dict()
    want = historical(store, "user_spend", "user_id", keys, at)
    for name in ("last_seen", "last_card_present", "latest_event_7d"):
        assert got[name] == want[name], name
    assert isinstance(got["last_seen"][0], datetime) and isinstance(got["last_card_present"][0],
                                                                    bool)
    store.close()


@pytest.mark.parametrize(("rows", "message"), [
    ({"user_id": 5}, r"entities\['user_id'\] is int; expected a list"),
    ({"user_id": "5"}, r"entities\['user_id'\] is str; expected a list"),
    ([{"user_id": 1}, 5], r"entity row 1 is int, expected a dict"),
    ([{"user_id": 1}] * 8 + [[("user_id", 1)]], r"entity row 8 is list, expected a dict"),
])
def test_malformed_entity_shapes_fail_in_one_line(materialized: FeatureStore, rows,
                                                  message: str) -> None:
    with pytest.raises(OnlineRequestError, match=message):
        materialized.get_online_features(["user_spend:txn_count_7d"], rows)


def test_a_password_never_shows_in_errors(tmp_path: Path) -> None:
    from features.errors import OnlineUnavailableError
    from features.online.redis_store import RedisOnline
    from tests.online.private_redis import free_port

    online = RedisOnline(f"redis://me:s3cret@127.0.0.1:{free_port()}/0", timeout_s=0.2)
    with pytest.raises(OnlineUnavailableError) as e:
        online.get(["k"])
    assert "s3cret" not in str(e.value) and "me:***@127.0.0.1" in str(e.value)


def test_a_refused_write_names_the_reply_and_keeps_the_rest(redis_url: str) -> None:
    """Pipelined writes read their replies off the socket: an error reply in the middle of a
    chunk is reported, the commands around it are applied, and the connection stays usable."""
    import uuid

    import redis as redis_py

    from features.errors import OnlineUnavailableError
    from features.online.redis_store import RedisOnline

    online = RedisOnline(redis_url)
    a, b = f"t:{uuid.uuid4().hex}:a", f"t:{uuid.uuid4().hex}:b"

    def set_(key: str, value: bytes) -> bytes:
        k = key.encode()
        return b"*3\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(k), k, len(value), value)

    bad = b"*2\r\n$3\r\nSET\r\n$1\r\nx\r\n"  # SET without a value
    with pytest.raises(OnlineUnavailableError, match="refused a write: ERR wrong number of "
                                                     "arguments for 'set' command"):
        online.write_packed([(set_(a, b"1") + bad, 2), (set_(b, b"\r\n2"), 1)])
    client = redis_py.Redis.from_url(redis_url)
    assert client.mget([a, b]) == [b"1", b"\r\n2"]
    assert online.write([(a, b"3", None)], [b]) == 2  # the pooled connection is still in step
    assert client.mget([a, b]) == [b"3", None]
    client.delete(a)
    client.close()


@pytest.mark.parametrize("spin_us", [200, 1])  # 1 µs: the reply is waited for, blocking
def test_a_polling_read_returns_what_a_blocking_read_returns(redis_url: str,
                                                             spin_us: int) -> None:
    """Reads poll for their reply (``online.spin_us``) before blocking: same bytes, in order,
    None where missing, for replies of one packet and of many (a 3 MB value)."""
    import uuid

    import redis as redis_py

    from features.online.redis_store import RedisOnline

    prefix = f"t:{uuid.uuid4().hex}"
    values = {f"{prefix}:small": b"\x00\r\n1", f"{prefix}:empty": b"",
              f"{prefix}:big": bytes(range(256)) * 12_000}
    client = redis_py.Redis.from_url(redis_url)
    client.mset(values)
    keys = [*values, f"{prefix}:missing"]
    try:
        polling, blocking = RedisOnline(redis_url, spin_us=spin_us), RedisOnline(redis_url)
        want = [*values.values(), None]
        for _ in range(3):  # and the connection stays in step
            assert polling.get(keys) == want
            assert polling.get(keys[::-1]) == want[::-1]
        assert blocking.get(keys) == want
    finally:
        client.delete(*values)
        client.close()


def test_a_request_larger_than_the_send_buffer_is_sent_whole(redis_url: str) -> None:
    """A read writes its request straight to the socket's descriptor; what the send buffer
    does not take at once is sent after, waiting with the timeout. A 4 KB send buffer and a
    ~470 KB ``MGET`` (40,000 keys; the first write takes 32 KB of it): every value comes back,
    in order, polling or not, and the connection stays in step for the next read."""
    import socket
    import uuid

    import redis as redis_py

    from features.online.redis_store import RedisOnline

    prefix = f"t:{uuid.uuid4().hex}"
    stored = {f"{prefix}:{i}": str(i).encode() for i in range(0, 40_000, 997)}
    keys = [f"{prefix}:{i}" for i in range(40_000)]
    client = redis_py.Redis.from_url(redis_url)
    client.mset(stored)
    try:
        for spin_us in (200, 0):
            online = RedisOnline(redis_url, spin_us=spin_us)
            assert online.get([keys[0]]) == [b"0"]  # connected
            sock = online._connection()._sock
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < 64 * 1024
            got = online.get(keys)
            assert got == [stored.get(k) for k in keys]
            assert online.get(keys[997:998]) == [b"997"]
            online.close()
    finally:
        client.delete(*stored)
        client.close()


def test_a_polling_read_fails_like_a_blocking_one(tmp_path: Path) -> None:
    """An error reply (here NOAUTH) raises what redis-py raises, and a Redis that stops
    answering (SIGSTOP) fails within the timeout, not after the polling: both as
    OnlineUnavailableError naming the store."""
    import redis as redis_py

    from features.errors import OnlineUnavailableError
    from features.online.redis_store import RedisOnline
    from tests.online.private_redis import PrivateRedis

    server = PrivateRedis(tmp_path / "redis")
    server.start()
    try:
        redis_py.Redis(port=server.port).config_set("requirepass", "pw")
        polling = RedisOnline(server.url, timeout_s=0.3, spin_us=200)
        blocking = RedisOnline(server.url, timeout_s=0.3, spin_us=0)
        errors = []
        for online in (polling, blocking):
            with pytest.raises(OnlineUnavailableError) as e:
                online.get(["k"])
            errors.append(str(e.value))
        assert errors[0] == errors[1]
        assert errors[0].startswith(f"online store {server.url} is unavailable: ")
        assert "Authentication required" in errors[0]

        redis_py.Redis(port=server.port, password="pw").config_set("requirepass", "")
        assert polling.get(["k"]) == [None]  # works again: the connection was replaced
        server.fails_while_hung(lambda: polling.get(["k"]), 0.3)
        assert polling.get(["k"]) == [None]
    finally:
        server.stop(save=False)


def test_only_a_lone_read_polls(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads polling at once fight over the GIL (p99 1.5× worse with 4 threads, measured):
    a read polls only when no other read of the process is in flight, and the count of reads
    in flight survives failed reads."""
    from features.errors import OnlineUnavailableError
    from features.online import redis_store
    from tests.online.private_redis import free_port

    polled: list[int] = []
    real = redis_store.call_spinning

    def spy(conn, command, reader, spin_s):  # type: ignore[no-untyped-def]
        if spin_s > 0:  # a blocking read goes through the same function with no spin
            polled.append(1)
        return real(conn, command, reader, spin_s)

    monkeypatch.setattr(redis_store, "call_spinning", spy)
    online = redis_store.RedisOnline(redis_url, spin_us=200)
    assert online.get(["t:absent"]) == [None] and len(polled) == 1
    assert redis_store._IN_FLIGHT.enter()  # another read in flight
    try:
        assert online.get(["t:absent"]) == [None] and len(polled) == 1  # blocked at once
    finally:
        redis_store._IN_FLIGHT.leave()
    down = redis_store.RedisOnline(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2,
                                   spin_us=200)
    with pytest.raises(OnlineUnavailableError):
        down.get(["k"])
    assert redis_store._IN_FLIGHT.reads == 0
    polled.clear()
    assert online.get(["t:absent"]) == [None] and len(polled) == 1  # alone again: polls


def test_an_unset_spin_polls_only_where_the_kernel_does_not(tmp_path: Path,
                                                            redis_url: str) -> None:
    """``online.spin_us`` unset: 200 µs, but 0 on a VM whose kernel already polls before it
    halts an idle vCPU (haltpoll's ``guest_halt_poll_ns`` > 0), where our poll only costs, and
    on a one-CPU machine reading a local Redis, where the poll would hold Redis's CPU; a value
    in the repo always wins."""
    from features.config import load_config
    from features.online import spin

    knob = tmp_path / "guest_halt_poll_ns"
    knob.write_text("200000\n")
    assert spin.default_spin_us(str(knob)) == 0
    knob.write_text("0\n")  # what this VM ships: every idle vCPU halts at once
    assert spin.default_spin_us(str(knob)) == spin.SPIN_US == 200
    assert spin.default_spin_us(str(tmp_path / "absent")) == 200  # no haltpoll driver
    knob.write_text("garbage")
    assert spin.default_spin_us(str(knob)) == 200
    # One CPU and a local Redis: Redis answers on the CPU the poll would hold.
    knob.write_text("0\n")
    for local in ("redis://127.0.0.1:6390/0", "redis://localhost:6379", "rediss://[::1]:6380",
                  "unix:///run/redis/redis.sock?db=0", "redis://127.8.0.3:6379/1"):
        assert spin.default_spin_us(str(knob), url=local, cpus=1) == 0, local
        assert spin.default_spin_us(str(knob), url=local, cpus=2) == 200, local
    for remote in ("redis://10.0.0.5:6379/0", "redis://redis.internal:6379",
                   "rediss://[2001:db8::1]:6380"):  # our vCPU's wake-up is still saved
        assert spin.default_spin_us(str(knob), url=remote, cpus=1) == 200, remote

    definitions = REPO_ROOT / "example" / "card_features.py"
    (tmp_path / "unset").mkdir()
    (tmp_path / "unset" / "feature_repo.yaml").write_text(
        f"project: spin\ndefinitions: [{definitions}]\nonline:\n  url: {redis_url}\n")
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "feature_repo.yaml").write_text(
        f"project: spin\ndefinitions: [{definitions}]\nonline:\n  url: {redis_url}\n"
        f"  spin_us: 7\n")
    unset = FeatureStore(config=load_config(tmp_path / "unset"))
    assert unset.online.spin_s == spin.default_spin_us(url=redis_url) / 1e6  # this box's
    assert FeatureStore(config=load_config(tmp_path / "set")).online.spin_s == 7e-6


def test_a_large_read_in_parts_equals_one_mget(materialized: FeatureStore,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A read past READ_PART entities is sent as several pipelined MGETs: the same values,
    statuses, event times and entities as one MGET, with null keys and unknown entities
    anywhere, a part of null keys only (no MGET for it), and both views' keys."""
    import features.store as fs

    part = fs.READ_PART
    users, merchants = ids(materialized, "user_id"), ids(materialized, "merchant_id")
    rows = [{"user_id": users[i % len(users)], "merchant_id": merchants[i % len(merchants)]}
            for i in range(3 * part)]
    rows[3]["user_id"] = None
    rows[part]["merchant_id"] = None  # the first row of a part
    rows[-1]["user_id"] = 777777777  # never seen
    rows += [{"user_id": None, "merchant_id": None} for _ in range(part)]  # nulls only
    feats = [f"user_spend:{f.name}" for f in materialized.definitions.views["user_spend"].features]
    feats += ["merchant_activity:txn_count_lifetime", "merchant_activity:txn_count_1h"]
    plan = materialized.plan(feats, full_feature_names=True)
    n, columns = plan.entity_columns(rows)
    now = to_micros(today() + timedelta(hours=2))
    keys, spans = fs._keys(plan, columns)
    whole = fs._respond(plan, columns, spans, materialized.online.get(keys), now)

    sent: list[int] = []
    real = materialized.online.get_pipelined

    def counted(key_lists):  # type: ignore[no-untyped-def]
        def each():  # type: ignore[no-untyped-def]
            for keys in key_lists:
                sent.append(len(keys))
                yield keys
        return real(each())

    monkeypatch.setattr(materialized.online, "get_pipelined", counted)
    parts = fs.read(materialized.online, plan, n, columns, now)
    assert len(sent) == 4 and sent[3] == 0 and sum(sent) == len(keys)
    assert parts.to_dict(include_event_timestamps=True) == whole.to_dict(
        include_event_timestamps=True)
    assert parts.statuses == whole.statuses and parts.event_times_us == whole.event_times_us
    assert parts.entities == {"user_id": [r["user_id"] for r in rows],
                              "merchant_id": [r["merchant_id"] for r in rows]}
    assert {"PRESENT", "NOT_FOUND"} <= {s for column in parts.statuses for s in column}


def test_pipelined_reads_stay_in_step_and_fail_like_one_read(tmp_path: Path) -> None:
    """RedisOnline.get_pipelined: each list's values in order ([] for an empty list); a caller
    that stops early leaves no reply to be read by the next call; a Redis restarted between
    calls is retried; one that stops answering fails within the timeout."""
    import redis as redis_py

    from features.online.redis_store import RedisOnline
    from tests.online.private_redis import PrivateRedis

    server = PrivateRedis(tmp_path / "redis")
    server.start()
    try:
        admin = redis_py.Redis(port=server.port)
        admin.mset({f"k{i}": f"v{i}" for i in range(30)})
        online = RedisOnline(server.url, timeout_s=0.3)
        lists = [["k0", "k1"], [], ["nope", "k29"], ["k5"]]
        want = [[b"v0", b"v1"], [], [None, b"v29"], [b"v5"]]
        for _ in range(2):
            assert list(online.get_pipelined(lists)) == want
        replies = online.get_pipelined(lists)
        assert next(replies) == want[0]
        replies.close()  # three replies unread: the connection must not be reused as is
        assert online.get(["k7", "k8"]) == [b"v7", b"v8"]
        assert list(online.get_pipelined([[], []])) == [[], []]

        assert admin.client_kill_filter(_type="normal", skipme=True) >= 1  # as a restart does
        assert list(online.get_pipelined(lists)) == want
        server.stop()
        server.start()
        assert list(online.get_pipelined(lists)) == want  # the data survived the restart

        server.fails_while_hung(lambda: list(online.get_pipelined(lists)), 0.3)
        assert list(online.get_pipelined(lists)) == want
        online.close()
    finally:
        server.stop(save=False)
