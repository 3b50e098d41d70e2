"""What each CLI command does: load the repo, call one function, render the result.

The CLI (:mod:`tessera.cli`) only parses arguments and calls these.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from features.config import RepoConfig
    from features.online.redis_store import RedisOnline
    from features.repo import Definitions
    from pipelines.batch import RunSummary
    from pipelines.export import ExportSummary
    from pipelines.materialize import MaterializeSummary
    from pipelines.online_gc import GcSummary
    from streaming.consumer import StreamSummary
    from streaming.produce import ProduceSummary


def load_valid(cfg: RepoConfig) -> Definitions:
    """The repo's definitions, validated (raises DefinitionError listing every problem)."""
    from features.repo import load_definitions
    from features.validate import validate

    defs = load_definitions(cfg)
    validate(defs)
    return defs


def apply_repo(cfg: RepoConfig, console: Console) -> None:
    """Validate the definitions and write them to the Feast registry."""
    from rich.table import Table

    from features.registry import apply

    defs = load_valid(cfg)
    with console.status("writing the Feast registry (importing Feast takes a few seconds)"):
        summary = apply(cfg, defs)
    table = Table("feature view", "features", "entities", "rule fingerprint")
    for name, fp in summary.views.items():
        view = defs.views[name]
        table.add_row(name, str(len(view.features)), ", ".join(view.join_keys), fp[:16])
    console.print(table)
    console.print(f"Registered {len(summary.entities)} entities, {len(summary.views)} feature "
                  f"views, {len(summary.services)} feature services in {summary.registry}")
    console.print(f"Browse with Feast: feast -c {summary.feast_repo} feature-views list")


def run_batch(cfg: RepoConfig, console: Console, engine: str, start: str | None,
              end: str | None, views: list[str] | None,
              allow_empty_days: bool = False, then_materialize: bool = False) -> list[RunSummary]:
    """``tessera run``: every (or the named) view over whole days ``[start, end)``."""
    from pipelines.batch import run
    from validation.gate import BatchGate

    defs = load_valid(cfg)
    summaries = run(cfg, defs.select(views), engine, start, end,  # type: ignore[arg-type]
                    allow_empty_days=allow_empty_days, gate=BatchGate(cfg))
    render_runs(console, summaries)
    if then_materialize:
        materialize_repo(cfg, console, None, None, views)
    return summaries


def _batch_online(cfg: RepoConfig) -> RedisOnline:
    """The online store for a batch command: the serving timeout, but at least 5 s (a bulk
    write or a SCAN page is not a 1-entity read)."""
    from features.online.redis_store import RedisOnline

    return RedisOnline(cfg.online.url, cluster=cfg.online.cluster,
                       timeout_s=max(cfg.online.timeout_ms / 1000, 5.0))


def materialize_repo(cfg: RepoConfig, console: Console, start: str | None, end: str | None,
                     views: list[str] | None) -> list[MaterializeSummary]:
    """``tessera materialize``: online values into Redis (incremental unless days are given)."""
    from rich.table import Table

    from pipelines.materialize import MaterializeError, materialize

    defs = load_valid(cfg)
    online = _batch_online(cfg)
    failure = None
    try:
        summaries = materialize(cfg, defs.select(views), online, start=start, end=end)
    except MaterializeError as e:  # the table still shows what was written
        summaries, failure = e.summaries, e
    finally:
        online.close()
    table = Table(title=f"materialized into {cfg.online.url}")
    for name in ("view", "fingerprint", "mode", "from", "days", "entities", "keys written",
                 "keys deleted", "s", "entities/s"):
        table.add_column(name, justify="left" if name in ("view", "mode", "from", "days")
                         else "right")
    for m in summaries:
        wrote = m.mode in ("full", "incremental")  # up to date, failed: nothing read
        days = (f"{m.days[0]}..{m.days[-1]} ({len(m.days)})" if m.days else
                "all" if wrote else "-")
        table.add_row(m.view, m.fingerprint[:16], m.mode, m.source if wrote else "-", days,
                      f"{m.entities:,}", f"{m.keys_written:,}", f"{m.keys_deleted:,}",
                      f"{m.seconds:.2f}", f"{m.rate:,.0f}")
    console.print(table)
    for m in summaries:
        if m.note and m.mode != "failed":
            console.print(f"[yellow]note:[/] {m.view}: {m.note}", soft_wrap=True)
    if failure is not None:
        raise failure
    return summaries


def online_gc(cfg: RepoConfig, console: Console, *, delete: bool) -> GcSummary:
    """``tessera online gc``: find (and with ``delete``, delete) stale online keys."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from pipelines.online_gc import collect, estimate

    defs = load_valid(cfg)
    online = _batch_online(cfg)
    try:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"),
                      TextColumn("{task.completed:,.0f} of ~{task.total:,.0f} keys"),
                      TimeElapsedColumn(), console=console, transient=True) as bar:
            task = bar.add_task(f"scanning {cfg.project}:*", total=estimate(online))
            summary = collect(cfg.project, dict(defs.views), online, delete=delete,
                              progress=lambda n: bar.update(task, completed=n))
    finally:
        online.close()
    table = Table(title=f"stale online state of {cfg.project!r} in {online.shown_url}")
    for name in ("view", "fingerprint", "format", "why", "window", "lifetime", "offsets",
                 "state", "keys"):
        table.add_column(name, justify="right" if name not in ("view", "fingerprint", "why")
                         else "left")
    for s in summary.stale:
        table.add_row(s.view, s.fingerprint, f"v{s.format}", s.why,
                      *(f"{s.keys.get(k, 0):,}" for k in ("window", "lifetime", "offsets",
                                                           "state")), f"{s.total:,}")
    if summary.stale:
        console.print(table)
    done = (f"deleted {summary.deleted:,} stale keys" if delete else
            f"{summary.stale_keys:,} stale keys would be deleted: run again with --delete"
            if summary.stale_keys else "nothing stale")
    console.print(f"scanned {summary.scanned:,} keys in {summary.seconds:.2f} s: "
                  f"{summary.current:,} current (kept), {summary.other:,} not in the online "
                  f"layout (left); {done}")
    return summary


def export_training_set(cfg: RepoConfig, console: Console, *, out: Path,
                        entities: Path | None, features: str | None,
                        feature_service: str | None, manifest: Path | None,
                        timestamp_field: str | None = None, full_feature_names: bool = False,
                        allow_uncovered: bool = False, echo: bool = False) -> ExportSummary:
    """``tessera export``: a training set and its manifest (or a manifest's export again).

    ``echo`` prints the equivalent command line first (the demo shows what it runs).
    """
    import shlex

    from pipelines.export import ExportError, RetrievalJob, reproduce

    given = {"--entities": entities, "--features": features,
             "--feature-service": feature_service, "--manifest": manifest, "--out": out,
             "--timestamp-field": timestamp_field}
    command = shlex.join(["tessera", "export", *[x for k, v in given.items() if v is not None
                                                 for x in (k, str(v))],
                          *(["--full-feature-names"] if full_feature_names else []),
                          *(["--allow-uncovered"] if allow_uncovered else [])])
    if echo:
        console.print(f"$ {command}", markup=False)
    defs = load_valid(cfg)
    if manifest is not None:
        if entities is not None or features or feature_service:
            raise ExportError("--manifest gives the entity rows and features; do not also pass "
                              "--entities, --features or --feature-service")
        job = reproduce(cfg, defs, manifest)
    else:
        if entities is None:
            raise ExportError("--entities is required (or --manifest to re-run an export)")
        if not entities.exists():
            raise ExportError(f"--entities {str(entities)!r}: no such file")
        refs = None if features is None else [r.strip() for r in features.split(",") if r.strip()]
        job = RetrievalJob.plan(cfg, defs, entities, features=refs,
                                feature_service=feature_service,
                                full_feature_names=full_feature_names,
                                allow_uncovered=allow_uncovered, timestamp_field=timestamp_field)
    with console.status(f"exporting {job.read.rows:,} rows × {len(job.refs)} features"):
        summary = job.to_parquet(out, command=command)
    nulls = sum(summary.nulls.values())
    console.print(f"wrote {summary.out} ({summary.rows:,} rows, {summary.features} features, "
                  f"{nulls:,} null values) in {summary.seconds:.1f} s")
    console.print(f"manifest: {summary.manifest}")
    return summary


def stream_repo(cfg: RepoConfig, console: Console, views: list[str] | None, *,
                max_events: int | None, max_seconds: float | None, until_idle: float | None,
                group: str | None, metrics_port: int | None) -> StreamSummary:
    """``tessera stream``: consume the views' topics into Redis until stopped (or a bound)."""
    import logging

    from rich.console import Console as RichConsole
    from rich.logging import RichHandler

    from streaming.consumer import StreamConsumer, group_id

    defs = load_valid(cfg)
    chosen = [v for v in defs.select(views) if views or v.source.kafka_topic]
    err = RichConsole(stderr=True, highlight=False)
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True,
                        handlers=[RichHandler(console=err, show_path=False)])
    logging.getLogger("kafka").setLevel(logging.ERROR)
    consumer = StreamConsumer(cfg, chosen, group=group or group_id(cfg, chosen, not views))
    port = metrics_port if metrics_port is not None else cfg.stream.metrics_port
    if port is not None:
        port = consumer.metrics.serve(port)
        err.print(f"metrics on http://127.0.0.1:{port}/metrics")
    topics = ", ".join(f"{t} ({', '.join(w.view.name for w in consumer.topics[t].views)})"
                       for t in consumer.topics)
    err.print(f"streaming {topics} as group {consumer.group!r} into {cfg.online.url}; "
              f"SIGTERM or Ctrl-C finishes the batch and stops")
    summary = consumer.run(max_events=max_events, max_seconds=max_seconds,
                           until_idle_s=until_idle, status=err.print)
    console.print(summary.format())
    return summary


def render_runs(console: Console, summaries: list[RunSummary]) -> None:
    """The runs' table (full numbers, whatever the width) and any warning, one line each."""
    from rich.table import Table

    table = Table("view", "engine", "days", "files", "read", "outside range", "rejected",
                  "filtered", "partials", "version", "s", "online snapshot")
    for s in summaries:
        days = (f"{s.first_day}..{s.last_day}" if s.days > 1 else str(s.first_day))
        table.add_row(s.view, s.engine, f"{days} ({s.days_replaced}/{s.days})",
                      f"{s.files}/{s.files_total}", f"{s.rows_read:,}", f"{s.rows_outside:,}",
                      f"{s.rows_rejected:,}", f"{s.rows_filtered:,}",
                      f"{s.partial_rows_written:,}",
                      "-" if s.manifest_version is None else str(s.manifest_version),
                      f"{s.seconds:.1f}",
                      "-" if s.snapshot is None else
                      f"{s.snapshot.mode}, {s.snapshot.rebuilt:,} built, {s.snapshot.seconds:.1f} s")
    console.print(table)
    for s in summaries:
        for warning in s.warnings():
            console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)


def generate_data(console: Console, rows: int, out: Path, start: datetime, days: int, seed: int,
                  drift_from: datetime | None, malformed_rate: float) -> None:
    """``tessera generate``: seeded card transactions as daily Parquet files."""
    from pipelines.datagen import generate_cli

    summary = generate_cli(rows=rows, out=out, start=start, days=days, seed=seed,
                           drift_from=drift_from, malformed_rate=malformed_rate)
    console.print(summary)


def produce_events(cfg: RepoConfig, console: Console, *, events: int | None,
                   file: Path | None, rate: float | None, topic: str | None,
                   source: str | None, key: str | None, partitions: int | None,
                   max_seconds: float | None, seed: int, days: int, start: str | None,
                   malformed_rate: float) -> ProduceSummary:
    """``tessera produce``: generated (or a file's) events into the source's Kafka topic."""
    from streaming.produce_cmd import produce_cli

    summary = produce_cli(cfg, load_valid(cfg), events=events, file=file, rate=rate,
                          topic=topic, source=source, key=key, partitions=partitions,
                          max_seconds=max_seconds, seed=seed, days=days, start=start,
                          malformed_rate=malformed_rate)
    console.print(summary.format())
    return summary
