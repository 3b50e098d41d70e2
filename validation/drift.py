"""Drift of feature distributions: an Evidently report over two samples, and its verdicts.

:func:`compare` takes a reference and a current table (one column per feature, named
``view:feature``), each feature's declared kind (numerical or categorical, from the
definitions: never inferred), samples each side to at most ``sample_rows`` rows uniformly with a
seed, and runs Evidently's ``DataDriftPreset`` on the samples. Each feature's test, score,
threshold and verdict are Evidently's (its default test per column: Wasserstein distance for
numerical and Jensen-Shannon distance for categorical columns above 1,000 rows, KS / chi-square /
Z below).

Why sampling keeps Evidently's verdicts: the default tests on large inputs are *distances*
between the two distributions, whose sample estimates converge to the full-data value (a p-value
test would not: on a million rows every shift is "significant"). A sampled score can still land
on the other side of the threshold than the full data's when it is close to it, so a feature
whose sampled score lies within ``CONFIRM_MARGIN`` of its threshold is tested again by Evidently
on all the rows it was sampled from (one column, no plots: well under a second per million
rows), and that verdict is the one reported (marked "confirmed on all rows").

:func:`write_report` writes Evidently's HTML (for a person) and JSON (for machines) and a small
``summary.json`` of our own. Evidently, pandas and NumPy are imported inside the functions:
``import evidently`` alone takes over ten seconds.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from features.errors import TesseraError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

Kind = Literal["numerical", "categorical"]
#: A sampled score this close to its threshold (relative) is re-tested on all rows.
CONFIRM_MARGIN = 0.25
SAMPLING = ("uniform sample without replacement of the side's rows (numpy default_rng(seed)"
            ".choice), kept in input order")


class DriftInputError(TesseraError):
    """A drift report cannot run on its inputs: a missing manifest, an unknown view, an empty
    window, a window or serving log without data. Exit code 2."""


@dataclass(frozen=True)
class FeatureColumn:
    """A compared feature: ``view:feature``, its declared value type and the kind that implies."""

    ref: str
    dtype: str
    kind: Kind


@dataclass
class Side:
    """One side of a comparison: what it is, its rows (one column per feature ref), and how
    many rows it was taken from (events in a window, rows of a training set or log)."""

    label: str
    table: pa.Table
    rows_total: int
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FeatureDrift:
    """Evidently's verdict on one feature."""

    ref: str
    kind: Kind
    test: str
    score: float
    threshold: float
    drifted: bool
    confirmed_on_all_rows: bool = False
    sample_score: float | None = None  # the sampled score when confirmed on all rows


@dataclass
class DriftResult:
    """Verdicts of one comparison, with the Evidently snapshot they come from."""

    features: list[FeatureDrift]
    excluded: dict[str, str]  # ref -> why it was not compared
    rows_used: tuple[int, int]  # (reference, current)
    drift_share: float  # the threshold on the share of drifted features
    snapshot: Any = field(repr=False, default=None)

    @property
    def drifted(self) -> list[FeatureDrift]:
        return [f for f in self.features if f.drifted]

    @property
    def share(self) -> float:
        return len(self.drifted) / len(self.features) if self.features else 0.0

    @property
    def exit_code(self) -> int:
        """1 when the share of drifted features reaches the threshold, else 0."""
        return 1 if self.features and self.share >= self.drift_share else 0


def kind_of(dtype: str) -> Kind | None:
    """The declared kind of a feature's value type (None: not compared, e.g. timestamps)."""
    if dtype in ("int64", "float64"):
        return "numerical"
    if dtype in ("string", "bool"):
        return "categorical"
    return None


def sample_indices(n: int, k: int, seed: int) -> Any:
    """``min(n, k)`` distinct row positions in ``[0, n)``, uniform, seeded, ascending."""
    import numpy as np

    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def _frame(table: pa.Table, columns: list[FeatureColumn], rows: Any = None) -> pd.DataFrame:
    """The rows (all, or the sampled positions) as pandas, categorical columns as ``category``
    dtype (Evidently's unique/value counts on Python strings were a third of its time)."""
    picked = table.select([c.ref for c in columns])
    frame = (picked if rows is None else picked.take(rows)).to_pandas()
    for c in columns:
        if c.kind == "categorical":
            frame[c.ref] = frame[c.ref].astype("category")
    return frame


def compare(reference: Side, current: Side, columns: list[FeatureColumn], *,
            sample_rows: int, seed: int, drift_share: float) -> DriftResult:
    """Run Evidently's drift preset on samples of both sides; see the module docstring.

    Args:
        reference, current: the sides; each table holds a column per ``columns[i].ref``.
        columns: the features to compare and their declared kinds.
        sample_rows: rows per side at most (larger sides are sampled uniformly).
        seed: the sample's seed (the current side uses ``seed + 1``, so two equal-sized sides
            do not pick the same positions).
        drift_share: share of drifted features at or above which the data set drifted.

    Raises:
        DriftInputError: a side has no rows, or no feature has values on both sides.
    """
    for side in (reference, current):
        if side.table.num_rows == 0:
            raise DriftInputError(f"{side.label}: no rows to compare (expected at least one)")
    excluded: dict[str, str] = {}
    kept: list[FeatureColumn] = []
    for c in columns:
        empty = [name for name, side in (("reference", reference), ("current", current))
                 if side.table.column(c.ref).null_count == side.table.num_rows]
        if empty:
            excluded[c.ref] = f"no values on the {' and '.join(empty)} side"
        else:
            kept.append(c)
    if not kept:
        raise DriftInputError("no feature has values on both sides: " + "; ".join(
            f"{ref}: {why}" for ref, why in excluded.items()))
    ref_rows = sample_indices(reference.table.num_rows, sample_rows, seed)
    cur_rows = sample_indices(current.table.num_rows, sample_rows, seed + 1)
    ref_df = _frame(reference.table, kept, ref_rows)
    cur_df = _frame(current.table, kept, cur_rows)

    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(
        numerical_columns=[c.ref for c in kept if c.kind == "numerical"],
        categorical_columns=[c.ref for c in kept if c.kind == "categorical"])
    report = Report([DataDriftPreset(columns=[c.ref for c in kept], drift_share=drift_share)],
                    include_tests=True)
    snapshot = report.run(current_data=Dataset.from_pandas(cur_df, data_definition=definition),
                          reference_data=Dataset.from_pandas(ref_df, data_definition=definition))
    verdicts = _verdicts(snapshot.dict(), kept)
    sampled = len(ref_rows) < reference.table.num_rows or len(cur_rows) < current.table.num_rows
    if sampled:
        verdicts = [_confirm(v, reference.table, current.table)
                    if abs(v.score - v.threshold) <= CONFIRM_MARGIN * v.threshold else v
                    for v in verdicts]
    return DriftResult(verdicts, excluded, (len(ref_rows), len(cur_rows)), drift_share, snapshot)


def _verdicts(doc: dict[str, Any], columns: list[FeatureColumn]) -> list[FeatureDrift]:
    """Each column's test, score and threshold (metrics) and verdict (tests) from a snapshot."""
    metrics: dict[str, tuple[str, float, float]] = {}
    for m in doc["metrics"]:
        cfg = m.get("config", {})
        if cfg.get("type") == "evidently:metric_v2:ValueDrift":
            metrics[cfg["column"]] = (cfg["method"], float(m["value"]), float(cfg["threshold"]))
    failed: dict[str, bool] = {}
    for t in doc["tests"]:
        params = t.get("metric_config", {}).get("params", {})
        if params.get("type") == "evidently:metric_v2:ValueDrift":
            failed[params["column"]] = t["status"] == "FAIL"
    out = []
    for c in columns:
        test, score, threshold = metrics[c.ref]
        out.append(FeatureDrift(c.ref, c.kind, test, score, threshold, failed[c.ref]))
    return out


def _confirm(v: FeatureDrift, reference: pa.Table, current: pa.Table) -> FeatureDrift:
    """The verdict of Evidently's default test for the column on every row (the two steps of
    its ``get_one_column_drift``: drop missing values, pick the test, run it; no plots)."""
    import numpy as np
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    column = FeatureColumn(v.ref, "", v.kind)
    ref = _frame(reference, [column])[v.ref].replace([-np.inf, np.inf], np.nan).dropna()
    cur = _frame(current, [column])[v.ref].replace([-np.inf, np.inf], np.nan).dropna()
    kind = ColumnType.Numerical if v.kind == "numerical" else ColumnType.Categorical
    test = get_stattest(ref, cur, kind, None)
    if test.display_name != v.test:  # a small sample used a p-value test: keep its verdict
        return v
    result = test(ref, cur, kind, v.threshold)
    return FeatureDrift(v.ref, v.kind, v.test, float(result.drift_score),
                        float(result.actual_threshold), bool(result.drifted),
                        confirmed_on_all_rows=True, sample_score=v.score)


def summary(result: DriftResult, reference: Side, current: Side, *, sample_rows: int,
            seed: int, files: dict[str, str] | None = None) -> dict[str, Any]:
    """The ``summary.json`` document: verdicts, rows used of how many, inputs, exit code."""
    return {
        "format": "tessera.drift/1",
        "drifted": len(result.drifted), "compared": len(result.features),
        "drifted_share": result.share, "threshold": result.drift_share,
        "exit_code": result.exit_code,
        "features": [asdict(f) for f in result.features],
        "excluded": [{"ref": ref, "reason": why} for ref, why in result.excluded.items()],
        "reference": {"input": reference.label, **reference.detail,
                      "rows": reference.rows_total, "rows_used": result.rows_used[0]},
        "current": {"input": current.label, **current.detail,
                    "rows": current.rows_total, "rows_used": result.rows_used[1]},
        "sampling": {"method": SAMPLING, "sample_rows": sample_rows, "seed": seed},
        "files": files or {},
    }


def write_report(result: DriftResult, doc: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write ``report.html`` (Evidently), ``report.json`` (Evidently) and ``summary.json`` into
    ``out``; each file appears complete or not at all."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"html": out / "report.html", "json": out / "report.json",
             "summary": out / "summary.json"}
    doc["files"] = {k: str(p) for k, p in paths.items()}
    _atomic(paths["html"], lambda tmp: result.snapshot.save_html(str(tmp)))
    _atomic(paths["json"], lambda tmp: tmp.write_text(result.snapshot.json()))
    _atomic(paths["summary"], lambda tmp: tmp.write_text(json.dumps(doc, indent=2) + "\n"))
    return paths


def _atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
