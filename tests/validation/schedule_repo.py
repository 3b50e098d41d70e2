"""Helpers of the ``tessera schedule`` tests: a repo of schedules, the run history, and a
bounded wait."""

from __future__ import annotations

import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from features.config import RepoConfig, load_config
from validation import schedule_history as history

TESSERA = str(Path(sys.executable).with_name("tessera"))
PY = sys.executable


def py(code: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code)]


def write_repo(root: Path, schedules: str, scheduler: str = "") -> RepoConfig:
    root.mkdir(parents=True, exist_ok=True)
    (root / "feature_repo.yaml").write_text(
        f"project: t\nschedules:\n{textwrap.indent(textwrap.dedent(schedules), '  ')}"
        f"scheduler:\n  misfire_grace_seconds: 30\n{textwrap.indent(scheduler, '  ')}")
    return load_config(root)


def records(cfg: RepoConfig, job: str | None = None) -> list[history.RunRecord]:
    return history.read(cfg.resolve(cfg.scheduler.history_path), job)


def wait_for(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {seconds} s for {what}")
        time.sleep(0.1)
