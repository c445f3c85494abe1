"""The proxy's logic (RFC 3261 section 16), sans I/O: requests, responses and the time in; actions out.

One `ResponseContext` per request forwarded, over its server transaction; one
`Branch` per copy sent, over its client transaction. `ProxyCore` decides:
checks (16.3), Route processing (16.4), forking by q-value groups (16.5-16.6),
the best answer (16.7), CANCEL (16.10), Timer C, loops and merged requests, and
the in-dialog routing below. Everything of RFC 3261 section 17 (retransmissions,
Timers A to M, absorbing what comes twice, the ACK of a failure) is the
transaction layer's (registrar.sip.transaction); the message edits are
registrar.sip.proxy's. What needs the world comes out as actions: `Send`
(bytes to a destination), `FindTargets` (ask the location service, which also
decides a 404, 480 or 407: registrar.routing), `Reach` (how to get to a target:
a flow, another node, DNS and a connection) and `Answered` (for the metrics).
registrar.proxy_driver carries them out on the event loop and hands the results
back (`targets_found`, `reached`, `unsendable`, `tick`).

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

from collections.abc import Callable, Collection
from typing import NamedTuple

from registrar.flows import DIALOG, HOP, FlowRef, RouteToken, TokenSigner
from registrar.routing import Target
from registrar.sip import proxy as relay
from registrar.sip.headers import Via
from registrar.sip.message import (
    Request,
    Response,
    SipError,
    check_extensions,
    error_response,
    server_response,
    transaction_tag,
)
from registrar.sip.source import DEFAULT_PORTS, Destination, Source
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

TIMER_C = 180.0  # an INVITE branch may ring this long after its last provisional (RFC 3261 16.6 step 11)
# A request still open this long is given up, whatever it waits on (a name that never resolves),
# by a sweep at most this often.
SAFETY_NET = 900.0
SWEEP_INTERVAL = 60.0
# Methods that create a dialog: the proxy stays in its path (Record-Route).
DIALOG_METHODS = frozenset(["INVITE", "SUBSCRIBE", "REFER"])
# Live transactions beyond which requests are shed (a SipDomain's security.maxTransactions).
MAX_TRANSACTIONS = 5000
# RFC 5626 section 11: a flow named by a token is gone; the UA's other flows are tried on it.
FLOW_FAILED = 430
# What a shed request is told: come back after this long (RFC 3261 21.5.4).
SHED_RETRY_AFTER = 5


# -- what the core asks of its driver ---------------------------------------------------------


class FindTargets(NamedTuple):
    """Ask where `context`'s request goes (registrar.routing's Router.route), or, given `recorded`
    (the flow a dialog recorded), whether it is still open, else the UA's binding now.
    Answer with `ProxyCore.targets_found`."""

    context: ResponseContext
    recorded: Target | None = None


class Reach(NamedTuple):
    """Find how to get to `target`: a flow of ours, another node (with a hop Route), DNS and a connection.
    Answer with `ProxyCore.reached`. With no context: the stateless relay of `request` (an ACK for a 2xx)."""

    context: ResponseContext | None
    target: Target
    request: Request | None = None


class Answered(NamedTuple):
    """A request got its final answer (the metrics count it under `domain`)."""

    request: Request
    domain: str
    status: int


Action = Send | FindTargets | Reach | Answered


class Identity:
    """How this node names itself on the wire, and what names it in a Route or Via."""

    def __init__(self, node: str, public_host: str, public_ports: dict[str, int], listen_ports: dict[str, int],
                 addresses: set[str], domains: Callable[[], Collection[str]] = tuple):
        self.node = node
        self.public_host = public_host  # in Via and Record-Route: the address UAs reach us at
        self.ports = public_ports  # per transport, in Via and Record-Route
        # What names us, per transport: a port of another transport on our host is somebody else's
        # (a gateway on UDP 5066 is not our WebSocket listener on TCP 5066).
        self._port_numbers = {
            transport: frozenset(port for port in (public_ports.get(transport), listen_ports.get(transport)) if port)
            for transport in {*public_ports, *listen_ports}
        }
        self._addresses = frozenset({public_host, *addresses})  # listen, node and public addresses
        self._domains = domains  # a UA whose outbound proxy is the domain names us by it

    def port(self, transport: str) -> int:
        return self.ports.get(transport) or self.ports["tcp"]

    def _names_us(self, host: str) -> bool:
        host = unbracketed(host)
        return host in self._addresses or host in self._domains()

    def _listens(self, transports: tuple[str, ...], port: int) -> bool:
        return any(port in self._port_numbers.get(transport, ()) for transport in transports)

    def sent_by(self, via: Via) -> bool:
        transport = via.transport.lower()
        port = via.port or DEFAULT_PORTS.get(transport, 5060)
        return self._listens((transport,), port) and self._names_us(via.host)

    def is_us(self, uri: URI) -> bool:
        if uri.transport:
            transports: tuple[str, ...] = (uri.transport,)
        else:
            # No transport named: UDP or TCP (RFC 3263 4.1), TLS for a sips URI.
            transports = ("tls",) if uri.scheme == "sips" else ("udp", "tcp")
        return (uri.port is None or self._listens(transports, uri.port)) and self._names_us(uri.host)


class ProxyCore:
    """The proxy's decisions over the transaction layer: every entry point returns the actions it takes."""

    def __init__(
        self,
        identity: Identity,
        signer: TokenSigner,
        transactions: TransactionLayer,
        *,
        domain_of: Callable[[Request], str] = lambda request: "",
        max_transactions: Callable[[], int] = lambda: MAX_TRANSACTIONS,
    ):
        self.identity = identity
        self.signer = signer
        self.transactions = transactions
        self._domain_of = domain_of  # the served domain a new request concerns, for the metrics
        self._max_transactions = max_transactions
        # Requests without a To tag that we are forwarding, to find the same one by another path.
        self._merge_keys: dict[tuple[str, str, int, str], TransactionKey] = {}
        self._next_sweep = float("-inf")

    # -- in ---------------------------------------------------------------------------------------
    def receive_request(self, request: Request, source: Source, key: TransactionKey, now: float) -> list[Action]:
        if now >= self._next_sweep:
            return self._sweep(now) + self.receive_request(request, source, key, now)
        method = request.method
        if method == "CANCEL":
            return self._cancel(request, source, key, now)
        effects = self.transactions.receive_request(key, method, now)
        if effects is not None:
            return self._effects(effects, now)  # a retransmission, or the ACK of our own failure: the layer's
        if method == "ACK":
            return self._relay_ack(request)  # an ACK for a 2xx: end to end, a transaction of its own
        try:
            # To, From and CSeq go into the hash: a malformed one is answered here, before any state.
            hash_of_request = relay.loop_hash(request)
        except SipError as error:
            return [Send(source.reply_to, error_response(request, error).to_bytes())]
        if len(self.transactions.servers) >= self._max_transactions():
            # Full: shed before any state, one answer for one request.
            shed = server_response(request, 503, "Service Unavailable: Overloaded",
                                   [("Retry-After", str(SHED_RETRY_AFTER))])
            return [Send(source.reply_to, shed.to_bytes())]
        transaction = self.transactions.begin_server(key, method, source.reply_to)
        context = ResponseContext(transaction, request, source, hash_of_request, now)
        transaction.owner = context
        if method == "INVITE":
            context.domain = self._domain_of(request)  # its answer is counted by it, refusals too
        try:
            self._check(context)
            return self._route(context, now)
        except SipError as error:
            return self._respond(context, error_response(request, error), now)

    def receive_response(self, response: Response, now: float) -> list[Action]:
        try:
            via = response.top_via
            _, method = response.cseq
        except (SipError, ValueError):
            return []  # nothing to match it with: dropped (RFC 3261 18.1.2)
        if not (via.branch or "").startswith(relay.BRANCH_MARK):
            return []  # not sent by us
        effects = self.transactions.receive_response((via.branch or "", method), response, now)
        return self._effects(effects, now) if effects is not None else []

    def targets_found(self, context: ResponseContext, result: list[list[Target]] | SipError, now: float) -> list[Action]:
        """What `FindTargets` found: the target set's groups, or the answer instead (404, 480, 302, 407...)."""
        if context.over:
            return []
        if isinstance(result, SipError):
            return self._respond(context, error_response(context.request, result), now)
        context.groups = list(result)
        return self._next_group(context, now)

    def reached(self, reach: Reach, destination: Destination | None, hop_route: str | None, now: float, *,
                failed: bool = False) -> list[Action]:
        """What `Reach` found: where to send (and the hop Route to push), None to skip the target,
        or `failed` (a name that does not resolve, a refused connection: it counts as a 503)."""
        context = reach.context
        if context is None:
            return self._relayed(reach, destination, hop_route)
        if context.over:
            return []
        context.reaching -= 1
        if destination is None and not failed:
            fell_over = self._next_flow(context, reach.target)  # this flow is gone
            if fell_over:
                return fell_over
        actions: list[Action] = []
        if failed:
            context.finals.append(server_response(context.request, 503, "Service Unavailable"))
        elif destination is not None and not context.cancelled and not context.answered:
            actions += self._start_branch(context, reach.target, destination, hop_route, now)
        if context.reaching == 0 and all(branch.done for branch in context.branches):
            actions += self._next_group(context, now)
        return actions

    def unsendable(self, transaction: Transaction, now: float) -> list[Action]:
        """A `Send` of `transaction`'s could not be handed to the network."""
        return self._effects(self.transactions.unsendable(transaction, now), now)

    def tick(self, now: float) -> list[Action]:
        """The transaction timers due by `now` fire."""
        swept = self._sweep(now) if now >= self._next_sweep else []
        return swept + self._effects(self.transactions.advance(now), now)

    def next_deadline(self) -> float | None:
        return self.transactions.next_deadline()

    # -- a new request ------------------------------------------------------------------------------
    def _check(self, context: ResponseContext) -> None:
        """Validation before routing (RFC 3261 16.3): hops, loops, merged requests."""
        request = context.request
        hops = relay.max_forwards(request)
        if hops == 0:
            raise SipError(483, "Too Many Hops")
        ours = relay.our_vias(request, self.identity.sent_by)
        if relay.has_looped(ours, context.loop_hash):
            raise SipError(482, "Loop Detected")
        check_extensions(request, "Proxy-Require")  # step 5: before routing, so before any 407
        if not ours and request.name_addr("To").tag is None:
            # The same request reaching us twice by different paths (RFC 3261 8.2.2.2).
            number, method = request.cseq
            merge_key = (request.name_addr("From").tag or "", request.call_id, number, method)
            other = self.transactions.servers.get(self._merge_keys.get(merge_key, ()))
            if other is not None and other.owner is not None and not other.owner.answered:
                raise SipError(482, "Loop Detected: Merged Request")
            self._merge_keys[merge_key] = context.transaction.key
            context.merge_key = merge_key

    def _route(self, context: ResponseContext, now: float) -> list[Action]:
        """Where it goes: the party our Route names, the next hop, or the location service (16.4, 16.5)."""
        request = context.request
        target, popped, kind = self._take_our_routes(request)
        if target is not None:
            # A flow named by a token of ours: when it is gone, the answer is 430 (RFC 5626 5.3).
            context.by_flow = True
            if kind == HOP:
                # Another node picked this flow and holds the UA's others: no second guess here.
                context.groups = [[target]]
                return self._next_group(context, now)
            return [FindTargets(context, recorded=target)]
        if request.name_addr("To").tag is not None:
            # In a dialog we are not part of (no Route of ours): not ours to relay.
            target = self._next_hop_target(request) if popped else None
            if target is None:
                raise SipError(404, "Not Here: No Route For In-Dialog Request")
            context.groups = [[target]]
            return self._next_group(context, now)
        if request.get("Route") is not None:
            raise SipError(403, "Relaying Denied: Preloaded Route")
        context.record_route = request.method in DIALOG_METHODS
        return [FindTargets(context)]

    def _relay_ack(self, request: Request) -> list[Action]:
        """An ACK for a 2xx (end to end, its own transaction): forwarded along the route set, no state."""
        try:
            if relay.max_forwards(request) == 0 or request.name_addr("To").tag == transaction_tag(request):
                return []  # (or the ACK of a failure we answered statelessly: its To tag is ours)
            target, popped, _ = self._take_our_routes(request)
            if target is None and popped:
                target = self._next_hop_target(request)
        except SipError:
            return []
        if target is None:
            return []  # not ours to route: dropped, as Kamailio's default script does
        return [Reach(None, target, request)]

    def _relayed(self, reach: Reach, destination: Destination | None, hop_route: str | None) -> list[Action]:
        request = reach.request
        if destination is None or request is None:
            return []
        via = self._via(destination, relay.new_branch(relay.loop_hash(request)))
        copy = relay.forwarded(request, uri=reach.target.uri, via=via, routes=(hop_route,) if hop_route else ())
        return [Send(destination, copy.to_bytes())]

    def _cancel(self, request: Request, source: Source, key: TransactionKey, now: float) -> list[Action]:
        """CANCEL is answered hop by hop, statelessly: 200 when its INVITE is ours, 481 otherwise (RFC 3261 16.10)."""
        invite_key = (*key[:-1], "INVITE")
        if self.transactions.state_of(invite_key, now) is None:
            return [Send(source.reply_to, server_response(request, 481, "Call/Transaction Does Not Exist").to_bytes())]
        actions: list[Action] = [Send(source.reply_to, server_response(request, 200, "OK").to_bytes())]
        transaction = self.transactions.servers.get(invite_key)
        if transaction is not None and transaction.owner is not None:
            actions += self._cancel_context(transaction.owner, now)  # (none after the final answer, RFC 3261 9.2)
        return actions

    # -- forking ----------------------------------------------------------------------------------
    def _next_group(self, context: ResponseContext, now: float) -> list[Action]:
        """The next group of targets, all at once; when there is none, the best answer."""
        while context.groups and not context.cancelled and not context.answered:
            group = context.groups.pop(0)
            if group:
                context.reaching = len(group)
                return [Reach(context, target) for target in group]
        return self._all_branches_done(context, now)

    def _start_branch(self, context: ResponseContext, target: Target, destination: Destination,
                      hop_route: str | None, now: float) -> list[Action]:
        request = context.request
        branch_id = relay.new_branch(context.loop_hash)
        record_routes = self._record_routes(context, target, destination) if context.record_route else ()
        copy = relay.forwarded(
            request, uri=target.uri, via=self._via(destination, branch_id), record_routes=record_routes,
            routes=(hop_route, *target.path) if hop_route else target.path,
        )
        branch = Branch(context, copy, target)
        upstream = context.source.reply_to if branch.invite else None  # where its later 2xx go
        branch.transaction, actions = self.transactions.begin_client(
            (branch_id, request.method), copy, destination, branch, now, upstream=upstream)
        context.branches.append(branch)
        if request.method == "INVITE" and context.transaction.sent is None:
            # Only now: a request refused before any branch gets its one answer and nothing else.
            actions += self._respond(context, server_response(request, 100, "Trying"), now)
        return list(actions)

    def _branch_answered(self, context: ResponseContext, branch: Branch, response: Response,
                         now: float) -> list[Action]:
        status = response.status
        if status < 200:
            return self._respond(context, relay.without_top_via(response), now) if status > 100 else []
        actions: list[Action] = []
        if status < 300:
            actions += self._respond(context, relay.without_top_via(response), now)
            for other in context.branches:
                if other is not branch:
                    actions += self._cancel_branch(other, relay.COMPLETED_ELSEWHERE, now)
            self._maybe_complete(context)
            return actions
        final = relay.without_top_via(response)
        if status == FLOW_FAILED:
            fell_over = self._next_flow(context, branch.target)  # the flow failed downstream
            if fell_over:
                return fell_over
            if not context.by_flow:
                # The caller asked for a user, not a flow: to it, the user is unreachable.
                final = server_response(context.request, 480, "Temporarily Unavailable: Flow Failed")
        context.finals.append(final)
        if status >= 600:
            context.groups.clear()
            for other in context.branches:
                if other is not branch:
                    actions += self._cancel_branch(other, None, now)
        if context.reaching == 0 and all(other.done for other in context.branches):
            actions += self._next_group(context, now)
        self._maybe_complete(context)
        return actions

    @staticmethod
    def _next_flow(context: ResponseContext, target: Target | None) -> list[Action]:
        """The UA's next flow when `target`'s has failed (RFC 5626 5.3), to reach in its place; [] when none is left."""
        next_flow = target.next_flow() if target is not None else None
        if next_flow is None or context.cancelled:
            return []
        context.reaching += 1
        return [Reach(context, next_flow)]

    def _all_branches_done(self, context: ResponseContext, now: float) -> list[Action]:
        """No branch left and no group to try: the best answer goes upstream (RFC 3261 16.7 step 6)."""
        if context.answered:
            self._maybe_complete(context)
            return []
        if context.cancelled:
            return self._respond(context, server_response(context.request, 487, "Request Terminated"), now)
        if context.finals:
            return self._respond(context, relay.best_response(context.finals), now)
        if context.by_flow:
            # The flow a token of ours named is gone (RFC 5626 5.3): the node or UA upstream tries another.
            return self._respond(context, server_response(context.request, FLOW_FAILED, "Flow Failed"), now)
        return self._respond(
            context, server_response(context.request, 480, "Temporarily Unavailable: No Reachable Contact"), now)

    def _cancel_context(self, context: ResponseContext, now: float) -> list[Action]:
        if context.answered or context.cancelled:
            return []
        context.cancelled = True
        context.groups.clear()
        actions: list[Action] = []
        for branch in context.branches:
            actions += self._cancel_branch(branch, None, now)
        if not context.branches:
            actions += self._respond(context, server_response(context.request, 487, "Request Terminated"), now)
        elif all(branch.done for branch in context.branches):
            actions += self._all_branches_done(context, now)
        return actions

    # -- upstream ---------------------------------------------------------------------------------
    def _respond(self, context: ResponseContext, response: Response, now: float) -> list[Action]:
        """An answer upstream; after the final one, the context ends when its branches have.

        A final answer made up before any branch went out (a refusal: 404, 403, 407,
        480...) is sent statelessly, as Kamailio's sl_send_reply does: once, with no
        Timer G and nothing kept, so a stranger's request gets one packet back and
        leaves no memory behind. A retransmission is refused again; the ACK, matching
        no transaction, is dropped.
        """
        status = response.status
        if context.over or (context.answered and not 200 <= status < 300):
            return []  # one final answer, no provisional after it; only further 2xx may follow (RFC 6026)
        data = response.to_bytes()
        actions: list[Action] = []
        first_final = status >= 200 and not context.answered
        if first_final:
            context.final_status = status
            actions.append(Answered(context.request, context.domain, status))
            if not context.branches:
                actions.append(Send(context.source.reply_to, data))
                self.transactions.forget(context.transaction)
                self._end(context)
                return actions
        actions += self._effects(self.transactions.respond(context.transaction, status, data, now), now)
        self._maybe_complete(context)
        return actions

    def _maybe_complete(self, context: ResponseContext) -> None:
        if not context.over and context.answered and all(branch.done for branch in context.branches):
            self._end(context)

    def _end(self, context: ResponseContext) -> None:
        """A context is over: what its transactions still do (absorb, repeat, ACK), they do alone."""
        context.over = True
        if context.merge_key is not None and self._merge_keys.get(context.merge_key) == context.transaction.key:
            del self._merge_keys[context.merge_key]
        context.transaction.owner = None
        for branch in context.branches:
            branch.detach()  # no cycle left for the collector: reference counts free it all
        context.branches = []
        context.groups = []
        context.finals = []

    # -- what the transaction layer tells -----------------------------------------------------------
    def _effects(self, effects: list[Effect], now: float) -> list[Action]:
        actions: list[Action] = []
        for effect in effects:
            if isinstance(effect, Send):
                actions.append(effect)
            elif isinstance(effect, PassUp):
                if effect.owner is not None:
                    actions += self._received(effect.owner, effect.response, now)
                elif effect.upstream is not None:
                    # A 2xx after its branch's end: the callee repeats it until the caller's ACK reaches it.
                    actions.append(Send(effect.upstream, relay.without_top_via(effect.response).to_bytes()))
            elif isinstance(effect.owner, Branch):
                actions += self._branch_timed_out(effect.owner, effect.timer, now)
            # (A server transaction's Timer H or transport error: the caller is gone; the branches
            # end by their own timers.)
        return actions

    def _received(self, branch: Branch, response: Response, now: float) -> list[Action]:
        """A response a branch's transaction passes up."""
        context = branch.context
        if branch.final is not None or context is None:
            return []  # (a CANCEL's answer, or a 1xx late)
        if response.status >= 200:
            return self._finish(branch, response, now)
        actions: list[Action] = []
        if branch.invite:
            branch.provisional = True
            self.transactions.set_timer(branch.transaction, "C", now + TIMER_C)  # type: ignore[arg-type]
            if branch.cancel_pending:
                actions += self._cancel_branch(branch, branch.cancel_reason, now)
        return actions + self._branch_answered(context, branch, response, now)

    def _branch_timed_out(self, branch: Branch, timer: str, now: float) -> list[Action]:
        """A branch's transaction gave up (Timer B, F, a transport error), or its Timer C fired."""
        if branch.final is not None or branch.transaction is None:
            return []
        if timer == "C":
            # It rang too long: CANCEL it, and give it Timer B's time to end with the 487.
            actions = self._cancel_branch(branch, None, now) if branch.cancel_branch is None else []
            self.transactions.set_timer(branch.transaction, "after C", now + TIMEOUT)
            return actions
        if timer != "transport":
            status, reason = 408, "Request Timeout"
        elif branch.target is not None and branch.target.ref is not None:
            status, reason = FLOW_FAILED, "Flow Failed"  # a send down a UA's flow failed: it is gone
        else:
            status, reason = 503, "Service Unavailable"
        return self._give_up(branch, server_response(branch.request, status, reason), now)

    def _sweep(self, now: float) -> list[Action]:
        """The safety net: a request open SAFETY_NET after it came is given up, whatever it waits on.

        Branch timers (B, C, F) end every branch long before; what they cannot end
        is a wait of the driver's (a lookup, DNS, a connect) that never comes back.
        Swept from whichever call comes first after SWEEP_INTERVAL, not a timer per
        request: that would cost every call two timers that never fire. With no
        traffic nothing sweeps, and nothing needs the slots a stuck request holds.
        """
        self._next_sweep = now + SWEEP_INTERVAL
        actions: list[Action] = []
        for transaction in list(self.transactions.servers.values()):
            context = transaction.owner
            if isinstance(context, ResponseContext) and not context.over and context.opened_at + SAFETY_NET <= now:
                actions += self._give_up_context(context, now)
        return actions

    def _give_up_context(self, context: ResponseContext, now: float) -> list[Action]:
        """Whatever is still open of `context` is given up: 408 upstream and for each open branch."""
        actions = [] if context.answered else self._respond(
            context, server_response(context.request, 408, "Request Timeout"), now)
        for branch in list(context.branches):
            if not branch.done:
                actions += self._give_up(branch, server_response(branch.request, 408, "Request Timeout"), now)
        if not context.over:
            self._end(context)
        return actions

    def _give_up(self, branch: Branch, response: Response, now: float) -> list[Action]:
        """End a branch with an answer made up here (its Vias, ours on top, like a real one)."""
        if branch.transaction is not None:
            self.transactions.forget(branch.transaction)
        return self._finish(branch, response, now)

    def _finish(self, branch: Branch, response: Response, now: float) -> list[Action]:
        # (Its Timer C went with its transaction: a final answer ends or retires it, and so does giving up.)
        branch.final = response
        return self._branch_answered(branch.context, branch, response, now) if branch.context is not None else []

    def _cancel_branch(self, branch: Branch, reason: str | None, now: float) -> list[Action]:
        """CANCEL a branch: now when it has rung, else as soon as it does (RFC 3261 9.1); `reason`: its Reason."""
        transaction = branch.transaction
        if not branch.invite or branch.final is not None or branch.cancel_branch is not None or transaction is None:
            return []
        if not branch.provisional:
            branch.cancel_pending = True
            branch.cancel_reason = reason
            return []
        cancel = Branch(None, relay.cancel_for(branch.request, reason))  # its answer matters to nobody
        branch.cancel_branch = cancel
        cancel.transaction, actions = self.transactions.begin_client(
            (transaction.key[0], "CANCEL"), cancel.request, transaction.destination, cancel, now)
        return list(actions)

    # -- Route and Record-Route ----------------------------------------------------------------------
    def _take_our_routes(self, request: Request) -> tuple[Target | None, int, str | None]:
        """Route preprocessing (RFC 3261 16.4): our topmost Route entries off the request.

        Returns the target the token among them names (a hop's flow, or the other
        party of a dialog), None when there is no token, how many entries were ours,
        and the token's kind (HOP, DIALOG, None).
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
            return None, popped, None
        if token.kind == HOP:
            return Target(request.uri, token.refs[0]), popped, HOP
        return self._dialog_target(request, token, ftag), popped, DIALOG

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


class ResponseContext:
    """A request we forward (RFC 3261 16.7's response context): its server transaction, its branches, its answers."""

    def __init__(self, transaction: Transaction, request: Request, source: Source, loop_hash: str, opened_at: float):
        self.transaction = transaction
        self.request = request
        self.source = source
        self.loop_hash = loop_hash
        self.opened_at = opened_at
        self.domain = ""
        self.merge_key: tuple[str, str, int, str] | None = None
        self.branches: list[Branch] = []
        self.groups: list[list[Target]] = []  # the target set's groups not yet tried
        self.reaching = 0  # targets of the current group whose `Reach` has not come back
        self.record_route = False
        # Routed by a token of ours to one flow (a hop from another node, a dialog), not by the location service.
        self.by_flow = False
        self.finals: list[Response] = []
        self.final_status = 0
        self.cancelled = False
        self.over = False

    @property
    def answered(self) -> bool:
        return self.final_status >= 200


class Branch:
    """One copy of a request sent downstream: its client transaction, its final answer, its CANCEL."""

    def __init__(self, context: ResponseContext | None, request: Request, target: Target | None = None):
        self.context = context
        self.request = request
        self.target = target  # where it went (its flow's alternatives are tried when it fails)
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

    def detach(self) -> None:
        if self.transaction is not None:
            self.transaction.owner = None
        self.context = None
