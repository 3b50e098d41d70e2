"""Event sampling behind :mod:`pipelines.datagen`: the time plan and one chunk of events.

Determinism independent of chunking comes from the *slot*: the time range is cut at every whole
UTC hour (so a slot lies within one UTC hour and one UTC day), the number of events of every
slot is drawn once for the whole spec, and the events of slot ``k`` come from their own random
stream seeded by ``(seed, k)``. A chunk is any run of whole slots; its rows do not depend on
which other slots share the chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from pipelines import _datagen_model as m

if TYPE_CHECKING:
    from pipelines.datagen import GenSpec

HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US
TEN_YEARS_US = 3_652 * DAY_US  # "+10 years" of a future-dated fault (10 × 365 + 2 leap days)
ABSURD_AMOUNT = 1e9
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TAG = 0x7E55E7A  # keeps these streams apart from any other use of the same seed

#: Fault kinds of malformed rows, in the order of their kind number.
MALFORMED_KINDS: tuple[str, ...] = (
    "null_user_id", "nonpositive_amount", "absurd_amount", "unknown_currency",
    "null_event_ts", "bad_channel", "future_event_ts",
)


def _strings(values: list[str] | tuple[str, ...]) -> pa.Array:
    """A small Arrow string array built from raw buffers.

    Arrow arrays are built from buffers throughout, never with ``pa.array``: its first call
    imports pandas (seconds of start-up that the CLI and the tests need not pay).
    """
    data = [v.encode() for v in values]
    offsets = np.cumsum([0, *map(len, data)]).astype(np.int32)
    buffers = [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))]
    return pa.Array.from_buffers(pa.string(), len(values), buffers)


def _arrow(values: NDArray[Any], type_: pa.DataType, mask: NDArray[np.bool_] | None) -> pa.Array:
    """Zero-copy Arrow array of a numpy array (booleans are bit-packed); ``mask`` marks nulls."""
    n = len(values)
    validity = None if mask is None else pa.py_buffer(np.packbits(~mask, bitorder="little"))
    nulls = 0 if mask is None else int(mask.sum())
    if values.dtype == np.bool_:
        values = np.packbits(values, bitorder="little")
    buf = pa.py_buffer(np.ascontiguousarray(values))
    return pa.Array.from_buffers(type_, n, [validity, buf], null_count=nulls)


# Dictionaries of the string columns; faulty values come after the valid ones.
CURRENCY_VALUES = _strings([*m.CURRENCIES, "XXX", ""])
CHANNEL_VALUES = _strings([*m.CHANNELS, "POS", "web", "unknown"])
COUNTRY_VALUES = _strings(m.COUNTRIES)
MCC_VALUES = _strings(m.MCCS)
_DICTS = {"currency": CURRENCY_VALUES, "country": COUNTRY_VALUES,
          "channel": CHANNEL_VALUES, "mcc": MCC_VALUES}
_COUNTRY_CDF = np.cumsum(m.COUNTRY_SHARE) / m.COUNTRY_SHARE.sum()

ARROW_SCHEMA = pa.schema([
    ("transaction_id", pa.int64()), ("user_id", pa.int64()), ("merchant_id", pa.int64()),
    ("amount", pa.float64()), ("currency", pa.string()), ("country", pa.string()),
    ("channel", pa.string()), ("card_present", pa.bool_()), ("mcc", pa.string()),
    ("is_fraud", pa.bool_()), ("event_ts", pa.timestamp("us", tz="UTC")),
])
_NP: dict[str, type] = {"amount": np.float64, "card_present": np.bool_, "is_fraud": np.bool_}
_NP = {f.name: _NP.get(f.name, np.int64) for f in ARROW_SCHEMA}
USER_ID_OFFSET = 1_000_000
MERCHANT_ID_OFFSET = 2_000_000_000
_K = 9  # uniforms per event from the main stream (see chunk)
_DRIFT, _FAULTS = 1, 2  # extra streams per slot
_LOGISTIC_SD = 3**0.5 / math.pi  # scales a standard logistic to unit variance


def to_us(ts: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime."""
    return (ts - _EPOCH) // timedelta(microseconds=1)


@dataclass(frozen=True)
class Plan:
    """The slots of a spec and how many events each holds."""

    slot_start: NDArray[np.int64]  # µs since epoch
    slot_len: NDArray[np.int64]  # µs
    slot_hour: NDArray[np.int64]  # UTC hour of day
    slot_weekend: NDArray[np.bool_]
    slot_day: NDArray[np.int64]  # UTC day number (days since epoch)
    counts: NDArray[np.int64]
    offsets: NDArray[np.int64]  # index of the first event of each slot; len = slots + 1

    @classmethod
    def build(cls, spec: GenSpec) -> Plan:
        """Cut ``[start, start + days)`` at whole UTC hours and draw the events per slot."""
        start = to_us(spec.start)
        end = start + spec.days * DAY_US
        first = -(-start // HOUR_US) * HOUR_US
        edges = np.unique(np.concatenate([[start], np.arange(first, end, HOUR_US), [end]]))
        slot_start, slot_len = edges[:-1], np.diff(edges)
        hour = (slot_start // HOUR_US) % 24
        day = slot_start // DAY_US
        weekend = (day + 3) % 7 >= 5  # 1970-01-01 was a Thursday (weekday 3)
        weight = np.where(weekend, m.HOUR_WEEKEND[hour], m.HOUR_WEEKDAY[hour]) * slot_len
        if spec.drift_from is not None:  # more night-time events after drift_from
            drift = to_us(spec.drift_from)
            after = np.clip((slot_start + slot_len - drift) / slot_len, 0.0, 1.0)
            boost = 1.0 + m.DRIFT_NIGHT * spec.drift_strength * after
            weight = np.where(hour < m.NIGHT_HOURS, weight * boost, weight)
        rng = _rng(spec.seed, -1)
        counts = rng.multinomial(spec.rows, weight / weight.sum()).astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(slot_start, slot_len, hour, weekend, day, counts, offsets)

    def chunks(self, max_rows: int) -> list[tuple[int, int]]:
        """Runs ``[lo, hi)`` of slots, each within one UTC day and ≤ ``max_rows`` when possible.

        Every UTC day yields at least one run, even when it holds no events.
        """
        out: list[tuple[int, int]] = []
        bounds = np.flatnonzero(np.diff(self.slot_day)) + 1
        for lo, hi in zip([0, *bounds.tolist()], [*bounds.tolist(), len(self.counts)], strict=True):
            a = lo
            while a < hi:
                b = a + 1
                while b < hi and self.offsets[b + 1] - self.offsets[a] <= max_rows:
                    b += 1
                out.append((a, b))
                a = b
        return out


def _rng(seed: int, slot: int, stream: int = 0) -> np.random.Generator:
    entropy = [seed, _TAG, slot + 1] + ([stream] if stream else [])
    return np.random.Generator(np.random.SFC64(np.random.SeedSequence(entropy)))


@dataclass(frozen=True)
class Chunk:
    """Events of a run of slots as column arrays (codes for the string columns)."""

    cols: dict[str, NDArray[Any]]
    nulls: dict[str, NDArray[np.bool_]]  # null masks of the columns that have nulls
    faults: NDArray[np.int64]  # rows per fault kind, in MALFORMED_KINDS order

    @property
    def rows(self) -> int:
        """Number of events."""
        return len(self.cols["transaction_id"])

    def table(self, dictionary: bool = False) -> pa.Table:
        """An Arrow table; string columns as dictionary arrays when ``dictionary``."""
        arrays = []
        for f in ARROW_SCHEMA:
            values, mask = self.cols[f.name], self.nulls.get(f.name)
            if f.name in _DICTS:
                idx = _arrow(values.astype(np.int8), pa.int8(), mask)
                strings = _DICTS[f.name]
                arrays.append(pa.DictionaryArray.from_arrays(idx, strings) if dictionary
                              else strings.take(idx))
            else:
                arrays.append(_arrow(values, f.type, mask))
        return pa.Table.from_arrays(arrays, names=ARROW_SCHEMA.names)


def chunk(spec: GenSpec, pop: m.Population, plan: Plan, lo: int, hi: int) -> Chunk:
    """The events of slots ``[lo, hi)``, in event-time order."""
    counts = plan.counts[lo:hi]
    n = int(counts.sum())
    if n == 0:
        return Chunk({f.name: np.empty(0, dtype=_NP[f.name]) for f in ARROW_SCHEMA}, {},
                     np.zeros(len(MALFORMED_KINDS), dtype=np.int64))
    # Per slot: the main stream gives _K uniforms and one normal per event; drift and faults
    # use streams of their own, drawn only when the spec asks for them (so that a spec without
    # them costs less, and its rows are exactly the clean rows of the spec with them).
    u, z = np.empty((_K, n)), np.empty(n)
    d = np.empty((2, n)) if spec.drift_from is not None else None
    f = np.empty(n) if spec.malformed_rate > 0 else None
    a = 0
    for k in (np.flatnonzero(counts) + lo).tolist():
        b = a + int(plan.counts[k])
        g = _rng(spec.seed, k)
        for row in u:
            g.random(out=row[a:b])
        u[6, a:b].sort()  # event times: see "When" below
        g.standard_normal(out=z[a:b])
        if d is not None:
            g = _rng(spec.seed, k, _DRIFT)
            g.random(out=d[0, a:b])
            g.random(out=d[1, a:b])
        if f is not None:
            _rng(spec.seed, k, _FAULTS).random(out=f[a:b])
        a = b
    slot = np.repeat(np.arange(lo, hi), counts)

    # When: offsets sorted within each slot (events of a slot are exchangeable, so handing the
    # i-th smallest time to the i-th event is the same as sorting the events afterwards).
    ts = plan.slot_start[slot] + (u[6] * plan.slot_len[slot]).astype(np.int64)
    hour = plan.slot_hour[slot]
    weekend = plan.slot_weekend[slot]
    # Who: users weighted by their (heavy-tailed) activity.
    ua = pop.user_alias
    user = m.alias_draw(ua.prob, ua.alias, np.int64(0), np.int64(len(ua.prob)), u[0])
    # Batched events: the same user at the very same instant as the event just before.
    first = np.zeros(n, dtype=bool)
    first[np.concatenate([[0], np.cumsum(counts[counts > 0])[:-1]])] = True
    tie = (u[7] < m.TIE_RATE) & ~first
    tie[1:] &= ~tie[:-1]
    src = np.flatnonzero(tie) - 1
    user[src + 1], ts[src + 1] = user[src], ts[src]
    drift = (np.zeros(n, dtype=bool) if spec.drift_from is None
             else ts >= to_us(spec.drift_from))
    s = spec.drift_strength

    # Where: mostly at home; abroad sometimes; domestic visits favour a few merchants per user.
    home = pop.user_home[user]
    n_c = len(m.COUNTRIES)
    abroad = u[1] < pop.user_abroad[user]
    target = home.copy()
    out = np.flatnonzero(abroad)
    rest = u[1][out] / pop.user_abroad[user[out]]  # uniform again, given abroad
    dest = np.minimum(np.searchsorted(_COUNTRY_CDF, rest, "right"), n_c - 1)
    target[out] = np.where(dest == home[out], (dest + 1) % n_c, dest)
    fav = ~abroad & (u[2] < m.FAVOURITE_SHARE)
    slot_of_fav = (u[3] * m.FAVOURITES).astype(np.uint64)
    key = (user.astype(np.uint64) * np.uint64(m.FAVOURITES) + slot_of_fav) ^ np.uint64(spec.seed)
    pick = np.where(fav, m.hash_unit(key), u[3])
    ma = pop.merchant_alias
    merchant = m.alias_draw(ma.prob, ma.alias, pop.country_start[target],
                            pop.country_size[target], pick)
    country = pop.merchant_country[merchant]
    abroad = country != home
    cat = pop.merchant_cat[merchant]

    # How: channel by category; after drift, part of what can go online goes online.
    cdf = m.CAT_CHANNEL_CDF
    channel = ((u[4] >= cdf[cat, 0]).astype(np.int64) + (u[4] >= cdf[cat, 1])
               + (u[4] >= cdf[cat, 2]))
    if d is not None:
        channel[drift & m.CAT_CAN_ONLINE[cat] & (d[0] < m.DRIFT_ONLINE * s)] = m.ONLINE
    online = channel == m.ONLINE

    # Fraud: rare; likes nights, foreign merchants, card-not-present and risky categories.
    logit = (m.FRAUD_INTERCEPT + m.FRAUD_NIGHT * (hour < m.NIGHT_HOURS)
             + m.FRAUD_ABROAD * abroad + m.FRAUD_ONLINE * online + m.CAT_RISK[cat])
    logit = logit + np.where(drift, math.log1p(m.DRIFT_FRAUD * s), 0.0)
    p_fraud = 1.0 / (1.0 + np.exp(-logit))
    fraud = u[5] < p_fraud

    # How much: lognormal around the merchant's typical amount, scaled by the user's level.
    eur = pop.merchant_typical[merchant] * pop.user_level[user] * np.exp(m.CAT_SIGMA[cat] * z)
    eur = np.where(weekend, eur * m.WEEKEND_AMOUNT, eur)
    # Fraud inflates amounts: × lognormal-like (a logistic quantile of the fraud uniform's rest).
    bad = np.flatnonzero(fraud)
    r = np.clip(u[5][bad] / p_fraud[bad], 1e-9, 1 - 1e-9)
    eur[bad] *= np.exp(m.FRAUD_AMOUNT_MU + m.FRAUD_AMOUNT_SIGMA * _LOGISTIC_SD * np.log(r / (1 - r)))
    eur = np.where(drift & m.CAT_DRIFTS[cat], eur * (1.0 + m.DRIFT_AMOUNT * s), eur)
    eur = np.minimum(eur, m.AMOUNT_CAP_EUR)
    # Currency: the merchant's, or abroad sometimes the card's (dynamic currency conversion).
    currency = np.where(abroad & (u[8] < m.DCC_SHARE),
                        m.COUNTRY_CURRENCY[home], m.COUNTRY_CURRENCY[country])
    if d is not None:
        currency = np.where(drift & (d[1] < m.DRIFT_USD * s), m.USD_CODE, currency)
    local = eur * m.FX_BY_CODE[currency]
    atm = m.CAT_ATM[cat]
    local = np.where(atm, np.maximum(np.round(local, -1), 10.0), local)
    amount = np.maximum(np.round(local, 2), 0.01)

    cols = {
        "transaction_id": plan.offsets[lo] + 1 + np.arange(n, dtype=np.int64),
        "user_id": user + USER_ID_OFFSET,
        "merchant_id": merchant + MERCHANT_ID_OFFSET,
        "amount": amount,
        "currency": currency,
        "country": country,
        "channel": channel,
        "card_present": ~online,
        "mcc": cat,
        "is_fraud": fraud,
        "event_ts": ts,
    }
    nulls, faults = _faults(spec.malformed_rate, f, cols)
    return Chunk(cols, nulls, faults)


def _faults(rate: float, u: NDArray[np.float64] | None, cols: dict[str, NDArray[Any]],
            ) -> tuple[dict[str, NDArray[np.bool_]], NDArray[np.int64]]:
    """Corrupt a seeded subset of rows in place; return the null masks and rows per kind.

    ``u`` is one uniform per row from the fault stream (None: no faults).
    """
    if u is None or rate <= 0.0:
        return {}, np.zeros(len(MALFORMED_KINDS), dtype=np.int64)
    bad = u < rate
    x = u * (len(MALFORMED_KINDS) / rate)  # given bad, uniform in [0, kinds)
    kind = np.where(bad, np.minimum(x.astype(np.int64), len(MALFORMED_KINDS) - 1), -1)
    v = x - np.floor(x)  # and its fraction is uniform too: the variant of the fault
    amount = cols["amount"]
    neg = kind == 1
    amount[neg] = np.where(v[neg] < 0.7, -amount[neg], 0.0)
    amount[kind == 2] = ABSURD_AMOUNT
    cur = kind == 3
    cols["currency"][cur] = np.where(v[cur] < 0.5, len(m.CURRENCIES), len(m.CURRENCIES) + 1)
    ch = np.flatnonzero(kind == 5)
    variant = np.minimum((v[ch] * 4).astype(np.int64), 3)  # 0: null, 1-3: "POS", "web", "unknown"
    cols["channel"][ch] = np.where(variant == 0, cols["channel"][ch], len(m.CHANNELS) + variant - 1)
    null_channel = np.zeros(len(kind), dtype=bool)
    null_channel[ch[variant == 0]] = True
    cols["event_ts"][kind == 6] += TEN_YEARS_US
    nulls = {"user_id": kind == 0, "event_ts": kind == 4, "channel": null_channel}
    faults = np.bincount(kind[bad], minlength=len(MALFORMED_KINDS)).astype(np.int64)
    return {c: v for c, v in nulls.items() if v.any()}, faults
