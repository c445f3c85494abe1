"""Assembles a running registrar: catalogue, store, digest, SIP service, listeners, HTTP.

Every part gets what it needs through its constructor. Where two parts need
each other (the store tells the registrar of a new catalogue; the registrar
writes to the store), the one made first gets a bound method of the server,
which reaches the other only when called, after construction.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from registrar import loop_lag, sip
from registrar.authentication import Authenticator
from registrar.flows import TokenSigner
from registrar.hep import HepSender
from registrar.http import make_app, start_server
from registrar.lockout import LockoutTable
from registrar.metrics import Metrics, StoreCalls
from registrar.model import Binding, Catalog, Connection, ConnectionCache, Domain, SecurityPolicy
from registrar.nat_pings import NatPinger, Pinged
from registrar.proxy import Identity, ProxyCore
from registrar.proxy_driver import Delivery, ProxyDriver, SendError
from registrar.ratelog import RateLimitedLog
from registrar.registrar import Registrar
from registrar.routing import Router, Target
from registrar.service import SipService
from registrar.sip import digest
from registrar.sip.message import Request
from registrar.sip.source import STREAM_TRANSPORTS, Destination, Source
from registrar.sip.trace import Captured, TraceRecorder
from registrar.sip.transaction import TransactionLayer
from registrar.source_limits import Ban, SourceLimiter
from registrar.store import CatalogSource, LocationStore, NodeRegistry
from registrar.store.etcd import DEFAULT_CACHED_AORS, EtcdStore
from registrar.store.etcd_session import EtcdSession, EtcdTls, parse_endpoints
from registrar.store.memory import FixedCatalog, MemoryStore, NoReplicas
from registrar.tls import RotatingCertificate, self_signed_context
from registrar.trace_gathering import TraceGatherer
from registrar.transport import SipEndpoint, listen_stream, listen_udp
from registrar.websocket import listen_websocket

log = logging.getLogger("sipreg")

# HTTP listens apart from SIP: health, metrics and the bindings API are for this machine (or, in a
# cluster, the pod's own address behind a NetworkPolicy), never for whoever reaches the SIP address.
DEFAULT_HTTP_HOSTS = ("127.0.0.1",)


@dataclass
class ServeConfig:
    """What `sipreg serve` runs: the command line, as values."""

    # The manifests' domains and connections; None: serve what etcd holds (pods in a cluster).
    catalog: Catalog | None
    store: str = "memory"
    host: str = "127.0.0.1"
    sip_port: int = 5060
    tls_port: int | None = 5061
    # SIP over WebSocket (RFC 7118), plain and over TLS; None: off.
    ws_port: int | None = None
    wss_port: int | None = None
    http_port: int | None = 8080
    http_hosts: tuple[str, ...] = DEFAULT_HTTP_HOSTS
    # The bearer token of the bindings API (registrar.http.check_api_token); None: the API is off.
    api_token: str | None = field(default=None, repr=False)
    tls_cert: str | None = None
    tls_key: str | None = None
    # The wss listener's certificate, where it is not TLS's (a browser checks it against the page's URL).
    wss_cert: str | None = None
    wss_key: str | None = None
    # Replicas that share this secret verify each other's nonces (stateless challenges).
    nonce_secret: bytes = field(default_factory=lambda: os.urandom(32))
    # This registrar's name among its replicas (etcd nodes/ and each binding's `node`);
    # None: host name and SIP port, unique on one machine as in a cluster.
    node: str | None = None
    # Granted expiries are shortened by up to this fraction at random (0 grants them exactly).
    expires_spread: float = 0.1
    # With etcd: the AORs whose connection and bindings stay in memory (EtcdStore's cached_aors); the rest
    # are read on demand.
    cached_aors: int = DEFAULT_CACHED_AORS
    # Serve only these domains of the catalogue (a SipDomain's own pods); None: all of them.
    domains: frozenset[str] | None = None
    # The address other replicas reach this one at (etcd nodes/); None: `host`.
    advertise: str | None = None
    # TLS to etcd (CA, client certificate); None: plain text.
    etcd_tls: EtcdTls | None = None
    # The address UAs reach us at, written in Via and Record-Route of proxied requests
    # (a cluster's SIP Service); None: `advertise`, else `host`.
    public_host: str | None = None
    # The ports UAs reach us at, per transport, where they differ from ours (a Service's).
    public_ports: dict[str, int] = field(default_factory=dict)
    # On SIGTERM: seconds of service, not ready, before new connections are refused; then at most
    # this long for the requests in flight to be answered (RegistrarServer.drain).
    drain_seconds: float = 0.0
    in_flight_seconds: float = 30.0
    # How often the certificate files are read again, so a renewed certificate is served without a restart.
    certificate_check_seconds: float = 10.0
    # A HEP3 collector (Homer) that gets a copy of every SIP message, and our capture agent id there.
    hep: tuple[str, int] | None = None
    hep_id: int = 1

    @property
    def public_address(self) -> str:
        return self.public_host or self.advertise or self.host

    @property
    def node_name(self) -> str:
        return self.node or f"{socket.gethostname()}-{self.sip_port}"


class RegistrarServer:
    def __init__(self, config: ServeConfig):
        self.config = config
        stores = make_store(config, on_catalog=self._serve_catalog)
        self.store = stores.locations
        self._catalog_source = stores.catalog_source
        self.replicas = stores.node_registry
        self.sources = SourceLimiter(self._security, peers=self._peer_addresses, on_ban=_log_ban)
        self.metrics = Metrics(self.store, lambda: self.registrar.catalog, store_calls=stores.calls,
                               sources=self.sources, connection_counts=self._catalog_source.connection_counts)
        # Nonce counts live in this process only: nonces issued before it started are
        # answered stale=true once, so a restart cannot open a replay window. Nonces
        # carry whole seconds, so the mark sits a second early lest the nonces of our
        # own first second count as old; a replay inside that second still meets the
        # Call-ID/CSeq rule.
        digest_authenticator = digest.DigestAuthenticator(
            digest.NonceAuthority(config.nonce_secret), digest.NonceCounts(forget_issued_until=time.time() - 1)
        )
        # One lockout table for REGISTER and outbound calls: a guess costs the same either way.
        # Per process too: with several replicas, a guesser that reaches each gets each one's share.
        authenticator = Authenticator(
            digest_authenticator,
            LockoutTable(),
            self.store,
            clock=time.time,
            on_failure=self.metrics.auth_failed,
            on_lockout=self.metrics.auth_locked_out,
            on_refusal=self.metrics.auth_refused_locked,
            on_failure_record=self._registration_failed,
            node=config.node_name,
        )
        # A copy of every SIP message to a HEP collector, and the last ones of each connection, for
        # `sipreg trace` and the trace API.
        self.hep = HepSender(config.hep, config.hep_id) if config.hep is not None else None
        self.trace = TraceRecorder(config.node_name, copy=self._copy_to_hep if self.hep is not None else None)
        self.metrics.trace_bytes.set_function(lambda: self.trace.size)
        self.metrics.trace_rings.set_function(lambda: self.trace.rings)
        self.registrar = Registrar(
            self._served(self._catalog_source.catalog),
            self.store,
            authenticator,
            node=config.node_name,
            expires_spread=config.expires_spread,
            on_result=self.metrics.registration_answered,
            on_authenticated=self._authenticated,
            on_identified=self._identified,
            on_bound=self._bound,
            read_connection=self._catalog_source.read_connection,
        )
        # One transaction layer for what the registrar answers and what the proxy forwards.
        self.transactions = TransactionLayer()
        # Anyone can call a user whose contact is gone, as often as they like: a line per 10 s.
        self._log_skipped = RateLimitedLog(log, logging.WARNING)
        # UDP phones behind NAT that this replica answered are pinged from here, and only from here.
        self.pinger = NatPinger(self.store, self._send_ping, node=config.node_name, via=self._udp_address,
                                on_ping=self.metrics.keepalive_ping, on_removed=self._contact_unreachable)
        self.endpoint = SipEndpoint(SipService(self.registrar), self.metrics, self.sources, self._security,
                                    self.transactions, proxy=lambda delivery: self._proxy(authenticator, delivery),
                                    ping_answered=self.pinger.answered, trace=self.trace)
        self.metrics.pinged_contacts.set_function(lambda: len(self.pinger.pinged))
        for transport in STREAM_TRANSPORTS:
            self.metrics.flows.labels(transport).set_function(
                lambda transport=transport: self.endpoint.registered_flows(transport))
        self._closers: list = []
        # What takes new work in: the listeners' accepting sockets and UDP's reader (drain stops them first).
        self._intakes: list[Callable[[], None]] = []
        self._certificates: list[RotatingCertificate] = []  # from files, followed while serving
        self._tasks: list[asyncio.Task] = []
        self._listening = False
        self._draining = False

    def _proxy(self, authenticator: Authenticator, delivery: Delivery) -> ProxyDriver:
        """The proxy, sending through `delivery` (the endpoint, which makes it)."""
        config = self.config
        ports = {"udp": config.sip_port, "tcp": config.sip_port}
        for transport, port in (("tls", config.tls_port), ("ws", config.ws_port), ("wss", config.wss_port)):
            if port is not None:
                ports[transport] = port
        identity = Identity(
            config.node_name,
            config.public_address,
            {**ports, **config.public_ports},
            ports,
            {config.host, *([config.advertise] if config.advertise else [])},
            domains=lambda: self.registrar.catalog.domains,
        )
        router = Router(lambda: self.registrar.catalog, self.store, authenticator, time.time,
                        known_source=self.sources.known, on_authenticated=self._authenticated,
                        on_identified=self._identified, read_connection=self._catalog_source.read_connection)
        core = ProxyCore(identity, TokenSigner(config.nonce_secret), self.transactions, domain_of=router.domain_of,
                         max_transactions=lambda: self._security().max_transactions)
        return ProxyDriver(
            core,
            router,
            delivery,
            clock=time.monotonic,  # the endpoint's too
            nodes=lambda: self.replicas.nodes,
            on_final=self._call_answered,
            on_unreachable=self._unreachable,
        )

    def _call_answered(self, request: Request, domain: str, status: int) -> None:
        if request.method == "INVITE":
            self.metrics.invite_answered(domain or "other", status)

    def _unreachable(self, target: Target, why: str) -> None:
        # The binding stays: its UA re-registers over a new connection, or it expires.
        node = target.ref.node if target.ref is not None else ""
        self._log_skipped("sipreg: call skipped %s's contact %s (node %s): %s", target.aor, target.uri, node, why)
        self.metrics.unreachable_contact(why)

    def _security(self) -> SecurityPolicy:
        """The served catalogue's process-wide defences (it can change at run time: read it each time)."""
        return self.registrar.catalog.security

    def _authenticated(self, source: Source) -> None:
        self.sources.authenticated(source.host)

    def _copy_to_hep(self, captured: Captured) -> None:
        assert self.hep is not None
        self.metrics.hep_copies.labels("sent" if self.hep.send(captured) else "dropped").inc()

    def _registration_failed(self, connection: Connection) -> None:
        self.trace.failed(connection.aor)

    def _identified(self, request: Request, source: Source, connection: Connection) -> None:
        self.trace.identify(request.call_id, connection.aor, source.host)

    def _peer_addresses(self) -> set[str]:
        """The other replicas' addresses (etcd nodes/): their hops carry many users' calls, never limited."""
        return {node["address"] for node in self.replicas.nodes.values()}

    def _served(self, catalog: Catalog) -> Catalog:
        return catalog if self.config.domains is None else catalog.only(self.config.domains)

    def _serve_catalog(self, catalog: Catalog) -> None:
        self.registrar.catalog = catalog = self._served(catalog)
        connections = catalog.connections
        log.info("sipreg: serving %d domains from etcd, %s", len(catalog.domains),
                 f"{len(connections.held)} connections by address held, the others read as used"
                 if isinstance(connections, ConnectionCache) else f"{len(connections)} connections")

    def _bound(self, source: Source, domain: Domain, bindings: list[Binding]) -> None:
        """A REGISTER stored bindings: keep the connection it came over open while they live; ping the NATed."""
        if source.flow is not None:
            until = max([binding.expires_at for binding in bindings if binding.flow == source.flow], default=0.0)
            self.endpoint.keep_flow(source.flow, self.endpoint.clock() + until - time.time())
        elif source.transport == "udp":
            self.pinger.bound(domain, source.host, source.port, bindings)

    def _udp_address(self) -> tuple[str, int]:
        """Where UAs reach our UDP port (the Via of a ping: where its answer goes)."""
        return self.config.public_address, self.config.public_ports.get("udp", self.config.sip_port)

    def _send_ping(self, host: str, port: int, data: bytes) -> None:
        try:
            self.endpoint.send(Destination("udp", host, port), data)
        except SendError as error:
            log.debug("sipreg: keepalive ping to %s:%d not sent: %s", host, port, error)

    def _contact_unreachable(self, pinged: Pinged) -> None:
        self.metrics.keepalive_failed("udp")

    @property
    def listening(self) -> bool:
        return self._listening

    @property
    def ready(self) -> bool:
        """What /readyz says (with the store's own readiness): listening, and not draining."""
        return self._listening and not self._draining

    async def start(self) -> None:
        config = self.config
        await self.store.start()
        udp, receive_buffer = await listen_udp(self.endpoint, config.host, config.sip_port, config.advertise)
        self._closers.append(udp.close)
        self._intakes.append(udp.stop_reading)
        log.info(
            "sipreg: listening on udp %s:%d (receive buffer %d KiB)", config.host, config.sip_port, receive_buffer // 1024
        )
        tcp = await listen_stream(self.endpoint, config.host, config.sip_port)
        self._closers.append(tcp.close)
        self._intakes.append(tcp.close)  # the listening socket only: connections stay open
        log.info("sipreg: listening on tcp %s:%d", config.host, config.sip_port)
        if config.tls_port is not None:
            tls = await listen_stream(
                self.endpoint, config.host, config.tls_port, self._tls_context(config.tls_cert, config.tls_key)
            )
            self._closers.append(tls.close)
            self._intakes.append(tls.close)
            log.info("sipreg: listening on tls %s:%d", config.host, config.tls_port)
        if config.ws_port is not None:
            ws = await listen_websocket(self.endpoint, config.host, config.ws_port)
            self._closers.append(ws.stop)
            self._intakes.append(ws.stop_accepting)
            log.info("sipreg: listening on ws %s:%d", config.host, config.ws_port)
        if config.wss_port is not None:
            wss = await listen_websocket(
                self.endpoint, config.host, config.wss_port,
                self._tls_context(config.wss_cert or config.tls_cert, config.wss_key or config.tls_key),
            )
            self._closers.append(wss.stop)
            self._intakes.append(wss.stop_accepting)
            log.info("sipreg: listening on wss %s:%d", config.host, config.wss_port)
        if config.http_port is not None:
            traces = (TraceGatherer(lambda: self.replicas.nodes, config.api_token, self.trace)
                      if config.api_token else None)
            app = make_app(self.store, self.metrics, lambda: self.ready, config.api_token, traces)
            runner = await start_server(app, config.http_hosts, config.http_port)
            self._closers.append(lambda: asyncio.ensure_future(runner.cleanup()))
            for host in config.http_hosts:
                log.info(
                    "sipreg: listening on http %s:%d (bindings API %s)",
                    host, config.http_port, "on, bearer token" if config.api_token else "off: no token",
                )
        self._tasks.append(asyncio.create_task(self.endpoint.sweep_flows(), name="flow-sweep"))
        self._tasks.append(asyncio.create_task(self.pinger.run(), name="nat-pings"))
        self._tasks.append(asyncio.create_task(loop_lag.measure(self.metrics.loop_lag.observe), name="loop-lag"))
        if self._certificates and config.certificate_check_seconds > 0:
            self._tasks.append(asyncio.create_task(self._follow_certificates(), name="certificates"))
        # Everything alive now (the catalogue above all: 20k connections are ~300k
        # objects) lives as long as the process; moving it out of the collector's
        # reach keeps full collections, and so p99, short.
        gc.freeze()
        self._listening = True
        log.info(
            "sipreg: ready, serving %s with %s store, SIP core %s",
            ", ".join(sorted(self.registrar.catalog.domains)) or "no domains",
            config.store, "compiled (mypyc)" if sip.COMPILED else "pure Python",
        )

    def _tls_context(self, cert: str | None, key: str | None):  # type: ignore[no-untyped-def]
        if cert and key:
            # One per pair of files (wss shares TLS's by default): read, reloaded and logged once.
            for certificate in self._certificates:
                if (certificate.cert_file, certificate.key_file) == (cert, key):
                    return certificate.context
            certificate = RotatingCertificate(cert, key)
            self._certificates.append(certificate)
            return certificate.context
        log.info("sipreg: no certificate given, using a self-signed one")
        return self_signed_context([*sorted(self.registrar.catalog.domains), "localhost", self.config.host])

    async def _follow_certificates(self) -> None:
        while True:
            await asyncio.sleep(self.config.certificate_check_seconds)
            for certificate in self._certificates:
                certificate.reload_if_changed()

    async def drain(self, seconds: float, in_flight_seconds: float) -> None:
        """Leave service without losing an answer: not ready at once, so the load balancer moves new
        traffic away; `seconds` more of full service (UDP, requests on connections, new connections)
        while it does; then no new connections and no new datagrams; then wait, at most
        `in_flight_seconds`, until every request in flight (a REGISTER's etcd write, a proxied INVITE
        ringing) has its final answer. stop() closes the connections after: phones with a flow
        (RFC 5626) register again at once, on another replica."""
        self._draining = True
        log.info("sipreg: draining: not ready; serving %g s more, then answering what is in flight", seconds)
        await asyncio.sleep(seconds)
        for stop_taking in self._intakes:
            stop_taking()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + in_flight_seconds
        while (in_flight := self.endpoint.requests_in_flight()) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if in_flight:
            log.warning("sipreg: drained with %d requests still unanswered after %g s", in_flight, in_flight_seconds)
        else:
            log.info("sipreg: drained: every request answered")

    async def stop(self) -> None:
        self._listening = False
        for task in self._tasks:
            task.cancel()
        for close in reversed(self._closers):
            result = close()
            if asyncio.isfuture(result) or asyncio.iscoroutine(result):
                await result
        for flow in list(self.endpoint.flows.values()):
            flow.writer.close()
        await self.store.close()
        if self.hep is not None:
            self.hep.close()


def _log_ban(ban: Ban) -> None:
    # One line per ban, never per packet; fail2ban can match it as it matches failed authentications.
    log.warning("sipreg: source banned source=%s seconds=%d repeat=%d reason=\"over its request rate\"",
                ban.host, ban.seconds, ban.repeat)


@dataclass(frozen=True)
class StoreParts:
    """What `--store` makes: where bindings live, and what comes with that store."""

    locations: LocationStore
    catalog_source: CatalogSource
    node_registry: NodeRegistry
    # The store's calls to etcd, counted (the sipreg_store_* series); None: a store that makes none.
    calls: StoreCalls | None


def make_store(config: ServeConfig, on_catalog: Callable[[Catalog], None]) -> StoreParts:
    """The memory store beside the manifests' catalogue, or the etcd store, which is all three parts.

    `on_catalog` is told each catalogue etcd holds (the manifests' never change).
    """
    if config.store == "memory":
        return StoreParts(MemoryStore(clock=time.time), FixedCatalog(config.catalog or Catalog()), NoReplicas(), None)
    calls = StoreCalls()
    store = EtcdStore(
        EtcdSession(parse_endpoints(config.store), tls=config.etcd_tls, on_error=calls.failed),
        node=config.node_name,
        node_address=config.advertise or config.host,
        sip_port=config.sip_port,
        http_port=config.http_port,
        cached_aors=config.cached_aors,
        served_domains=config.domains,
        publish=config.catalog,
        on_catalog=on_catalog,
        on_write=calls.written,
        on_read=calls.read,
    )
    return StoreParts(store, store, store, calls)
