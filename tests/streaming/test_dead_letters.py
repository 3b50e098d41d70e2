"""Each kind of bad message lands in ``<topic>.dlq`` with its reason and where it came from;
the good messages around it are applied and the consumer keeps going."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

from features.store import FeatureStore
from features.windows import to_micros
from streaming import apply as apply_mod
from streaming.consumer import StreamConsumer
from tests.streaming.harness import END, StreamRepo, dead_letters

AT = END + timedelta(minutes=1)  # every generated event is before END


@pytest.fixture
def repo(tmp_path: Path, redis_url: str, kafka_bootstrap: str) -> StreamRepo:
    r = StreamRepo(tmp_path / "repo", redis_url, kafka_bootstrap, rows=500, partitions=1)
    yield r
    r.close()


def event(repo: StreamRepo, user: int, **change: object) -> dict:
    row = repo.events.head(1).with_columns(
        pl.lit(user).alias("user_id"), pl.lit(AT - timedelta(hours=2)).alias("event_ts"))
    from streaming.events import encode_events

    out = json.loads(encode_events(row, repo.views[0].source)[0])
    out.update(change)
    return out


def late(repo: StreamRepo, user: int) -> dict:
    return event(repo, user, event_ts=(AT - timedelta(days=40)).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ"))


def without(field: str) -> Callable[[StreamRepo, int], dict]:
    def make(repo: StreamRepo, user: int) -> dict:
        e = event(repo, user)
        del e[field]
        return e
    return make


BAD: dict[str, tuple[Callable[[StreamRepo, int], bytes | dict], str, str | None]] = {
    # name: (message, reason, the view that rejects it (None: every view))
    "not json": (lambda r, u: b'{"user_id": 5, "amount": ', "undecodable", None),
    "not an object": (lambda r, u: b"[1, 2, 3]", "undecodable", None),
    "missing field": (without("amount"), "missing_field", None),
    "mistyped field": (lambda r, u: event(r, u, amount="12.50"), "mistyped_field", None),
    "key out of int64": (lambda r, u: event(r, u, user_id=2**64), "mistyped_field", None),
    "mistyped time": (lambda r, u: event(r, u, event_ts="yesterday"), "mistyped_field", None),
    "null time": (lambda r, u: event(r, u, event_ts=None), "null_time", None),
    "null key": (lambda r, u: event(r, u, merchant_id=None), "null_key", "merchant_activity"),
    "too late": (late, "too_late", "user_spend"),

    # the source's expectations (example/card_features.py), the same ones tessera run checks
    "negative amount": (lambda r, u: event(r, u, amount=-12.5), "expectation", None),
    "unknown currency": (lambda r, u: event(r, u, currency="XYZ"), "expectation", None),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_a_bad_message_goes_to_the_dlq_with_its_reason_and_the_rest_is_applied(
        repo: StreamRepo, kind: str) -> None:
    make, reason, view = BAD[kind]
    bad = make(repo, 501)
    payloads = [json.dumps(event(repo, 500)).encode(),
                bad if isinstance(bad, bytes) else json.dumps(bad).encode(),
                json.dumps(event(repo, 502)).encode()]
    repo.produce_raw(payloads, [b"500", b"501", b"502"])
    consumer = StreamConsumer(repo.cfg, repo.views, group="g", clock=lambda: to_micros(AT))
    summary = consumer.run(handle_signals=False, until_idle_s=2.0)
    assert summary.events == 3
    assert summary.dead_letters == {reason: 1}

    [letter] = dead_letters(repo.bootstrap, repo.topic + ".dlq", 1)
    headers = {k: v.decode() for k, v in letter.headers}
    assert letter.value == payloads[1] and letter.key == b"501"  # the original bytes
    assert headers["tessera.reason"] == reason
    assert headers["tessera.topic"] == repo.topic
    assert (headers["tessera.partition"], headers["tessera.offset"]) == ("0", "1")
    assert headers["tessera.detail"]  # a readable line: what was expected, where
    assert headers.get("tessera.view") == view
    if reason == "expectation":  # the detail names the expectation and the failing value
        assert headers["tessera.detail"] in (
            "expectation '0 < amount <= 1000000' failed: amount = -12.5",
            "expectation \"currency in {'EUR', 'USD', 'GBP', 'CHF', 'SEK', 'PLN'}\" failed: "
            "currency = 'XYZ'")

    store = FeatureStore(config=repo.cfg)
    got = store.get_online_features(["user_spend:txn_count_7d"],
                                    [{"user_id": u} for u in (500, 501, 502)], now=AT).to_dict()
    # the good neighbours are applied; the bad one only where no view rejected it
    applied_to_users = view == "merchant_activity"
    assert got["txn_count_7d"] == [1, 1 if applied_to_users else 0, 1]


def test_an_event_stamped_far_in_the_future_is_a_dead_letter_of_each_view(
        repo: StreamRepo) -> None:
    """A sentinel time (9999-12-31) is past stream.max_future: each view rejects it. Before a
    review found it, its tile overflowed the merge's packed (entity, tile) numbers and was
    written into another entity's value (a merchant read an event it never had)."""
    payloads = [json.dumps(event(repo, 500)).encode(),
                json.dumps(event(repo, 501, event_ts="9999-12-31T23:59:59Z")).encode(),
                json.dumps(event(repo, 502)).encode()]
    repo.produce_raw(payloads, [b"500", b"501", b"502"])
    consumer = StreamConsumer(repo.cfg, repo.views, group="g", clock=lambda: to_micros(AT))
    summary = consumer.run(handle_signals=False, until_idle_s=2.0)
    assert summary.dead_letters == {"too_early": len(repo.views)}
    letters = dead_letters(repo.bootstrap, repo.topic + ".dlq", len(repo.views))
    views = {dict(x.headers)["tessera.view"].decode() for x in letters}
    assert views == {v.name for v in repo.views}
    assert all(x.value == payloads[1] for x in letters)
    detail = dict(letters[0].headers)["tessera.detail"].decode()
    assert "9999-12-31" in detail and "stream.max_future" in detail
    store = FeatureStore(config=repo.cfg)
    got = store.get_online_features(["user_spend:txn_count_7d"],
                                    [{"user_id": u} for u in (500, 501, 502)], now=AT).to_dict()
    assert got["txn_count_7d"] == [1, 0, 1]


def test_a_rule_that_fails_on_one_row_sends_only_that_row_to_the_dlq(
        repo: StreamRepo, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rules are total by design (division by zero is null, casts out of range are null),
    so an engine failure is forced here: the batch is then evaluated row by row and only the
    failing row becomes a dead letter, for the view whose rules failed."""
    real = apply_mod.project

    def failing(view, events):  # the engine raising on one value, for user_spend only
        out, counts = real(view, events)
        if view.name != "user_spend":
            return out, counts
        return out.with_columns(pl.col("x0").map_batches(_explode_on_666)), counts

    monkeypatch.setattr(apply_mod, "project", failing)
    payloads = [json.dumps(event(repo, u, amount=a)).encode()
                for u, a in ((500, 10.0), (501, 666.0), (502, 12.0))]
    repo.produce_raw(payloads, [b"500", b"501", b"502"])
    consumer = StreamConsumer(repo.cfg, repo.views, group="g", clock=lambda: to_micros(AT))
    summary = consumer.run(handle_signals=False, until_idle_s=2.0)
    assert summary.dead_letters == {"rule_error": 1}
    assert summary.applied == {"user_spend": 2, "merchant_activity": 3}
    [letter] = dead_letters(repo.bootstrap, repo.topic + ".dlq", 1)
    headers = {k: v.decode() for k, v in letter.headers}
    assert headers["tessera.reason"] == "rule_error" and headers["tessera.view"] == "user_spend"
    assert "cannot evaluate x0" in headers["tessera.detail"]


def _explode_on_666(s: pl.Series) -> pl.Series:
    if (s > 50).any():  # 666 in any currency; the neighbours' 10 and 12 stay below
        raise pl.exceptions.ComputeError(f"cannot evaluate x0 = {s.max()}")
    return s


def test_events_that_would_take_an_integer_sum_out_of_int64_are_dead_letters(
        repo: StreamRepo) -> None:
    """A view summing an int64 column: the events of an entity whose sum would leave int64
    are dead letters (reason overflow) and the other entities' events are applied. Before, the
    consumer stopped on the batch (with no view named) and on every restart after it."""
    defs = repo.folder / "example" / "card_features.py"
    defs.write_text(defs.read_text() + (
        '\nid_sums = FeatureView(name="id_sums", entities=[user], source=transactions,\n'
        '    ttl="30d", features=[agg.sum(col("transaction_id"), windows=["1d"], '
        'name="ids")])\n'))
    big = 2**62
    payloads = [json.dumps(event(repo, 500, transaction_id=big)).encode(),
                json.dumps(event(repo, 500, transaction_id=big)).encode(),
                json.dumps(event(repo, 502, transaction_id=7)).encode()]
    repo.produce_raw(payloads, [b"500", b"500", b"502"])
    consumer = StreamConsumer(repo.cfg, repo.views, group="g", clock=lambda: to_micros(AT))
    summary = consumer.run(handle_signals=False, until_idle_s=2.0)
    assert summary.dead_letters == {"overflow": 2}
    letters = dead_letters(repo.bootstrap, repo.topic + ".dlq", 2)
    assert {dict(x.headers)["tessera.view"] for x in letters} == {b"id_sums"}
    assert "out of int64" in dict(letters[0].headers)["tessera.detail"].decode()
    store = FeatureStore(config=repo.cfg)
    got = store.get_online_features(["id_sums:ids_1d", "user_spend:txn_count_7d"],
                                    [{"user_id": u} for u in (500, 502)], now=AT).to_dict()
    assert got["ids_1d"] == [0, 7]  # never a wrapped value
    assert got["txn_count_7d"] == [2, 1]  # the other views took user 500's events


def test_a_dead_letter_kafka_refuses_stops_the_stream_naming_it(repo: StreamRepo) -> None:
    """A dead-letter topic that takes at most 2,000 bytes a message, and a malformed message of
    5 KB: the consumer stops with the topic, the record and Kafka's reason, and commits nothing
    (before, a bare `Future not done` traceback)."""
    from kafka.admin import KafkaAdminClient, NewTopic

    from streaming.errors import StreamError

    admin = KafkaAdminClient(bootstrap_servers=repo.bootstrap)
    try:
        admin.create_topics([NewTopic(repo.topic + ".dlq", 1, 1,
                                      topic_configs={"max.message.bytes": "2000"})])
    finally:
        admin.close()
    repo.produce_raw([b'{"user_id": ' + b"9" * 5000, json.dumps(event(repo, 500)).encode()],
                     [b"1", b"500"])
    consumer = StreamConsumer(repo.cfg, repo.views, group="g", clock=lambda: to_micros(AT))
    with pytest.raises(StreamError, match=rf"Kafka refused a dead letter for "
                                          rf"'{repo.topic}.dlq' \(from partition 0, offset 0, "
                                          rf"5,012 bytes\): MessageSizeTooLargeError.*Nothing "
                                          rf"of this batch was committed"):
        consumer.run(handle_signals=False, until_idle_s=2.0)
