"""The ``tessera`` command line. It parses, loads the repo and calls one function: no logic here.

Heavy libraries (Feast, Spark, Great Expectations, Evidently) are imported by the functions the
commands call, never at import time, so ``tessera --help`` answers at once.

The ``services`` and ``schedule`` groups live in :mod:`tessera.cli_services` and
:mod:`tessera.cli_schedule`; what every command shares (``--repo``, the consoles, the handling
of user errors) in :mod:`tessera.cli_common`.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from tessera.cli_common import DEFAULT_REPO, RepoOpt, _config, _console, _error_console, _friendly
from tessera.cli_schedule import schedule_app
from tessera.cli_services import services_app

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
app.add_typer(services_app, name="services")


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
    timestamp_field: Annotated[str | None, typer.Option(
        help="The entity rows' time column (default: event_ts, else event_timestamp, else "
        "their only timestamp column).")] = None,
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
    from tessera.server_run import serve

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


app.add_typer(schedule_app, name="schedule")


def main() -> None:  # pragma: no cover - console entry point alias
    app(prog_name="tessera")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
