"""``tessera schedule``: drift reports, batch runs and materializations on cron expressions.

APScheduler fires the triggers (cron, UTC, misfire grace and coalescing from
``feature_repo.yaml``); each run is the matching Tessera command in a child process, so a job
that crashes, leaks memory or hangs cannot take the scheduler or the other jobs down:

- ``run`` → ``tessera run``, ``materialize`` → ``tessera materialize``, ``drift`` →
  ``tessera drift --out <history_path>/runs/<run id>/`` (its reports are linked from the
  history). ``args: {key: value}`` become ``--key value`` (``_`` → ``-``; ``"true"``: a bare
  flag, ``"false"``: left out); ``{today}``, ``{today-2d}``, ``{now-6h}`` in a value are the run's
  scheduled time, so an incremental job names the days it recomputes.
- One run of a job at a time: ``max_instances=1`` within a process and an ``flock`` on
  ``<history_path>/locks/<job>.lock`` across processes. A run that finds its job busy is
  recorded ``skipped (still running)``.
- A run past its timeout is killed with its whole process group (a Spark JVM too).
- Every run appends one record to ``<history_path>/history.jsonl``
  (:mod:`validation.schedule_history`); a failed run is one line on the console and runs again
  at its next time.

See docs/schedule.md.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.errors import TesseraError
from validation import schedule_history as history
from validation.schedule_history import RunRecord

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler

    from features.config import RepoConfig
    from features.config_jobs import Schedule

#: ``tessera drift`` exits 1 when it found drift: a result, not a failure.
DRIFT_FOUND = 1
#: After SIGTERM to a run's process group, how long before SIGKILL.
KILL_GRACE_SECONDS = 10.0
#: Builds a run's argument vector: (schedule, run folder, scheduled time) → argv.
CommandFor = Callable[["Schedule", Path, datetime], list[str]]
#: Builds a schedule's APScheduler trigger (tests pass a short interval).
TriggerFor = Callable[["Schedule"], Any]

_TEMPLATE = re.compile(r"\{(today|now)(?:([+-])(\d+)([dhm]))?\}")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


class ScheduleError(TesseraError):
    """A schedule is unknown, or its arguments cannot be turned into a command."""


def expand(value: str, when: datetime) -> str:
    """``value`` with ``{today}``/``{today-Nd}`` (a UTC date) and ``{now}``/``{now-Nh}`` (a UTC
    time to the second) filled in from ``when``.

    Example:
        >>> expand("{today-2d}..{today}", datetime(2026, 1, 9, 6, tzinfo=UTC))
        '2026-01-07..2026-01-09'
    """
    def fill(m: re.Match[str]) -> str:
        base, sign, n, unit = m.groups()
        if base == "today" and unit not in (None, "d"):
            raise ScheduleError(f"{m.group(0)!r}: a {{today}} offset is in days, e.g. {{today-1d}}")
        step = timedelta(**{_UNITS[unit]: int(n)}) if unit else timedelta(0)
        t = when.astimezone(UTC) + (step if sign == "+" else -step)
        return t.date().isoformat() if base == "today" else t.strftime("%Y-%m-%dT%H:%M:%S")

    out = _TEMPLATE.sub(fill, value)
    if "{" in out or "}" in out:
        raise ScheduleError(f"argument {value!r}: unknown placeholder (expected {{today}}, "
                            f"{{today-1d}}, {{now}} or {{now-6h}})")
    return out


_SUBCOMMANDS = {"online-gc": ["online", "gc"]}  # jobs whose command is not their name


def tessera_command(repo: Path, schedule: Schedule, run_dir: Path, when: datetime) -> list[str]:
    """The Tessera command a run of ``schedule`` executes (the default :data:`CommandFor`)."""
    argv = [sys.executable, "-m", "tessera.cli", *_SUBCOMMANDS.get(schedule.job, [schedule.job])]
    for key, value in schedule.args.items():
        flag = "--" + key.replace("_", "-")
        if value.lower() == "true":
            argv.append(flag)
        elif value.lower() != "false":
            argv += [flag, expand(value, when)]
    if schedule.job == "drift":
        argv += ["--out", str(run_dir)]
    return [*argv, "--repo", str(repo)]


def cron_trigger(schedule: Schedule) -> Any:
    """The schedule's cron expression as an APScheduler trigger, in UTC."""
    from apscheduler.triggers.cron import CronTrigger

    return CronTrigger.from_crontab(schedule.cron, timezone=UTC)


class Runner:
    """Runs the jobs of one repo: each in a child process, one at a time per job, recorded.

    Thread-safe: APScheduler's worker threads call :meth:`run` and :meth:`skip` concurrently.
    """

    def __init__(self, cfg: RepoConfig, repo: Path, echo: Callable[[str], None] = print,
                 command_for: CommandFor | None = None) -> None:
        self.cfg = cfg
        self.history = cfg.resolve(cfg.scheduler.history_path)
        self.schedules = {s.name: s for s in cfg.schedules}
        repo = repo.resolve()
        self.command_for: CommandFor = command_for or (
            lambda s, run_dir, when: tessera_command(repo, s, run_dir, when))
        self._echo = echo
        self._lock = threading.Lock()
        self._active: dict[str, subprocess.Popen[bytes] | None] = {}
        self._stopping = False
        for s in cfg.schedules:  # a bad placeholder fails at start, not at 6 in the morning
            self.command_for(s, self.history, datetime.now(UTC))

    def get(self, name: str) -> Schedule:
        """The schedule called ``name``; a one-line error naming close names otherwise."""
        if name in self.schedules:
            return self.schedules[name]
        raise ScheduleError(unknown_job(name, list(self.schedules)))

    def run(self, schedule: Schedule, scheduled: datetime | None,
            trigger: str = "schedule") -> RunRecord:
        """Run ``schedule`` now (``scheduled``: the time it was due; None for a manual run)."""
        import fcntl

        started = datetime.now(UTC)
        lock_dir = self.history / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        lock = os.open(lock_dir / f"{schedule.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return self.skip(schedule, scheduled, "still running", trigger)
            os.ftruncate(lock, 0)
            os.write(lock, f"{os.getpid()}\n".encode())
            return self._run_locked(schedule, scheduled, started, trigger)
        finally:
            os.close(lock)

    def skip(self, schedule: Schedule, scheduled: datetime | None, reason: str,
             trigger: str = "schedule") -> RunRecord:
        """Record a run that did not happen (its job was busy, or it missed its time)."""
        now = history.utc_iso(datetime.now(UTC))
        record = RunRecord(
            run_id=history.new_run_id(schedule.name), job=schedule.name, kind=schedule.job,
            command=[], scheduled=None if scheduled is None else history.utc_iso(scheduled),
            start=now, end=now, seconds=0.0, status="skipped", reason=reason,
            trigger=trigger)  # type: ignore[arg-type]
        return self._record(record)

    def stop(self, wait_seconds: float) -> None:
        """Start no new run; wait up to ``wait_seconds`` for running ones, then kill them."""
        with self._lock:
            self._stopping = True
        deadline = time.monotonic() + wait_seconds
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.running():
            self.kill_all()

    def kill_all(self) -> None:
        """Kill the process group of every running command (SIGTERM, then SIGKILL)."""
        with self._lock:
            procs = [p for p in self._active.values() if p is not None]
        for proc in procs:
            _kill_group(proc)

    def running(self) -> list[str]:
        """The run ids in progress."""
        with self._lock:
            return list(self._active)

    def _run_locked(self, schedule: Schedule, scheduled: datetime | None, started: datetime,
                    trigger: str) -> RunRecord:
        run_id = history.new_run_id(schedule.name, started)
        with self._lock:
            if self._stopping:
                return self.skip(schedule, scheduled, "scheduler stopping", trigger)
            self._active[run_id] = None
        run_dir = self.history / history.RUNS_DIR / run_id
        log = run_dir / "output.log"
        timeout = schedule.timeout_seconds or self.cfg.scheduler.timeout_seconds
        fields: dict[str, Any] = {"run_id": run_id, "job": schedule.name, "kind": schedule.job,
                                  "trigger": trigger, "log": str(log), "command": [],
                                  "scheduled": None if scheduled is None
                                  else history.utc_iso(scheduled)}
        began = time.monotonic()
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            fields["command"] = argv = self.command_for(schedule, run_dir, scheduled or started)
            fields.update(self._execute(run_id, schedule.job, argv, log, timeout))
        except Exception as e:  # a bad placeholder, an unwritable folder: recorded, not raised
            fields.update(status="failed", exit_code=None, reason=f"cannot start: {e}")
        finally:
            with self._lock:
                self._active.pop(run_id, None)
        ended = datetime.now(UTC)
        reports = sorted(str(p) for p in run_dir.rglob("*.html"))
        record = RunRecord(**fields, start=history.utc_iso(started), end=history.utc_iso(ended),
                           seconds=round(time.monotonic() - began, 3), reports=reports)
        return self._record(record)

    def _execute(self, run_id: str, kind: str, argv: list[str], log: Path, timeout: float
                 ) -> dict[str, Any]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with log.open("wb") as out:
            try:
                # A session of its own: Ctrl-C in the scheduler's terminal does not reach the
                # job, and a timeout kills its children (a Spark JVM) with it.
                proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, cwd=self.cfg.root, env=env,
                                        start_new_session=True)
            except OSError as e:
                out.write(f"cannot start {argv[0]!r}: {e}\n".encode())
                return {"status": "failed", "exit_code": None,
                        "reason": f"cannot start: {e.strerror or e}"}
            with self._lock:
                self._active[run_id] = proc
            try:
                code = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                code = _kill_group(proc)
                return {"status": "timeout", "exit_code": code,
                        "reason": f"killed after {timeout:g} s"}
        with self._lock:
            stopping = self._stopping
        if code == 0:
            return {"status": "ok", "exit_code": 0}
        if code == DRIFT_FOUND and kind == "drift":
            return {"status": "drift", "exit_code": code, "reason": "drift found"}
        reason = "killed: the scheduler stopped" if stopping and code < 0 else None
        return {"status": "failed", "exit_code": code, "reason": reason}

    def _record(self, record: RunRecord) -> RunRecord:
        history.append(self.history, record)
        self._echo(record.line())
        return record


def _kill_group(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM the process group, SIGKILL it after a grace period; the exit code."""
    for sig, grace in ((signal.SIGTERM, KILL_GRACE_SECONDS), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
            os.killpg(proc.pid, sig)
        try:
            return proc.wait(grace)
        except subprocess.TimeoutExpired:
            continue
    return proc.returncode


def due_time(trigger: Any, now: datetime, grace_seconds: float) -> datetime:
    """The latest fire time of ``trigger`` at or before ``now`` (within the misfire grace).

    APScheduler does not hand a job its scheduled time; this recovers it from the trigger.
    """
    t = trigger.get_next_fire_time(None, now - timedelta(seconds=grace_seconds + 1))
    last = None
    for _ in range(100_000):
        if t is None or t > now:
            break
        last = t
        t = trigger.get_next_fire_time(t, t + timedelta(microseconds=1))
    return last or now


def build_scheduler(runner: Runner, trigger_for: TriggerFor = cron_trigger
                    ) -> BackgroundScheduler:
    """An APScheduler (not started) firing every schedule of ``runner`` on its trigger."""
    from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.background import BackgroundScheduler

    conf = runner.cfg.scheduler
    scheduler = BackgroundScheduler(
        timezone=UTC,
        # One thread per job: a slow job never delays another one's start.
        executors={"default": ThreadPoolExecutor(max(1, len(runner.schedules)))},
        job_defaults={"max_instances": 1, "coalesce": conf.coalesce,
                      "misfire_grace_time": conf.misfire_grace_seconds})

    def fire(name: str) -> None:
        trigger = scheduler.get_job(name).trigger
        now = datetime.now(UTC)
        runner.run(runner.schedules[name], due_time(trigger, now, conf.misfire_grace_seconds))

    def on_event(event: Any) -> None:
        schedule = runner.schedules.get(event.job_id)
        if schedule is None:
            return
        if event.code == EVENT_JOB_MAX_INSTANCES:
            runner.skip(schedule, event.scheduled_run_times[-1], "still running")
        else:
            late = (datetime.now(UTC) - event.scheduled_run_time).total_seconds()
            runner.skip(schedule, event.scheduled_run_time,
                        f"missed by {late:.0f} s, past misfire grace "
                        f"{conf.misfire_grace_seconds} s")

    for schedule in runner.schedules.values():
        scheduler.add_job(fire, trigger_for(schedule), args=[schedule.name], id=schedule.name,
                          name=schedule.name)
    scheduler.add_listener(on_event, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
    return scheduler


def run_foreground(cfg: RepoConfig, repo: Path, echo: Callable[[str], None] = print, *,
                   trigger_for: TriggerFor = cron_trigger,
                   command_for: CommandFor | None = None) -> int:
    """``tessera schedule``: fire the jobs until SIGINT or SIGTERM, then stop cleanly; 0.

    On the first signal no new run starts and running ones get ``scheduler.stop_wait_seconds``
    to finish before they are killed; a second signal kills them at once.
    """
    import logging

    if not cfg.schedules:
        raise ScheduleError("feature_repo.yaml has no schedules: add a `schedules:` list "
                            "(see docs/schedule.md)")
    said = threading.Lock()

    def say(line: str) -> None:
        with said:
            echo(line)

    runner = Runner(cfg, repo, say, command_for)
    scheduler = build_scheduler(runner, trigger_for)
    # Its warnings (missed run, max instances) are recorded and printed by us, once.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if stop.is_set():
            runner.kill_all()
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    # `kill -USR1 <pid>` prints every thread's stack to stderr: a scheduler that does not stop
    # says where it waits.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        scheduler.start()
        say(f"scheduling {len(runner.schedules)} job(s); history in "
            f"{runner.history / history.HISTORY_FILE}; SIGTERM or Ctrl-C stops")
        for job in scheduler.get_jobs():
            say(f"  {job.id}: next run {history.utc_iso(job.next_run_time)}")
        while not stop.wait(0.5):
            pass
        scheduler.pause()
        busy = runner.running()
        if busy:
            say(f"stopping: waiting up to {cfg.scheduler.stop_wait_seconds} s for "
                f"{', '.join(busy)}")
        runner.stop(cfg.scheduler.stop_wait_seconds)
        scheduler.shutdown(wait=True)
        say("scheduler stopped")
    finally:
        faulthandler.unregister(signal.SIGUSR1)
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0


def run_now(cfg: RepoConfig, repo: Path, name: str, echo: Callable[[str], None] = print
            ) -> RunRecord:
    """``tessera schedule run NAME``: run one job now, recorded like a scheduled run."""
    runner = Runner(cfg, repo, echo)
    return runner.run(runner.get(name), None, trigger="manual")


def unknown_job(name: str, known: list[str], recorded: bool = False) -> str:
    import difflib

    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    where = "in feature_repo.yaml or the history" if recorded else "in feature_repo.yaml"
    hint = (f"did you mean {', '.join(map(repr, close))}?" if close
            else f"known: {', '.join(map(repr, known)) or 'none'}")
    return f"no schedule named {name!r} {where}; {hint}"
