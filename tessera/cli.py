"""The ``tessera`` command line. It parses, loads the repo and calls one function: no logic here.

Heavy libraries (Feast, Spark, Great Expectations, Evidently) are imported by the functions the
commands call, never at import time, so ``tessera --help`` answers at once.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import datetime
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

app = typer.Typer(
    name="tessera",
    help="Tessera: write features once; batch, streaming and serving stay consistent.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Plain click help: Typer's rich formatter imports markdown and pygments (~0.5 s), and
    # `tessera --help` must answer at once.
    rich_markup_mode=None,
)
services_app = typer.Typer(help="Local Redis, Apache Kafka and (optionally) a Redis Cluster on "
                           "127.0.0.1 (for dev, tests, demo).",
                           no_args_is_help=True, rich_markup_mode=None)
app.add_typer(services_app, name="services")

RepoOpt = Annotated[Path, typer.Option("--repo", "-r", help="Path to feature_repo.yaml.",
                                       envvar="TESSERA_REPO")]
DEFAULT_REPO = Path("feature_repo.yaml")

F = TypeVar("F", bound=Callable[..., Any])


#: Width of the consoles when the output is not a terminal (a pipe, a file, a CI log) and
#: COLUMNS is not set: rich would fall back to 80 columns and cut numbers in tables.
PIPE_WIDTH = 200
_OUR_PACKAGES = ("features", "pipelines", "streaming", "validation", "tessera")


def _width(stream: Any) -> int | None:
    """Console width for ``stream``: None (rich measures) on a terminal, else COLUMNS or 200."""
    isatty = getattr(stream, "isatty", None)
    if callable(isatty) and isatty():
        return None
    import os

    columns = os.environ.get("COLUMNS", "").strip()
    return int(columns) if columns.isdigit() and int(columns) > 0 else PIPE_WIDTH


def _error_console() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True, width=_width(sys.stderr))


def _one_line_warnings(fallback: Callable[..., None]) -> Callable[..., None]:
    """A ``warnings.showwarning`` printing Tessera's warnings as one yellow line each.

    Other libraries' warnings go to ``fallback`` (Python's usual file:line rendering).
    """

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:
        if category.__module__.split(".")[0] not in _OUR_PACKAGES:
            fallback(message, category, filename, lineno, file, line)
            return
        from rich.markup import escape

        _error_console().print(f"[bold yellow]warning:[/] {escape(str(message))}", markup=True)

    return show


def _friendly(fn: F) -> F:
    """Turn a TesseraError into one red line and exit code 1 (no traceback for user errors).

    Tessera's warnings print as one yellow line each (not Python's file:line + source line).
    """

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import warnings

        from features.errors import TesseraError

        with warnings.catch_warnings():  # restores showwarning afterwards
            warnings.showwarning = _one_line_warnings(warnings.showwarning)
            try:
                return fn(*args, **kwargs)
            except TesseraError as e:
                from rich.markup import escape

                _error_console().print(f"[bold red]error:[/] {escape(str(e))}", markup=True)
                raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False, width=_width(sys.stdout))


def _config(repo: Path) -> Any:
    from features.config import load_config

    return load_config(repo)


@services_app.command("up")
@_friendly
def services_up(
    cluster: Annotated[bool, typer.Option(
        "--cluster", help="Also start the local 3-master Redis Cluster (services.redis_cluster),"
        " even when it is not enabled.")] = False,
    repo: RepoOpt = DEFAULT_REPO,
) -> None:
    """Start Redis and Kafka, and the Redis Cluster when enabled or with --cluster (idempotent:
    running healthy services are left alone)."""
    from tessera import services

    cfg = _config(repo)
    console = _console()
    console.print(services.render_status(
        services.up(cfg.services, cfg.root, console=console, cluster=cluster)))


@services_app.command("down")
@_friendly
def services_down(repo: RepoOpt = DEFAULT_REPO) -> None:
    """Stop the local services started by `services up`."""
    from tessera import services

    cfg = _config(repo)
    console = _console()
    console.print(services.render_status(services.down(cfg.services, cfg.root, console=console)))


@services_app.command("status")
@_friendly
def services_status(repo: RepoOpt = DEFAULT_REPO) -> None:
    """Show each local service: address, pid, version and health. Exit 1 if one is down."""
    from tessera import services

    cfg = _config(repo)
    statuses = services.status(cfg.services, cfg.root)
    _console().print(services.render_status(statuses))
    if not all(s.healthy for s in statuses):
        raise typer.Exit(1)


@app.command("config")
@_friendly
def show_config(repo: RepoOpt = DEFAULT_REPO) -> None:
    """Validate feature_repo.yaml (with environment overrides) and print the result."""
    cfg = _config(repo)
    _console().print_json(cfg.model_dump_json())


@app.command("apply")
@_friendly
def apply_cmd(repo: RepoOpt = DEFAULT_REPO) -> None:
    """Validate the feature definitions and register them in the Feast registry."""
    from tessera.commands import apply_repo

    apply_repo(_config(repo), _console())


@app.command("run")
@_friendly
def run_cmd(
    start: Annotated[str | None, typer.Option(
        help="First UTC day, e.g. 2026-01-01 (default: the source's first event).")] = None,
    end: Annotated[str | None, typer.Option(
        help="Day after the last, e.g. 2026-02-01, exclusive (default: after the source's "
             "last event).")] = None,
    engine: Annotated[str, typer.Option(help="polars (one machine) or spark (spark.master).")]
    = "polars",
    view: Annotated[list[str] | None, typer.Option("--view", help="Only this view (repeat).")]
    = None,
    allow_empty_days: Annotated[bool, typer.Option(
        "--allow-empty-days", help="Days without any source event are truly empty: store them "
        "as empty (by default they are left as stored and reported).")] = False,
    then_materialize: Annotated[bool, typer.Option(
        "--materialize", help="Then write what changed to the online store (Redis).")] = False,
    repo: RepoOpt = DEFAULT_REPO,
) -> None:
    """Apply the rules to the batch source and write offline tiles for whole days [start, end)."""
    from tessera.commands import run_batch

    run_batch(_config(repo), _console(), engine, start, end, view, allow_empty_days,
              then_materialize)


@app.command("materialize")
@_friendly
def materialize_cmd(
    start: Annotated[str | None, typer.Option(
        help="Rewrite the entities with events from this UTC day on (default: only what "
             "changed since the last materialization).")] = None,
    end: Annotated[str | None, typer.Option(help="...up to this day, exclusive.")] = None,
    view: Annotated[list[str] | None, typer.Option("--view", help="Only this view (repeat).")]
    = None,
    repo: RepoOpt = DEFAULT_REPO,
) -> None:
    """Write offline tiles to the online store (Redis): incremental, idempotent."""
    from tessera.commands import materialize_repo

    materialize_repo(_config(repo), _console(), start, end, view)


@app.command("export")
@_friendly
def export_cmd(
    out: Annotated[Path, typer.Option("--out", help="The training set to write (Parquet); its "
                                      "manifest goes beside it as NAME.manifest.json.")],
    entities: Annotated[Path | None, typer.Option(
        "--entities", help="Entity rows (Parquet or CSV): join keys, a timestamp and any label "
        "columns, all kept in order.")] = None,
    features: Annotated[str | None, typer.Option(
        "--features", help="view:feature,view:feature,...")] = None,
    feature_service: Annotated[str | None, typer.Option("--feature-service")] = None,
    manifest: Annotated[Path | None, typer.Option(
        "--manifest", help="Re-run the export this manifest describes (same rows, features "
        "and offline versions): the same bytes.")] = None,
    timestamp_field: Annotated[str, typer.Option(help="The entity rows' time column.")]
    = "event_ts",
    full_feature_names: Annotated[bool, typer.Option(help="Name columns view__feature.")]
    = False,
    allow_uncovered: Annotated[bool, typer.Option(
        help="Read days never computed as empty (with a warning) instead of failing.")] = False,
    repo: RepoOpt = DEFAULT_REPO,
) -> None:
    """Write a point-in-time-correct training set and its manifest."""
    from tessera.commands import export_training_set

    export_training_set(_config(repo), _console(), out=out, entities=entities,
                        features=features, feature_service=feature_service, manifest=manifest,
                        timestamp_field=timestamp_field, full_feature_names=full_feature_names,
                        allow_uncovered=allow_uncovered)


@app.command("stream")
@_friendly
def stream_cmd(
    view: Annotated[list[str] | None, typer.Option("--view", help="Only this view (repeat); "
                                                   "default: every view with a kafka_topic.")]
    = None,
    max_events: Annotated[int | None, typer.Option(min=1, help="Stop after this many events.")]
    = None,
    max_seconds: Annotated[float | None, typer.Option(min=0, help="Stop after this long.")]
    = None,
    until_idle: Annotated[float | None, typer.Option(
        min=0, help="Stop once no event came for this many seconds, counted once this "
             "process read its partitions to the end and the group committed every partition "
             "(a killed member's are waited for: its session ends in 10 s).")] = None,
    group: Annotated[str | None, typer.Option(help="Consumer group (default kafka."
                                              "consumer_group, per view selection).")] = None,
    metrics_port: Annotated[int | None, typer.Option(
        min=0, max=65535, help="Serve Prometheus /metrics on 127.0.0.1:PORT.")] = None,
    repo: RepoOpt = DEFAULT_REPO,
) -> None:
    """Consume the views' Kafka topics: same rules, into Redis and the offline store."""
    from tessera.commands import stream_repo

    stream_repo(_config(repo), _console(), view, max_events=max_events,
                max_seconds=max_seconds, until_idle=until_idle, group=group,
                metrics_port=metrics_port)


@app.command("generate")
@_friendly
def generate_cmd(
    out: Annotated[Path, typer.Option(help="Folder for transactions/date=.../*.parquet")]
    = Path("data"),
    rows: Annotated[int, typer.Option(help="Number of events.")] = 100_000,
    start: Annotated[datetime, typer.Option(help="First instant (UTC).")]
    = datetime(2026, 1, 5),
    days: Annotated[int, typer.Option(help="Days the events span.")] = 28,
    seed: Annotated[int, typer.Option(help="Same seed, same data.")] = 7,
    drift_from: Annotated[datetime | None, typer.Option(help="Distributions shift from here.")]
    = None,
    malformed_rate: Annotated[float, typer.Option(help="Fraction of rows made malformed.")]
    = 0.0,
) -> None:
    """Write seeded, realistic card transactions (the example domain) as daily Parquet files."""
    from tessera.commands import generate_data

    generate_data(_console(), rows, out, start, days, seed, drift_from, malformed_rate)


@app.command("produce")
@_friendly
def produce_cmd(
    rate: Annotated[float | None, typer.Option(
        help="Events per second (default: as fast as possible).")] = None,
    events: Annotated[int | None, typer.Option(
        help="Generate this many card transactions over the --days before now "
             "(default 100000 when no --file).")] = None,
    file: Annotated[Path | None, typer.Option(
        help="Send the events of this Parquet file (or folder of them) instead.")] = None,
    topic: Annotated[str | None, typer.Option(
        help="Kafka topic (default: the kafka_topic of the source the views read).")] = None,
    source: Annotated[str | None, typer.Option(
        help="Source whose schema the events follow (default: from the topic).")] = None,
    key: Annotated[str | None, typer.Option(
        help="Field whose value keys each message (default: the views' first join key).")]
    = None,
    partitions: Annotated[int | None, typer.Option(
        help="Partitions of the topic when it is created (default 6; an existing topic is "
             "left as it is).")] = None,
    max_seconds: Annotated[float | None, typer.Option(
        help="Stop sending after this many seconds.")] = None,
    seed: Annotated[int, typer.Option(help="Generator seed: same seed, same events.")] = 7,
    days: Annotated[int, typer.Option(help="Days the generated events span.")] = 7,
    start: Annotated[str | None, typer.Option(
        help="First instant of the generated events (default: --days before now).")] = None,
    malformed_rate: Annotated[float, typer.Option(
        help="Fraction of generated events made malformed (they are sent too).")] = 0.0,
    repo: RepoOpt = DEFAULT_REPO,
) -> None:
    """Send events to the source's Kafka topic, in event-time order, keyed by entity."""
    from tessera.commands import produce_events

    produce_events(_config(repo), _console(), events=events, file=file, rate=rate, topic=topic,
                   source=source, key=key, partitions=partitions, max_seconds=max_seconds,
                   seed=seed, days=days, start=start, malformed_rate=malformed_rate)


@app.command("serve")
@_friendly
def serve_cmd(
    host: Annotated[str | None, typer.Option(
        help="Address to bind (default serve.host: 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port (default serve.port: 6566).")]
    = None,
    workers: Annotated[int, typer.Option(min=1, help="Processes sharing the port (one per "
                                         "core for more throughput).")] = 1,
    access_log: Annotated[bool, typer.Option("--access-log", help="Log every request.")]
    = False,
    repo: RepoOpt = DEFAULT_REPO,
) -> None:
    """HTTP feature server: POST /get-online-features (Feast's JSON), GET /health, /metrics."""
    from tessera.server import serve

    serve(_config(repo), repo, host=host, port=port, workers=workers, access_log=access_log,
          console=_error_console())


@app.command("compile")
@_friendly
def compile_cmd(
    force: Annotated[bool, typer.Option("--force", help="Build again even if up to date.")]
    = False,
    check: Annotated[bool, typer.Option("--check", help="Only show how each module imports.")]
    = False,
) -> None:
    """Compile the online read path with Cython (`make test` and `make demo` run it); an
    edited module imports as Python until compiled again, never as its old build."""
    from tessera.compile import run

    raise typer.Exit(run(_console(), force=force, check=check))


online_app = typer.Typer(help="Operate the online store (Redis).", no_args_is_help=True,
                         rich_markup_mode=None)
app.add_typer(online_app, name="online")


@online_app.command("gc")
@_friendly
def online_gc_cmd(
    delete: Annotated[bool, typer.Option(
        "--delete", help="Delete the stale keys (without it: only report them).")] = False,
    repo: RepoOpt = DEFAULT_REPO,
) -> None:
    """Delete online state of rules, views or formats the repo no longer has (old fingerprints'
    lifetime values never expire by themselves)."""
    from tessera.commands import online_gc

    online_gc(_config(repo), _console(), delete=delete)


@app.command("check-consistency")
@_friendly
def check_consistency_cmd(
    view: Annotated[list[str] | None, typer.Option("--view", help="Only this view (repeat).")]
    = None,
    sample: Annotated[int, typer.Option(min=1, help="Entity keys per view (plus two never "
                                        "seen), each read at 6 instants.")] = 200,
    seed: Annotated[int | None, typer.Option(help="Same seed, same keys and instants "
                                             "(default: random, printed).")] = None,
    repo: RepoOpt = DEFAULT_REPO,
) -> None:
    """Compare online (Redis) and offline (tiles) values at sampled keys and instants; exit 1
    on any difference, 2 when a view could not be checked."""
    from pipelines.consistency import check_repo

    raise typer.Exit(check_repo(_config(repo), _console(), view, sample, seed))


@app.command("drift")
@_friendly
def drift_cmd(
    reference: Annotated[str, typer.Option(
        help="Training data: an export manifest (NAME.manifest.json), or a window START..END "
             "(ISO dates or instants, UTC, END exclusive) read point-in-time.")],
    current: Annotated[str, typer.Option(
        help="A window START..END, or serving-log (the logged online responses).")],
    view: Annotated[str | None, typer.Option("--view", help="Compare this view's features.")]
    = None,
    service: Annotated[str | None, typer.Option(
        "--service", help="Compare this feature service's features.")] = None,
    out: Annotated[Path | None, typer.Option(help="Folder for report.html, report.json and "
                                             "summary.json (default drift.reports_path/"
                                             "TIMESTAMP-NAME).")] = None,
    since: Annotated[str | None, typer.Option(help="serving-log: from this instant (UTC).")]
    = None,
    until: Annotated[str | None, typer.Option(help="serving-log: before this instant.")]
    = None,
    repo: RepoOpt = DEFAULT_REPO,
) -> None:
    """Evidently drift report of live feature values against the training data; exit 1 when
    the share of drifted features reaches drift.threshold, 2 on bad input."""
    from validation.drift_command import run_drift

    raise typer.Exit(run_drift(_config(repo), _console(), reference=reference, current=current,
                               view=view, service=service, out=out, since=since, until=until,
                               errors=_error_console()))


@app.command("demo")
@_friendly
def demo(repo: RepoOpt = DEFAULT_REPO) -> None:
    """Run the example end to end on the local services and print what happened."""
    from tessera.demo import run_demo

    run_demo(_config(repo), _console())


schedule_app = typer.Typer(help="Run drift reports, batch runs and materializations on the "
                           "cron expressions of feature_repo.yaml (schedules:); see "
                           "docs/schedule.md.", invoke_without_command=True,
                           rich_markup_mode=None)
app.add_typer(schedule_app, name="schedule")


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


def main() -> None:  # pragma: no cover - console entry point alias
    app(prog_name="tessera")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
