"""The operator's Prometheus metrics (README "Metrics"): reconciles, their errors and time, status patches, object states.

`sipreg operator --metrics-port N` serves them at http://0.0.0.0:N/metrics
(aiohttp, on kopf's event loop). Labels are bounded: `kind` is the kind of
object that triggered the work, `result`, `cause` and `state` are small fixed
sets. No object name, namespace, username or address becomes a label.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from aiohttp import web
from kubernetes.client.exceptions import ApiException
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric

from registrar.http import start_server
from registrar.metrics import bindings_family
from registrar.store import StoreUnavailable

# The *_created series only double the output; nothing we ship reads them.
disable_created_metrics()

# What the kopf handlers react to: the two custom resources, the Secrets holding passwords,
# the registrar Deployments (ready replicas). Status patches only go to the first two.
KINDS = ("SipDomain", "SipConnection", "Secret", "Deployment")
PATCHED_KINDS = ("SipDomain", "SipConnection")
CAUSES = ("etcd", "kubernetes", "other")
STATES = ("published", "problem")
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# (SipDomain states, SipConnection states): how many objects are in each of STATES.
States = Callable[[], tuple[dict[str, int], dict[str, int]]]


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._reconciles = Counter(
            "sipreg_operator_reconciles",
            "Handler runs (create, update, resume, delete, or a watched Secret or Deployment changed), "
            "by the kind of object and result (ok, or error: kopf retries it).",
            ["kind", "result"],
            registry=self.registry,
        )
        self._errors = Counter(
            "sipreg_operator_reconcile_errors",
            "Handler runs that failed, by kind and cause (etcd, kubernetes: the API server, other).",
            ["kind", "cause"],
            registry=self.registry,
        )
        self._duration = Histogram(
            "sipreg_operator_reconcile_duration_seconds",
            "Time a handler run took, by kind.",
            ["kind"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self._patches = Counter(
            "sipreg_operator_status_patches",
            "Status patches sent to the API server, by kind and result (ok, error).",
            ["kind", "result"],
            registry=self.registry,
        )
        self._events_dropped = Counter(
            "sipreg_operator_events_dropped",
            "SipConnection Events not posted: over a connection's budget (6 a minute) or the operator's (10 a second).",
            registry=self.registry,
        )
        # Zeros rather than no series, so rate() and the dashboard start from 0.
        for kind in KINDS:
            self._duration.labels(kind)
            for result in ("ok", "error"):
                self._reconciles.labels(kind, result)
            for cause in CAUSES:
                self._errors.labels(kind, cause)
        for kind in PATCHED_KINDS:
            for result in ("ok", "error"):
                self._patches.labels(kind, result)

    def reconciled(self, kind: str, seconds: float, error: BaseException | None = None) -> None:
        self._reconciles.labels(kind, "ok" if error is None else "error").inc()
        self._duration.labels(kind).observe(seconds)
        if error is not None:
            self._errors.labels(kind, cause_of(error)).inc()

    def status_patched(self, kind: str, ok: bool) -> None:
        self._patches.labels(kind, "ok" if ok else "error").inc()

    def event_dropped(self) -> None:
        self._events_dropped.inc()

    def follow(self, states: States, binding_counts: Callable[[], dict[str, int]]) -> None:
        """Export the object states `states()` tells at each scrape (the Reconciler's), and the bindings
        per domain its store mirrors (sipreg_bindings: registrar pods read bindings on demand, and count none)."""
        self.registry.register(_StatesCollector(states))
        self.registry.register(_BindingsCollector(binding_counts))


def cause_of(error: BaseException) -> str:
    """What a failed run met, from the error or what it was raised from: etcd, kubernetes or other."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, StoreUnavailable):
            return "etcd"
        if isinstance(seen, ApiException):
            return "kubernetes"
        seen = seen.__cause__ or seen.__context__
    return "other"


class _BindingsCollector:
    def __init__(self, binding_counts: Callable[[], dict[str, int]]):
        self._binding_counts = binding_counts

    def collect(self) -> Iterator[Metric]:
        yield bindings_family(self._binding_counts())


class _StatesCollector:
    def __init__(self, states: States):
        self._states = states

    def collect(self) -> Iterator[Metric]:
        domains, connections = self._states()
        for name, kind, counts in (
            ("sipreg_operator_domains", "SipDomains", domains),
            ("sipreg_operator_connections", "SipConnections", connections),
        ):
            family = GaugeMetricFamily(
                name, f"{kind} the operator knows, by state: published (in etcd) or problem (see its Ready condition).",
                labels=["state"],
            )
            for state in STATES:
                family.add_metric([state], counts.get(state, 0))
            yield family


async def serve(registry: CollectorRegistry, port: int, host: str = "0.0.0.0") -> web.AppRunner:
    """Serve `registry` at http://host:port/metrics until the returned runner's cleanup()."""

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return await start_server(app, [host], port)


async def serve_standby(port: int, host: str = "0.0.0.0") -> web.AppRunner:
    """/healthz on `port` while this replica stands by (kopf serves it once the replica leads)."""

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"standby": True})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    return await start_server(app, [host], port)
