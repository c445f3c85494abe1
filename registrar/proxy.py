"""The stateful proxy (RFC 3261 section 16): response contexts and their branches, forking, CANCEL, in-dialog routing.

One `ResponseContext` per request forwarded, over its server transaction; one
`Branch` per copy sent, over its client transaction. The transactions (RFC
3261 section 17: retransmissions, Timers A to M, the ACK of a failure) are
registrar.sip.transaction's; the router (registrar.routing) says where a new
request goes; the message edits are registrar.sip.proxy's; sockets are the
transport's, behind `Delivery`. What this module owns is section 16: forking,
CANCEL, Timer C, the best answer, and in-dialog routing.

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
from collections.abc import Callable, Collection
from typing import Protocol

from registrar.eager import start_eagerly
from registrar.flows import DIALOG, HOP, FlowRef, RouteToken, TokenSigner, of_binding
from registrar.ratelog import RateLimitedLog, exception_summary
from registrar.routing import Router, Target
from registrar.sip import proxy as relay
from registrar.sip.headers import Via
from registrar.sip.message import Request, Response, SipError, error_response, server_response
from registrar.sip.source import Destination, Source
from registrar.sip.transaction import (
    TIMEOUT,
    Effect,
    PassUp,
    Send,
    Transaction,
    TransactionKey,
    TransactionLayer,
)
from registrar.sip.uri import URI, URIError, parse_uri, unbracketed

log = logging.getLogger("sipreg.proxy")

TIMER_C = 180.0  # an INVITE branch may ring this long after its last provisional (RFC 3261 16.6 step 11)
# A request still open this long is given up, whatever it waits on (a name that never resolves).
SAFETY_NET = 900.0
SAFETY_NET_TIMER = "safety net"
# Methods that create a dialog: the proxy stays in its path (Record-Route).
DIALOG_METHODS = frozenset(["INVITE", "SUBSCRIBE", "REFER"])
DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}
# Live transactions beyond which requests are shed (a SipDomain's security.maxTransactions).
MAX_TRANSACTIONS = 5000
# What a shed request is told: come back after this long (RFC 3261 21.5.4).
SHED_RETRY_AFTER = 5


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
    """The proxy's entry points: requests and responses from the transports, and the clock, in; sends, out.

    Every RFC 3261 section 17 matter (retransmissions, absorbing them, Timers A
    to M, the hop-by-hop ACK) is the transaction layer's; this is section 16 on
    top of it: the response contexts, their branches, CANCEL, Timer C. What the
    layer asks for comes back as effects, carried out by `_carry_out`; its
    timers run on `clock`, and `tick` is what the event loop calls when one is due.
    """

    def __init__(
        self,
        router: Router,
        delivery: Delivery,
        identity: Identity,
        signer: TokenSigner,
        transactions: TransactionLayer,
        *,
        clock: Callable[[], float] = time.monotonic,
        nodes: Callable[[], dict[str, dict]] = dict,
        on_final: Callable[[Request, str, int], None] = lambda request, domain, status: None,
        on_unreachable: Callable[[Target, str], None] = lambda target, why: None,
        max_transactions: Callable[[], int] = lambda: MAX_TRANSACTIONS,
    ):
        self.router = router
        self.delivery = delivery
        self.identity = identity
        self.signer = signer
        self.transactions = transactions
        self.clock = clock
        self.nodes = nodes
        self._on_final = on_final
        self._on_unreachable = on_unreachable
        self._max_transactions = max_transactions
        # What requests make us log, at most a line per kind per interval (registrar.ratelog).
        self._log_failure = RateLimitedLog(log, logging.ERROR)
        self.log_unsent = RateLimitedLog(log, logging.INFO)
        # Requests without a To tag that we are forwarding, to find the same one by another path.
        self._merge_keys: dict[tuple[str, str, int, str], TransactionKey] = {}
        # The one event-loop timer, at the layer's next deadline.
        self._wakeup: asyncio.TimerHandle | None = None
        self._wake_at: float | None = None

    # -- requests ------------------------------------------------------------------------------
    def receive_request(self, request: Request, source: Source, key: TransactionKey) -> None:
        now = self.clock()
        method = request.method
        if method == "CANCEL":
            self._cancel(request, source, key, now)
            return
        effects = self.transactions.receive_request(key, method, now)
        if effects is not None:
            self._carry_out(effects, now)  # a retransmission, or the ACK of our own failure: the layer's
            return
        if method == "ACK":
            self._relay_stateless(request, source)  # an ACK for a 2xx: end to end, a transaction of its own
            return
        try:
            # To, From and CSeq go into the hash: a malformed one is answered here, before any state.
            hash_of_request = relay.loop_hash(request)
        except SipError as error:
            self._send(source.reply_to, error_response(request, error).to_bytes())
            return
        if len(self.transactions.servers) >= self._max_transactions():
            # Full: shed before any state, one answer for one request.
            self._send(source.reply_to, server_response(request, 503, "Service Unavailable: Overloaded",
                                                        [("Retry-After", str(SHED_RETRY_AFTER))]).to_bytes())
            return
        transaction = self.transactions.begin_server(key, method, source.reply_to)
        context = ResponseContext(self, transaction, request, source, hash_of_request)
        transaction.owner = context
        # A safety net only: branch timers (B, C, F) end every branch long before.
        self.transactions.set_timer(transaction, SAFETY_NET_TIMER, now + SAFETY_NET)
        if method == "INVITE":
            context.domain = self.router.domain_of(request)  # its answer is counted by it, refusals too
        try:
            self._check(context)
        except SipError as error:
            context.respond(error_response(request, error))
            return
        start_eagerly(self._route(context))

    def _check(self, context: ResponseContext) -> None:
        """Validation before routing (RFC 3261 16.3): hops, loops, merged requests."""
        request = context.request
        hops = relay.max_forwards(request)
        if hops == 0:
            raise SipError(483, "Too Many Hops")
        ours = relay.our_vias(request, self.identity.sent_by)
        if relay.has_looped(ours, context.loop_hash):
            raise SipError(482, "Loop Detected")
        if not ours and request.name_addr("To").tag is None:
            # The same request reaching us twice by different paths (RFC 3261 8.2.2.2).
            number, method = request.cseq
            merge_key = (request.name_addr("From").tag or "", request.call_id, number, method)
            other = self.transactions.servers.get(self._merge_keys.get(merge_key, ()))
            if other is not None and other.owner is not None and not other.owner.answered:
                raise SipError(482, "Loop Detected: Merged Request")
            self._merge_keys[merge_key] = context.transaction.key
            context.merge_key = merge_key

    async def _route(self, context: ResponseContext) -> None:
        request = context.request
        try:
            target, popped = self._take_our_routes(request)
            if target is not None:
                await self._fork(context, [[await self._current(request, target)]], record_route=False)
            elif request.name_addr("To").tag is not None:
                # In a dialog we are not part of (no Route of ours): not ours to relay.
                target = self._next_hop_target(request) if popped else None
                if target is None:
                    raise SipError(404, "Not Here: No Route For In-Dialog Request")
                await self._fork(context, [[target]], record_route=False)
            elif request.get("Route") is not None:
                raise SipError(403, "Relaying Denied: Preloaded Route")
            else:
                target_set = await self.router.route(request, context.source)
                await self._fork(context, target_set.groups, record_route=request.method in DIALOG_METHODS)
        except SipError as error:
            context.respond(error_response(request, error))
        except Exception as error:
            self._log_failure("error routing %s: %s", request.method, exception_summary(error))
            context.respond(server_response(request, 500, "Server Internal Error"))

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

    def _cancel(self, request: Request, source: Source, key: TransactionKey, now: float) -> None:
        """CANCEL is answered hop by hop, statelessly: 200 when its INVITE is ours, 481 otherwise (RFC 3261 16.10)."""
        invite_key = (*key[:-1], "INVITE")
        if self.transactions.state_of(invite_key, now) is None:
            self._send(source.reply_to, server_response(request, 481, "Call/Transaction Does Not Exist").to_bytes())
            return
        self._send(source.reply_to, server_response(request, 200, "OK").to_bytes())
        transaction = self.transactions.servers.get(invite_key)
        if transaction is not None and transaction.owner is not None:
            transaction.owner.cancel()  # (a CANCEL after the final answer has no effect, RFC 3261 9.2)

    # -- forking -------------------------------------------------------------------------------
    async def _fork(self, context: ResponseContext, groups: list[list[Target]], *, record_route: bool) -> None:
        context.groups = list(groups)
        context.record_route = record_route
        await self._next_group(context)

    async def _next_group(self, context: ResponseContext) -> None:
        while context.groups and not context.cancelled and not context.answered:
            group = context.groups.pop(0)
            started = 0
            for target in group:
                if await self._start_branch(context, target):
                    started += 1
            if started:
                return
        context.all_branches_done()

    async def _start_branch(self, context: ResponseContext, target: Target) -> bool:
        request = context.request
        try:
            destination, hop_route = await self._destination(target)
        except SendError as error:
            context.finals.append(server_response(request, 503, "Service Unavailable"))
            self.log_unsent("sipreg: cannot reach %s: %s", target.uri, error)
            return False
        if destination is None or context.transaction.owner is None:
            return False  # (or the request ended while we resolved)
        branch_id = relay.new_branch(context.loop_hash)
        record_routes = self._record_routes(context, target, destination) if context.record_route else ()
        copy = relay.forwarded(
            request, uri=target.uri, via=self._via(destination, branch_id), record_routes=record_routes, route=hop_route
        )
        branch = Branch(context, copy)
        if not self._start_client(branch, (branch_id, request.method), destination, context.source.reply_to):
            context.finals.append(server_response(request, 503, "Service Unavailable"))  # as RFC 3261 16.9 says
            return False
        context.branches.append(branch)
        if request.method == "INVITE" and context.transaction.sent is None:
            # Only now: a request refused before any branch gets its one answer and nothing else.
            context.respond(server_response(request, 100, "Trying"))
        return True

    def _start_client(self, branch: Branch, key: TransactionKey, destination: Destination,
                      upstream: Destination | None) -> bool:
        """A client transaction for `branch`; False when its request could not even be sent."""
        now = self.clock()
        transaction, effects = self.transactions.begin_client(
            key, branch.request, destination, branch, now, upstream=upstream if branch.invite else None)
        [send] = effects
        if not self._send(send.destination, send.data):
            self.transactions.forget(transaction)
            return False
        branch.transaction = transaction
        self._wake()
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

    def _record_routes(self, context: ResponseContext, target: Target, destination: Destination) -> list[str]:
        """Our Record-Route for one branch: one entry, or two when the two legs' transports differ (RFC 5658)."""
        source = context.source
        caller = FlowRef(self.identity.node, source.transport, source.host, source.port, source.flow or "")
        token = self.signer.token(DIALOG, (caller, target.ref))
        ftag = context.request.name_addr("From").tag or ""
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
        now = self.clock()
        effects = self.transactions.receive_response((via.branch or "", method), response, now)
        if effects is not None:
            self._carry_out(effects, now)

    # -- carrying out what the transaction layer asks --------------------------------------------
    def tick(self, now: float) -> None:
        """Fire the transaction timers due by `now` (the event loop calls this; tests call it with their clock)."""
        self._carry_out(self.transactions.advance(now), now)

    def _carry_out(self, effects: list[Effect], now: float) -> None:
        for effect in effects:
            if isinstance(effect, Send):
                if not self._send(effect.destination, effect.data) and effect.transaction is not None:
                    self._carry_out(self.transactions.unsendable(effect.transaction, now), now)
            elif isinstance(effect, PassUp):
                if effect.owner is not None:
                    effect.owner.received(effect.response, now)
                elif effect.upstream is not None:
                    # A 2xx after the branch's end: the callee repeats it until the caller's ACK reaches it.
                    self._send(effect.upstream, relay.without_top_via(effect.response).to_bytes())
            elif effect.owner is not None:
                effect.owner.timed_out(effect.timer, now)
        self._wake()

    def _send(self, destination: Destination, data: bytes) -> bool:
        try:
            self.delivery.send(destination, data)
        except SendError as error:
            self.log_unsent("sipreg: sending to %s failed: %s", destination, error)
            return False
        return True

    def _wake(self) -> None:
        """Have the event loop call `tick` at the transaction layer's next deadline."""
        when = self.transactions.next_deadline()
        if when is None or (self._wake_at is not None and self._wake_at <= when):
            return
        if self._wakeup is not None:
            self._wakeup.cancel()
        self._wake_at = when
        self._wakeup = asyncio.get_running_loop().call_later(max(0.0, when - self.clock()), self._woken)

    def _woken(self) -> None:
        self._wakeup = self._wake_at = None
        self.tick(self.clock())

    def end(self, context: ResponseContext) -> None:
        """A response context is over: what its transactions still do (absorb, repeat, ACK), they do alone."""
        if context.merge_key is not None and self._merge_keys.get(context.merge_key) == context.transaction.key:
            del self._merge_keys[context.merge_key]
        context.transaction.owner = None
        for branch in context.branches:
            branch.detach()
        context.branches = []
        context.groups = []
        context.finals = []


class ResponseContext:
    """A request we proxy (RFC 3261 16.7's response context): its server transaction, its branches, its best answer."""

    def __init__(self, proxy: Proxy, transaction: Transaction, request: Request, source: Source, loop_hash: str):
        self.proxy = proxy
        self.transaction = transaction
        self.request = request
        self.source = source
        self.loop_hash = loop_hash
        self.domain = ""
        self.merge_key: tuple[str, str, int, str] | None = None
        self.branches: list[Branch] = []
        self.groups: list[list[Target]] = []
        self.record_route = False
        self.finals: list[Response] = []
        self.final_status = 0
        self.cancelled = False
        self.over = False

    @property
    def answered(self) -> bool:
        return self.final_status >= 200

    def respond(self, response: Response) -> None:
        """Send an answer upstream; after the final one, the context ends when its branches have.

        A final answer made up before any branch went out (a refusal: 404, 403, 407,
        480...) is sent statelessly, as Kamailio's sl_send_reply does: once, with no
        Timer G and nothing kept, so a stranger's request gets one packet back and
        leaves no memory behind. A retransmission is refused again; the ACK, matching
        no transaction, is dropped.
        """
        status = response.status
        if self.over or (self.answered and not 200 <= status < 300):
            return  # one final answer, no provisional after it; only further 2xx may follow (RFC 6026)
        proxy = self.proxy
        data = response.to_bytes()
        first_final = status >= 200 and not self.answered
        if first_final:
            self.final_status = status
            proxy._on_final(self.request, self.domain, status)
        if first_final and not self.branches:
            proxy._send(self.source.reply_to, data)
            proxy.transactions.forget(self.transaction)
            self._end()
            return
        now = proxy.clock()
        proxy._carry_out(proxy.transactions.respond(self.transaction, status, data, now), now)
        self.maybe_complete()

    def maybe_complete(self) -> None:
        if not self.over and self.answered and all(branch.done for branch in self.branches):
            self._end()

    def _end(self) -> None:
        self.over = True
        self.proxy.end(self)

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

    # -- what the transaction layer tells it ---------------------------------------------------------
    def timed_out(self, timer: str, now: float) -> None:
        """The safety net: whatever is still open is given up."""
        if timer != SAFETY_NET_TIMER:
            return  # Timer H or a transport error upstream: the caller is gone, the branches end by their own timers
        if not self.answered:
            self.respond(server_response(self.request, 408, "Request Timeout"))
        for branch in self.branches:
            if not branch.done:
                branch.give_up(server_response(branch.request, 408, "Request Timeout"), now)
        self._end()


class Branch:
    """One copy of a request sent downstream: its client transaction, Timer C and its CANCEL (RFC 3261 16.6-16.8)."""

    def __init__(self, context: ResponseContext | None, request: Request):
        self.context = context
        self.request = request
        self.invite = request.method == "INVITE"
        self.transaction: Transaction | None = None
        self.provisional = False
        self.final: Response | None = None
        self.cancel_pending = False
        self.cancel_reason: str | None = None  # the Reason (RFC 3326) its CANCEL will carry
        self.cancel_branch: Branch | None = None

    @property
    def done(self) -> bool:
        return self.final is not None

    def received(self, response: Response, now: float) -> None:
        """A response its transaction passes up."""
        context = self.context
        if response.status < 200:
            if self.invite and self.final is None:
                self.provisional = True
                self._set_timer("C", now + TIMER_C)
                if self.cancel_pending:
                    self.cancel(self.cancel_reason)
            if context is not None and self.final is None:
                context.branch_answered(self, response)
            return
        if self.final is not None:
            # A retransmitted or forked 2xx: passed upstream as it comes (the ACK is end to end).
            if context is not None:
                context.respond(relay.without_top_via(response))
            return
        self._finish(response)

    def timed_out(self, timer: str, now: float) -> None:
        """Its transaction gave up (Timer B, F, a transport error), or Timer C fired."""
        if self.final is not None:
            return
        if timer == "C":
            if self.cancel_branch is None:
                # It rang too long: CANCEL it, and give it Timer B's time to end with the 487.
                self.cancel()
            self._set_timer("after C", now + TIMEOUT)
            return
        status, reason = (503, "Service Unavailable") if timer == "transport" else (408, "Request Timeout")
        self.give_up(server_response(self.request, status, reason), now)

    def give_up(self, response: Response, now: float) -> None:
        """End it with an answer made up here (its Vias, ours on top, like a real one)."""
        if self.transaction is not None and self.context is not None:
            self.context.proxy.transactions.forget(self.transaction)
        self._finish(response)

    def _finish(self, response: Response) -> None:
        self.final = response
        if self.transaction is not None and self.context is not None:
            for timer in ("C", "after C"):
                self.context.proxy.transactions.clear_timer(self.transaction, timer)
        if self.context is not None:
            self.context.branch_answered(self, response)

    def _set_timer(self, name: str, when: float) -> None:
        if self.transaction is not None and self.context is not None:
            self.context.proxy.transactions.set_timer(self.transaction, name, when)

    def cancel(self, reason: str | None = None) -> None:
        """CANCEL this branch: now when it has rung, else as soon as it does (RFC 3261 9.1); `reason`: its Reason."""
        if not self.invite or self.final is not None or self.cancel_branch is not None or self.context is None:
            return
        if not self.provisional:
            self.cancel_pending = True
            self.cancel_reason = reason
            return
        assert self.transaction is not None
        cancel = Branch(None, relay.cancel_for(self.request, reason))  # its answer matters to nobody
        self.cancel_branch = cancel
        self.context.proxy._start_client(cancel, (self.transaction.key[0], "CANCEL"), self.transaction.destination, None)

    def detach(self) -> None:
        """Its context is over: no cycle left for the collector, reference counts free it all."""
        if self.transaction is not None:
            self.transaction.owner = None
        self.context = None


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
