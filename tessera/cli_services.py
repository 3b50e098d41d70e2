"""The ``tessera services`` commands (up, down, status): parse, load the repo, call
:mod:`tessera.services`. Registered on the main app by :mod:`tessera.cli`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from tessera.cli_common import DEFAULT_REPO, RepoOpt, _config, _console, _friendly

services_app = typer.Typer(help="Local Redis, Apache Kafka and (optionally) a Redis Cluster on "
                           "127.0.0.1 (for dev, tests, demo).",
                           no_args_is_help=True, rich_markup_mode=None)


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
