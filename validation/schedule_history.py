"""The run history of ``tessera schedule``: one JSON line per run in ``history.jsonl``.

Every run, whether it ran, failed, timed out or was skipped, appends one record. The file is
append-only and shared by every ``tessera schedule`` process that uses the same
``scheduler.history_path``: a record is one ``write`` of one line under an exclusive ``flock``,
so two processes never interleave their lines. Each run that started has its own folder,
``runs/<run id>/``, holding ``output.log`` (the command's stdout and stderr) and, for a drift
job, the reports the command wrote there.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from rich.table import Table

Status = Literal["ok", "drift", "failed", "timeout", "skipped"]
HISTORY_FILE = "history.jsonl"
RUNS_DIR = "runs"
_STYLE = {"ok": "green", "drift": "yellow", "failed": "bold red", "timeout": "bold red",
          "skipped": "dim"}


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run of one scheduled job, as recorded.

    Attributes:
        run_id: ``<UTC start>-<job name>-<4 hex>``; also the name of the run's folder.
        job: the schedule's name; ``kind`` is its job (drift, run, materialize or
            online-gc).
        command: the argument vector run (empty for a run skipped before it started).
        scheduled: the time the trigger fired for (ISO, UTC); None for ``schedule run NAME``.
        status: ``ok``; ``drift`` (drift's exit 1: drift found, not an error); ``failed``
            (any other non-zero exit, or the command could not start); ``timeout`` (killed
            past its timeout); ``skipped`` (the job was still running, or the run was missed).
        exit_code: the command's exit code (negative: killed by that signal); None if it never
            ran.
        log: the file with the command's stdout and stderr.
        reports: HTML reports the command wrote under its run folder.
        reason: why a run was skipped, failed to start or was killed.
    """

    run_id: str
    job: str
    kind: str
    command: list[str]
    scheduled: str | None
    start: str
    end: str
    seconds: float
    status: Status
    exit_code: int | None = None
    log: str | None = None
    reports: list[str] = field(default_factory=list)
    reason: str | None = None
    trigger: Literal["schedule", "manual"] = "schedule"

    def line(self) -> str:
        """The one line printed for this run (by the foreground scheduler and ``run NAME``)."""
        head = f"{self.start[:19].replace('T', ' ')} {self.job} ({self.kind}): {self.status}"
        if self.status == "skipped":
            return f"{head} ({self.reason})"
        code = "" if self.exit_code is None else f", exit {self.exit_code}"
        tail = f" in {self.seconds:.1f} s{code}"
        if self.reason and self.status != "ok":
            tail += f" ({self.reason})"
        if self.reports:
            tail += f"; report: {self.reports[0]}" + (f" (+{len(self.reports) - 1})"
                                                      if len(self.reports) > 1 else "")
        return f"{head}{tail}; log: {self.log}"


def new_run_id(job: str, now: datetime | None = None) -> str:
    """A run id that sorts by time and never collides between processes."""
    now = now or datetime.now(UTC)
    return f"{now.strftime('%Y%m%dT%H%M%S')}Z-{job}-{secrets.token_hex(2)}"


def utc_iso(t: datetime) -> str:
    """ISO 8601 in UTC, to the second: what the history stores."""
    return t.astimezone(UTC).replace(microsecond=0).isoformat()


def append(history_path: Path, record: RunRecord) -> None:
    """Append ``record`` to ``history.jsonl`` under an exclusive lock (one line, one write)."""
    import fcntl

    history_path.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(asdict(record), separators=(",", ":")) + "\n").encode()
    fd = os.open(history_path / HISTORY_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, data)
    finally:
        os.close(fd)  # releases the lock


def read(history_path: Path, job: str | None = None, limit: int | None = None
         ) -> list[RunRecord]:
    """The recorded runs, oldest first (of ``job`` only, the last ``limit`` only).

    A line that is not a record (a disk filled mid-write) is passed over, not fatal: the
    history must stay readable after any crash.
    """
    file = history_path / HISTORY_FILE
    if not file.exists():
        return []
    records = []
    names = set(RunRecord.__dataclass_fields__)
    with file.open(encoding="utf-8", errors="replace") as f:
        for text in f:
            try:
                raw = json.loads(text)
                record = RunRecord(**{k: v for k, v in raw.items() if k in names})
            except (ValueError, TypeError):
                continue
            if job is None or record.job == job:
                records.append(record)
    return records[-limit:] if limit else records


def render(records: list[RunRecord], title: str) -> Table:
    """The history as a rich table; logs and reports as ``file://`` links."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name in ("run id", "job", "kind", "scheduled", "started", "s", "status", "exit"):
        table.add_column(name, justify="right" if name in ("s", "exit") else "left",
                         no_wrap=name != "status")
    table.add_column("log / reports", overflow="fold")  # a link cut short opens nothing
    for r in records:
        links = [_link(p) for p in ([r.log] if r.log else []) + r.reports]
        status = f"[{_STYLE[r.status]}]{r.status}[/]"
        if r.reason and r.status != "ok":
            status += f" ({escape(r.reason)})"
        table.add_row(escape(r.run_id), escape(r.job), r.kind,
                      "now (manual)" if r.scheduled is None else _short(r.scheduled),
                      _short(r.start), f"{r.seconds:.1f}",
                      status, "" if r.exit_code is None else str(r.exit_code), "\n".join(links))
    return table


def _short(iso: str) -> str:
    return iso[:19].replace("T", " ")


def _link(path: str) -> str:
    from rich.markup import escape

    uri = Path(path).resolve().as_uri()
    return f"[link={uri}]{escape(uri)}[/link]"
