"""The parts of ``feature_repo.yaml`` that configure checks and jobs rather than stores.

``validation`` (the batch gate's quarantine), ``drift`` (reports and their threshold),
``serving_log`` (the sampled log of online responses, the live distribution drift reads) and
``schedules`` / ``scheduler`` (``tessera schedule``). Parsed into the same strict models as the
rest of the file (see :mod:`features.config`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

JOBS = ("drift", "run", "materialize", "online-gc")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ValidationConfig(_Model):
    """The gate of ``tessera run`` and ``tessera stream`` (see docs/validation.md)."""

    quarantine_path: Path = Field(Path(".tessera/quarantine"), description="Where a batch that "
                                  "fails its expectations goes, with its validation result.")
    examples: int = Field(5, ge=0, le=100, description="Failing values shown per expectation.")


class DriftConfig(_Model):
    """``tessera drift``: Evidently reports against a training reference (docs/drift.md)."""

    reports_path: Path = Field(Path(".tessera/reports"), description="Where HTML and JSON "
                               "reports are written.")
    threshold: float = Field(0.5, ge=0, le=1, description="Share of drifted features at or "
                             "above which the command exits non-zero.")
    sample_rows: int = Field(100_000, ge=100, description="Rows per side at most; larger "
                             "inputs are sampled uniformly with the seed.")
    seed: int = Field(7, ge=0, description="Seed of the sample, so a report can be repeated.")


class ServingLogConfig(_Model):
    """A sampled log of online responses, written to the offline store in the background."""

    enabled: bool = Field(True, description="Log a sample of get_online_features responses.")
    sample_rate: float = Field(0.1, ge=0, le=1, description="Share of entity rows logged.")
    path: Path = Field(Path(".tessera/serving_log"), description="Parquet folder of the log.")
    flush_rows: int = Field(10_000, ge=1, description="Rows buffered before a file is written.")
    flush_seconds: float = Field(5.0, gt=0, description="Longest time a row waits in memory.")
    max_buffered_rows: int = Field(200_000, ge=1, description="Past this, new rows are dropped "
                                   "(and counted) rather than slow the caller or grow memory.")


class Schedule(_Model):
    """A job run by ``tessera schedule`` on a cron expression (UTC)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    cron: str
    job: Literal["drift", "run", "materialize", "online-gc"]
    args: dict[str, str] = Field(default_factory=dict, description="Options of the command: "
                                 "{key: value} is --key value ('true': a bare flag).")
    timeout_seconds: int | None = Field(None, ge=1, description="Kill the run past this "
                                        "(default scheduler.timeout_seconds).")

    @field_validator("args")
    @classmethod
    def _args(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if not re.fullmatch(r"[a-z][a-z0-9_-]*", key):
                raise ValueError(f"option name {key!r}: expected lowercase letters, digits, "
                                 f"'_' or '-' (written without the leading --)")
            if key in ("repo", "out"):
                raise ValueError(f"option {key!r} is set by the scheduler (the repo it runs "
                                 f"from; a drift job's reports go under its run folder)")
        return v

    @model_validator(mode="after")
    def _drift_args(self) -> Schedule:
        # What `tessera drift` would refuse with exit 2 at 06:00 is refused here, at load.
        if self.job != "drift":
            return self
        reference = self.args.get("reference")
        if (reference is not None and not reference.endswith(".json")
                and not {"view", "service"} & set(self.args)):
            raise ValueError("a drift job with a window as reference needs args view or "
                             "service: the features to compare")
        return self

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        if len(v.split()) != 5:
            raise ValueError(f"expected a 5-field cron expression like '0 6 * * *', got {v!r}")
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(v, timezone="UTC")
        except ValueError as e:
            raise ValueError(f"not a valid cron expression {v!r}: {e}") from None
        return v


class SchedulerConfig(_Model):
    """``tessera schedule``: its history, locks, misfires and timeouts (docs/schedule.md)."""

    history_path: Path = Field(Path(".tessera/schedule"), description="Run history (JSON lines) "
                               "and logs of each run.")
    misfire_grace_seconds: int = Field(300, ge=1, description="A run this late (the machine "
                                       "slept, the previous run overran) still starts.")
    coalesce: bool = Field(True, description="Several missed runs of one job run once, not "
                           "once each.")
    timeout_seconds: int = Field(7200, ge=1, description="A run still going after this is "
                                 "killed (a schedule's timeout_seconds overrides it).")
    stop_wait_seconds: int = Field(60, ge=0, description="On SIGTERM or Ctrl-C, how long to "
                                   "wait for running jobs before killing them.")
