"""The registrar's Prometheus metrics: one catalogue, one registry per server (the README's "Metrics" lists them).

Labels are bounded: domains come from the served catalogue ("other" for any
other), methods from a fixed list ("OTHER" otherwise), transports, store
operations and status codes are small sets. No username, no IP address ever
becomes a label.

The per-message series are plain integers read at scrape time: the event loop
is single-threaded, so prometheus_client's lock on every increment only costs
(a few percent of a REGISTER's budget, measured). The rest use its classes.
"""

from __future__ import annotations

import bisect
from collections import Counter as Tally
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from registrar import sip
from registrar.model import Catalog
from registrar.sip.message import KNOWN_METHODS
from registrar.sip.source import STREAM_TRANSPORTS
from registrar.source_limits import SourceLimiter
from registrar.store import LocationStore
from registrar.stun import Verdict

# The *_created series only double the output; nothing we ship reads them.
disable_created_metrics()

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# What the etcd session does, as sipreg_store_errors_total labels them (EtcdSession's on_error).
STORE_OPERATIONS = ("connect", "read", "txn", "watch", "lease")


# Why a call skipped a registered contact (a bounded label).
UNREACHABLE_WHY = ("closed", "node_gone")
# What became of a keepalive ping (registrar.nat_pings).
PING_RESULTS = ("sent", "answered")
# Why an incoming TCP/TLS connection was closed at accept (ConnectionLimits).
REFUSED_REASONS = ("per_source", "total", "banned")
# Why a WebSocket connection was closed before it carried SIP (registrar.websocket).
WEBSOCKET_REFUSED_REASONS = ("subprotocol", "origin", "not_websocket", "timeout")
# What became of a STUN message: the codec's verdicts, and "stranger" (not looked at, see SipEndpoint.receive_stun).
STUN_RESULTS = (*(verdict.value for verdict in Verdict), "stranger")


class StoreCalls:
    """What a location store's calls to etcd did: write transactions, and failed calls by operation.

    Made before the store, whose session and writes report here (`failed`,
    `written`), and handed to Metrics, which exports it as the sipreg_store_*
    series. Plain integers: they count on the event loop's thread only.
    """

    def __init__(self) -> None:
        self.writes = 0
        self.aors_written = 0
        self.conflicts = 0
        self.write_latency = _Histogram()
        self.read_latency = _Histogram()
        self.failures = dict.fromkeys(STORE_OPERATIONS, 0)

    def written(self, seconds: float, aors: int, conflicts: int) -> None:
        """One write transaction: its time, AORs in it, compares lost."""
        self.writes += 1
        self.aors_written += aors
        self.conflicts += conflicts
        self.write_latency.observe(seconds)

    def read(self, seconds: float) -> None:
        """One read of bindings etcd answered: a lookup, or the AORs of a write the cache did not hold."""
        self.read_latency.observe(seconds)

    def failed(self, operation: str) -> None:
        """A call to etcd failed (one of STORE_OPERATIONS)."""
        self.failures[operation] = self.failures.get(operation, 0) + 1


class Metrics:
    """The registrar's metrics.

    `store` and `catalog` (the served catalogue, read at each scrape) feed the
    series computed at scrape time, with `connection_counts` (its CatalogSource's;
    none: counted in `catalog`); `store_calls` adds the series of a store
    that calls etcd. A Metrics without them (unit tests) has the per-event
    series only.
    """

    def __init__(
        self,
        store: LocationStore | None = None,
        catalog: Callable[[], Catalog] | None = None,
        *,
        store_calls: StoreCalls | None = None,
        sources: SourceLimiter | None = None,
        connection_counts: Callable[[], dict[str, int]] | None = None,
    ):
        self.registry = CollectorRegistry()
        Info(
            "sipreg_build",
            "What this registrar runs: sip_core is `compiled` (mypyc, as images ship it) or `python`.",
            registry=self.registry,
        ).info({"sip_core": "compiled" if sip.COMPILED else "python"})
        self.auth_failures = Counter(
            "sipreg_auth_failures_total",
            "Failed authentications (wrong password, unknown user, address not allowed), by domain. "
            "Challenges to requests without credentials are not failures.",
            ["domain"],
            registry=self.registry,
        )
        self.auth_lockouts = Counter(
            "sipreg_auth_lockouts",
            "Lockouts started by failed authentications, by domain and scope: source (a username from one "
            "address), user (a username from every address that has not proved its password).",
            ["domain", "scope"],
            registry=self.registry,
        )
        self.auth_lockout_refusals = Counter(
            "sipreg_auth_lockout_refusals",
            "Requests refused unverified (403) because their username and address were locked out, by domain "
            "and scope. They are not logged one by one.",
            ["domain", "scope"],
            registry=self.registry,
        )
        self.parse_errors = Counter(
            "sipreg_parse_errors_total",
            "Messages that could not be parsed, by transport.",
            ["transport"],
            registry=self.registry,
        )
        self.internal_errors = Counter(
            "sipreg_internal_errors_total",
            "Messages whose handling ran into a bug (an unexpected exception); answered 500 where possible. "
            "The log has one line per 10 s about them.",
            registry=self.registry,
        )
        self.connections = Gauge(
            "sipreg_connections",
            "Open TCP/TLS/WS/WSS connections, by transport.",
            ["transport"],
            registry=self.registry,
        )
        for transport in STREAM_TRANSPORTS:  # 0 rather than no series before the first connection
            self.connections.labels(transport)
        self.connections_refused = Counter(
            "sipreg_connections_refused",
            "Incoming TCP/TLS connections closed at accept, by reason: per_source (the address "
            "holds its limit of connections), total (the registrar holds its limit), banned (the "
            "address is banned for flooding).",
            ["reason"],
            registry=self.registry,
        )
        for reason in REFUSED_REASONS:
            self.connections_refused.labels(reason)
        self.websocket_refused = Counter(
            "sipreg_websocket_handshakes_refused",
            "WebSocket connections closed before they carried SIP, by reason: subprotocol (the "
            "handshake did not offer `sip`, answered 400), origin (an Origin the served domains do "
            "not allow, 403), not_websocket (an HTTP request that is no WebSocket handshake, 400), "
            "timeout (TLS and the handshake not done within connections.handshakeSeconds).",
            ["reason"],
            registry=self.registry,
        )
        for reason in WEBSOCKET_REFUSED_REASONS:
            self.websocket_refused.labels(reason)
        self.retransmissions = Counter(
            "sipreg_retransmissions_absorbed_total",
            "Retransmitted requests answered from the transaction table.",
            registry=self.registry,
        )
        self.udp_stale_shed = Counter(
            "sipreg_udp_stale_shed_total",
            "UDP datagrams shed unread: they waited in the socket buffer longer than an answer could still "
            "beat the sender's retransmission (overload; their senders retransmit).",
            registry=self.registry,
        )
        self.stun_messages = Counter(
            "sipreg_stun_messages_total",
            "STUN messages on the UDP SIP port (RFC 5626 keep-alives), by result: answered (a Binding "
            "response went back), unknown_attribute (answered 420), indication (needs no answer), "
            "malformed (dropped), stranger (dropped: its address never proved credentials, and "
            "answering it would make us a reflector).",
            ["result"],
            registry=self.registry,
        )
        for result in STUN_RESULTS:
            self.stun_messages.labels(result)
        self.unreachable_contacts = Counter(
            "sipreg_unreachable_contacts",
            "Registered contacts a call skipped, by why: closed (the UA's connection is gone), "
            "node_gone (the registrar holding its connection is down).",
            ["why"],
            registry=self.registry,
        )
        for why in UNREACHABLE_WHY:
            self.unreachable_contacts.labels(why)
        self.flows = Gauge(
            "sipreg_flows",
            "Open TCP/TLS/WS/WSS connections that carry a live registration (a phone's flow), by transport; "
            "sipreg_connections counts every open one.",
            ["transport"],
            registry=self.registry,
        )
        self.crlf_keepalives = Counter(
            "sipreg_crlf_keepalives",
            "Keep-alive pings (a double CRLF, RFC 5626) answered with a pong, by transport.",
            ["transport"],
            registry=self.registry,
        )
        for transport in STREAM_TRANSPORTS:
            self.crlf_keepalives.labels(transport)
        self.keepalive_pings = Counter(
            "sipreg_keepalive_pings",
            "OPTIONS keepalive pings to UDP contacts behind NAT held by this registrar, by result: sent, answered.",
            ["result"],
            registry=self.registry,
        )
        for result in PING_RESULTS:
            self.keepalive_pings.labels(result)
        self.keepalive_failures = Counter(
            "sipreg_keepalive_failures",
            "Contacts removed because their keepalive pings went unanswered, by transport.",
            ["transport"],
            registry=self.registry,
        )
        self.keepalive_failures.labels("udp")
        self.pinged_contacts = Gauge(
            "sipreg_pinged_contacts",
            "UDP contacts behind NAT this registrar pings (those whose REGISTER it answered).",
            registry=self.registry,
        )
        self.trace_bytes = Gauge(
            "sipreg_trace_bytes",
            "Bytes the recent SIP messages kept for `sipreg trace` count for (registrar.sip.trace's bound).",
            registry=self.registry,
        )
        self.trace_rings = Gauge(
            "sipreg_trace_rings",
            "Rings of recent SIP messages kept: one per connection traced, one per address whose messages "
            "belong to no connection.",
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "sipreg_event_loop_lag_seconds",
            "How much later than asked the event loop woke a timer (registrar.loop_lag, ten times a second): "
            "what a request waiting on etcd waits again, behind the loop's other work, once etcd has answered.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.hep_copies = Counter(
            "sipreg_hep_copies_total",
            "SIP messages copied to the HEP collector, by result: sent, dropped (the socket would have blocked, "
            "or the collector's address refused it).",
            ["result"],
            registry=self.registry,
        )
        self._registrations: Tally[tuple[str, str]] = Tally()
        self._invites: Tally[tuple[str, str]] = Tally()
        self._messages: Tally[tuple[str, str]] = Tally()
        self._latency: dict[str, _Histogram] = {}  # by method
        self.registry.register(_HotPathCollector(self))
        # A store's call series exist with a store that makes calls (etcd's) only, from the start (at 0).
        if store_calls is not None:
            self.registry.register(_StoreCallsCollector(store_calls))
        if sources is not None:
            self.registry.register(_SourcesCollector(sources))
        if store is not None:
            catalog = catalog or Catalog
            self.registry.register(_StoreCollector(
                store, catalog, connection_counts or (lambda: catalog().connections_per_domain())
            ))

    def message_received(self, method: str, transport: str) -> None:
        self._messages[(method if method in KNOWN_METHODS or method == "RESPONSE" else "OTHER", transport)] += 1

    def request_answered(self, method: str, seconds: float) -> None:
        method = method if method in KNOWN_METHODS else "OTHER"
        histogram = self._latency.get(method)
        if histogram is None:
            histogram = self._latency[method] = _Histogram()
        histogram.observe(seconds)

    def registration_answered(self, domain: str, status: int) -> None:
        self._registrations[(domain, str(status))] += 1

    def invite_answered(self, domain: str, status: int) -> None:
        self._invites[(domain, str(status))] += 1

    def unreachable_contact(self, why: str) -> None:
        self.unreachable_contacts.labels(why if why in UNREACHABLE_WHY else "closed").inc()

    def keepalive_ping(self, result: str) -> None:
        self.keepalive_pings.labels(result).inc()

    def keepalive_failed(self, transport: str) -> None:
        self.keepalive_failures.labels(transport).inc()

    def auth_failed(self, domain: str, reason: str) -> None:
        # The reason is free text: it goes to logs and the connection's status, never to a label.
        self.auth_failures.labels(domain).inc()

    def auth_locked_out(self, domain: str, scope: str) -> None:
        self.auth_lockouts.labels(domain, scope).inc()

    def auth_refused_locked(self, domain: str, scope: str) -> None:
        self.auth_lockout_refusals.labels(domain, scope).inc()


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
            "sipreg_invites", "INVITE requests answered, by domain (of the Request-URI) and final status code.",
            ["domain", "status"], self._metrics._invites,
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


class _StoreCallsCollector:
    """Exports StoreCalls: the etcd store's writes and failed calls."""

    def __init__(self, calls: StoreCalls):
        self._calls = calls

    def collect(self) -> Iterator[Metric]:
        calls = self._calls
        failures = CounterMetricFamily(
            "sipreg_store_errors",
            "Calls to etcd that failed (unreachable, timed out, refused), by operation: "
            "connect, read (a full read), txn (writes), watch (the stream broke), lease.",
            labels=["operation"],
        )
        for operation, count in sorted(calls.failures.items()):
            failures.add_metric([operation], count)
        yield failures
        yield CounterMetricFamily(
            "sipreg_store_writes", "Write transactions sent to the location store (etcd).", value=calls.writes
        )
        yield CounterMetricFamily(
            "sipreg_store_aors_written", "AORs written; divided by sipreg_store_writes, the batch size.",
            value=calls.aors_written,
        )
        yield CounterMetricFamily(
            "sipreg_store_conflicts",
            "AOR writes that lost a compare-and-swap to another registrar and were run again.",
            value=calls.conflicts,
        )
        writes = HistogramMetricFamily(
            "sipreg_store_write_duration_seconds", "Time etcd took to acknowledge a write transaction."
        )
        writes.add_metric([], *calls.write_latency.buckets())
        yield writes
        reads = HistogramMetricFamily(
            "sipreg_store_read_duration_seconds",
            "Time etcd took to answer a read of bindings: a lookup (an INVITE's), or the AORs of a write "
            "that the registrar's cache did not hold.",
        )
        reads.add_metric([], *calls.read_latency.buckets())
        yield reads


class _SourcesCollector:
    """What the per-source limits refused and banned, read from the limiter's own counts."""

    def __init__(self, sources: SourceLimiter):
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        refused = CounterMetricFamily(
            "sipreg_requests_refused",
            "Messages dropped unread by the per-source limits, by why: rate (over the source's budget), "
            "banned (from a banned source).",
            labels=["why"],
        )
        for why, count in sorted(self._sources.refused.items()):
            refused.add_metric([why], count)
        yield refused
        yield CounterMetricFamily(
            "sipreg_source_bans", "Source addresses banned for flooding (each ban once).", value=self._sources.bans
        )
        yield GaugeMetricFamily(
            "sipreg_sources_tracked", "Source addresses the per-source limits remember.", value=len(self._sources)
        )


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


class _StoreCollector:
    """The series read from the store and the catalogue at scrape time: never stale, nothing to keep up to date.

    Only served domains are shown: an etcd store holds every domain's bindings,
    and each replica reporting all of them would multiply the series.
    """

    def __init__(
        self, store: LocationStore, catalog: Callable[[], Catalog], connection_counts: Callable[[], dict[str, int]]
    ):
        self._store = store
        self._catalog = catalog
        self._connection_counts = connection_counts

    def collect(self) -> Iterator[Metric]:
        catalog = self._catalog()
        served = catalog.domains
        yield bindings_family({domain: count for domain, count in self._store.binding_counts().items() if domain in served})
        yield _gauge(
            "sipreg_registered_connections", "SipConnections (users, trunks) with at least one active binding, by domain.",
            {domain: count for domain, count in self._store.aor_counts().items() if domain in served},
        )
        yield _gauge(
            "sipreg_configured_connections", "SipConnections in the catalogue this registrar serves, by domain.",
            {domain: self._connection_counts().get(domain, 0) for domain in served},
        )
        yield GaugeMetricFamily(
            "sipreg_store_up", "1 while the location store serves (etcd reachable and followed), else 0.",
            value=1 if self._store.ready else 0,
        )


def bindings_family(by_domain: dict[str, int]) -> Metric:
    """sipreg_bindings: a registrar's whose store holds every binding (memory), or the operator's (its mirror of etcd).

    A registrar reading bindings from etcd on demand knows only those it read, and exports none."""
    return _gauge("sipreg_bindings", "Active bindings (registered contacts), by domain.", by_domain)


def _gauge(name: str, documentation: str, by_domain: dict[str, int]) -> Metric:
    family = GaugeMetricFamily(name, documentation, labels=["domain"])
    for domain, count in sorted(by_domain.items()):
        family.add_metric([domain], count)
    return family
