"""Prometheus metrics of ``tessera serve``: requests, latency and errors by kind.

Each server instance owns its registry (no global state, so tests and embedders can run several).
With ``--workers N`` the workers share a ``PROMETHEUS_MULTIPROC_DIR`` set up by
:func:`tessera.server_run.serve`, and ``/metrics`` aggregates every worker's files, so one scrape
sees the whole server whichever worker answers it.
"""

from __future__ import annotations

import os
from typing import Any

#: Fine enough for sub-millisecond requests: a healthy 1-entity read takes ~0.2-0.5 ms.
LATENCY_BUCKETS = (0.0001, 0.00015, 0.0002, 0.0003, 0.0004, 0.0005, 0.00075, 0.001, 0.0015,
                   0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

#: ``tessera_http_errors_total{kind=...}``, each with the status it answers (docs/serving.md).
ERROR_KINDS = {
    "bad_json": 400,           # not JSON, or not a JSON object
    "bad_request": 400,        # a field of the wrong type, an unknown field, both/neither
    "unknown_feature": 400,    # unknown feature, view or service (the message has close names)
    "bad_entities": 400,       # missing or mistyped join key, columns of different lengths
    "too_many_entities": 400,  # more than serve.max_entities
    "body_too_large": 413,     # more than serve.max_body_bytes (Content-Length or bytes read)
    "body_timeout": 408,       # the body had not all arrived in time (serve.body_timeout_ms)
    "unauthorized": 401,       # missing or wrong bearer token
    "not_found": 404,          # no such path
    "method_not_allowed": 405,
    "unavailable": 503,        # Redis could not be reached within online.timeout_ms
    "internal": 500,           # a bug: logged with its traceback
}

ENDPOINTS = ("/get-online-features", "/health", "/metrics")

#: ``tessera_serving_log_<name>_total``: the serving log's counters (docs/serving_log.md).
SERVING_LOG = {
    "rows_logged": "Entity rows sampled into the serving log",
    "rows_dropped": "Sampled rows dropped because the serving log's buffer was full",
    "rows_written": "Serving log rows written to Parquet files",
    "files_written": "Serving log Parquet files written",
    "write_errors": "Serving log files that could not be written (their rows are lost)",
}
OTHER = "other"  # the endpoint label of every unknown path (bounded label values)


class Metrics:
    """The server's counters and histogram, with label children bound once (hot path: ~2 µs)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry(auto_describe=True)
        if not self.multiprocess:
            from prometheus_client import ProcessCollector

            ProcessCollector(registry=self.registry)
        self._requests = Counter("tessera_http_requests", "HTTP requests by endpoint and status",
                                 ["endpoint", "code"], registry=self.registry)
        self._latency = Histogram("tessera_http_request_duration_seconds",
                                  "Time from the request's arrival to its last byte sent",
                                  ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self._errors = Counter("tessera_http_errors", "Requests answered with an error, by kind",
                               ["kind"], registry=self.registry)
        self._entities = Counter("tessera_online_entities",
                                 "Entities read by successful feature requests",
                                 registry=self.registry)
        reads = Counter("tessera_online_reads", "Feature requests' Redis reads by how they "
                        "waited: blocking (a lone request) or awaited (requests queueing)",
                        ["wait"], registry=self.registry)
        self.blocking_read, self.awaited_read = reads.labels("blocking"), reads.labels("awaited")
        self._log = {name: Counter(f"tessera_serving_log_{name}", doc, registry=self.registry)
                     for name, doc in SERVING_LOG.items()}
        self._log_seen: Any = None
        self._latency_of = {e: self._latency.labels(e) for e in (*ENDPOINTS, OTHER)}
        self._error_of = {k: self._errors.labels(k) for k in ERROR_KINDS}
        self._request_of: dict[tuple[str, int], Any] = {}
        for endpoint in ENDPOINTS:  # so a scrape shows the series before the first request
            self._request(endpoint, 200)

    def _request(self, endpoint: str, code: int) -> Any:
        child = self._request_of.get((endpoint, code))
        if child is None:
            child = self._request_of[(endpoint, code)] = self._requests.labels(endpoint,
                                                                               str(code))
        return child

    def observe(self, endpoint: str, code: int, seconds: float, error: str | None,
                entities: int) -> None:
        """Record one answered request."""
        self._request(endpoint, code).inc()
        self._latency_of[endpoint].observe(seconds)
        if error is not None:
            self._error_of[error].inc()
        elif entities:
            self._entities.inc(entities)

    def serving_log(self, stats: Any) -> None:
        """Bring the serving log counters up to ``stats`` (a ``ServingLogStats``).

        Called after each feature request and before each scrape: the log counts in its own
        object (its writer thread has no registry), so the counters move by the difference.
        """
        seen = self._log_seen
        if stats == seen:
            return
        for name, counter in self._log.items():
            delta = getattr(stats, name) - (0 if seen is None else getattr(seen, name))
            if delta:
                counter.inc(delta)
        self._log_seen = stats

    def render(self) -> tuple[bytes, str]:
        """(body, content type) of the text exposition."""
        from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

        registry = self.registry
        if self.multiprocess:
            from prometheus_client import CollectorRegistry
            from prometheus_client.multiprocess import MultiProcessCollector

            registry = CollectorRegistry()
            MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_PLAIN_0_0_4
