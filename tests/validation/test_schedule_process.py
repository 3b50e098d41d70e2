"""``tessera schedule`` as users run it: the real Tessera commands through ``tessera schedule
run`` (a batch run, an online gc against the real Redis), and the foreground scheduler process
under signals (SIGTERM stops it with exit 0 and waits for a running job up to its bound; SIGUSR1
prints its threads and it keeps running). Every wait is bounded."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import pytest

from features.config import load_config
from tests.conftest import REPO_ROOT
from tests.validation.schedule_repo import PY, TESSERA, records, wait_for, write_repo


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
