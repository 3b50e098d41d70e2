"""The per-entity offsets values (streaming/offsets.py): the batch decoder and encoder give what
the one-value reference gives, so exactly-once bookkeeping is the same whichever is used."""

from __future__ import annotations

import random

import pytest

from streaming import offsets as O


def test_many_values_decode_and_encode_as_one_at_a_time() -> None:
    rng = random.Random(3)
    values: list[bytes | None] = []
    for _ in range(500):
        r = rng.random()
        if r < 0.1:
            values.append(None)
        elif r < 0.15:
            values.append(O.encode("another-topic", {1: 5}))  # new events to this topic
        else:
            values.append(O.encode("t", {p: rng.randrange(2**62) for p in
                                         rng.sample(range(40), rng.randrange(0, 7))}))
    index, partitions, offsets = O.decode_many(values, "t")
    got: list[dict[int, int]] = [{} for _ in values]
    for i, p, o in zip(index.tolist(), partitions.tolist(), offsets.tolist(), strict=True):
        got[i][p] = o
    want = [O.decode(v, "t") for v in values]
    assert got == want
    assert O.encode_many("t", len(values), index, partitions, offsets) == [
        O.encode("t", w) for w in want]


def test_a_damaged_offsets_value_is_an_error_not_a_guess() -> None:
    good = O.encode("t", {0: 7, 3: 9})
    with pytest.raises(ValueError, match="holds 2 items"):
        O.decode_many([good[:-1]], "t")
    with pytest.raises(ValueError, match="version 9"):
        O.decode_many([bytes([9]) + good[1:]], "t")
