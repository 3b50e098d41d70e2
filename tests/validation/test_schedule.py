"""``tessera schedule``: jobs run as child processes on APScheduler triggers, one at a time,
recorded in the history; a failing or hung job never stops the others or the scheduler.

Tests drive the real APScheduler with a 1-second interval trigger instead of cron (a cron
fires at most once a minute), and point jobs at small Python commands where a job must fail,
hang or take a known time. Every wait is bounded. The real Tessera commands and the
foreground process under signals: test_schedule_process.py.
"""

from __future__ import annotations

import itertools
import json
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from features.config import RepoConfig
from tessera.cli import app
from tests.validation.schedule_repo import PY, py, records, wait_for, write_repo
from validation.schedule import (
    Runner,
    ScheduleError,
    build_scheduler,
    expand,
    tessera_command,
)


def every_second(schedule: object) -> object:
    from apscheduler.triggers.interval import IntervalTrigger

    return IntervalTrigger(seconds=1, timezone=UTC)


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
