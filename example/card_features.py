"""The example repo: card transactions, the domain of the demo, tests and benchmarks.

Data: ``tessera generate`` writes ``data/transactions/date=YYYY-MM-DD/part-0000.parquet``.
"""

from features import (
    Entity,
    FeatureService,
    FeatureView,
    Source,
    agg,
    col,
    expect,
    hour,
    lit,
    when,
)

user = Entity(name="user", join_key="user_id", description="A card holder.")
merchant = Entity(name="merchant", join_key="merchant_id", description="A card acceptor.")

transactions = Source(
    name="transactions",
    path="data/transactions",
    timestamp_field="event_ts",
    kafka_topic="transactions",
    schema={
        "transaction_id": "int64", "user_id": "int64", "merchant_id": "int64",
        "amount": "float64", "currency": "string", "country": "string", "channel": "string",
        "card_present": "bool", "mcc": "string", "is_fraud": "bool", "event_ts": "timestamp",
    },
    description="Authorised card transactions, one row each.",
    # Checked by `tessera run` (a failing batch is quarantined, nothing published) and, the
    # row-level ones, on every streamed event (failing events go to the dead-letter topic).
    expectations=[
        expect.not_null("transaction_id"),
        expect.between("amount", min=0, max=1_000_000, strict_min=True),
        expect.in_set("currency", ["EUR", "USD", "GBP", "CHF", "SEK", "PLN"]),
        expect.in_set("channel", ["pos", "online", "atm", "contactless"]),
        expect.unique("transaction_id"),
        expect.fresh(max_age="2d", severity="warn"),  # the source still delivers
    ],
)

# Rough EUR rates: a rule, so the same conversion runs in batch and streaming.
TO_EUR = (when(col("currency") == "EUR").then(1.0)
          .when(col("currency") == "USD").then(0.92)
          .when(col("currency") == "GBP").then(1.17)
          .when(col("currency") == "CHF").then(1.04)
          .when(col("currency") == "SEK").then(0.088)
          .when(col("currency") == "PLN").then(0.23)
          .otherwise(lit(None, "float64")))  # unknown currency: null, ignored by sums

user_spend = FeatureView(
    name="user_spend",
    entities=[user],
    source=transactions,
    ttl="30d",
    filter=col("amount") > 0,
    derived={
        "amount_eur": col("amount") * TO_EUR,
        "is_night": hour(col("event_ts")) < 6,
        "is_online": col("channel") == "online",
    },
    features=[
        agg.count(windows=["1h", "1d", "7d"], name="txn_count"),
        agg.sum(col("amount_eur"), windows=["1h", "1d", "7d"], name="spend_eur"),
        agg.mean(col("amount_eur"), windows=["1d", "7d", "30d"], name="spend_eur_mean"),
        agg.max(col("amount_eur"), windows=["1d", "7d"], name="spend_eur_max"),
        agg.stddev(col("amount_eur"), windows=["7d"], name="spend_eur_std"),
        agg.count(when(col("is_night")).then(1), windows=["7d"], name="night_txn_count"),
        agg.count(when(col("is_online")).then(1), windows=["1d", "7d"], name="online_txn_count"),
        agg.last(col("country"), name="last_country"),
        agg.last(col("channel"), name="last_channel"),
    ],
    tags={"team": "risk"},
    description="How much, how often and how a card holder spends.",
    owner="risk-ml@example.com",
)

merchant_activity = FeatureView(
    name="merchant_activity",
    entities=[merchant],
    source=transactions,
    ttl="30d",
    derived={"amount_eur": col("amount") * TO_EUR, "fraud": col("is_fraud").cast("int64")},
    features=[
        agg.count(windows=["10m", "1h", "1d"], name="txn_count"),
        agg.mean(col("amount_eur"), windows=["1d", "7d"], name="amount_eur_mean"),
        agg.sum(col("fraud"), windows=["7d", "30d"], name="fraud_count"),
        agg.count(windows=["lifetime"], name="txn_count"),
    ],
    description="Traffic and fraud at a merchant.",
    owner="risk-ml@example.com",
)

fraud_model = FeatureService(
    name="fraud_model_v1",
    features=[user_spend, merchant_activity],
    description="Features of the card-fraud model.",
    owner="risk-ml@example.com",
)
