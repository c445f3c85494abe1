"""The registrar's Prometheus metrics: one catalogue, one registry per server.

Labels are bounded: domains come from the served catalogue ("other" for any
other), methods from a fixed list ("OTHER" otherwise), transports and status
codes are small sets. No username, no IP address ever becomes a label.

The per-message series are plain integers read at scrape time: the event loop
is single-threaded, so prometheus_client's lock on every increment only costs
(a few percent of a REGISTER's budget, measured). The rest use its classes.
"""

from __future__ import annotations

import bisect
from collections import Counter as Tally
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from registrar.sip.message import KNOWN_METHODS

# The *_created series only double the output; nothing we ship reads them.
disable_created_metrics()

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self, binding_counts: Callable[[], dict[str, int]] | None = None):
        self.registry = CollectorRegistry()
        self.auth_failures = Counter(
            "sipreg_auth_failures_total",
            "Failed authentications (wrong password, unknown user, address not allowed), by domain. "
            "Challenges to requests without credentials are not failures.",
            ["domain"],
            registry=self.registry,
        )
        self.parse_errors = Counter(
            "sipreg_parse_errors_total",
            "Messages that could not be parsed, by transport.",
            ["transport"],
            registry=self.registry,
        )
        self.connections = Gauge(
            "sipreg_connections",
            "Open TCP/TLS connections, by transport.",
            ["transport"],
            registry=self.registry,
        )
        self.retransmissions = Counter(
            "sipreg_retransmissions_absorbed_total",
            "Retransmitted requests answered from the transaction table.",
            registry=self.registry,
        )
        self._registrations: Tally[tuple[str, str]] = Tally()
        self._messages: Tally[tuple[str, str]] = Tally()
        self._latency: dict[str, _Histogram] = {}  # by method
        # The location store's writes (etcd transactions; the memory store makes none).
        self._store_writes = 0
        self._store_aors_written = 0
        self._store_conflicts = 0
        self._store_write_latency = _Histogram()
        self.registry.register(_HotPathCollector(self))
        if binding_counts is not None:
            self.registry.register(_BindingsCollector(binding_counts))

    def message_received(self, method: str, transport: str) -> None:
        self._messages[(method if method in KNOWN_METHODS or method == "RESPONSE" else "OTHER", transport)] += 1

    def request_answered(self, method: str, seconds: float) -> None:
        method = method if method in KNOWN_METHODS else "OTHER"
        histogram = self._latency.get(method)
        if histogram is None:
            histogram = self._latency[method] = _Histogram()
        histogram.observe(seconds)

    def store_written(self, seconds: float, aors: int, conflicts: int) -> None:
        """One write transaction to the location store: its time, AORs in it, compares lost."""
        self._store_writes += 1
        self._store_aors_written += aors
        self._store_conflicts += conflicts
        self._store_write_latency.observe(seconds)

    def registration_answered(self, domain: str, status: int) -> None:
        self._registrations[(domain, str(status))] += 1

    def auth_failed(self, domain: str, reason: str) -> None:
        # The reason is free text: it goes to logs and the connection's status, never to a label.
        self.auth_failures.labels(domain).inc()


class _HotPathCollector:
    """Exports the plain counters of Metrics in Prometheus form."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield _counter(
            "sipreg_registrations", "REGISTER requests answered, by domain and final status code.",
            ["domain", "status"], self._metrics._registrations,
        )
        yield _counter(
            "sipreg_messages_received", "SIP messages received, by method (responses: RESPONSE) and transport.",
            ["method", "transport"], self._metrics._messages,
        )
        metrics = self._metrics
        latency = HistogramMetricFamily(
            "sipreg_request_duration_seconds",
            "Time from receiving a request to sending its final response, by method.",
            labels=["method"],
        )
        for method, histogram in sorted(metrics._latency.items()):
            latency.add_metric([method], *histogram.buckets())
        yield latency
        if metrics._store_writes:
            yield CounterMetricFamily(
                "sipreg_store_writes", "Write transactions sent to the location store (etcd).",
                value=metrics._store_writes,
            )
            yield CounterMetricFamily(
                "sipreg_store_aors_written", "AORs written; divided by sipreg_store_writes, the batch size.",
                value=metrics._store_aors_written,
            )
            yield CounterMetricFamily(
                "sipreg_store_conflicts",
                "AOR writes that lost a compare-and-swap to another registrar and were run again.",
                value=metrics._store_conflicts,
            )
            writes = HistogramMetricFamily(
                "sipreg_store_write_duration_seconds", "Time etcd took to acknowledge a write transaction."
            )
            writes.add_metric([], *metrics._store_write_latency.buckets())
            yield writes


class _Histogram:
    """Counts per LATENCY_BUCKETS bucket (not cumulative; the last is +Inf) and their sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds

    def buckets(self) -> tuple[list[tuple[str, int]], float]:
        """Cumulative (bound, count) pairs and the sum, as HistogramMetricFamily takes them."""
        cumulative, buckets = 0, []
        for bound, count in zip([*map(str, LATENCY_BUCKETS), "+Inf"], self.counts):
            cumulative += count
            buckets.append((bound, cumulative))
        return buckets, self.total


def _counter(name: str, documentation: str, labels: list[str], tally: Tally[tuple[str, str]]) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=labels)
    for values, count in sorted(tally.items()):
        family.add_metric(list(values), count)
    return family


class _BindingsCollector:
    """sipreg_bindings{domain}: read from the store at scrape time, never stale."""

    def __init__(self, binding_counts: Callable[[], dict[str, int]]):
        self._binding_counts = binding_counts

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("sipreg_bindings", "Active bindings (registered contacts), by domain.", labels=["domain"])
        for domain, count in sorted(self._binding_counts().items()):
            family.add_metric([domain], count)
        yield family
