"""``tessera schedule``: jobs run as child processes on APScheduler triggers, one at a time,
recorded in the history; a failing or hung job never stops the others or the scheduler.

Tests drive the real APScheduler with a 1-second interval trigger instead of cron (a cron
fires at most once a minute), and point jobs at small Python commands where a job must fail,
hang or take a known time; the real Tessera commands run through ``tessera schedule run``.
Every wait is bounded.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from features.config import RepoConfig, load_config
from tessera.cli import app
from tests.conftest import REPO_ROOT
from validation import schedule_history as history
from validation.schedule import (
    Runner,
    ScheduleError,
    build_scheduler,
    expand,
    tessera_command,
)

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


def every_second(schedule: object) -> object:
    from apscheduler.triggers.interval import IntervalTrigger

    return IntervalTrigger(seconds=1, timezone=UTC)


def records(cfg: RepoConfig, job: str | None = None) -> list[history.RunRecord]:
    return history.read(cfg.resolve(cfg.scheduler.history_path), job)


def wait_for(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {seconds} s for {what}")
        time.sleep(0.1)


def run_scheduler(cfg: RepoConfig, commands: dict[str, list[str]],
                  until: Callable[[], bool], seconds: float, what: str) -> list[str]:
    """Run the real APScheduler on 1-second triggers until ``until``; the printed lines."""
    lines: list[str] = []
    runner = Runner(cfg, cfg.root, lines.append,
                    command_for=lambda s, run_dir, when: commands[s.name])
    scheduler = build_scheduler(runner, every_second)
    scheduler.start()
    try:
        wait_for(until, seconds, what)
    finally:
        scheduler.pause()
        runner.stop(10)
        scheduler.shutdown(wait=True)
    return lines


def test_args_become_flags_and_placeholders_take_the_scheduled_day(tmp_path: Path) -> None:
    cfg = write_repo(tmp_path, """\
        - name: nightly
          cron: "0 6 * * *"
          job: run
          args: {view: user_spend, allow_empty_days: "true", materialize: "false",
                 start: "{today-2d}", end: "{today}"}
        - name: drift
          cron: "0 6 * * *"
          job: drift
          args: {current: "{now-6h}..{now}"}
        - name: weekly-gc
          cron: "0 7 * * 1"
          job: online-gc
          args: {delete: "true"}
        """)
    when = datetime(2026, 1, 9, 6, 0, 5, tzinfo=UTC)
    run, drift, gc = cfg.schedules
    repo = tmp_path / "feature_repo.yaml"
    assert tessera_command(repo, run, tmp_path / "r1", when) == [
        PY, "-m", "tessera.cli", "run", "--view", "user_spend", "--allow-empty-days",
        "--start", "2026-01-07", "--end", "2026-01-09", "--repo", str(repo)]
    assert tessera_command(repo, drift, tmp_path / "r2", when) == [
        PY, "-m", "tessera.cli", "drift", "--current", "2026-01-09T00:00:05..2026-01-09T06:00:05",
        "--out", str(tmp_path / "r2"), "--repo", str(repo)]
    assert tessera_command(repo, gc, tmp_path / "r3", when) == [
        PY, "-m", "tessera.cli", "online", "gc", "--delete", "--repo", str(repo)]
    with pytest.raises(ScheduleError, match=r"unknown placeholder"):
        expand("{yesterday}", when)


def test_a_bad_placeholder_fails_at_start_not_at_run_time(tmp_path: Path) -> None:
    cfg = write_repo(tmp_path, """\
        - {name: a, cron: "0 6 * * *", job: run, args: {start: "{today-1h}"}}
        """)
    with pytest.raises(ScheduleError, match=r"offset is in days"):
        Runner(cfg, tmp_path)


def test_a_failing_job_does_not_stop_another_and_runs_again(tmp_path: Path) -> None:
    cfg = write_repo(tmp_path, """\
        - {name: broken, cron: "0 6 * * *", job: run}
        - {name: steady, cron: "0 6 * * *", job: materialize}
        """)
    commands = {"broken": py("import sys; print('boom'); sys.exit(3)"),
                "steady": py("print('fine')")}

    def enough() -> bool:
        rs = records(cfg)
        return (sum(r.job == "broken" for r in rs) >= 2
                and sum(r.job == "steady" and r.status == "ok" for r in rs) >= 2)

    lines = run_scheduler(cfg, commands, enough, 20, "two runs of each job")
    broken = [r for r in records(cfg, "broken") if r.status != "skipped"]
    assert len(broken) >= 2 and {r.status for r in broken} == {"failed"}
    assert {r.exit_code for r in broken} == {3}
    assert broken[0].scheduled != broken[1].scheduled  # ran again, at its next time
    assert Path(broken[0].log).read_text() == "boom\n"
    failed_lines = [line for line in lines if "broken (run): failed" in line]
    assert failed_lines and "exit 3" in failed_lines[0] and broken[0].log in failed_lines[0]
    assert all(r.exit_code == 0 for r in records(cfg, "steady") if r.status == "ok")


def test_a_job_still_running_is_skipped_not_started_twice(tmp_path: Path) -> None:
    cfg = write_repo(tmp_path, """\
        - {name: slow, cron: "0 6 * * *", job: run}
        """)
    spans = tmp_path / "spans.txt"
    commands = {"slow": py(f"""
        import time
        a = time.time(); time.sleep(2.5)
        open({str(spans)!r}, "a").write(f"{{a}} {{time.time()}}\\n")
    """)}

    def done() -> bool:
        rs = records(cfg, "slow")
        return sum(r.status == "ok" for r in rs) >= 2 and any(r.status == "skipped" for r in rs)

    run_scheduler(cfg, commands, done, 30, "two slow runs and a skipped one")
    skipped = [r for r in records(cfg, "slow") if r.status == "skipped"]
    assert skipped and {r.reason for r in skipped} == {"still running"}
    times = sorted(tuple(map(float, line.split())) for line in spans.read_text().splitlines())
    assert all(prev[1] <= nxt[0] for prev, nxt in itertools.pairwise(times)), times


def test_a_second_scheduler_process_skips_a_job_the_first_is_running(tmp_path: Path) -> None:
    cfg = write_repo(tmp_path, """\
        - {name: slow, cron: "0 6 * * *", job: run}
        """)
    started = tmp_path / "started"
    first = Runner(cfg, tmp_path, lambda line: None, command_for=lambda s, d, w: py(f"""
        import time; open({str(started)!r}, "w").close(); time.sleep(3)"""))
    # Another Runner opens its own lock file description: the flock conflicts exactly as it
    # would between two processes.
    second = Runner(cfg, tmp_path, lambda line: None,
                    command_for=lambda s, d, w: py("print('must not run')"))
    thread = threading.Thread(target=first.run, args=(cfg.schedules[0], None))
    thread.start()
    try:
        wait_for(started.exists, 15, "the first run to start")
        assert second.run(cfg.schedules[0], None).status == "skipped"
    finally:
        thread.join(15)
    assert [(r.status, r.reason) for r in records(cfg)] == [("skipped", "still running"),
                                                            ("ok", None)]
    # Once the first run ended, the lock is free again.
    assert second.run(cfg.schedules[0], None).status == "ok"


def test_a_hung_job_is_killed_at_its_timeout(tmp_path: Path) -> None:
    cfg = write_repo(tmp_path, """\
        - {name: hung, cron: "0 6 * * *", job: run, timeout_seconds: 1}
        """)
    runner = Runner(cfg, tmp_path, lambda line: None,
                    command_for=lambda s, d, w: py("import time; time.sleep(60)"))
    began = time.monotonic()
    record = runner.run(cfg.schedules[0], None)
    assert time.monotonic() - began < 15
    assert (record.status, record.exit_code) == ("timeout", -signal.SIGTERM)
    assert record.reason == "killed after 1 s"


def test_a_command_that_cannot_start_is_recorded_failed(tmp_path: Path) -> None:
    cfg = write_repo(tmp_path, """\
        - {name: missing, cron: "0 6 * * *", job: run}
        """)
    runner = Runner(cfg, tmp_path, lambda line: None,
                    command_for=lambda s, d, w: [str(tmp_path / "no-such-program")])
    record = runner.run(cfg.schedules[0], None)
    assert (record.status, record.exit_code) == ("failed", None)
    assert record.reason is not None and record.reason.startswith("cannot start")


@pytest.mark.parametrize(("code", "status"), [(0, "ok"), (1, "drift"), (2, "failed")])
def test_drift_found_is_drift_not_an_error_and_links_its_report(tmp_path: Path, code: int,
                                                                status: str) -> None:
    cfg = write_repo(tmp_path, """\
        - {name: nightly-drift, cron: "0 6 * * *", job: drift}
        """)
    # Like tessera drift: reports into the folder given by --out, exit 1 when drift is found.
    runner = Runner(cfg, tmp_path, lambda line: None, command_for=lambda s, run_dir, w: py(f"""
        import pathlib, sys
        (pathlib.Path({str(run_dir)!r}) / "user_spend.html").write_text("<html></html>")
        sys.exit({code})"""))
    record = runner.run(cfg.schedules[0], None)
    assert (record.status, record.exit_code) == (status, code)
    report = cfg.resolve(cfg.scheduler.history_path) / "runs" / record.run_id / "user_spend.html"
    assert record.reports == [str(report)]

    result = CliRunner().invoke(app, ["schedule", "history", "--repo", str(tmp_path)],
                                env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert report.as_uri() in result.output
    assert f" {status} " in result.output


def test_history_lists_runs_newest_last_by_job_and_limit(tmp_path: Path) -> None:
    cfg = write_repo(tmp_path, """\
        - {name: a, cron: "0 6 * * *", job: run}
        - {name: b, cron: "0 6 * * *", job: materialize}
        """)
    runner = Runner(cfg, tmp_path, lambda line: None,
                    command_for=lambda s, d, w: py("pass"))
    ids = [runner.run(cfg.schedules[i], None).run_id for i in (0, 1, 0, 0)]
    history_file = cfg.resolve(cfg.scheduler.history_path) / "history.jsonl"
    lines = [json.loads(line) for line in history_file.read_text().splitlines()]
    assert [r["run_id"] for r in lines] == ids
    assert set(lines[0]) >= {"run_id", "job", "kind", "command", "scheduled", "start", "end",
                             "seconds", "status", "exit_code", "log", "reports"}

    def shown(*args: str) -> str:
        result = CliRunner().invoke(app, ["schedule", "history", *args, "--repo", str(tmp_path)],
                                    env={"COLUMNS": "400"})
        assert result.exit_code == 0, result.output
        return result.output

    out = shown("--job", "a", "--limit", "2")
    assert [i in out for i in ids] == [False, False, True, True]
    assert out.index(ids[2]) < out.index(ids[3])
    assert ids[1] in shown()
    result = CliRunner().invoke(app, ["schedule", "history", "--job", "aa", "--repo",
                                      str(tmp_path)])
    assert result.exit_code == 1
    assert result.output == ("error: no schedule named 'aa' in feature_repo.yaml or the "
                             "history; did you mean 'a'?\n")


def test_list_shows_each_job_with_its_next_run(tmp_path: Path) -> None:
    write_repo(tmp_path, """\
        - {name: nightly-drift, cron: "0 6 * * *", job: drift}
        - {name: hourly-run, cron: "5 * * * *", job: run, args: {view: user_spend}}
        """)
    from apscheduler.triggers.cron import CronTrigger

    now = datetime.now(UTC)
    result = CliRunner().invoke(app, ["schedule", "list", "--repo", str(tmp_path)],
                                env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    for cron, name in (("0 6 * * *", "nightly-drift"), ("5 * * * *", "hourly-run")):
        nxt = CronTrigger.from_crontab(cron, timezone=UTC).get_next_fire_time(None, now)
        row = next(line for line in result.output.splitlines() if name in line)
        assert nxt.strftime("%Y-%m-%d %H:%M") in row
    assert "tessera run --view user_spend --repo" in result.output


def test_run_of_an_unknown_name_is_one_line_with_close_names(tmp_path: Path) -> None:
    write_repo(tmp_path, """\
        - {name: nightly-drift, cron: "0 6 * * *", job: drift}
        - {name: nightly-run, cron: "0 5 * * *", job: run}
        """)
    result = CliRunner().invoke(app, ["schedule", "run", "nightly-drfit", "--repo",
                                      str(tmp_path)])
    assert result.exit_code == 1
    assert result.output == ("error: no schedule named 'nightly-drfit' in feature_repo.yaml; "
                             "did you mean 'nightly-drift', 'nightly-run'?\n")


@pytest.fixture(scope="module")
def card_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example definitions over two days of generated data, with real Tessera jobs."""
    root = tmp_path_factory.mktemp("repo")
    shutil.copy(REPO_ROOT / "example" / "card_features.py", root / "defs.py")
    (root / "feature_repo.yaml").write_text(textwrap.dedent("""\
        project: t
        definitions: [defs.py]
        schedules:
          - name: day-run
            cron: "0 6 * * *"
            job: run
            args: {view: user_spend, start: "2026-01-05", end: "2026-01-06", engine: polars}
          - name: typo-run
            cron: "0 6 * * *"
            job: run
            args: {view: user_spnd}
          - name: gc-report
            cron: "0 7 * * 1"
            job: online-gc
        """))
    subprocess.run([TESSERA, "generate", "--out", str(root / "data"), "--rows", "1000",
                    "--days", "2", "--start", "2026-01-05"], check=True, capture_output=True,
                   timeout=120)
    return root


@pytest.mark.slow
def test_schedule_run_runs_the_real_tessera_command_and_records_it(card_repo: Path) -> None:
    ok = subprocess.run([TESSERA, "schedule", "run", "day-run", "--repo", str(card_repo)],
                        capture_output=True, text=True, timeout=180)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = subprocess.run([TESSERA, "schedule", "run", "typo-run", "--repo", str(card_repo)],
                         capture_output=True, text=True, timeout=180)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    cfg = load_config(card_repo)
    [day] = records(cfg, "day-run")[-1:]
    [typo] = records(cfg, "typo-run")[-1:]
    assert (day.status, day.exit_code, day.trigger, day.scheduled) == ("ok", 0, "manual", None)
    assert day.command[3:] == ["run", "--view", "user_spend", "--start", "2026-01-05", "--end",
                               "2026-01-06", "--engine", "polars", "--repo",
                               str(card_repo.resolve())]
    assert "user_spend" in Path(day.log).read_text()  # the run's table
    assert (typo.status, typo.exit_code) == ("failed", 1)
    assert "no feature view 'user_spnd'" in Path(typo.log).read_text()
    assert "typo-run (run): failed in " in bad.stdout and f"log: {typo.log}" in bad.stdout


def test_a_scheduled_online_gc_reports_against_the_real_redis(card_repo: Path,
                                                               redis_url: str) -> None:
    """The job runs ``tessera online gc`` on the repo's Redis (the default URL, the one the
    tests start) and only reports without ``yes``."""
    assert load_config(card_repo).online.url == redis_url
    done = subprocess.run([TESSERA, "schedule", "run", "gc-report", "--repo", str(card_repo)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    [gc] = records(load_config(card_repo), "gc-report")[-1:]
    assert (gc.status, gc.exit_code, gc.command[3:5]) == ("ok", 0, ["online", "gc"])
    log = Path(gc.log).read_text()
    assert "scanned" in log and ("nothing stale" in log or "run again with --delete" in log), log


def start_foreground(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "COLUMNS": "300"})


def read_until(proc: subprocess.Popen[str], marker: str, seconds: float) -> str:
    """Lines of ``proc`` up to one holding ``marker`` (fails past ``seconds``)."""
    seen: list[str] = []
    timer = threading.Timer(seconds, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if marker in line:
                return "".join(seen)
    finally:
        timer.cancel()
    pytest.fail(f"no {marker!r} within {seconds} s; output: {''.join(seen)}")


def test_sigterm_stops_the_foreground_scheduler_with_exit_0(card_repo: Path) -> None:
    proc = start_foreground([TESSERA, "schedule", "--repo", str(card_repo)], card_repo)
    try:
        head = read_until(proc, "SIGTERM or Ctrl-C stops", 60)
        head += read_until(proc, "typo-run: next run", 10)
        assert "day-run: next run" in head
        proc.send_signal(signal.SIGTERM)
        out = communicate_or_dump(proc, 20)
    finally:
        proc.kill()
    assert proc.returncode == 0, head + out
    assert "scheduler stopped" in out


def test_sigusr1_prints_the_threads_and_the_scheduler_keeps_running(card_repo: Path) -> None:
    proc = start_foreground([TESSERA, "schedule", "--repo", str(card_repo)], card_repo)
    try:
        read_until(proc, "typo-run: next run", 60)
        proc.send_signal(signal.SIGUSR1)
        # The main thread, waiting for a signal, and the scheduler's own thread.
        dump = read_until(proc, "in run_foreground", 10)
        proc.send_signal(signal.SIGTERM)
        out = communicate_or_dump(proc, 20)
    finally:
        proc.kill()
    assert "Thread 0x" in dump and "apscheduler" in dump + out, dump + out
    assert proc.returncode == 0 and "scheduler stopped" in out, dump + out


def communicate_or_dump(proc: subprocess.Popen[str], seconds: float) -> str:
    """``proc``'s remaining output once it exits; past ``seconds``, fail with its threads'
    stacks (``tessera schedule`` prints them on SIGUSR1), so a hang says where it waits."""
    try:
        return proc.communicate(timeout=seconds)[0]
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)
        time.sleep(2)
        proc.kill()
        out = proc.communicate()[0]
        pytest.fail(f"still running {seconds} s after SIGTERM; its threads:\n{out}")


SCRIPT = """
import sys, time
from datetime import UTC
from pathlib import Path
from apscheduler.triggers.interval import IntervalTrigger
from features.config import load_config
from validation.schedule import run_foreground

root = Path(sys.argv[1])
command = [sys.executable, "-c", sys.argv[2]]
sys.exit(run_foreground(load_config(root), root, lambda line: print(line, flush=True),
                        trigger_for=lambda s: IntervalTrigger(seconds=1, timezone=UTC),
                        command_for=lambda s, run_dir, when: command))
"""


@pytest.mark.parametrize(("sleep", "status"), [(2, "ok"), (60, "failed")])
def test_sigterm_waits_for_a_running_job_up_to_the_bound(tmp_path: Path, sleep: int,
                                                         status: str) -> None:
    cfg = write_repo(tmp_path, """\
        - {name: busy, cron: "0 6 * * *", job: run}
        """, scheduler="stop_wait_seconds: 3\n")
    started = tmp_path / "started"
    job = (f"import time; open({str(started)!r}, 'w').close(); time.sleep({sleep}); "
           f"print('finished')")
    proc = start_foreground([PY, "-c", SCRIPT, str(tmp_path), job], REPO_ROOT)
    try:
        read_until(proc, "SIGTERM or Ctrl-C stops", 60)
        wait_for(started.exists, 20, "the job to start")
        proc.send_signal(signal.SIGTERM)
        began = time.monotonic()
        out = communicate_or_dump(proc, 30)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert time.monotonic() - began < 3 + 10 + 5  # the bound, SIGTERM's grace, slack
    [run] = [r for r in records(cfg, "busy") if r.status != "skipped"]
    assert run.status == status, out
    assert ("finished" in Path(run.log).read_text()) == (status == "ok")
    if status == "failed":
        assert run.reason == "killed: the scheduler stopped"


@pytest.mark.parametrize(("args", "message"), [
    ("{repo: other.yaml}", "option 'repo' is set by the scheduler"),
    ("{out: /tmp/x}", "option 'out' is set by the scheduler"),
    ("{--view: a}", "option name '--view': expected lowercase letters"),
])
def test_args_the_scheduler_owns_or_cannot_pass_are_refused_at_load(tmp_path: Path, args: str,
                                                                    message: str) -> None:
    from features.errors import ConfigError

    with pytest.raises(ConfigError, match=r"schedules\.0\.args: " + message.replace("(", r"\(")):
        write_repo(tmp_path, f'- {{name: a, cron: "0 6 * * *", job: drift, args: {args}}}\n')
