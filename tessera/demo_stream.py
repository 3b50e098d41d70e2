"""The demo's last step: a burst of live events through Kafka changes what a model reads."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from features.config import RepoConfig

BURST = 5
SHOWN = ("txn_count_1h", "spend_eur_1h", "txn_count_7d", "last_country", "last_channel")


def run_stream(cfg: RepoConfig, console: Console, user: int) -> None:
    """Produce ``BURST`` events for ``user`` now, stream them, read before and after."""
    from datetime import UTC, datetime, timedelta

    import polars as pl
    from rich.table import Table

    from features.store import FeatureStore
    from streaming import events as E
    from streaming import kafka_admin
    from streaming import produce as P
    from streaming.consumer import StreamConsumer, group_id
    from tessera.commands import load_valid

    console.rule("[bold]11. tessera stream: live events through Kafka into the online values")
    defs = load_valid(cfg)
    views = [v for v in defs.views.values() if v.source.kafka_topic]
    source = views[0].source
    topic = source.kafka_topic
    assert topic is not None
    store = FeatureStore(config=cfg)
    features = [f"user_spend:{f}" for f in SHOWN]
    before = store.get_online_features(features, [{"user_id": user}]).to_dict()

    now = datetime.now(UTC)
    burst = pl.DataFrame({
        "transaction_id": [9_000_000_000 + i for i in range(BURST)],
        "user_id": [user] * BURST,
        "merchant_id": [2_000_000_001] * BURST,
        "amount": [12.5, 80.0, 7.25, 300.0, 42.0],
        "currency": ["EUR", "EUR", "GBP", "EUR", "USD"],
        "country": ["FR", "FR", "GB", "PT", "PT"],
        "channel": ["pos", "online", "pos", "online", "pos"],
        "card_present": [True, False, True, False, True],
        "mcc": ["5411", "5732", "5812", "4722", "5411"],
        "is_fraud": [False] * BURST,
        "event_ts": [now - timedelta(seconds=50 - 10 * i) for i in range(BURST)],
    })
    kafka_admin.ensure_topic(cfg.kafka.bootstrap_servers, topic)
    sent = P.produce(cfg.kafka.bootstrap_servers, topic, E.encode_events(burst, source),
                     E.encode_keys(burst, "user_id"))
    console.print(f"$ tessera produce ...   {sent.format()}", markup=False, soft_wrap=True)
    consumer = StreamConsumer(cfg, views, group=group_id(cfg, views, True))
    summary = consumer.run(until_idle_s=2.0, max_seconds=120, handle_signals=False)
    console.print(f"$ tessera stream --until-idle 2   {summary.format()}", markup=False,
                  soft_wrap=True)
    after = store.get_online_features(features, [{"user_id": user}]).to_dict()
    store.close()
    table = Table("user_id", "read", *SHOWN)
    for label, values in (("before", before), ("after", after)):
        table.add_row(str(user), label, *[_fmt(values[f][0]) for f in SHOWN])
    console.print(table)
    changed = after["txn_count_1h"][0] == (before["txn_count_1h"][0] or 0) + BURST
    console.print(f"{BURST} events streamed; txn_count_1h grew by {BURST} without a batch run: "
                  f"[{'green' if changed else 'red'}]{changed}[/]")
    if not changed:
        from features.errors import TesseraError

        raise TesseraError("the streamed burst did not reach the online values")


def _fmt(value: object) -> str:
    return f"{value:,.2f}" if isinstance(value, float) else str(value)
