"""The stateful proxy (RFC 3261 section 16): server and client transactions, forking, CANCEL, in-dialog routing.

One `ServerTransaction` per request received; one `Branch` (client transaction)
per copy sent. The router (registrar.routing) says where a new request goes;
the message edits are registrar.sip.proxy's; sockets are the transport's,
behind `Delivery`. What this module owns is the state and the timers.

How a request reaches a UA (the design's "flows"):
- A target is a `FlowRef`: the node holding the UA's connection, the transport,
  the packet source the UA registered from, the connection id.
- This node's flows are used directly: down the TCP/TLS connection the UA
  opened (even when its Contact names another port), or by UDP to the source
  address the binding recorded (the NAT's, when it differs from the Contact).
- Another node's flow: the request goes to that node over TCP with a signed
  hop Route naming the flow; that node proxies it down the flow. A dead node's
  TCP/TLS flows are skipped (and reported); its UDP ones are sent from here.
- Every forwarded INVITE is record-routed with a signed token holding both
  parties' refs and the caller's From tag (`ftag`), so an in-dialog request
  arriving at any node goes to the other party through the same flow.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from typing import NamedTuple, Protocol

from registrar.eager import start_eagerly
from registrar.flows import DIALOG, HOP, FlowRef, RouteToken, TokenSigner, of_binding
from registrar.ratelog import RateLimitedLog, exception_summary
from registrar.routing import Router, Target
from registrar.sip import proxy as relay
from registrar.sip.headers import Via
from registrar.sip.message import Request, Response, SipError, error_response, server_response
from registrar.sip.source import Source
from registrar.sip.transaction import COMPLETED_LIFETIME, T1, T2, TransactionKey
from registrar.sip.uri import URI, URIError, parse_uri, unbracketed

log = logging.getLogger("sipreg.proxy")

TIMEOUT = COMPLETED_LIFETIME  # Timers B, F, H: 64*T1, 32 s
TIMER_C = 180.0  # an INVITE branch may ring this long after its last provisional (RFC 3261 16.6 step 11)
SAFETY_NET = 900.0
# Methods that create a dialog: the proxy stays in its path (Record-Route).
DIALOG_METHODS = frozenset(["INVITE", "SUBSCRIBE", "REFER"])
DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}
# Live transactions beyond which requests are shed (a SipDomain's security.maxTransactions).
MAX_TRANSACTIONS = 5000
# What is kept of finished transactions for their retransmissions, at most this many times the
# live ones: memory stays bounded however fast calls come. Beyond it the oldest go first (a late
# retransmission of theirs is then handled as a new request).
RETAINED_PER_LIVE = 10
# What a shed request is told: come back after this long (RFC 3261 21.5.4).
SHED_RETRY_AFTER = 5


class Destination(NamedTuple):
    """Where the transport sends: over UDP to host:port, or down the connection `flow`."""

    transport: str
    host: str
    port: int
    flow: str | None = None


class SendError(Exception):
    """A message could not be handed to the network (closed flow, refused connection)."""


class Delivery(Protocol):
    """What the proxy needs from the transports."""

    def send(self, destination: Destination, data: bytes) -> None:
        """Send now (UDP, or an open flow); raises SendError."""

    async def connect(self, transport: str, host: str, port: int) -> str:
        """An open connection to host:port (reused when there is one): its flow id; raises SendError."""

    def has_flow(self, flow: str) -> bool: ...


class Identity:
    """How this node names itself on the wire, and what names it in a Route or Via."""

    def __init__(self, node: str, public_host: str, public_ports: dict[str, int], listen_ports: set[int],
                 addresses: set[str], domains: Callable[[], Collection[str]] = tuple):
        self.node = node
        self.public_host = public_host  # in Via and Record-Route: the address UAs reach us at
        self.ports = public_ports  # per transport, in Via and Record-Route
        self._port_numbers = frozenset({*public_ports.values(), *listen_ports})
        self._addresses = frozenset({public_host, *addresses})  # listen, node and public addresses
        self._domains = domains  # a UA whose outbound proxy is the domain names us by it

    def port(self, transport: str) -> int:
        return self.ports.get(transport) or self.ports["tcp"]

    def _names_us(self, host: str) -> bool:
        host = unbracketed(host)
        return host in self._addresses or host in self._domains()

    def sent_by(self, via: Via) -> bool:
        port = via.port or DEFAULT_PORTS.get(via.transport.lower(), 5060)
        return port in self._port_numbers and self._names_us(via.host)

    def is_us(self, uri: URI) -> bool:
        return (uri.port is None or uri.port in self._port_numbers) and self._names_us(uri.host)


class Proxy:
    """The proxy's entry points: requests and responses from the transports, in; sends, out."""

    def __init__(
        self,
        router: Router,
        delivery: Delivery,
        identity: Identity,
        signer: TokenSigner,
        *,
        nodes: Callable[[], dict[str, dict]] = dict,
        on_final: Callable[[Request, str, int], None] = lambda request, domain, status: None,
        on_unreachable: Callable[[Target, str], None] = lambda target, why: None,
        max_transactions: Callable[[], int] = lambda: MAX_TRANSACTIONS,
    ):
        self.router = router
        self.delivery = delivery
        self.identity = identity
        self.signer = signer
        self.nodes = nodes
        self._on_final = on_final
        self._on_unreachable = on_unreachable
        self._max_transactions = max_transactions
        # What requests make us log, at most a line per kind per interval (registrar.ratelog).
        self._log_failure = RateLimitedLog(log, logging.ERROR)
        self.log_unsent = RateLimitedLog(log, logging.INFO)
        self.servers: dict[TransactionKey, ServerTransaction] = {}
        self.clients: dict[tuple[str, str], Branch] = {}
        self._merge_keys: dict[tuple[str, str, int, str], TransactionKey] = {}
        # What is left of a transaction once it is over, for the 32 s that retransmissions may
        # still come (Timers H, J, K): (expires at, final response, status) by server key, and
        # (expires at, our ACK, where the branch went (4), where its 2xx go (4)) by branch. Plain tuples
        # of strings, bytes and numbers, which the cyclic garbage collector leaves alone: kept
        # as live objects, 30 s of calls made its full collections last a second (measured).
        # Insertion order is expiry order: every entry lives the same time.
        self._answered: OrderedDict[TransactionKey, tuple[float, bytes, int]] = OrderedDict()
        # Flat: the collector stops tracking a tuple of plain values when it first sees it, but a
        # tuple of tuples only once it has seen the inner ones, and a NamedTuple never.
        self._finished_branches: OrderedDict[tuple[str, str], tuple] = OrderedDict()

    # -- requests ------------------------------------------------------------------------------
    def receive_request(self, request: Request, source: Source, reply: Callable[[bytes], None], key: TransactionKey) -> None:
        self._expire()
        method = request.method
        if method == "ACK":
            server = self.servers.get(key)
            if server is not None:
                server.acknowledged()  # the ACK of our own non-2xx answer: hop by hop, ends here
                return
            answered = self._answered.get(key)
            if answered is not None and answered[2] >= 300:
                return  # the same, after the transaction was over
            self._relay_stateless(request, source)
            return
        if method == "CANCEL":
            self._cancel(request, reply, key)
            return
        server = self.servers.get(key)
        if server is not None:
            server.retransmitted()
            return
        answered = self._answered.get(key)
        if answered is not None:
            reply(answered[1])  # a retransmission after the answer: the same answer (RFC 3261 17.2)
            return
        try:
            # To, From and CSeq go into the hash: a malformed one is answered here, before any state.
            hash_of_request = relay.loop_hash(request)
        except SipError as error:
            reply(error_response(request, error).to_bytes())
            return
        if len(self.servers) >= self._max_transactions():
            # Full: shed before any state, one answer for one request.
            reply(server_response(request, 503, "Service Unavailable: Overloaded",
                                  [("Retry-After", str(SHED_RETRY_AFTER))]).to_bytes())
            return
        server = ServerTransaction(self, key, request, source, reply, hash_of_request)
        self.servers[key] = server
        if method == "INVITE":
            server.domain = self.router.domain_of(request)  # its answer is counted by it, refusals too
        try:
            self._check(request, server)
        except SipError as error:
            server.respond(error_response(request, error))
            return
        start_eagerly(self._route(server))

    def _check(self, request: Request, server: ServerTransaction) -> None:
        """Validation before routing (RFC 3261 16.3): hops, loops, merged requests."""
        hops = relay.max_forwards(request)
        if hops == 0:
            raise SipError(483, "Too Many Hops")
        ours = relay.our_vias(request, self.identity.sent_by)
        if relay.has_looped(ours, server.loop_hash):
            raise SipError(482, "Loop Detected")
        if not ours and request.name_addr("To").tag is None:
            # The same request reaching us twice by different paths (RFC 3261 8.2.2.2).
            number, method = request.cseq
            merge_key = (request.name_addr("From").tag or "", request.call_id, number, method)
            other = self.servers.get(self._merge_keys.get(merge_key, ()))
            if other is not None and other is not server and not other.answered:
                raise SipError(482, "Loop Detected: Merged Request")
            self._merge_keys[merge_key] = server.key
            server.merge_key = merge_key

    async def _route(self, server: ServerTransaction) -> None:
        request = server.request
        try:
            target, popped = self._take_our_routes(request)
            if target is not None:
                await self._fork(server, [[await self._current(request, target)]], record_route=False)
            elif request.name_addr("To").tag is not None:
                # In a dialog we are not part of (no Route of ours): not ours to relay.
                target = self._next_hop_target(request) if popped else None
                if target is None:
                    raise SipError(404, "Not Here: No Route For In-Dialog Request")
                await self._fork(server, [[target]], record_route=False)
            elif request.get("Route") is not None:
                raise SipError(403, "Relaying Denied: Preloaded Route")
            else:
                target_set = await self.router.route(request, server.source)
                await self._fork(server, target_set.groups, record_route=request.method in DIALOG_METHODS)
        except SipError as error:
            server.respond(error_response(request, error))
        except Exception as error:
            self._log_failure("error routing %s: %s", request.method, exception_summary(error))
            server.respond(server_response(request, 500, "Server Internal Error"))

    def _take_our_routes(self, request: Request) -> tuple[Target | None, int]:
        """Route preprocessing (RFC 3261 16.4): our topmost Route entries off the request.

        Returns the target the token among them names (a hop's flow, or the other
        party of a dialog), None when there is no token, and how many entries were ours.
        """
        token = None
        ftag = None
        popped = 0
        for route in relay.routes(request):
            found = self.signer.read(route.uri.user)
            if found is None and not self.identity.is_us(route.uri):
                break
            if found is not None and token is None:
                token, ftag = found, route.uri.params.get("ftag")
            popped += 1
        relay.without_top_routes(request, popped)
        if token is None:
            return None, popped
        if token.kind == HOP:
            return Target(request.uri, token.refs[0]), popped
        return self._dialog_target(request, token, ftag), popped

    def _dialog_target(self, request: Request, token: RouteToken, ftag: str | None) -> Target:
        """The other party of a dialog: the callee when the caller sends, and the other way round."""
        caller, callee = token.refs
        from_caller = ftag is not None and request.name_addr("From").tag == ftag
        ref = callee if from_caller else caller
        if ref is not None:
            return Target(request.uri, ref)
        target = self._next_hop_target(request)
        if target is None:
            raise SipError(404, "Not Here: No Route For In-Dialog Request")
        return target

    async def _current(self, request: Request, target: Target) -> Target:
        """The flow a dialog recorded, or, when it has closed since, the UA's binding now.

        A UA whose TCP/TLS connection dropped mid-call connects and registers
        again, from a new port; its Contact (the in-dialog Request-URI) stays.
        The party a request goes to is its To (the dialog's remote URI).
        """
        ref = target.ref
        if ref is None or not ref.stream or self._flow_alive(ref):
            return target
        try:
            aor = request.name_addr("To").uri.aor
        except SipError:
            return target
        for binding in await self.router.store.lookup(aor):
            if binding.contact == request.uri:
                return Target(request.uri, of_binding(binding), aor=aor)
        return target

    def _flow_alive(self, ref: FlowRef) -> bool:
        if ref.node in ("", self.identity.node):
            return self.delivery.has_flow(ref.flow)
        return ref.node in self.nodes()

    def _next_hop_target(self, request: Request) -> Target | None:
        """Loose routing past us: the next Route, else the Request-URI (RFC 3261 16.6 steps 6-7)."""
        routes = relay.routes(request)
        try:
            address = routes[0].uri if routes else parse_uri(request.uri)
        except URIError:
            return None
        if address.scheme == "tel" or self.identity.is_us(address):
            return None
        return Target(request.uri, address=address)

    def _relay_stateless(self, request: Request, source: Source) -> None:
        """An ACK for a 2xx (end to end, its own transaction): forwarded along the route set, no state."""
        try:
            if relay.max_forwards(request) == 0:
                return
            target, popped = self._take_our_routes(request)
            if target is None and popped:
                target = self._next_hop_target(request)
        except SipError:
            return
        if target is None:
            return  # not ours to route: dropped, as Kamailio's default script does
        start_eagerly(self._send_stateless(request, target))

    async def _send_stateless(self, request: Request, target: Target) -> None:
        try:
            destination, hop_route = await self._destination(target)
        except SendError as error:
            self.log_unsent("sipreg: %s not relayed: %s", request.method, error)
            return
        if destination is None:
            return
        via = self._via(destination, relay.new_branch(relay.loop_hash(request)))
        copy = relay.forwarded(request, uri=target.uri, via=via, route=hop_route)
        try:
            self.delivery.send(destination, copy.to_bytes())
        except SendError as error:
            self.log_unsent("sipreg: %s not relayed: %s", request.method, error)

    def _cancel(self, request: Request, reply: Callable[[bytes], None], key: TransactionKey) -> None:
        invite_key = (*key[:-1], "INVITE")
        server = self.servers.get(invite_key)
        if server is None and invite_key not in self._answered:
            reply(server_response(request, 481, "Call/Transaction Does Not Exist").to_bytes())
            return
        reply(server_response(request, 200, "OK").to_bytes())
        if server is not None:
            server.cancel()  # (a CANCEL after the final answer has no effect, RFC 3261 9.2)

    # -- forking -------------------------------------------------------------------------------
    async def _fork(self, server: ServerTransaction, groups: list[list[Target]], *, record_route: bool) -> None:
        server.groups = list(groups)
        server.record_route = record_route
        await self._next_group(server)

    async def _next_group(self, server: ServerTransaction) -> None:
        while server.groups and not server.cancelled and not server.answered:
            group = server.groups.pop(0)
            started = 0
            for target in group:
                if await self._start_branch(server, target):
                    started += 1
            if started:
                return
        server.all_branches_done()

    async def _start_branch(self, server: ServerTransaction, target: Target) -> bool:
        try:
            destination, hop_route = await self._destination(target)
        except SendError as error:
            server.finals.append(server_response(server.request, 503, "Service Unavailable"))
            self.log_unsent("sipreg: cannot reach %s: %s", target.uri, error)
            return False
        if destination is None:
            return False
        request = server.request
        branch_id = relay.new_branch(server.loop_hash)
        record_routes = self._record_routes(server, target, destination) if server.record_route else ()
        copy = relay.forwarded(
            request, uri=target.uri, via=self._via(destination, branch_id), record_routes=record_routes, route=hop_route
        )
        branch = Branch(self, server, branch_id, copy, destination)
        if not branch.start():
            server.finals.append(server_response(request, 503, "Service Unavailable"))  # as RFC 3261 16.9 says
            return False
        server.branches.append(branch)
        self.clients[(branch_id, request.method)] = branch
        if request.method == "INVITE" and server.last_response is None:
            # Only now: a request refused before any branch gets its one answer and nothing else.
            server.respond(server_response(request, 100, "Trying"))
        return True

    async def _destination(self, target: Target) -> tuple[Destination | None, str | None]:
        """Where to send for a target, and the hop Route to push when it is another node's flow."""
        ref = target.ref
        if ref is None:
            assert target.address is not None
            return await self._resolve(target.address), None
        if ref.node in ("", self.identity.node):
            if ref.stream and not self.delivery.has_flow(ref.flow):
                self._on_unreachable(target, "closed")
                return None, None
            return Destination(ref.transport, ref.host, ref.port, ref.flow or None), None
        node = self.nodes().get(ref.node)
        if node is None:
            return self._node_gone(target, ref), None
        try:
            flow = await self.delivery.connect("tcp", node["address"], int(node["sipPort"]))
        except SendError:
            # Killed, not yet gone from etcd (its lease lasts 10 s): as good as gone.
            return self._node_gone(target, ref), None
        hop = self.signer.token(HOP, (ref,))
        return (
            Destination("tcp", node["address"], int(node["sipPort"]), flow),
            f"<sip:{hop}@{node['address']}:{node['sipPort']};transport=tcp;lr>",
        )

    def _node_gone(self, target: Target, ref: FlowRef) -> Destination | None:
        """A dead node's UA: its TCP/TLS flow died with it (skipped, reported); a datagram needs no flow."""
        if not ref.stream:
            return Destination("udp", ref.host, ref.port)
        self._on_unreachable(target, "node_gone")
        return None

    async def _resolve(self, address: URI) -> Destination:
        transport = address.transport or ("tls" if address.scheme == "sips" else "udp")
        if transport not in DEFAULT_PORTS:
            raise SendError(f"unsupported transport {transport}")
        port = address.port or DEFAULT_PORTS[transport]
        resolved = host = unbracketed(address.host)
        if not _is_ip_address(host):
            # A and AAAA only: no NAPTR/SRV (RFC 3263) yet; a gateway is best named by address or host:port.
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            except OSError as error:
                raise SendError(f"cannot resolve {host}: {error}") from None
            resolved = infos[0][4][0]
        if transport == "udp":
            return Destination("udp", resolved, port)
        return Destination(transport, resolved, port, await self.delivery.connect(transport, resolved, port))

    def _via(self, destination: Destination, branch: str) -> str:
        transport = destination.transport
        return f"SIP/2.0/{transport.upper()} {self.identity.public_host}:{self.identity.port(transport)};branch={branch};rport"

    def _record_routes(self, server: ServerTransaction, target: Target, destination: Destination) -> list[str]:
        """Our Record-Route for one branch: one entry, or two when the two legs' transports differ (RFC 5658)."""
        source = server.source
        caller = FlowRef(self.identity.node, source.transport, source.host, source.port, source.flow or "")
        token = self.signer.token(DIALOG, (caller, target.ref))
        ftag = server.request.name_addr("From").tag or ""
        callee_transport = target.ref.transport if target.ref is not None else destination.transport
        transports = [callee_transport] if callee_transport == source.transport else [callee_transport, source.transport]
        host = self.identity.public_host
        return [
            f"<sip:{token}@{host}:{self.identity.port(transport)};transport={transport};lr;ftag={ftag}>"
            for transport in transports
        ]

    # -- responses -----------------------------------------------------------------------------
    def receive_response(self, response: Response) -> None:
        try:
            via = response.top_via
            _, method = response.cseq
        except (SipError, ValueError):
            return  # nothing to match it with: dropped (RFC 3261 18.1.2)
        if not (via.branch or "").startswith(relay.BRANCH_MARK):
            return  # not sent by us
        self._expire()
        key = (via.branch or "", method)
        branch = self.clients.get(key)
        if branch is not None:
            branch.receive(response)
            return
        finished = self._finished_branches.get(key)
        if finished is None:
            return
        ack = finished[1]
        try:
            if response.status >= 300 and ack is not None:
                self.delivery.send(Destination(*finished[2:6]), ack)  # the callee missed our ACK: once more
            elif 200 <= response.status < 300 and method == "INVITE":
                # The callee repeats its 200 until the caller's ACK reaches it: each one goes up.
                self.delivery.send(Destination(*finished[6:10]), relay.without_top_via(response).to_bytes())
        except SendError:
            pass  # the peer's own timers take it from here

    def forget(self, server: ServerTransaction) -> None:
        """A transaction is gone without a trace (answered statelessly, or over)."""
        if self.servers.get(server.key) is server:
            del self.servers[server.key]
        if server.merge_key is not None and self._merge_keys.get(server.merge_key) == server.key:
            del self._merge_keys[server.merge_key]

    def complete(self, server: ServerTransaction) -> None:
        """A transaction is over: keep only what its retransmissions need, as plain tuples."""
        self.forget(server)
        expires_at = time.monotonic() + TIMEOUT
        if server.last_response is not None and not server.reliable:
            self._answered[server.key] = (expires_at, server.last_response, server.final_status)
        source = server.source
        upstream = (source.transport, source.host, source.port, source.flow)
        for branch in server.branches:
            branch.stop_timers()
            self.clients.pop((branch.id, branch.method), None)
            if branch.cancel_branch is not None:
                branch.cancel_branch.stop_timers()
                self.clients.pop((branch.id, "CANCEL"), None)
                branch.cancel_branch = None
            self._finished_branches[(branch.id, branch.method)] = (
                expires_at, branch.ack_data, *branch.destination, *upstream)
            branch.server = None  # no cycle left for the collector: reference counts free it all
        server.branches = []
        server.groups = []
        server.finals = []
        self._expire()

    def _expire(self) -> None:
        now = time.monotonic()
        retained = RETAINED_PER_LIVE * self._max_transactions()
        for table in (self._answered, self._finished_branches):
            while table:
                entry = next(iter(table.values()))
                if entry[0] > now and len(table) <= retained:
                    break
                table.popitem(last=False)


class ServerTransaction:
    """A request we proxy: its answers upstream, its branches downstream (RFC 3261 16.7)."""

    def __init__(self, proxy: Proxy, key: TransactionKey, request: Request, source: Source,
                 reply: Callable[[bytes], None], loop_hash: str):
        self.proxy = proxy
        self.key = key
        self.request = request
        self.source = source
        self.reply = reply
        self.loop_hash = loop_hash
        self.domain = ""
        self.merge_key: tuple[str, str, int, str] | None = None
        self.branches: list[Branch] = []
        self.groups: list[list[Target]] = []
        self.record_route = False
        self.finals: list[Response] = []
        self.last_response: bytes | None = None
        self.final_status = 0
        self.cancelled = False
        self.reliable = source.transport != "udp"
        self._completed = False
        self._retransmit: asyncio.TimerHandle | None = None  # Timer G
        self._give_up: asyncio.TimerHandle | None = None  # Timer H
        self._interval = T1
        # A safety net only: branch timers (B, C, F) end every branch long before.
        self._safety: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(SAFETY_NET, self._expired)

    @property
    def answered(self) -> bool:
        return self.final_status >= 200

    def respond(self, response: Response) -> None:
        """Send an answer upstream; after the final one, the transaction ends when its branches have.

        A final answer made up before any branch went out (a refusal: 404, 403, 407,
        480...) is sent statelessly, as Kamailio's sl_send_reply does: once, with no
        Timer G and nothing kept, so a stranger's request gets one packet back and
        leaves no memory behind. A retransmission is refused again; the ACK, matching
        no transaction, is dropped.
        """
        if self._completed or (self.answered and not (200 <= response.status < 300)):
            return  # one final answer, no provisional after it; only further 2xx may follow (RFC 6026)
        data = response.to_bytes()
        self.reply(data)
        if response.status >= 200 and not self.branches and not self.answered:
            self.final_status = response.status
            self.proxy._on_final(self.request, self.domain, response.status)
            self._end()
            self.proxy.forget(self)
            return
        self.last_response = data
        if response.status < 200 or self.answered:
            return
        self.final_status = response.status
        self.proxy._on_final(self.request, self.domain, response.status)
        if self.request.method == "INVITE" and response.status >= 300 and not self.reliable:
            # Timer G until the caller's ACK, Timer H at the latest.
            loop = asyncio.get_running_loop()
            self._retransmit = loop.call_later(self._interval, self._resend_final)
            self._give_up = loop.call_later(TIMEOUT, self.acknowledged)
        self.maybe_complete()

    def _resend_final(self) -> None:
        if self.last_response is not None and self._retransmit is not None:
            self.reply(self.last_response)
            self._interval = min(self._interval * 2, T2)
            self._retransmit = asyncio.get_running_loop().call_later(self._interval, self._resend_final)

    def retransmitted(self) -> None:
        """The request came again (UDP): answer with the latest response, if any (RFC 3261 17.2.1)."""
        if self.last_response is not None:
            self.reply(self.last_response)

    def acknowledged(self) -> None:
        """The caller's ACK for our non-2xx final (or Timer H): no more retransmitting it."""
        for timer in (self._retransmit, self._give_up):
            if timer is not None:
                timer.cancel()
        self._retransmit = self._give_up = None
        self.maybe_complete()

    def maybe_complete(self) -> None:
        if self._completed or not self.answered or self._retransmit is not None:
            return
        if all(branch.done for branch in self.branches):
            self._end()
            self.proxy.complete(self)

    def _end(self) -> None:
        self._completed = True
        if self._safety is not None:
            self._safety.cancel()
            self._safety = None

    def cancel(self) -> None:
        if self.answered or self.cancelled:
            return
        self.cancelled = True
        self.groups.clear()
        for branch in self.branches:
            branch.cancel()
        if not self.branches:
            self.respond(server_response(self.request, 487, "Request Terminated"))
        elif all(branch.done for branch in self.branches):
            self.all_branches_done()

    def branch_answered(self, branch: Branch, response: Response) -> None:
        status = response.status
        if status < 200:
            if status > 100:
                self.respond(relay.without_top_via(response))
            return
        if status < 300:
            self.respond(relay.without_top_via(response))
            for other in self.branches:
                if other is not branch:
                    other.cancel(relay.COMPLETED_ELSEWHERE)
            self.maybe_complete()
            return
        self.finals.append(relay.without_top_via(response))
        if status >= 600:
            self.groups.clear()
            for other in self.branches:
                if other is not branch:
                    other.cancel()
        if all(other.done for other in self.branches):
            start_eagerly(self.proxy._next_group(self))
        self.maybe_complete()

    def all_branches_done(self) -> None:
        """No branch left and no group to try: the best answer goes upstream (RFC 3261 16.7 step 6)."""
        if self.answered:
            self.maybe_complete()
            return
        if self.cancelled:
            self.respond(server_response(self.request, 487, "Request Terminated"))
        elif self.finals:
            self.respond(relay.best_response(self.finals))
        else:
            self.respond(server_response(self.request, 480, "Temporarily Unavailable: No Reachable Contact"))

    def _expired(self) -> None:
        self._safety = None
        if not self.answered:
            self.respond(server_response(self.request, 408, "Request Timeout"))
        for branch in self.branches:
            if not branch.done:
                branch.final = server_response(branch.request, 408, "Request Timeout")
        self.acknowledged()


class Branch:
    """One copy of a request sent downstream: a client transaction (RFC 3261 17.1) plus CANCEL state."""

    def __init__(self, proxy: Proxy, server: ServerTransaction | None, branch_id: str, request: Request, destination: Destination):
        self.proxy = proxy
        self.server = server
        self.id = branch_id
        self.request = request
        self.destination = destination
        self.data = request.to_bytes()
        self.reliable = destination.transport != "udp"
        self.method = request.method
        self.invite = request.method == "INVITE"
        self.ack_data: bytes | None = None  # our ACK for its non-2xx final, kept to repeat it
        self.provisional = False
        self.final: Response | None = None
        self.cancel_pending = False
        self.cancel_reason: str | None = None  # the Reason (RFC 3326) its CANCEL will carry
        self.cancel_branch: Branch | None = None
        self._interval = T1
        self._retransmit: asyncio.TimerHandle | None = None
        self._timeout: asyncio.TimerHandle | None = None

    @property
    def done(self) -> bool:
        return self.final is not None

    def start(self) -> bool:
        """Send the request and arm the timers; False when it could not even be sent."""
        if not self._send(self.data):
            return False
        loop = asyncio.get_running_loop()
        if not self.reliable:
            self._retransmit = loop.call_later(self._interval, self._resend)
        self._timeout = loop.call_later(TIMEOUT, self._timed_out)
        return True

    def _send(self, data: bytes) -> bool:
        try:
            self.proxy.delivery.send(self.destination, data)
        except SendError as error:
            self.proxy.log_unsent("sipreg: %s to %s failed: %s", self.request.method, self.destination, error)
            return False
        return True

    def _resend(self) -> None:
        if self.final is not None:
            return
        if not self._send(self.data):
            self._finish(server_response(self.request, 503, "Service Unavailable"))
            return
        self._interval = self._interval * 2 if self.invite else min(self._interval * 2, T2)
        self._retransmit = asyncio.get_running_loop().call_later(self._interval, self._resend)

    def _timed_out(self) -> None:
        if self.final is not None:
            return
        if self.invite and self.provisional and self.cancel_branch is None:
            # Timer C: it rang too long. CANCEL it; its 487 (or Timer B) ends it.
            self.cancel()
            self._timeout = asyncio.get_running_loop().call_later(TIMEOUT, self._timed_out)
            return
        self._finish(server_response(self.request, 408, "Request Timeout"))

    def receive(self, response: Response) -> None:
        status = response.status
        if status < 200:
            if self.final is not None:
                return
            if not self.invite:
                self._interval = T2  # Timer E goes on, at T2, until the final (RFC 3261 17.1.2.2)
            elif self._retransmit is not None:
                self._retransmit.cancel()  # Timer A stops: the INVITE arrived
                self._retransmit = None
            if self.invite:
                self.provisional = True
                if self._timeout is not None:
                    self._timeout.cancel()
                self._timeout = asyncio.get_running_loop().call_later(TIMER_C, self._timed_out)
                if self.cancel_pending:
                    self.cancel(self.cancel_reason)
            if self.server is not None:
                self.server.branch_answered(self, response)
            return
        if self.invite and status >= 300:
            # Our hop-by-hop ACK, for the first final and for each retransmission of it.
            if self.ack_data is None:
                self.ack_data = relay.ack_for(self.request, response).to_bytes()
            self._send(self.ack_data)
        if status < 300 and self.invite and self.final is not None:
            # A retransmitted or forked 2xx: passed upstream as it comes (the ACK is end to end).
            if self.server is not None:
                self.server.respond(relay.without_top_via(response))
            return
        if self.final is not None:
            return
        self._finish(response)

    def _finish(self, response: Response) -> None:
        self.final = response
        self.stop_timers()
        if self.server is not None:
            # Answers made up here (408, 503) copy the branch's Vias, ours on top, like real ones.
            self.server.branch_answered(self, response)

    def cancel(self, reason: str | None = None) -> None:
        """CANCEL this branch: now when it has rung, else as soon as it does (RFC 3261 9.1); `reason`: its Reason."""
        if not self.invite or self.final is not None or self.cancel_branch is not None:
            return
        if not self.provisional:
            self.cancel_pending = True
            self.cancel_reason = reason
            return
        cancel = relay.cancel_for(self.request, reason)
        branch = Branch(self.proxy, None, self.id, cancel, self.destination)
        self.cancel_branch = branch
        self.proxy.clients[(self.id, "CANCEL")] = branch
        branch.start()

    def stop_timers(self) -> None:
        for timer in (self._retransmit, self._timeout):
            if timer is not None:
                timer.cancel()
        self._retransmit = self._timeout = None


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
