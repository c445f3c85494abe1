"""Where a new call goes: the target set of an out-of-dialog request, or the answer instead.

Logic over the catalogue and the location store, no sockets (the proxy sends):

- `sip:USER@DOMAIN`, DOMAIN ours and USER one of its connections: inbound. The
  user's bindings, grouped by q-value, highest first (a binding without q counts
  as 1.0); `302` with the contacts when the domain is in redirect mode; `480`
  when nobody is registered. Calling a registered user needs no credentials:
  inbound calls come from anywhere (the carrier, other users), as on a PBX.
- `sip:USER@DOMAIN`, DOMAIN ours, USER unknown and not a phone number: `404`.
- To a stranger (a source neither trusted nor ever authenticated) an unknown
  user, a user nobody is registered for and a user who takes no inbound calls
  look the same: the `407` challenge a call out gets, after the same store
  lookup. Nothing tells a scanner which users exist, and a scanner's probe of a
  random number (a call out: 407) looks like every user it tries. This is the
  hardened Asterisk's answer (alwaysauthreject, no guests), stricter than
  Kamailio's default script (one 404 for every failed lookup), which a scanner
  tells from the 407 of a number. A caller that proves credentials, our phones
  (their address registered) and trusted peers get the precise 480/404/403.
- Anything else (another domain, `tel:`, a phone number at our domain) is an
  outbound call: the From user must prove who they are (`407`, the digest code
  of REGISTER with Proxy-* headers) or call from an address in the allow-list of
  an `ip` connection; then the call goes to the domain's outbound gateway.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from registrar.authentication import PROXY, Authenticator, AuthenticationStep, Identified
from registrar.flows import FlowRef, of_binding
from registrar.model import Binding, Catalog, Connection, ConnectionKey, Domain, NotHeld
from registrar.service import ALLOW, CONNECTION_READS, store_unavailable
from registrar.sip.headers import parse_name_addr
from registrar.sip.message import KNOWN_METHODS, Request, SipError
from registrar.sip.source import Source
from registrar.sip.uri import URI, URIError, as_request_uri, parse_uri
from registrar.store import LocationStore, StoreUnavailable

# A dialled number: what a gateway, not a user of ours, answers.
_PHONE_NUMBER = re.compile(r"\+?[0-9*#]{2,32}")
DEFAULT_Q = 1.0


@dataclass(frozen=True, slots=True)
class Target:
    """One branch of a call: the Request-URI to send, and how to reach it."""

    uri: str
    ref: FlowRef | None = None  # a registered UA's flow
    address: URI | None = None  # else: where to send (the outbound gateway, the first hop of a Path)
    aor: str = ""  # the binding's AOR, for reports
    path: tuple[str, ...] = ()  # Route values the request carries to it (the binding's Path, RFC 3327)
    # The same UA's other flows (RFC 5626: one +sip.instance, other reg-ids), most recent first:
    # tried in turn when this one is gone, never rung at once.
    alternatives: tuple[Target, ...] = ()

    def next_flow(self) -> Target | None:
        """The UA's next flow to try when this one has failed (RFC 5626 5.3); None when none is left."""
        if not self.alternatives:
            return None
        return dataclasses.replace(self.alternatives[0], alternatives=self.alternatives[1:])


def binding_target(binding: Binding, uri: str | None = None) -> Target:
    """How a request reaches a registered Contact: through its Path when it has one (RFC 3327 5.3:
    the Path is the route set, its first hop where to send), else from the flow it registered over."""
    uri = uri if uri is not None else as_request_uri(binding.contact)
    if binding.path:
        return Target(uri, address=parse_name_addr(binding.path[0]).uri, aor=binding.aor, path=binding.path)
    return Target(uri, of_binding(binding), aor=binding.aor)


@dataclass(frozen=True, slots=True)
class TargetSet:
    """The target set (RFC 3261 16.5): the groups in turn, the targets of a group in parallel."""

    groups: list[list[Target]]


class Router:
    def __init__(
        self,
        catalog: Callable[[], Catalog],
        store: LocationStore,
        authenticator: Authenticator,
        clock: Callable[[], float],
        known_source: Callable[[str], bool],
        on_authenticated: Callable[[Source], None] = lambda source: None,
        on_identified: Identified = lambda request, source, connection: None,
        read_connection: Callable[[ConnectionKey], Awaitable[None]] | None = None,
    ):
        self._catalog = catalog
        # What reads a connection the catalogue raised NotHeld for; None: it holds every connection.
        self._read_connection = read_connection
        self.store = store
        self.clock = clock
        # Whether an address is trusted or has proved credentials (SourceLimiter.known).
        self._known_source = known_source
        # Tells on_authenticated of every caller that proves who it is (if refused after): no stranger.
        # Tells on_identified of every call from or to one of our connections (its trace).
        self._on_identified = on_identified
        self._authentication = AuthenticationStep(authenticator, PROXY, on_authenticated, on_identified)

    async def route(self, request: Request, source: Source) -> TargetSet:
        """The targets for `request`; raises SipError with the answer instead (404, 480, 302, 407...)."""
        for _ in range(CONNECTION_READS):
            try:
                return await self._route(request, source)
            except NotHeld as unknown:
                if self._read_connection is None:
                    raise
                try:
                    await self._read_connection(unknown.key)
                except StoreUnavailable:
                    raise store_unavailable() from None
        raise store_unavailable()

    async def _route(self, request: Request, source: Source) -> TargetSet:
        catalog = self._catalog()
        try:
            uri = parse_uri(request.uri)
        except URIError as exc:
            raise SipError(400, f"Bad Request-URI: {exc}") from None
        domain = _called_domain(uri, catalog)
        if domain is not None:
            if not uri.user:
                if request.method not in KNOWN_METHODS:
                    # To us, as a UAS: the methods we do know, as RFC 4475 intmeth has endpoints answer.
                    raise SipError(501, f"Not Implemented: {request.method[:40]}", [("Allow", ALLOW)])
                raise SipError(404, "Not Found: No User In Request-URI")
            connection = catalog.connections.get((domain.name, uri.user))
            if connection is not None:
                self._on_identified(request, source, connection)
            if not self._known_source(source.host):
                targets = await self._inbound_from_stranger(domain, connection, uri.user)
                if targets is not None:
                    return targets
                # Anything but a registered user: they prove who they are first, as if calling out.
                self._proven_caller(request, source, domain, catalog)
            if connection is None:
                raise SipError(404, "Not Found")
            return await self._inbound(domain, connection)
        return self._outbound(request, source, uri, catalog)

    def domain_of(self, request: Request) -> str:
        """The served domain a new request concerns, whatever its answer: the callee's for a call
        in, the caller's (From) for a call out; "" for neither (metrics label calls by it)."""
        catalog = self._catalog()
        try:
            domain = _called_domain(parse_uri(request.uri), catalog)
            caller = request.name_addr("From").uri
        except (URIError, SipError):
            return ""
        if domain is not None:
            return domain.name
        return caller.host if caller.scheme in ("sip", "sips") and caller.host in catalog.domains else ""

    # -- inbound ----------------------------------------------------------------------------
    async def _inbound(self, domain: Domain, connection: Connection) -> TargetSet:
        if not connection.inbound:
            raise SipError(403, "Inbound Calls Not Allowed For This User")
        bindings = await self._lookup(connection.aor)
        if not bindings:
            raise SipError(480, "Temporarily Unavailable")
        return self._targets(domain, bindings)

    async def _inbound_from_stranger(
        self, domain: Domain, connection: Connection | None, user: str
    ) -> TargetSet | None:
        """A stranger's call to a registered user goes through; None for every other case, looked up alike."""
        bindings = await self._lookup(connection.aor if connection is not None else f"{user}@{domain.name}")
        if connection is None or not connection.inbound or not bindings:
            return None
        return self._targets(domain, bindings)

    async def _lookup(self, aor: str) -> list[Binding]:
        try:
            return await self.store.lookup(aor)
        except StoreUnavailable:
            raise store_unavailable() from None

    def _targets(self, domain: Domain, bindings: list[Binding]) -> TargetSet:
        if domain.mode == "redirect":
            now = self.clock()
            ordered = sorted(bindings, key=_q, reverse=True)
            raise SipError(302, "Moved Temporarily", [("Contact", _redirect_contact(b, now)) for b in ordered])
        targets = sorted(_one_per_instance(bindings), key=lambda target: target[0], reverse=True)
        groups = [[target for _, target in same_q] for _, same_q in itertools.groupby(targets, key=lambda t: t[0])]
        return TargetSet(groups)

    # -- outbound ---------------------------------------------------------------------------
    def _outbound(self, request: Request, source: Source, uri: URI, catalog: Catalog) -> TargetSet:
        caller = request.name_addr("From").uri
        domain = catalog.domains.get(caller.host) if caller.scheme in ("sip", "sips") else None
        if domain is None:
            raise SipError(403, "Relaying Denied")
        connection = self._authenticated_caller(request, source, domain, caller, catalog)
        if not connection.outbound:
            raise SipError(403, "Outbound Calls Not Allowed For This User")
        if domain.outbound_gateway is None:
            raise SipError(403, "No Outbound Gateway For This Domain")
        gateway = parse_uri(domain.outbound_gateway)
        target_uri = request.uri
        if uri.scheme == "tel" or uri.host in catalog.domains:
            # A number: the gateway's to route, so it goes out in the gateway's name.
            port = f":{gateway.port}" if gateway.port else ""
            target_uri = f"sip:{uri.user}@{gateway.host}{port}"
        if domain.mode == "redirect":
            raise SipError(302, "Moved Temporarily", [("Contact", f"<{target_uri}>")])
        return TargetSet([[Target(target_uri, address=gateway)]])

    def _proven_caller(self, request: Request, source: Source, domain: Domain, catalog: Catalog) -> None:
        """A stranger calling in proves to be a user of the domain it calls (From); raises 407/403 otherwise."""
        caller = request.name_addr("From").uri
        if caller.scheme not in ("sip", "sips") or caller.host != domain.name:
            raise self._authentication.challenge(domain)  # nobody it could prove to be: the same challenge
        self._authenticated_caller(request, source, domain, caller, catalog)

    def _authenticated_caller(
        self, request: Request, source: Source, domain: Domain, caller: URI, catalog: Catalog
    ) -> Connection:
        """The connection the caller (From) proved to be, by credentials or source address; raises 407/403.

        Anyone else is challenged, an `ip` connection's name from elsewhere too (it can
        never pass, having no HA1): a 403 would tell which names exist.
        """
        return self._authentication.authenticate(request, source, domain, catalog.connections, caller.user or "")


def _called_domain(uri: URI, catalog: Catalog) -> Domain | None:
    """The served domain `uri` calls a user (or no user) of; None for a call out (another domain, tel:, a number)."""
    domain = catalog.domains.get(uri.host) if uri.scheme != "tel" else None
    if domain is None or (uri.user and _PHONE_NUMBER.fullmatch(uri.user)):
        return None
    return domain


def _q(binding: Binding) -> float:
    return DEFAULT_Q if binding.q is None else binding.q


def _one_per_instance(bindings: list[Binding]) -> list[tuple[float, Target]]:
    """A target, with its q, per UA: bindings of one +sip.instance (RFC 5626 flows, one per reg-id)
    are one target, the most recently registered first and the others its alternatives, so that
    a phone with two flows rings once and a dead flow falls over to the other (RFC 5626 5.3)."""
    by_instance: dict[str, list[Binding]] = {}
    targets: list[tuple[float, Target]] = []
    for binding in bindings:
        if binding.instance is None:
            targets.append((_q(binding), binding_target(binding)))
        else:
            by_instance.setdefault(binding.instance, []).append(binding)
    for flows in by_instance.values():
        first, *others = sorted(flows, key=lambda binding: binding.registered_at, reverse=True)
        alternatives = tuple(binding_target(binding) for binding in others)
        targets.append((_q(first), dataclasses.replace(binding_target(first), alternatives=alternatives)))
    return targets


def _redirect_contact(binding: Binding, now: float) -> str:
    value = f"<{binding.contact}>"
    if binding.q is not None:
        value += f";q={binding.q:g}"
    return value + f";expires={binding.expires_in(now)}"
