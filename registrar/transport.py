"""Transports: asyncio UDP, TCP and TLS listeners, and the table of open connections (flows).

This and registrar.websocket (ws, wss) are the parts of the registrar that own
sockets; the flows of both are kept here. Every message, from
any transport, goes through `SipEndpoint.receive`: parse, Via fix-up (RFC 3581
`received`/`rport`), the server-transaction table, then the SIP service. No
exception from a message ever reaches a listener: bad input gets an error
response when one can be formed, and is dropped otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable, Iterator

from registrar import stun
from registrar.eager import start_eagerly
from registrar.metrics import Metrics
from registrar.model import SecurityPolicy, in_networks
from registrar.proxy_driver import ProxyDriver, SendError
from registrar.ratelog import RateLimitedLog, exception_summary
from registrar.service import SipService
from registrar.sip.headers import Via, split_list
from registrar.sip.message import (
    KeepAlive,
    Request,
    Response,
    SipError,
    StreamFramer,
    error_response,
    parse_message,
    salvage_request,
    serialized_call_id,
    server_response,
)
from registrar.sip.source import WEBSOCKET_TRANSPORTS, Destination, Source, source_address
from registrar.sip.trace import TraceRecorder
from registrar.sip.transaction import Transaction, TransactionLayer, transaction_key
from registrar.sip.uri import unbracketed
from registrar.source_limits import SourceLimiter

log = logging.getLogger("sipreg.transport")

# A connection that has not carried a successful REGISTER is closed after this
# long without traffic; one with bindings lives as long as they do (see Flow.keep_until).
IDLE_TIMEOUT = 60.0
IDLE_SWEEP_INTERVAL = 5.0
# Messages in progress are checked against ConnectionLimits.message_seconds this
# often: a deadline of a few seconds is kept to within half a second. Only the
# flows holding part of a message are looked at, so it costs next to nothing.
MESSAGE_SWEEP_INTERVAL = 0.5
FLOW_GRACE = 30.0
CONNECT_TIMEOUT = 5.0
# Connections the kernel queues for accept (capped by net.core.somaxconn). The
# default 100 overflows under a connect flood, and then a legitimate UA's SYN is
# dropped and retried a second later; over-limit connections are closed as fast
# as they come, so a deep queue drains quickly.
ACCEPT_BACKLOG = 4096

Reply = Callable[[bytes], None]
# Our end of a socket we could not ask (traces show it so).
NO_ADDRESS = ("0.0.0.0", 0)


class SipEndpoint:
    """The receive pipeline shared by all transports, the flows they hold, and the limits on those."""

    def __init__(
        self,
        service: SipService,
        metrics: Metrics,
        sources: SourceLimiter,
        security: Callable[[], SecurityPolicy],
        transactions: TransactionLayer,
        proxy: Callable[[SipEndpoint], ProxyDriver] | None = None,
        clock: Callable[[], float] = time.monotonic,
        ping_answered: Callable[[Response], bool] = lambda response: False,
        trace: TraceRecorder | None = None,
    ):
        self.service = service
        self.metrics = metrics
        # Asked before any parsing: a flood from one address costs a dict lookup per packet.
        self.sources = sources
        # The served catalogue's policy, read when it applies: the catalogue is swapped at run time.
        self.security = security
        self.clock = clock
        # The node's one transaction layer, which the proxy shares: it absorbs and answers
        # retransmissions of what we answer here, and of what the proxy forwards.
        self.transactions = transactions
        # Takes the answers to our keepalive pings (registrar.nat_pings), which no transaction awaits.
        self._ping_answered = ping_answered
        # Records every SIP message read or written here (registrar.sip.trace); None: none is.
        self.trace = trace
        self.flows: dict[str, Flow] = {}
        # Flows holding part of a message, which must be whole within message_seconds.
        self._receiving: dict[str, Flow] = {}
        # Connections accepted (in the TLS handshake or open), per source and in all.
        self._accepted_from: dict[str, int] = {}
        self.accepted_total = 0
        self._flow_ids = itertools.count(1)
        # Flow ids outlive us in etcd (bindings name them): a restarted node must not
        # reuse one, or a stale binding would send another UA's calls down a new connection.
        self._flow_prefix = os.urandom(3).hex()
        # Our UDP socket, which the proxy sends from: the one we listen on (`use_udp`).
        self.udp: UdpListener | None = None
        self._udp_local = NO_ADDRESS
        # Requests on connections waiting on the store: they keep no transaction (those over UDP do).
        self._awaited_on_connections = 0
        # Connections we opened, by (transport, host, port), reused for every later request there.
        self._outgoing: dict[tuple[str, str, int], str] = {}
        self._connecting: dict[tuple[str, str, int], asyncio.Future[str]] = {}
        # What messages make us log, at most a line per kind per LOG_INTERVAL (registrar.ratelog).
        self._log_unparsable = RateLimitedLog(log, logging.DEBUG, clock=clock)
        self._log_failure = RateLimitedLog(log, logging.ERROR, clock=clock)
        # The proxy, which gets every request the service does not answer. It sends through
        # this endpoint, so the server says how to make one and it is made here, last.
        # Without one (an endpoint that only registers), what it would relay gets 501.
        self.proxy = proxy(self) if proxy is not None else None

    def requests_in_flight(self) -> int:
        """Requests received and not finally answered yet: waiting on the store, or proxied and waiting
        on the next hop. What a drain waits for."""
        return self.transactions.unanswered() + self._awaited_on_connections

    # -- the pipeline --------------------------------------------------------------------
    def receive(self, data: bytes, source: Source, reply: Reply) -> None:
        """Take one message from the network; never raises, so no listener or connection dies of one."""
        try:
            self._receive(data, source, reply)
        except Exception as error:
            self.failed("unexpected error on a message", source, error)

    def receive_stun(self, data: bytes, host: str, port: int, reply: Reply) -> None:
        """A STUN message on the UDP port: a UA keeping its NAT binding open (RFC 5626 4.4.2).

        Answered only for an address that proved credentials (or is trusted): a phone
        keeps the binding of a flow it registered over. Anyone else's would be answered
        with more bytes than it sent, to an address it may have forged: dropped.
        """
        if not self.sources.admit(host):
            return
        if not self.sources.known(host):
            self.metrics.stun_messages.labels("stranger").inc()
            return
        try:
            verdict, answer = stun.answer(data, host, port)
        except Exception as error:
            self.failed("unexpected error on a STUN message", Source("udp", host, port), error)
            return
        self.metrics.stun_messages.labels(verdict.value).inc()
        if answer is not None:
            reply(answer)

    def failed(self, what: str, source: Source | None, error: Exception) -> None:
        """A bug some message ran into: counted, and logged without the message or a traceback (could quote it)."""
        self.metrics.internal_errors.inc()
        self._log_failure("%s from %s: %s", what, source or "a client", exception_summary(error))

    def _receive(self, data: bytes, source: Source, reply: Reply) -> None:
        if not self.sources.admit(source.host):
            # Over its budget or banned: unanswered, as an answer would make us a reflector;
            # and a banned source keeps no connection either.
            if source.flow is not None and self.sources.banned(source.host):
                flow = self.flows.get(source.flow)
                if flow is not None:
                    flow.writer.abort()
            return
        started = self.clock()
        try:
            message = parse_message(data, exact=source.transport in WEBSOCKET_TRANSPORTS)
        except SipError as error:
            self.metrics.parse_errors.labels(source.transport).inc()
            self._received(data, source, None)
            self.answer_unparsable(data, error, reply, source)
            return
        call_id = message.call_id
        self._received(data, source, call_id)
        if isinstance(message, Response):
            self.metrics.message_received("RESPONSE", source.transport)
            if self._ping_answered(message):
                return
            if self.proxy is not None:
                self.proxy.receive_response(message)
            return
        request = message
        self.metrics.message_received(request.method, source.transport)
        try:
            key = transaction_key(request, self._fix_top_via(request, source))
        except SipError as error:
            self._send(error_response(request, error), reply, source)
            return
        # REGISTER, the hot path, is never proxied: no call to find that out.
        if request.method != "REGISTER" and self.service.proxied(request):
            # The proxy keeps its own transactions: they answer more than once (100, 180, 200).
            if self.proxy is None:
                self._send(server_response(request, 501, "Not Implemented: No Proxy Here"), reply, source)
                return
            try:
                self.proxy.receive_request(request, source, key)
            except Exception as error:
                self.failed("error proxying a request", source, error)
                self._send(server_response(request, 500, "Server Internal Error"), reply, source)
            return
        # Only UDP peers retransmit; on connections Timer J is zero (RFC 3261 17.2.2).
        unreliable = source.transport == "udp"
        if unreliable:
            effects = self.transactions.receive_request(key, request.method, started)
            if effects is not None:
                self.metrics.retransmissions.inc()
                for effect in effects:
                    # (a Send: the answer again, to where the request came from)
                    self._reply(reply, effect.data, source, call_id)
                return
        try:
            answer = self.service.handle(request, source)
        except Exception as error:
            self.failed("error handling a request", source, error)
            answer = server_response(request, 500, "Server Internal Error")
        if isinstance(answer, Response):
            # Answered without touching the store (challenges, errors, OPTIONS): the
            # answer changed nothing, so a retransmission is just answered again. Only
            # answers that changed state are kept for Timer J, which keeps the table
            # (and memory) at half the size under a REGISTER load.
            self._reply(reply, answer.to_bytes(), source, call_id)
            self.metrics.request_answered(request.method, self.clock() - started)
            return
        transaction = self.transactions.begin_server(key, request.method, source.reply_to) if unreliable else None
        # What it waits on (the store's answer) holds it until it is done: nothing to keep here.
        start_eagerly(self._finish(transaction, request, answer, reply, source, started))

    async def _finish(
        self, transaction: Transaction | None, request: Request, answer: Awaitable[Response], reply: Reply,
        source: Source, started: float,
    ) -> None:
        """Send the answer of a request that went to the store; keep it for retransmissions (UDP)."""
        if transaction is None:
            self._awaited_on_connections += 1
        try:
            response = await answer
        except Exception as error:
            self.failed("error handling a request", None, error)
            response = server_response(request, 500, "Server Internal Error")
        finally:
            if transaction is None:
                self._awaited_on_connections -= 1
        data = response.to_bytes()
        now = self.clock()
        if transaction is None:
            self._reply(reply, data, source, request.call_id)
        else:
            for effect in self.transactions.respond(transaction, response.status, data, now):
                # (a Send of `data`; the layer keeps it for Timer J)
                self._reply(reply, effect.data, source, request.call_id)
        self.metrics.request_answered(request.method, now - started)

    def answer_unparsable(self, data: bytes, error: SipError, reply: Reply, source: Source) -> None:
        """Answer a message that does not parse with `error`, or drop it when no answer can be formed."""
        request = salvage_request(data)
        if request is None:
            self._log_unparsable("dropped an unparsable message from %s: %s", source, error)
            return
        self._log_unparsable("answered an unparsable message from %s: %s", source, error)
        self._send(error_response(request, error), reply, source)

    def _send(self, response: Response, reply: Reply, source: Source) -> None:
        self._reply(reply, response.to_bytes(), source, response.call_id)

    def _received(self, data: bytes, source: Source, call_id: str | None) -> None:
        if self.trace is not None:
            self.trace.received(data, source.transport, (source.host, source.port), self._local(source), call_id)

    def _reply(self, reply: Reply, data: bytes, source: Source, call_id: str) -> None:
        """Send an answer back the way its request came, recorded for the trace."""
        if self.trace is not None:
            self.trace.sent(data, source.transport, (source.host, source.port), self._local(source), call_id)
        reply(data)

    def _local(self, source: Source | Destination) -> tuple[str, int]:
        """Our end of what `source` came over (or `destination` goes over): its flow's, else the UDP socket's."""
        flow = self.flows.get(source.flow) if source.flow is not None else None
        return flow.local if flow is not None else self._udp_local

    @staticmethod
    def _fix_top_via(request: Request, source: Source) -> Via:
        """Validate the top Via and record the packet's real source in it (RFC 3261 18.2.1, RFC 3581).

        Returns the Via as received. Responses always go back to the packet's
        source address and port (symmetric response routing), which is what
        works behind NAT; `received` and a filled `rport` tell the UA what we saw.
        """
        via = request.top_via  # SipError 400 for a malformed Via
        rport_requested = "rport" in via.params and via.params["rport"] is None
        if unbracketed(via.host) == source.host and not rport_requested:
            return via
        params = dict(via.params)
        params["received"] = source.host
        if rport_requested:
            params["rport"] = str(source.port)
        fixed = str(Via(via.transport, via.host, via.port, params, via.protocol))
        for index, (name, value) in enumerate(request.headers):
            if name == "Via":
                values = split_list(value)
                request.headers[index] = (name, ", ".join([fixed, *values[1:]]))
                break
        return via

    def use_udp(self, socket: UdpListener, local: tuple[str, int] = NO_ADDRESS) -> None:
        """The UDP socket we listen on (at `local`) is the one the proxy sends from (its Via names that port)."""
        self.udp = socket
        self._udp_local = local

    # -- flows -----------------------------------------------------------------------------
    def admit_connection(self, transport: str, host: str) -> str | None:
        """Count a connection accepted from `host`: the source it counts for (give it to `release_connection`),
        or None when it would pass ConnectionLimits (then it is not counted: close it).

        A source is an IPv4 address or an IPv6 /64, as for lockouts. Trusted
        networks (a load balancer, an edge proxy: many UAs behind one address)
        are held to the total only.
        """
        policy = self.security()
        limits = policy.connections
        source = source_address(host)
        if self.sources.banned(host):
            reason = "banned"
        elif self.accepted_total >= limits.total:
            reason = "total"
        else:
            count = self._accepted_from.get(source, 0)
            if count < limits.per_source or in_networks(host, policy.trusted_networks):
                self._accepted_from[source] = count + 1
                self.accepted_total += 1
                return source
            reason = "per_source"
        log.debug("refused %s connection from %s: %s limit reached", transport, host, reason)
        self.metrics.connections_refused.labels(reason).inc()
        return None

    def release_connection(self, source: str) -> None:
        """A connection `admit_connection` counted for `source` is gone."""
        count = self._accepted_from[source] - 1
        if count:
            self._accepted_from[source] = count
        else:
            del self._accepted_from[source]
        self.accepted_total -= 1

    def open_flow(
        self, transport: str, writer: asyncio.Transport, peer: tuple[str, int], local: tuple[str, int] = NO_ADDRESS
    ) -> Flow:
        flow = Flow(f"{transport}-{self._flow_prefix}-{next(self._flow_ids)}", transport, writer, peer, local,
                    self.clock())
        self.flows[flow.id] = flow
        self.metrics.connections.labels(transport).inc()
        return flow

    def close_flow(self, flow: Flow) -> None:
        if self.flows.pop(flow.id, None) is not None:
            self.metrics.connections.labels(flow.transport).dec()
        self._receiving.pop(flow.id, None)
        if self._outgoing.get((flow.transport, *flow.peer)) == flow.id:
            del self._outgoing[(flow.transport, *flow.peer)]

    # -- sending (the proxy's Delivery) -------------------------------------------------------
    def send(self, destination: Destination, data: bytes) -> None:
        if destination.flow is not None:
            flow = self.flows.get(destination.flow)
            if flow is None or flow.writer.is_closing():
                raise SendError(f"connection {destination.flow} to {destination.host}:{destination.port} is closed")
            self._sending(destination, data, flow.local)
            flow.writer.write(data)
            return
        if destination.transport != "udp" or self.udp is None:
            raise SendError(f"no connection to {destination.transport}:{destination.host}:{destination.port}")
        self._sending(destination, data, self._udp_local)
        try:
            self.udp.sendto(data, (destination.host, destination.port))
        except OSError as error:
            raise SendError(str(error)) from None

    def _sending(self, destination: Destination, data: bytes, local: tuple[str, int]) -> None:
        if self.trace is not None:
            self.trace.sent(data, destination.transport, (destination.host, destination.port), local,
                            serialized_call_id(data))

    def has_flow(self, flow: str) -> bool:
        open_flow = self.flows.get(flow)
        return open_flow is not None and not open_flow.writer.is_closing()

    async def connect(self, transport: str, host: str, port: int) -> str:
        """A connection to host:port that we opened, reused while it stays open (RFC 3261 18.1.1)."""
        key = (transport, host, port)
        flow_id = self._outgoing.get(key)
        if flow_id is not None and self.has_flow(flow_id):
            return flow_id
        pending = self._connecting.get(key)
        if pending is None:
            pending = self._connecting[key] = asyncio.ensure_future(self._open(transport, host, port))
            pending.add_done_callback(lambda _: self._connecting.pop(key, None))
        return await asyncio.shield(pending)

    async def _open(self, transport: str, host: str, port: int) -> str:
        loop = asyncio.get_running_loop()
        # TLS to a gateway verifies its certificate against the system's CAs, as any TLS client should.
        context = ssl.create_default_context() if transport == "tls" else None
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: StreamProtocol(self, transport), host, port, ssl=context),
                CONNECT_TIMEOUT,
            )
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as error:
            raise SendError(f"cannot connect to {transport}:{host}:{port}: {error or 'timed out'}") from None
        flow = protocol.flow
        if flow is None:
            raise SendError(f"connection to {transport}:{host}:{port} closed at once")
        self._outgoing[(transport, host, port)] = flow.id
        return flow.id

    def keep_flow(self, flow_id: str | None, until: float) -> None:
        """Keep a connection open while a binding made over it is alive (monotonic time)."""
        flow = self.flows.get(flow_id) if flow_id else None
        if flow is not None:
            flow.keep_until = max(flow.keep_until, until + FLOW_GRACE)

    def pong(self, flow: Flow) -> None:
        """Answer a keep-alive ping (a double CRLF) on a connection with a CRLF (RFC 5626 section 4.4.1)."""
        self.metrics.crlf_keepalives.labels(flow.transport).inc()
        flow.send(b"\r\n")

    def registered_flows(self, transport: str) -> int:
        """Open connections of `transport` that carry a live registration (read at each scrape)."""
        now = self.clock()
        return sum(1 for flow in self.flows.values() if flow.transport == transport and flow.keep_until > now)

    def message_begun(self, flow: Flow, now: float) -> None:
        """The flow holds the first part of a message, begun at `now`: the rest is due within message_seconds."""
        flow.message_started = now
        self._receiving[flow.id] = flow

    def message_ended(self, flow: Flow) -> None:
        """The flow holds no part of a message any more."""
        flow.message_started = None
        self._receiving.pop(flow.id, None)

    def close_idle_flows(self) -> None:
        now = self.clock()
        for flow in list(self.flows.values()):
            if now > max(flow.last_activity + IDLE_TIMEOUT, flow.keep_until):
                log.debug("closing idle %s flow %s from %s", flow.transport, flow.id, flow.peer)
                flow.writer.close()
                self.close_flow(flow)

    def close_slow_flows(self) -> None:
        """Close the flows whose message in progress began more than message_seconds ago.

        Whatever else the flow carries: a peer that sends a byte now and then
        would otherwise hold its connection, and its place in the limits, forever.
        """
        if not self._receiving:
            return
        due = self.clock() - self.security().connections.message_seconds
        for flow in [flow for flow in self._receiving.values() if flow.message_started < due]:  # type: ignore[operator]
            log.debug("closing %s flow %s from %s: message not whole in time", flow.transport, flow.id, flow.peer)
            flow.writer.abort()  # nothing to flush to a peer that stalls
            self.close_flow(flow)

    async def sweep_flows(self) -> None:
        """Close slow flows every MESSAGE_SWEEP_INTERVAL, idle ones every IDLE_SWEEP_INTERVAL."""
        idle_every = round(IDLE_SWEEP_INTERVAL / MESSAGE_SWEEP_INTERVAL)
        for tick in itertools.count(1):
            await asyncio.sleep(MESSAGE_SWEEP_INTERVAL)
            self.close_slow_flows()
            if tick % idle_every == 0:
                self.close_idle_flows()


class Flow:
    """One open TCP/TLS/WS/WSS connection: requests to a UA registered over it go back down it.

    `writer` is the connection's asyncio.Transport, or what stands for one (a WebSocket's
    registrar.websocket.FrameWriter): write, close, abort, is_closing.
    """

    __slots__ = (
        "id", "transport", "writer", "peer", "local", "last_activity", "keep_until", "message_started", "_held",
    )

    def __init__(
        self, flow_id: str, transport: str, writer: asyncio.Transport, peer: tuple[str, int],
        local: tuple[str, int], now: float,
    ):
        self.id = flow_id
        self.transport = transport
        self.writer = writer
        self.peer = peer
        self.local = local  # our end
        self.last_activity = now
        self.keep_until = 0.0
        self.message_started: float | None = None  # when the part of a message it holds began
        # Answers held back while one read's messages are handled (`holding`), to go in one write.
        self._held: list[bytes] | None = None

    def send(self, data: bytes) -> None:
        if self._held is not None:
            self._held.append(data)
        elif not self.writer.is_closing():
            self.writer.write(data)

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Hold what is sent in the block and write it at the end in one go: the answers to the
        several messages one read of a busy connection brings cost one system call, not one each.
        Only a byte stream may do this (a WebSocket sends each message in a frame of its own)."""
        self._held = []
        try:
            yield
        finally:
            held, self._held = self._held, None
            if held and not self.writer.is_closing():
                self.writer.write(b"".join(held))


# A UDP listener's kernel receive buffer. The default (~208 KiB, some 500 REGISTERs)
# overflows in a 50 ms stall at 5,000 registrations/s; what overflows is dropped,
# comes back as retransmissions 500 ms later, and the extra load feeds on itself
# (measured: a collapse at 3,000/s offered that TCP, with backpressure, did not
# show). Kamailio sizes its buffer up for the same reason. The kernel caps the
# request at net.core.rmem_max (raise that sysctl to get the full size).
UDP_RECEIVE_BUFFER = 8 * 1024 * 1024
# How long a datagram may wait in that buffer and still be read once a queue stands
# (UdpListener): an answer sent then still beats the sender's first retransmission (T1, 500 ms).
UDP_MAX_WAIT = 0.4
# A queue stands when, over a whole interval, even the datagram that waited least waited
# longer than this (CoDel's test): a stall leaves a backlog that drains to nothing, a
# load beyond what the registrar can answer leaves one that does not.
UDP_STANDING_WAIT = 0.05
UDP_STANDING_INTERVAL = 0.5
# Datagrams read per wakeup of the event loop, at most.
UDP_BATCH = 64
UDP_MAX_DATAGRAM = 65_535
# SO_TIMESTAMPNS (Linux, asm-generic/socket.h; Python names no constant for it): each datagram
# comes with its receive time as a struct timespec (two longs) in an SCM_TIMESTAMPNS message.
_SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("@ll")
_TIMESTAMP_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)


class UdpListener:
    """The UDP socket we listen and send on, read with the kernel's receive time of each datagram.

    While a queue stands in the socket buffer, a datagram that waited longer than
    `max_wait` is shed unread. Offered more than it can answer, a registrar that
    answers in arrival order answers each request later than the last, soon later
    than its sender's first retransmission (T1, 500 ms): its answers then cross
    retransmissions that cost work again, the queue grows without bound, and
    registrations fail (measured: 2-17% of them at 1.2 to 1.6 times the best rate).
    Shedding the stale costs a clock comparison each and keeps what is answered
    answered in time; the senders of the rest retransmit, with backoff, as over a
    lossy network, and get through (measured: none failed). A stall (a slow moment
    of the machine) leaves a backlog that the registrar then works off: that is
    answered in full, late, as the buffer is there to absorb it; shedding it would
    turn a late answer into a retransmission and a later one.
    """

    def __init__(
        self, sock: socket.socket, endpoint: SipEndpoint, max_wait: float = UDP_MAX_WAIT,
        standing_wait: float = UDP_STANDING_WAIT, standing_interval: float = UDP_STANDING_INTERVAL,
    ):
        self.sock = sock
        self.endpoint = endpoint
        self.max_wait = max_wait
        self.standing_wait = standing_wait
        self.standing_interval = standing_interval
        # Whether the last whole interval found a standing queue, and the least wait of this one.
        self.standing = False
        self._interval_ends = 0.0
        self._least_wait = float("inf")
        # Without kernel timestamps (not Linux), datagrams come with no ancillary data and
        # nothing is known to be stale: nothing is shed.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        self._shed = endpoint.metrics.udp_stale_shed
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        # A bounded batch per wakeup, so a flood on UDP cannot starve the connections and timers.
        sock, receive, now = self.sock, self.endpoint.receive, time.time
        for _ in range(UDP_BATCH):
            try:
                data, ancillary, _, addr = sock.recvmsg(UDP_MAX_DATAGRAM, _TIMESTAMP_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # an ICMP error queued on the socket: the listener goes on
                log.debug("udp receive error: %s", error)
                continue
            if ancillary:
                seconds, nanoseconds = _TIMESPEC.unpack_from(ancillary[0][2])
                if self._stale(now(), seconds + nanoseconds * 1e-9):
                    self._shed.inc()
                    continue
            if data in (b"\r\n\r\n", b"\r\n", b"\x00\x00\x00\x00"):
                continue  # NAT keep-alives on UDP need no answer
            reply = self._replier(addr)
            if stun.looks_like_stun(data):
                self.endpoint.receive_stun(data, addr[0], addr[1], reply)
            else:
                receive(data, Source("udp", addr[0], addr[1]), reply)

    def _stale(self, now: float, received: float) -> bool:
        """Whether a datagram the kernel received at `received` is to be shed, read `now`."""
        if now >= self._interval_ends:
            # An interval without a datagram (inf) is an idle one: no queue stood in it.
            self.standing = self.standing_wait < self._least_wait < float("inf")
            self._interval_ends = now + self.standing_interval
            self._least_wait = float("inf")
        waited = now - received
        if waited < self._least_wait:
            self._least_wait = waited
        return self.standing and waited > self.max_wait

    def _replier(self, addr: tuple) -> Reply:
        def reply(data: bytes) -> None:
            try:
                self.sendto(data, addr)
            except OSError as error:  # an address we cannot send to: the answer is lost, as on the wire
                log.debug("udp answer to %s:%d not sent: %s", addr[0], addr[1], error)

        return reply

    def sendto(self, data: bytes, addr: tuple) -> None:
        """Send one datagram now; raises OSError. A full send buffer drops it, as the network would."""
        try:
            self.sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            log.debug("udp send buffer full: a datagram to %s:%d dropped", addr[0], addr[1])

    def stop_reading(self) -> None:
        """Take no more datagrams; answers still go out from the socket (a drain's requests in flight)."""
        if self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())

    def close(self) -> None:
        self.stop_reading()
        self.sock.close()


class StreamProtocol(asyncio.Protocol):
    """One TCP or TLS connection, framed by Content-Length.

    A connection a peer opened to our listener (`accepted`) is counted against
    ConnectionLimits before anything else happens on it; over a limit it is
    closed at once. On the TLS listener (`tls`: its context) the handshake
    starts only then, so a flood of connections costs no handshakes: the
    listener accepts plain TCP and starts TLS itself. Connections we open
    (SipEndpoint.connect) are not counted, and get TLS from create_connection.
    """

    def __init__(self, endpoint: SipEndpoint, transport_name: str, *, accepted: bool = False,
                 tls: ssl.SSLContext | None = None):
        self.endpoint = endpoint
        self.transport_name = transport_name
        self.accepted = accepted
        self.tls = tls
        self.framer = StreamFramer()
        self.flow: Flow | None = None
        self.source: Source | None = None
        self._counted: str | None = None  # the source admitted at accept, until released
        self._early: bytearray | None = None  # TLS data that arrived with the handshake's end

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        if not peer:
            # The peer reset the connection before we got to it: nothing to serve.
            transport.close()
            return
        if self.accepted:
            self._counted = self.endpoint.admit_connection(self.transport_name, peer[0])
            if self._counted is None:
                transport.abort()
                return
            if self.tls is not None:
                # At once, not as a task: start_tls must take the transport over
                # before it first reads, or the ClientHello goes to us (uvloop).
                start_eagerly(self._handshake(transport, (peer[0], peer[1])))  # type: ignore[arg-type]
                return
        self._open(transport, (peer[0], peer[1]))  # type: ignore[arg-type]

    async def _handshake(self, transport: asyncio.Transport, peer: tuple[str, int]) -> None:
        assert self.tls is not None
        self._early = bytearray()
        try:
            tls_transport = await asyncio.get_running_loop().start_tls(
                transport, self, self.tls, server_side=True,
                ssl_handshake_timeout=self.endpoint.security().connections.handshake_seconds,
            )
        except Exception as error:  # whatever the peer did: a failed handshake, a timeout, a reset
            log.debug("%s handshake with %s:%d failed: %r", self.transport_name, *peer, error)
            transport.abort()
            self._release()
            return
        early, self._early = self._early, None
        if tls_transport.is_closing():
            self._release()  # lost before we got here (its connection_lost found no flow)
            return
        self._open(tls_transport, peer)
        if early:
            self.data_received(bytes(early))

    def _open(self, transport: asyncio.Transport, peer: tuple[str, int]) -> None:
        self.flow = self.endpoint.open_flow(self.transport_name, transport, peer, socket_address(transport))
        self.source = Source(self.transport_name, peer[0], peer[1], self.flow.id)

    def data_received(self, data: bytes) -> None:
        flow, source = self.flow, self.source
        if flow is None or source is None:
            if self._early is not None:
                self._early += data  # decrypted before start_tls returned to _handshake
            return  # else closed in connection_made
        now = flow.last_activity = self.endpoint.clock()
        try:
            events = self.framer.feed(data)
        except SipError as error:
            # The stream's framing is lost; answer what we can and close (RFC 3261 18.3).
            self.endpoint.answer_unparsable(self.framer.unframed, error, flow.send, source)
            flow.writer.close()
            return
        if self.framer.in_message:
            if events or flow.message_started is None:
                self.endpoint.message_begun(flow, now)  # a new message: what came before was framed
        elif flow.message_started is not None:
            self.endpoint.message_ended(flow)
        if len(events) > 1:
            with flow.holding():
                for event in events:
                    self._handle(event, flow, source)
        elif events:  # the usual read: one message, answered at once
            self._handle(events[0], flow, source)

    def _handle(self, event: KeepAlive | bytes, flow: Flow, source: Source) -> None:
        if isinstance(event, KeepAlive):
            if event.wants_pong:
                self.endpoint.pong(flow)
        else:
            self.endpoint.receive(event, source, flow.send)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.flow is not None:
            self.endpoint.close_flow(self.flow)
        self._release()

    def _release(self) -> None:
        # Once: after a failed handshake, TLS may still report the loss of the connection.
        if self._counted is not None:
            self.endpoint.release_connection(self._counted)
            self._counted = None


def socket_address(transport: asyncio.BaseTransport) -> tuple[str, int]:
    """Our end of a connection, as (host, port); NO_ADDRESS when the socket is gone already."""
    local = transport.get_extra_info("sockname")
    return (str(local[0]), int(local[1])) if local else NO_ADDRESS


async def listen_udp(
    endpoint: SipEndpoint, host: str, port: int, advertised: str | None = None
) -> tuple[UdpListener, int]:
    """A UDP listener, and the receive buffer size the kernel granted (bytes)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
        sock.bind((host, port))
        sock.setblocking(False)
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        listener = UdpListener(sock, endpoint)
    except BaseException:
        sock.close()
        raise
    # Traces show the advertised address for a socket bound to every address (0.0.0.0, ::).
    bound, port = sock.getsockname()[:2]
    endpoint.use_udp(listener, (advertised if advertised and bound in ("0.0.0.0", "::") else bound, port))
    return listener, granted


async def listen_stream(
    endpoint: SipEndpoint, host: str, port: int, ssl_context: ssl.SSLContext | None = None
) -> asyncio.Server:
    """A TCP listener, or a TLS one with `ssl_context` (TLS starts after the connection limits: StreamProtocol)."""
    loop = asyncio.get_running_loop()
    name = "tls" if ssl_context is not None else "tcp"
    return await loop.create_server(
        lambda: StreamProtocol(endpoint, name, accepted=True, tls=ssl_context),
        host, port, reuse_address=True, backlog=ACCEPT_BACKLOG,
    )
