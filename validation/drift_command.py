"""``tessera drift``: pick the features, read both sides, run the report, write and print it.

Exit codes: 0 when the share of drifted features is below ``drift.threshold``, 1 when it
reaches it, 2 when the inputs cannot be compared (one line saying which and what was expected).
See docs/drift.md.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from features.errors import TesseraError
from validation.drift import DriftInputError, DriftResult, compare, summary, write_report
from validation.drift_inputs import (
    SERVING_LOG,
    ManifestReference,
    columns_of,
    parse_window,
    selected_refs,
    serving_log_side,
    window_side,
)

if TYPE_CHECKING:
    from rich.console import Console

    from features.config import RepoConfig
    from validation.drift import Side

EXIT_BAD_INPUT = 2


def run_drift(cfg: RepoConfig, console: Console, *, reference: str, current: str,
              view: str | None = None, service: str | None = None, out: Path | None = None,
              since: str | None = None, until: str | None = None,
              errors: Console | None = None) -> int:
    """Everything ``tessera drift`` does; returns its exit code (0, 1, or 2 on bad input)."""
    try:
        return _run(cfg, console, reference=reference, current=current, view=view,
                    service=service, out=out, since=since, until=until)
    except TesseraError as e:
        from rich.markup import escape

        (errors or console).print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        return EXIT_BAD_INPUT


def _is_manifest(reference: str) -> bool:
    return reference.endswith(".json") or Path(reference).is_file()


def _run(cfg: RepoConfig, console: Console, *, reference: str, current: str,
         view: str | None, service: str | None, out: Path | None, since: str | None,
         until: str | None) -> int:
    from features.store import FeatureStore
    from features.validate import validate

    drift = cfg.drift
    if current != SERVING_LOG and (since or until):
        raise DriftInputError("--since/--until bound the serving log; with a window --current "
                              "START..END the window gives the time range")
    current_window = None if current == SERVING_LOG else parse_window(current, "--current")
    if not _is_manifest(reference) and ".." not in reference:
        raise DriftInputError(f"--reference {reference!r}: expected an export manifest "
                              f"(NAME.manifest.json) or a window START..END")
    reference_window = None if _is_manifest(reference) else parse_window(reference,
                                                                          "--reference")
    store = FeatureStore(config=cfg)
    validate(store.definitions)
    chosen = selected_refs(store, view, service)
    excluded: dict[str, str] = {}
    manifest = None
    if reference_window is None:
        manifest = ManifestReference.load(store, Path(reference))
        in_manifest = set(manifest.refs) | set(manifest.changed)
        excluded.update({r: why for r, why in manifest.changed.items()
                         if chosen is None or r in chosen})
        excluded.update({r: "not in the training set" for r in chosen or []
                         if r not in in_manifest})
        refs = [r for r in manifest.refs if chosen is None or r in chosen]
    elif chosen is None:
        raise DriftInputError("with a window as --reference, give the features to compare: "
                              "--view VIEW or --service SERVICE")
    else:
        refs = chosen
    columns = columns_of(store, refs, excluded)
    if not columns:
        raise DriftInputError("no feature left to compare: " + ("; ".join(
            f"{r} {why}" for r, why in excluded.items()) or "the selection is empty"))
    seeded = {"sample_rows": drift.sample_rows}
    with console.status("reading the reference"):
        ref_side: Side = (manifest.side(columns) if manifest is not None else window_side(
            cfg, store, columns, reference_window, "--reference",  # type: ignore[arg-type]
            seed=drift.seed, **seeded))
    with console.status("reading the current data"):
        if current_window is None:
            cur_side, columns = serving_log_side(cfg, columns, excluded, since=since,
                                                 until=until)
        else:
            cur_side = window_side(cfg, store, columns, current_window, "--current",
                                   seed=drift.seed + 1, **seeded)
    with console.status(f"comparing {len(columns)} features with Evidently (its import takes "
                        f"about 15 s)"):
        result = compare(ref_side, cur_side, columns, sample_rows=drift.sample_rows,
                         seed=drift.seed, drift_share=drift.threshold)
    result.excluded = {**excluded, **result.excluded}
    name = view or service or (manifest.doc.get("feature_service") if manifest else None) or (
        Path(reference).name.removesuffix(".json").removesuffix(".manifest"))
    folder = out if out is not None else _default_folder(cfg, name)
    doc = summary(result, ref_side, cur_side, sample_rows=drift.sample_rows, seed=drift.seed)
    with console.status("writing the report"):
        files = write_report(result, doc, folder)
    render(console, result, ref_side, cur_side, files)
    return result.exit_code


def _default_folder(cfg: RepoConfig, name: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "drift"
    folder = cfg.resolve(cfg.drift.reports_path) / f"{stamp}-{safe}"
    n = 1
    while folder.exists():  # two reports in one second keep both
        n += 1
        folder = folder.with_name(f"{stamp}-{safe}-{n}")
    return folder


def render(console: Console, result: DriftResult, reference: Side, current: Side,
           files: dict[str, Path]) -> None:
    """The verdicts table, what was left out and why, the rows used, the decision, the files."""
    from rich.markup import escape
    from rich.table import Table

    table = Table("feature", "type", "test", "score", "threshold", "drift")
    for f in result.features:
        note = " (all rows)" if f.confirmed_on_all_rows else ""
        table.add_row(f.ref, f.kind, f.test, f"{f.score:.4f}{note}", f"{f.threshold:g}",
                      "[bold red]drifted[/]" if f.drifted else "[green]no drift[/]")
    console.print(table)
    for ref, why in result.excluded.items():
        console.print(f"[yellow]left out[/] {escape(ref)}: {escape(why)}", soft_wrap=True)
    for side, used in ((reference, result.rows_used[0]), (current, result.rows_used[1])):
        role = "reference" if side is reference else "current"
        console.print(f"{role}: {escape(side.label)}: {used:,} of {side.rows_total:,} rows used",
                      soft_wrap=True)
    verdict = "[bold red]drift[/]" if result.exit_code else "[green]no drift[/]"
    console.print(f"{verdict}: {len(result.drifted)} of {len(result.features)} features drifted "
                  f"({result.share:.0%}; threshold {result.drift_share:.0%})")
    console.print(f"report: {files['html']}  json: {files['json']}  summary: "
                  f"{files['summary']}", soft_wrap=True, markup=False)
