"""Errors of the local services (``tessera services up|down|status``)."""

from __future__ import annotations

from features.errors import TesseraError


class ServiceError(TesseraError):
    """A local service (Redis, Kafka) could not be installed, started, checked or stopped.

    The message names the service, says what failed and, when the service wrote a log, quotes
    its last lines, so the person reading it rarely has to open the log file.
    """
