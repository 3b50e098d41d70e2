"""The stream's gate: a source's row-level expectations checked on every micro-batch.

The same expectations ``tessera run`` checks with Great Expectations (``features.expect``); here
only the row-level ones (``not_null``, ``between``, ``in_set``), compiled once from their rule
expressions to Polars, because a Great Expectations run per micro-batch would cost more than the
batch itself. An event failing an error expectation becomes a dead letter with reason
``expectation`` and the expectation's name; the batch engines drop exactly the same rows (the
same expression trees), so both stores receive the same events. Warn-only failures are counted,
not dropped. Batch-level expectations (``unique``, ``row_count``, ``fresh``, and ``mostly``) are
not decided per event and stay with the batch gate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from features.compile import compile_expr
from features.definitions import Source
from streaming.decode import EXPECTATION, Bad

if TYPE_CHECKING:
    import polars as pl


class RowGate:
    """Checks decoded events (rows with ``__i``) against a source's row-level expectations."""

    def __init__(self, source: Source) -> None:

        self.source = source
        self.errors = source.row_checks("error")
        self.warns = source.row_checks("warn")
        schema = dict(source.schema)
        self._fails = [(~compile_expr(e.row_check(), "polars", schema).fill_null(False))
                       .alias(f"__x{k}") for k, e in enumerate((*self.errors, *self.warns))]
        self.warned: dict[str, int] = {}

    def check(self, frame: pl.DataFrame) -> tuple[pl.DataFrame, list[Bad]]:
        """(the events that pass, a dead letter per event failing an error expectation)."""
        import polars as pl

        if not self._fails or frame.is_empty():
            return frame, []
        flags = frame.select(self._fails)
        n_err = len(self.errors)
        for k, e in enumerate(self.warns):
            count = int(flags[f"__x{n_err + k}"].sum())
            if count:
                self.warned[e.name] = self.warned.get(e.name, 0) + count
        if n_err == 0:
            return frame, []
        failing = pl.any_horizontal(pl.col(f"__x{k}") for k in range(n_err))
        mask = flags.select(failing.alias("f"))["f"]
        if not mask.any():
            return frame, []  # the common case: one pass, no copy
        bad = []
        rows = frame.filter(mask)
        first = flags.filter(mask)
        for r in range(rows.height):
            k = next(k for k in range(n_err) if first[f"__x{k}"][r])
            e = self.errors[k]
            value = rows[e.column or ""][r]
            bad.append(Bad(int(rows["__i"][r]), EXPECTATION,
                           f"expectation {e.name!r} failed: {e.column} = {value!r}"))
        return frame.filter(~mask), bad
