"""What ``tessera stream`` reports: Prometheus metrics and a one-line terminal status.

- ``tessera_stream_events_total{topic}``: events consumed;
- ``tessera_stream_applied_total{view}`` / ``tessera_stream_skipped_total{view}``: merged into
  Redis / already applied (a replay);
- ``tessera_stream_dead_letters_total{reason}``;
- ``tessera_stream_lag{topic,partition}``: the partition's end offset minus our position;
- ``tessera_stream_freshness_seconds``: event time to visible online (histogram of a sample
  of each batch's events);
- ``tessera_stream_batch_seconds``, ``tessera_stream_retries_total{what}``.

Metrics live in a registry of their own (not the process-global one), served on
``127.0.0.1:<stream.metrics_port>`` when that is set.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

FRESHNESS_SAMPLE = 256
FRESHNESS_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 60.0)


class StreamMetrics:
    def __init__(self, topics: list[str], views: list[str]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self._events = Counter("tessera_stream_events", "Events consumed", ["topic"], registry=r)
        self._applied = Counter("tessera_stream_applied", "Events merged into Redis", ["view"],
                                registry=r)
        self._skipped = Counter("tessera_stream_skipped", "Events already applied (replays)",
                                ["view"], registry=r)
        self._dead = Counter("tessera_stream_dead_letters", "Dead letters by reason",
                             ["reason"], registry=r)
        self._lag = Gauge("tessera_stream_lag", "End offset minus position",
                          ["topic", "partition"], registry=r)
        self._fresh = Histogram("tessera_stream_freshness_seconds",
                                "Event time to visible online", buckets=FRESHNESS_BUCKETS,
                                registry=r)
        self._batch = Histogram("tessera_stream_batch_seconds", "Time to process a batch",
                                registry=r)
        self._retries = Counter("tessera_stream_retries", "Retried steps", ["what"], registry=r)
        self._window: deque[tuple[float, int]] = deque()  # (time, events) for the rate
        self._fresh_recent: deque[tuple[float, Any]] = deque()
        self.dead_by_reason: dict[str, int] = {}
        self.total_events = 0

    def serve(self, port: int) -> int:
        """Serve ``/metrics`` on 127.0.0.1:``port`` (0: a free one); returns the port."""
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr="127.0.0.1", registry=self.registry)
        return int(server.server_port)

    def events(self, topic: str, n: int) -> None:
        self._events.labels(topic).inc(n)
        self.total_events += n
        self._window.append((time.monotonic(), n))

    def applied(self, view: str, applied: int, skipped: int) -> None:
        self._applied.labels(view).inc(applied)
        self._skipped.labels(view).inc(skipped)

    def dead_letter(self, reason: str) -> None:
        self._dead.labels(reason).inc()
        self.dead_by_reason[reason] = self.dead_by_reason.get(reason, 0) + 1

    def retry(self, what: str) -> None:
        self._retries.labels(what).inc()

    def batch(self, seconds: float) -> None:
        self._batch.observe(seconds)

    def freshness(self, lag_us: Any) -> None:
        """Per applied event: microseconds from its event time to visible online. The
        histogram observes an even sample of at most ``FRESHNESS_SAMPLE`` events per batch
        (one ``observe`` costs ~1 µs); the terminal's p99 uses every event."""
        import numpy as np

        if not len(lag_us):
            return
        seconds = np.asarray(lag_us, np.float64) / 1e6
        step = max(1, len(seconds) // FRESHNESS_SAMPLE)
        for x in seconds[::step].tolist():
            self._fresh.observe(x)
        self._fresh_recent.append((time.monotonic(), seconds))

    def freshness_p(self, q: float, seconds: float = 30.0) -> float | None:
        """The ``q`` quantile of freshness over the last ``seconds`` (None: no events)."""
        import numpy as np

        cut = time.monotonic() - seconds
        while self._fresh_recent and self._fresh_recent[0][0] < cut:
            self._fresh_recent.popleft()
        if not self._fresh_recent:
            return None
        return float(np.quantile(np.concatenate([x for _, x in self._fresh_recent]), q))

    def rate(self, seconds: float = 10.0) -> float:
        cut = time.monotonic() - seconds
        while self._window and self._window[0][0] < cut:
            self._window.popleft()
        return sum(n for _, n in self._window) / seconds

    def lag(self, lag: dict[tuple[str, int], int]) -> int:
        """Set the per-partition lag gauges (end offset minus position); returns the total."""
        for (topic, partition), n in lag.items():
            self._lag.labels(topic, str(partition)).set(n)
        return sum(lag.values())

    def status_line(self, lag: dict[tuple[str, int], int]) -> str:
        p99 = self.freshness_p(0.99)
        fresh = "n/a" if p99 is None else f"{p99:.2f} s"
        dead = sum(self.dead_by_reason.values())
        return (f"stream: {self.rate():,.0f} events/s · {self.total_events:,} events · "
                f"lag {self.lag(lag):,} · dead letters {dead:,} · freshness p99 {fresh}")
