"""The ``tessera schedule`` commands (start, list, run, history, and the group's callback):
parse, load the repo, call :mod:`validation.schedule` or :mod:`validation.schedule_views`.
Registered on the main app by :mod:`tessera.cli`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from tessera.cli_common import DEFAULT_REPO, RepoOpt, _config, _console, _friendly

schedule_app = typer.Typer(help="Run drift reports, batch runs and materializations on the "
                           "cron expressions of feature_repo.yaml (schedules:); see "
                           "docs/schedule.md.", invoke_without_command=True,
                           rich_markup_mode=None)


@schedule_app.callback()
@_friendly
def schedule_cmd(ctx: typer.Context, repo: RepoOpt = DEFAULT_REPO) -> None:
    """Without a subcommand: run the scheduler in the foreground until SIGINT or SIGTERM."""
    if ctx.invoked_subcommand is None:
        schedule_start(repo)
    # Typer bundles its own click: compare the source by name, not by enum identity.
    elif getattr(ctx.get_parameter_source("repo"), "name", None) == "COMMANDLINE":
        raise typer.BadParameter(f"give it after the subcommand: tessera schedule "
                                 f"{ctx.invoked_subcommand} --repo {repo}", param_hint="--repo")


@schedule_app.command("start")
@_friendly
def schedule_start(repo: RepoOpt = DEFAULT_REPO) -> None:
    """Run the scheduler in the foreground, one line per run, until SIGINT or SIGTERM (then
    wait for running jobs up to scheduler.stop_wait_seconds and exit 0)."""
    from validation.schedule import run_foreground

    raise typer.Exit(run_foreground(_config(repo), repo, _console().out))  # .out: no wrap


@schedule_app.command("list")
@_friendly
def schedule_list(repo: RepoOpt = DEFAULT_REPO) -> None:
    """Each scheduled job with its next run time (UTC), last run and command."""
    from validation.schedule_views import list_jobs

    list_jobs(_config(repo), repo, _console())


@schedule_app.command("run")
@_friendly
def schedule_run(name: Annotated[str, typer.Argument(help="The schedule's name.")],
                 repo: RepoOpt = DEFAULT_REPO) -> None:
    """Run one job now, recorded like a scheduled run; exit 0 when it ended ok or found drift,
    1 otherwise."""
    from validation.schedule import run_now

    record = run_now(_config(repo), repo, name, _console().out)
    raise typer.Exit(0 if record.status in ("ok", "drift") else 1)


@schedule_app.command("history")
@_friendly
def schedule_history(
    job: Annotated[str | None, typer.Option("--job", help="Only this job's runs.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="The last N runs.")] = 20,
    repo: RepoOpt = DEFAULT_REPO,
) -> None:
    """The recorded runs: status, exit code, and links to each run's log and reports."""
    from validation.schedule_views import show_history

    show_history(_config(repo), _console(), job, limit)
