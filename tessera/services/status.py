"""What ``tessera services status`` reports about one service, and its table for the CLI."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.table import Table


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """The state of one local service at the moment it was checked.

    Attributes:
        name: ``"redis"``, ``"kafka"`` or ``"redis-cluster"``.
        address: ``host:port`` clients connect to.
        pid: the service's process, or None when it is not running.
        version: the server's version (``"7.0.15"``, ``"4.3.1"``), or None when unknown.
        healthy: the service answered its health check (Redis PING; a Kafka metadata request).
        detail: one line for a person: what was done, or why it is not healthy.
        log_file: where the service writes its log.
        pids: every process of a service made of several (the Redis Cluster's nodes, in port
            order); empty for a one-process service, whose process is ``pid``.
    """

    name: str
    address: str
    pid: int | None
    version: str | None
    healthy: bool
    detail: str
    log_file: Path | None = None
    pids: tuple[int, ...] = ()

    @property
    def running(self) -> bool:
        """Whether a process of ours is running (healthy or not)."""
        return self.pid is not None


def render_status(statuses: Sequence[ServiceStatus]) -> Table:
    """A rich table with one row per service, for ``tessera services status|up|down``.

    Example:
        >>> from rich.console import Console
        >>> from tessera.services import render_status, status
        >>> Console().print(render_status(status(cfg.services, cfg.root)))  # doctest: +SKIP
    """
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="Tessera local services", title_justify="left")
    table.add_column("service", style="bold")
    table.add_column("address")
    table.add_column("pid", justify="right")
    table.add_column("version")
    table.add_column("health")
    table.add_column("detail", overflow="fold")
    for s in statuses:
        if s.healthy:
            health = "[green]healthy[/green]"
        elif s.running:
            health = "[red]unhealthy[/red]"
        else:
            health = "[dim]stopped[/dim]"
        # A process that runs but does not answer: its log is where the reason is.
        unhealthy = s.running and not s.healthy and s.log_file is not None
        detail = f"{s.detail} (log: {s.log_file})" if unhealthy else s.detail
        pid = ",".join(str(p) for p in s.pids) if s.pids else str(s.pid or "-")
        table.add_row(s.name, s.address, pid, escape(s.version or "-"), health,
                      escape(detail))
    return table
