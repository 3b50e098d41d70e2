"""What ``tessera stream`` reports: Prometheus metrics and a one-line terminal status.

- ``tessera_stream_events_total{topic}``: events consumed;
- ``tessera_stream_applied_total{view}`` / ``tessera_stream_skipped_total{view}``: merged into
  Redis / already applied (a replay);
- ``tessera_stream_dead_letters_total{reason}``;
- ``tessera_stream_lag{topic,partition}``: the partition's end offset minus our position;
- ``tessera_stream_freshness_seconds``: event time to visible online, every applied event and
  view (histogram);
- ``tessera_stream_batch_seconds`` (histogram), ``tessera_stream_retries_total{what}``.

The numbers are plain counters of this object, exposed by a collector of its own in a registry
of its own, served on ``127.0.0.1:<stream.metrics_port>`` when that is set. Not
prometheus_client's metric classes: once anything in the process (Feast does) sets
``PROMETHEUS_MULTIPROC_DIR`` before prometheus_client is imported, those keep their values in
files shared by every instance and process, and one consumer would report another's counts.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from typing import Any

FRESHNESS_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 60.0)
BATCH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Histogram:
    """Bucket counts of many observations at once (numpy), cumulative on export."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        import numpy as np

        self.bounds = bounds
        self.counts = np.zeros(len(bounds) + 1, np.int64)  # last: above every bound
        self.sum = 0.0

    def observe(self, values: Any) -> None:
        import numpy as np

        values = np.asarray(values, np.float64)
        self.counts += np.bincount(np.searchsorted(self.bounds, values, side="left"),
                                   minlength=len(self.counts))
        self.sum += float(values.sum())

    def buckets(self) -> list[tuple[str, float]]:
        cumulative = self.counts.cumsum()
        return [*((repr(b), float(c)) for b, c in zip(self.bounds, cumulative, strict=False)),
                ("+Inf", float(cumulative[-1]))]


class StreamMetrics:
    def __init__(self, topics: list[str], views: list[str]) -> None:
        from prometheus_client import CollectorRegistry

        self.events_by_topic = dict.fromkeys(topics, 0)
        self.applied_by_view = dict.fromkeys(views, 0)
        self.skipped_by_view = dict.fromkeys(views, 0)
        self.dead_by_reason: dict[str, int] = {}
        self.retries: dict[str, int] = {}
        self.lags: dict[tuple[str, int], int] = {}
        self._fresh = _Histogram(FRESHNESS_BUCKETS)
        self._batch = _Histogram(BATCH_BUCKETS)
        self._window: deque[tuple[float, int]] = deque()  # (time, events) for the rate
        self._fresh_recent: deque[tuple[float, Any]] = deque()
        self.total_events = 0
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)

    def serve(self, port: int) -> int:
        """Serve ``/metrics`` on 127.0.0.1:``port`` (0: a free one); returns the port."""
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr="127.0.0.1", registry=self.registry)
        return int(server.server_port)

    # --- what the consumer reports ---------------------------------------------------------

    def events(self, topic: str, n: int) -> None:
        self.events_by_topic[topic] = self.events_by_topic.get(topic, 0) + n
        self.total_events += n
        self._window.append((time.monotonic(), n))

    def applied(self, view: str, applied: int, skipped: int) -> None:
        self.applied_by_view[view] = self.applied_by_view.get(view, 0) + applied
        self.skipped_by_view[view] = self.skipped_by_view.get(view, 0) + skipped

    def dead_letter(self, reason: str) -> None:
        self.dead_by_reason[reason] = self.dead_by_reason.get(reason, 0) + 1

    def retry(self, what: str) -> None:
        self.retries[what] = self.retries.get(what, 0) + 1

    def batch(self, seconds: float) -> None:
        self._batch.observe([seconds])

    def freshness(self, lag_us: Any) -> None:
        """Per applied event and view: microseconds from its event time to visible online."""
        import numpy as np

        if not len(lag_us):
            return
        seconds = np.asarray(lag_us, np.float64) / 1e6
        self._fresh.observe(seconds)
        self._fresh_recent.append((time.monotonic(), seconds))

    def lag(self, lag: dict[tuple[str, int], int]) -> int:
        """Keep the per-partition lag (end offset minus position); returns the total."""
        self.lags.update(lag)
        return sum(lag.values())

    # --- what a person or Prometheus reads --------------------------------------------------

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

    def status_line(self, lag: dict[tuple[str, int], int]) -> str:
        p99 = self.freshness_p(0.99)
        fresh = "n/a" if p99 is None else f"{p99:.2f} s"
        dead = sum(self.dead_by_reason.values())
        return (f"stream: {self.rate():,.0f} events/s · {self.total_events:,} events · "
                f"lag {self.lag(lag):,} · dead letters {dead:,} · freshness p99 {fresh}")

    def collect(self) -> Iterator[Any]:
        """The prometheus_client collector protocol."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        def counter(name: str, doc: str, label: str, values: dict[str, int]) -> Any:
            family = CounterMetricFamily(name, doc, labels=[label])
            for key, value in sorted(values.items()):
                family.add_metric([key], value)
            return family

        yield counter("tessera_stream_events", "Events consumed", "topic", self.events_by_topic)
        yield counter("tessera_stream_applied", "Events merged into Redis", "view",
                      self.applied_by_view)
        yield counter("tessera_stream_skipped", "Events already applied (replays)", "view",
                      self.skipped_by_view)
        yield counter("tessera_stream_dead_letters", "Dead letters by reason", "reason",
                      self.dead_by_reason)
        yield counter("tessera_stream_retries", "Retried steps", "what", self.retries)
        lag = GaugeMetricFamily("tessera_stream_lag", "End offset minus position",
                                labels=["topic", "partition"])
        for (topic, partition), value in sorted(self.lags.items()):
            lag.add_metric([topic, str(partition)], value)
        yield lag
        for name, doc, hist in (
                ("tessera_stream_freshness_seconds", "Event time to visible online",
                 self._fresh),
                ("tessera_stream_batch_seconds", "Time to process a batch", self._batch)):
            family = HistogramMetricFamily(name, doc)
            family.add_metric([], hist.buckets(), sum_value=hist.sum)
            yield family
