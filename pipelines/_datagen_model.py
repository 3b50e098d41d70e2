"""The world behind :mod:`pipelines.datagen`: countries, merchant categories, seasonality, populations.

Everything here is a constant table or a pure function of ``(spec, seed)``. The per-event
generator in :mod:`pipelines.datagen` only reads these tables, so the tables are the place to
change the *shape* of the data (shares, typical amounts, channel mixes) without touching the
sampling code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]

# --- countries -------------------------------------------------------------------------------
# ISO-2 code, share of users (and of merchants), home currency.
COUNTRIES: tuple[str, ...] = ("DE", "FR", "NL", "ES", "IT", "GB", "CH", "SE", "PL", "US")
COUNTRY_SHARE: F64 = np.array([0.22, 0.16, 0.08, 0.09, 0.09, 0.14, 0.05, 0.05, 0.07, 0.05])
CURRENCIES: tuple[str, ...] = ("EUR", "GBP", "CHF", "SEK", "PLN", "USD")
COUNTRY_CURRENCY: I64 = np.array([0, 0, 0, 0, 0, 1, 2, 3, 4, 5], dtype=np.int64)
#: Fixed rates, units of currency per 1 EUR. ``amount / FX_PER_EUR[currency]`` is in EUR.
FX_PER_EUR: dict[str, float] = {
    "EUR": 1.0, "GBP": 0.85, "CHF": 0.95, "SEK": 11.3, "PLN": 4.3, "USD": 1.08,
}
FX_BY_CODE: F64 = np.array([FX_PER_EUR[c] for c in CURRENCIES])
USD_CODE = CURRENCIES.index("USD")

# --- channels --------------------------------------------------------------------------------
CHANNELS: tuple[str, ...] = ("pos", "online", "atm", "contactless")
ONLINE = CHANNELS.index("online")
ATM = CHANNELS.index("atm")


# --- merchant categories -----------------------------------------------------------------------
@dataclass(frozen=True)
class Category:
    """One merchant category (MCC) and how its transactions look."""

    mcc: str
    name: str
    share: float  # share of merchants
    typical_eur: float  # median amount at a typical merchant for a typical user
    sigma: float  # log-sd of amounts around the merchant's typical amount
    channels: tuple[float, float, float, float]  # P(pos, online, atm, contactless)
    risk: float  # fraud log-odds added for this category
    drifts: bool  # amounts scale by (1 + 0.6·strength) after drift_from


CATEGORIES: tuple[Category, ...] = (
    Category("5411", "grocery", 0.21, 34.0, 0.60, (0.45, 0.05, 0.0, 0.50), -0.6, False),
    Category("5812", "restaurants", 0.13, 29.0, 0.50, (0.45, 0.10, 0.0, 0.45), -0.4, False),
    Category("5814", "fast food", 0.08, 11.0, 0.45, (0.25, 0.10, 0.0, 0.65), -0.6, False),
    Category("4111", "transit", 0.06, 4.5, 0.55, (0.10, 0.15, 0.0, 0.75), -0.8, False),
    Category("5541", "fuel", 0.07, 58.0, 0.40, (0.60, 0.00, 0.0, 0.40), -0.2, False),
    Category("5912", "pharmacy", 0.06, 21.0, 0.60, (0.45, 0.05, 0.0, 0.50), -0.4, False),
    Category("5311", "department stores", 0.07, 64.0, 0.70, (0.50, 0.20, 0.0, 0.30), 0.0, True),
    Category("5999", "misc retail", 0.08, 39.0, 0.80, (0.30, 0.50, 0.0, 0.20), 0.3, True),
    Category("5732", "electronics", 0.05, 175.0, 0.85, (0.45, 0.45, 0.0, 0.10), 1.0, True),
    Category("4814", "telecom", 0.03, 33.0, 0.35, (0.10, 0.90, 0.0, 0.00), 0.0, False),
    Category("4511", "airlines", 0.02, 310.0, 0.60, (0.05, 0.95, 0.0, 0.00), 0.6, True),
    Category("7011", "hotels", 0.03, 185.0, 0.55, (0.40, 0.60, 0.0, 0.00), 0.2, True),
    Category("6011", "atm cash", 0.08, 110.0, 0.55, (0.00, 0.00, 1.0, 0.00), 0.3, False),
    Category("7995", "gambling", 0.03, 45.0, 1.00, (0.10, 0.90, 0.0, 0.00), 1.2, True),
)
MCCS: tuple[str, ...] = tuple(c.mcc for c in CATEGORIES)
CAT_SHARE: F64 = np.array([c.share for c in CATEGORIES]) / sum(c.share for c in CATEGORIES)
CAT_TYPICAL: F64 = np.array([c.typical_eur for c in CATEGORIES])
CAT_SIGMA: F64 = np.array([c.sigma for c in CATEGORIES])
CAT_RISK: F64 = np.array([c.risk for c in CATEGORIES])
CAT_DRIFTS: NDArray[np.bool_] = np.array([c.drifts for c in CATEGORIES])
CAT_CHANNEL_CDF: F64 = np.cumsum(np.array([c.channels for c in CATEGORIES]), axis=1)
CAT_ATM: NDArray[np.bool_] = np.array([c.channels[ATM] == 1.0 for c in CATEGORIES])
#: Categories where a card can also be used online (everything but ATM cash and fuel).
CAT_CAN_ONLINE: NDArray[np.bool_] = np.array([c.channels[ONLINE] > 0 for c in CATEGORIES])

# --- seasonality (UTC) ---------------------------------------------------------------------------
# Relative event rate per UTC hour: quiet nights, a lunch peak and a larger evening peak.
HOUR_WEEKDAY: F64 = np.array([
    0.6, 0.35, 0.25, 0.2, 0.25, 0.5, 1.2, 2.5, 3.5, 4.0, 4.5, 5.5,
    7.0, 6.5, 5.0, 4.8, 5.2, 6.5, 7.2, 6.8, 5.5, 4.0, 2.6, 1.4,
])
# Weekends: a later, flatter morning, a busy afternoon, later nights; ~10% fewer events a day.
HOUR_WEEKEND: F64 = np.array([
    0.9, 0.6, 0.4, 0.3, 0.25, 0.3, 0.5, 1.0, 1.8, 3.0, 4.5, 5.5,
    6.5, 6.5, 6.0, 5.5, 5.5, 6.0, 6.5, 6.3, 5.3, 4.3, 3.1, 2.0,
])
HOUR_WEEKEND = HOUR_WEEKEND * 0.9 * HOUR_WEEKDAY.sum() / HOUR_WEEKEND.sum()
NIGHT_HOURS = 6  # hours 00-05 UTC are "night" (drift boosts them; fraud likes them)
WEEKEND_AMOUNT = 1.08  # weekend baskets are a little larger

# --- behaviour constants -------------------------------------------------------------------------
CROSS_BORDER_MEAN = 0.05  # mean share of a user's events at merchants abroad
DCC_SHARE = 0.3  # abroad, share billed in the card's home currency instead of the local one
FAVOURITES = 8  # merchants per user that get FAVOURITE_SHARE of their domestic visits
FAVOURITE_SHARE = 0.6
TIE_RATE = 0.005  # share of events that repeat the previous event's user and timestamp
FRAUD_INTERCEPT = -6.5  # calibrated so that ~0.3% of events are fraud without drift
FRAUD_NIGHT, FRAUD_ABROAD, FRAUD_ONLINE = 1.5, 1.3, 1.0
FRAUD_AMOUNT_MU, FRAUD_AMOUNT_SIGMA = 0.9, 0.6  # fraud amounts × lognormal(mu, sigma)
AMOUNT_CAP_EUR = 25_000.0
# Drift (multiplied by drift_strength): see docs/datagen.md.
DRIFT_AMOUNT = 0.6
DRIFT_ONLINE = 0.35
DRIFT_USD = 0.12
DRIFT_NIGHT = 1.5
DRIFT_FRAUD = 2.0

# Multiply-xorshift constants of splitmix64.
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix64(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """Splitmix64 finaliser: a fast, well-mixed hash of 64-bit keys (wrapping arithmetic)."""
    x = x * _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def hash_unit(x: NDArray[np.uint64]) -> F64:
    """A uniform in [0, 1) from each key (53 high bits of its hash)."""
    return (mix64(x) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


@dataclass(frozen=True)
class Alias:
    """Walker alias table: O(1) weighted draws from one uniform each."""

    prob: F64
    alias: I64

    @classmethod
    def build(cls, weights: F64) -> Alias:
        """Build the table for ``weights`` (non-negative, not all zero)."""
        n = len(weights)
        p = weights * (n / weights.sum())
        prob, alias = np.ones(n), np.arange(n, dtype=np.int64)
        small = [i for i in range(n) if p[i] < 1.0]
        large = [i for i in range(n) if p[i] >= 1.0]
        while small and large:
            s, g = small.pop(), large.pop()
            prob[s], alias[s] = p[s], g
            p[g] -= 1.0 - p[s]
            (small if p[g] < 1.0 else large).append(g)
        return cls(prob, alias)


def alias_draw(prob: F64, alias: I64, start: I64 | np.int64, size: I64 | np.int64,
               u: F64) -> I64:
    """Weighted draw in segments ``[start, start + size)`` of concatenated alias tables.

    ``u`` is one uniform per draw: its integer part picks a bucket, its fraction accepts it.
    """
    x = u * size
    k = np.minimum(x.astype(np.int64), size - 1)
    i = start + k
    take = (x - k) < prob[i]
    return np.where(take, i, alias[i])


@dataclass(frozen=True)
class Population:
    """Users and merchants of one spec; arrays indexed by user / merchant position."""

    user_home: I64  # country index
    user_level: F64  # spending level multiplier (lognormal, median 1)
    user_abroad: F64  # probability that an event happens abroad
    user_alias: Alias  # draws a user for an event, weighted by activity (heavy-tailed)
    merchant_country: I64  # merchants are sorted by country
    merchant_cat: I64
    merchant_typical: F64  # typical amount in EUR
    merchant_alias: Alias  # per-country segments, weighted by popularity
    country_start: I64  # segment of each country in the merchant arrays
    country_size: I64

    @classmethod
    def build(cls, users: int, merchants: int, seed: int) -> Population:
        """Draw the population of ``users`` and ``merchants`` for ``seed``."""
        rng = np.random.Generator(np.random.SFC64(np.random.SeedSequence([seed, 0x5EED, 1])))
        share = COUNTRY_SHARE / COUNTRY_SHARE.sum()
        home = rng.choice(len(COUNTRIES), size=users, p=share)
        level = rng.lognormal(0.0, 0.5, users)
        abroad = np.minimum(CROSS_BORDER_MEAN * rng.lognormal(-0.32, 0.8, users), 0.6)
        activity = rng.lognormal(0.0, 1.25, users)  # top 1% of users ≈ 12% of events
        # Every country gets a merchant when there are enough of them; the rest by share.
        n_c = len(COUNTRIES)
        first = np.arange(min(merchants, n_c))
        rest = rng.choice(n_c, size=merchants - len(first), p=share)
        country = np.sort(np.concatenate([first, rest]))
        cat = rng.choice(len(CATEGORIES), size=merchants, p=CAT_SHARE)
        typical = CAT_TYPICAL[cat] * rng.lognormal(0.0, 0.35, merchants)
        popularity = rng.lognormal(0.0, 1.0, merchants)
        size = np.bincount(country, minlength=n_c).astype(np.int64)
        start = np.concatenate([[0], np.cumsum(size)[:-1]]).astype(np.int64)
        prob, alias = np.ones(merchants), np.arange(merchants, dtype=np.int64)
        for c in range(n_c):
            if size[c]:
                seg = slice(start[c], start[c] + size[c])
                table = Alias.build(popularity[seg])
                prob[seg], alias[seg] = table.prob, table.alias + start[c]
        # A country without merchants (tiny specs) borrows the whole pool.
        empty = size == 0
        start[empty], size[empty] = 0, merchants
        return cls(home, level, abroad, Alias.build(activity), country, cat, typical,
                   Alias(prob, alias), start, size)
