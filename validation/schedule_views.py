"""``tessera schedule list`` and ``tessera schedule history``: what the scheduler would run
and what it ran, as tables (the scheduling itself is :mod:`validation.schedule`)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from validation import schedule_history as history
from validation.schedule import Runner, ScheduleError, cron_trigger, unknown_job

if TYPE_CHECKING:
    from rich.console import Console

    from features.config import RepoConfig


def list_jobs(cfg: RepoConfig, repo: Path, console: Console) -> None:
    """``tessera schedule list``: each job, its next run time, its last run and its command."""
    import shlex

    from rich.markup import escape
    from rich.table import Table

    runner = Runner(cfg, repo, lambda line: None)
    last = {r.job: r for r in history.read(runner.history)}
    now = datetime.now(UTC)
    table = Table(title=f"schedules (UTC; now {history.utc_iso(now)})", title_justify="left")
    for name in ("job", "kind", "cron", "next run", "timeout s", "last run", "command"):
        table.add_column(name)
    for s in cfg.schedules:
        when = cron_trigger(s).get_next_fire_time(None, now)
        argv = runner.command_for(s, runner.history / history.RUNS_DIR / "<run id>", when)
        shown = ["tessera", *argv[3:]] if argv[1:3] == ["-m", "tessera.cli"] else argv
        prev = last.get(s.name)
        table.add_row(s.name, s.job, s.cron, history.utc_iso(when)[:16].replace("T", " "),
                      str(s.timeout_seconds or cfg.scheduler.timeout_seconds),
                      "-" if prev is None else f"{prev.status} {prev.start[:16]}",
                      escape(shlex.join(shown)))
    console.print(table)


def show_history(cfg: RepoConfig, console: Console, job: str | None, limit: int) -> None:
    """``tessera schedule history``: the last ``limit`` runs (of ``job``) as a table."""
    path = cfg.resolve(cfg.scheduler.history_path)
    records = history.read(path, job, limit)
    if job is not None and not records and job not in {s.name for s in cfg.schedules}:
        known = {s.name for s in cfg.schedules} | {r.job for r in history.read(path)}
        raise ScheduleError(unknown_job(job, sorted(known), recorded=True))
    if not records:
        console.print(f"no runs recorded in {path / history.HISTORY_FILE}")
        return
    console.print(history.render(records, f"last {len(records)} run(s), oldest first "
                                          f"({path / history.HISTORY_FILE})"))
