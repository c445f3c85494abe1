"""The proxy's asyncio driver: carries out what registrar.proxy's core decides (sends, lookups, DNS, connections, its timer).

Thin on purpose: each action of `ProxyCore` is one call here, and what it
finds goes back to the core (`targets_found`, `reached`, `unsendable`). The
location lookups and DNS are awaited here, never inside a decision; the one
event-loop timer wakes `tick` at the transaction layer's next deadline.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from registrar.eager import start_eagerly
from registrar.flows import HOP, FlowRef
from registrar.proxy import Action, Answered, FindTargets, ProxyCore, Reach
from registrar.ratelog import RateLimitedLog, exception_summary
from registrar.routing import Router, Target, binding_target
from registrar.sip.message import Request, Response, SipError
from registrar.sip.source import DEFAULT_PORTS, WEBSOCKET_TRANSPORTS, Destination, Source
from registrar.sip.transaction import Send, TransactionKey
from registrar.sip.uri import URI, unbracketed
from registrar.store import StoreUnavailable

log = logging.getLogger("sipreg.proxy")


class SendError(Exception):
    """A message could not be handed to the network (closed flow, refused connection)."""


class Delivery(Protocol):
    """What the proxy needs from the transports."""

    def send(self, destination: Destination, data: bytes) -> None:
        """Send now (UDP, or an open flow); raises SendError."""

    async def connect(self, transport: str, host: str, port: int) -> str:
        """An open connection to host:port (reused when there is one): its flow id; raises SendError."""

    def has_flow(self, flow: str) -> bool: ...


class ProxyDriver:
    """The proxy on the event loop: messages from the transports in, the core's actions carried out."""

    def __init__(
        self,
        core: ProxyCore,
        router: Router,
        delivery: Delivery,
        *,
        clock: Callable[[], float] = time.monotonic,
        nodes: Callable[[], dict[str, dict]] = dict,
        on_final: Callable[[Request, str, int], None] = lambda request, domain, status: None,
        on_unreachable: Callable[[Target, str], None] = lambda target, why: None,
    ):
        self.core = core
        self.router = router
        self.delivery = delivery
        self.clock = clock
        self.nodes = nodes  # the other replicas (etcd nodes/): name -> address and SIP port
        self._on_final = on_final
        self._on_unreachable = on_unreachable
        # What requests make us log, at most a line per kind per interval (registrar.ratelog).
        self._log_failure = RateLimitedLog(log, logging.ERROR)
        self.log_unsent = RateLimitedLog(log, logging.INFO)
        # The one event-loop timer, at the transaction layer's next deadline.
        self._wakeup: asyncio.TimerHandle | None = None
        self._wake_at: float | None = None

    # -- in ------------------------------------------------------------------------------------------
    def receive_request(self, request: Request, source: Source, key: TransactionKey) -> None:
        self._carry_out(self.core.receive_request(request, source, key, self.clock()))

    def receive_response(self, response: Response) -> None:
        self._carry_out(self.core.receive_response(response, self.clock()))

    def tick(self, now: float) -> None:
        """Fire the transaction timers due by `now` (the event loop calls this; tests call it with their clock)."""
        self._carry_out(self.core.tick(now))

    # -- out -----------------------------------------------------------------------------------------
    def _carry_out(self, actions: list[Action]) -> None:
        # In order: what a failed send leads to (a 503, the next group) comes after what was already asked.
        queue = deque(actions)
        while queue:
            action = queue.popleft()
            if isinstance(action, Send):
                if not self._send(action.destination, action.data) and action.transaction is not None:
                    queue.extend(self.core.unsendable(action.transaction, self.clock()))
            elif isinstance(action, Answered):
                self._on_final(action.request, action.domain, action.status)
            elif isinstance(action, FindTargets):
                start_eagerly(self._find(action))
            else:
                known = self._known_destination(action.target)
                if known is None:
                    start_eagerly(self._reach(action))
                else:
                    queue.extend(self.core.reached(action, known[0], None, self.clock()))
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
        when = self.core.next_deadline()
        if when is None or (self._wake_at is not None and self._wake_at <= when):
            return
        if self._wakeup is not None:
            self._wakeup.cancel()
        self._wake_at = when
        self._wakeup = asyncio.get_running_loop().call_later(max(0.0, when - self.clock()), self._woken)

    def _woken(self) -> None:
        self._wakeup = self._wake_at = None
        self.tick(self.clock())

    # -- FindTargets ---------------------------------------------------------------------------------
    async def _find(self, action: FindTargets) -> None:
        context = action.context
        request = context.request
        result: list[list[Target]] | SipError
        try:
            if action.recorded is not None:
                result = [[await self._current(request, action.recorded)]]
            else:
                result = (await self.router.route(request, context.source)).groups
        except SipError as error:
            result = error
        except Exception as error:
            self._log_failure("error routing %s: %s", request.method, exception_summary(error))
            result = SipError(500, "Server Internal Error")
        self._carry_out(self.core.targets_found(context, result, self.clock()))

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
        try:
            bindings = await self.router.store.lookup(aor)
        except StoreUnavailable:
            return target  # the recorded flow, closed or not: the best there is while etcd is away
        for binding in bindings:
            if binding.contact == request.uri:
                return binding_target(binding, request.uri)
        return target

    def _flow_alive(self, ref: FlowRef) -> bool:
        if ref.node in ("", self.core.identity.node):
            return self.delivery.has_flow(ref.flow)
        return ref.node in self.nodes()

    # -- Reach ---------------------------------------------------------------------------------------
    async def _reach(self, action: Reach) -> None:
        """A target that takes waiting to reach: DNS, or a connection to another node."""
        try:
            destination, hop_route = await self._destination(action.target)
        except SendError as error:
            self.log_unsent("sipreg: cannot reach %s: %s", action.target.uri, error)
            actions = self.core.reached(action, None, None, self.clock(), failed=True)
        else:
            actions = self.core.reached(action, destination, hop_route, self.clock())
        self._carry_out(actions)

    def _known_destination(self, target: Target) -> tuple[Destination | None] | None:
        """Where to send for a target when that takes no waiting (a flow of ours, a dead node's
        datagram), as a 1-tuple (None in it: skip the target); None when it takes waiting.
        Most calls go to a phone registered here: no coroutine for them."""
        ref = target.ref
        if ref is None:
            return None
        if ref.node in ("", self.core.identity.node):
            if ref.stream and not self.delivery.has_flow(ref.flow):
                self._on_unreachable(target, "closed")
                return (None,)
            return (Destination(ref.transport, ref.host, ref.port, ref.flow or None),)
        if ref.node not in self.nodes():
            return (self._node_gone(target, ref),)
        return None

    async def _destination(self, target: Target) -> tuple[Destination | None, str | None]:
        """Where to send for a target, and the hop Route to push when it is another node's flow."""
        ref = target.ref
        if ref is None:
            assert target.address is not None
            return await self._resolve(target.address), None
        node = self.nodes().get(ref.node)
        if node is None:
            return self._node_gone(target, ref), None
        try:
            flow = await self.delivery.connect("tcp", node["address"], int(node["sipPort"]))
        except SendError:
            # Killed, not yet gone from etcd (its lease lasts 10 s): as good as gone.
            return self._node_gone(target, ref), None
        hop = self.core.signer.token(HOP, (ref,))
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
        if transport in WEBSOCKET_TRANSPORTS:
            # Only a UA opens a WebSocket (a browser listens on nothing): one is reached down the
            # connection it registered over (its binding's flow), never at an address.
            raise SendError(f"no connection of ours reaches {transport}:{address.host}")
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


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
