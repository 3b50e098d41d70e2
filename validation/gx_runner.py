"""Great Expectations 1.x: a source's expectations (``features.expect``) as a GX suite, run on a
pandas frame, read back as one :class:`Outcome` per expectation.

Great Expectations is imported lazily (about 11–17 s); one ephemeral context serves the process.
Each GX expectation carries the Tessera expectation's name in ``meta`` so results map back
whatever order GX returns them in.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from features.expect import Expectation

if TYPE_CHECKING:
    import pandas as pd

_LOCK = threading.Lock()
_CONTEXT: dict[str, Any] = {}


@dataclass(frozen=True)
class Outcome:
    """What Great Expectations found for one expectation on one batch."""

    expectation: Expectation
    success: bool
    checked: int = 0                  # values looked at (rows, or non-null values)
    failing: int = 0                  # values that failed (row-level and unique)
    examples: tuple[Any, ...] = ()    # a few failing values
    observed: Any = None              # row count, newest event time
    error: str | None = None          # GX could not evaluate it (shown, counted as a failure)
    gx: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def blocking(self) -> bool:
        """Failed and of severity error: the batch must not be published."""
        return not self.success and self.expectation.severity == "error"

    def describe(self) -> str:
        """``1,234 of 1,000,000 values fail (0.12%), e.g. -12.5, 0.0``."""
        e = self.expectation
        if self.error:
            return f"could not be checked: {self.error}"
        if e.kind in ("row_count", "fresh"):
            return f"observed {_text(self.observed)}"
        share = 100.0 * self.failing / self.checked if self.checked else 0.0
        distinct = dict.fromkeys(_text(v) for v in self.examples)  # nulls need no example
        shown = "" if e.kind == "not_null" else ", ".join(distinct)
        return (f"{self.failing:,} of {self.checked:,} values fail ({share:.3g}%)"
                + (f", e.g. {shown}" if shown else ""))


def _text(v: Any) -> str:
    if hasattr(v, "isoformat"):
        return str(v.isoformat())
    return repr(v) if isinstance(v, str) else str(v)


def _context() -> tuple[Any, Any]:
    """(the process's ephemeral context, its pandas batch definition), made once."""
    with _LOCK:
        if not _CONTEXT:
            import great_expectations as gx
            from great_expectations.data_context.types.base import ProgressBarsConfig

            ctx = gx.get_context(mode="ephemeral")
            ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
            asset = ctx.data_sources.add_pandas("tessera").add_dataframe_asset("batch")
            _CONTEXT["ctx"] = ctx
            _CONTEXT["batch"] = asset.add_batch_definition_whole_dataframe("whole")
        return _CONTEXT["ctx"], _CONTEXT["batch"]


def gx_expectation(e: Expectation, column: str | None, end: Any = None) -> Any:
    """The Great Expectations object for one Tessera expectation. ``end``: the batch's end (a
    pandas Timestamp), which ``fresh`` measures from."""
    import great_expectations as gx
    import pandas as pd

    x = gx.expectations
    meta = {"tessera": e.name}
    if e.kind == "row_count":
        return x.ExpectTableRowCountToBeBetween(min_value=_count(e.min), max_value=_count(e.max),
                                                meta=meta)
    if column is None:
        raise ValueError(f"expectation {e.name!r} needs a column")
    if e.kind == "not_null":
        return x.ExpectColumnValuesToNotBeNull(column=column, mostly=e.mostly, meta=meta)
    if e.kind == "between":
        return x.ExpectColumnValuesToBeBetween(
            column=column, min_value=_bound(e.min), max_value=_bound(e.max),
            strict_min=e.strict_min, strict_max=e.strict_max, mostly=e.mostly, meta=meta)
    if e.kind == "in_set":
        return x.ExpectColumnValuesToBeInSet(column=column, value_set=list(e.values or ()),
                                             mostly=e.mostly, meta=meta)
    if e.kind == "unique":
        return x.ExpectColumnValuesToBeUnique(column=column, mostly=e.mostly, meta=meta)
    newest_at_least = pd.Timestamp(end) - pd.Timedelta(microseconds=e.max_age_us or 0)
    return x.ExpectColumnMaxToBeBetween(column=column, min_value=newest_at_least, meta=meta)


def _count(v: Any) -> int | None:
    return None if v is None else int(v)


def _bound(v: Any) -> Any:
    if v is None or not hasattr(v, "isoformat"):
        return v
    import pandas as pd

    t = pd.Timestamp(v)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def validate(frame: pd.DataFrame, expectations: list[tuple[Expectation, str | None]],
             end: Any, examples: int = 5) -> list[Outcome]:
    """Run ``(expectation, column)`` pairs on ``frame`` through one GX suite; outcomes in the
    order given."""
    import great_expectations as gx

    _ctx, batch_definition = _context()
    suite = gx.ExpectationSuite(name="tessera", expectations=[
        gx_expectation(e, column, end) for e, column in expectations])
    batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
    result = batch.validate(suite, result_format={"result_format": "SUMMARY",
                                                  "partial_unexpected_count": examples})
    by_name = {r.expectation_config.meta.get("tessera"): r for r in result.results}
    out = []
    for e, _column in expectations:
        r = by_name.get(e.name)
        if r is None:
            out.append(Outcome(e, success=False, error="Great Expectations returned no result"))
            continue
        res = r.result or {}
        raised = (r.exception_info or {}).get("raised_exception")
        error = None
        if raised:
            error = str((r.exception_info or {}).get("exception_message") or "an exception")
            error = error.splitlines()[0] if error else "an exception"
        checked = int(res.get("element_count", 0) or 0) - int(res.get("missing_count", 0) or 0)
        out.append(Outcome(
            e, success=bool(r.success) and not raised, checked=max(checked, 0),
            failing=int(res.get("unexpected_count", 0) or 0),
            examples=tuple(res.get("partial_unexpected_list", ()) or ())[:examples],
            observed=res.get("observed_value"), error=error, gx=r.to_json_dict()))
    return out
