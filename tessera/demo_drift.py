"""The demo's last step: the drifted last week against the training set, an Evidently report."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from rich.console import Console

    from features.config import RepoConfig


def run_drift_report(cfg: RepoConfig, console: Console, manifest: Path) -> Path:
    """``tessera drift --reference <the export's manifest> --current <the last week>``; the
    demo data drifts in that week, so exit code 1 (drift found) is the expected outcome."""
    from datetime import UTC, datetime, timedelta

    from features.errors import TesseraError
    from tessera.demo import drift_from
    from validation.drift_command import run_drift

    console.rule("[bold]12. tessera drift: the last week against the training set")
    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    current = f"{drift_from().isoformat()}..{tomorrow.isoformat()}"
    out = cfg.resolve(cfg.services.state_dir) / "demo" / "drift"
    console.print(f"$ tessera drift --reference {manifest.name} --current {current} "
                  f"--service fraud_model_v1", markup=False, soft_wrap=True)
    code = run_drift(cfg, console, reference=str(manifest), current=current,
                     service="fraud_model_v1", out=out)
    if code == 2:
        raise TesseraError("the demo's drift report could not compare its inputs")
    report = out / "report.html"
    console.print(f"exit code {code} ({'drift found, as the data was made to drift' if code == 1 else 'no drift'}); "
                  f"open the report: file://{report}", soft_wrap=True)
    return report
