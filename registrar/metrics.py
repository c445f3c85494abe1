"""The registrar's Prometheus metrics: one catalogue, one registry per server.

Labels are bounded: domains come from the served catalogue ("other" for any
other), methods from a fixed list ("OTHER" otherwise), transports and status
codes are small sets. No username, no IP address ever becomes a label.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily

from registrar.sip.message import KNOWN_METHODS

# The *_created series only double the output; nothing we ship reads them.
disable_created_metrics()

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self, binding_counts: Callable[[], dict[str, int]] | None = None):
        self.registry = CollectorRegistry()
        self.registrations = Counter(
            "sipreg_registrations_total",
            "REGISTER requests answered, by domain and final status code.",
            ["domain", "status"],
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "sipreg_auth_failures_total",
            "Failed authentications (wrong password, unknown user, address not allowed), by domain. "
            "Challenges to requests without credentials are not failures.",
            ["domain"],
            registry=self.registry,
        )
        self.messages = Counter(
            "sipreg_messages_received_total",
            "SIP messages received, by method (responses: RESPONSE) and transport.",
            ["method", "transport"],
            registry=self.registry,
        )
        self.parse_errors = Counter(
            "sipreg_parse_errors_total",
            "Messages that could not be parsed, by transport.",
            ["transport"],
            registry=self.registry,
        )
        self.request_latency = Histogram(
            "sipreg_request_duration_seconds",
            "Time from receiving a request to sending its final response, by method.",
            ["method"],
            buckets=LATENCY_BUCKETS,
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
        if binding_counts is not None:
            self.registry.register(_BindingsCollector(binding_counts))
        # Child lookups with labels cost a lock and a dict; cache them for the hot path.
        self._message_children: dict[tuple[str, str], Counter] = {}
        self._latency_children: dict[str, Histogram] = {}
        self._registration_children: dict[tuple[str, int], Counter] = {}

    def message_received(self, method: str, transport: str) -> None:
        key = (method if method in KNOWN_METHODS or method == "RESPONSE" else "OTHER", transport)
        child = self._message_children.get(key)
        if child is None:
            child = self._message_children[key] = self.messages.labels(*key)
        child.inc()

    def request_answered(self, method: str, seconds: float) -> None:
        method = method if method in KNOWN_METHODS else "OTHER"
        child = self._latency_children.get(method)
        if child is None:
            child = self._latency_children[method] = self.request_latency.labels(method)
        child.observe(seconds)

    def registration_answered(self, domain: str, status: int) -> None:
        key = (domain, status)
        child = self._registration_children.get(key)
        if child is None:
            child = self._registration_children[key] = self.registrations.labels(domain, str(status))
        child.inc()

    def auth_failed(self, domain: str, reason: str) -> None:
        # The reason is free text: it goes to logs and the connection's status, never to a label.
        self.auth_failures.labels(domain).inc()


class _BindingsCollector:
    """sipreg_bindings{domain}: read from the store at scrape time, never stale."""

    def __init__(self, binding_counts: Callable[[], dict[str, int]]):
        self._binding_counts = binding_counts

    def collect(self):  # type: ignore[no-untyped-def]
        family = GaugeMetricFamily("sipreg_bindings", "Active bindings (registered contacts), by domain.", labels=["domain"])
        for domain, count in sorted(self._binding_counts().items()):
            family.add_metric([domain], count)
        yield family
