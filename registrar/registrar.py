"""The registrar: RFC 3261 section 10.3, step by step, over a location store.

`Registrar.register` turns one REGISTER into one response. It knows nothing of
sockets: the transport hands it the request and where it came from (`Source`).
The challenge path (no credentials yet, half of all REGISTERs) never touches
the store; the authenticated path makes exactly one atomic `store.update`.

Choices a VoIP engineer will want to know (also in the README):
- A REGISTER for a domain we do not serve gets 404 "Domain Not Served".
- Wrong password and unknown user both get a fresh 401 challenge, byte for byte
  the same shape, so nothing reveals which usernames exist; so does an `ip`
  connection's username from an address outside its allow-list.
- Failed responses lock the username out, from that address first
  (registrar.authentication, registrar.lockout): `403 Too Many Failed
  Authentications`, unverified, until the lock ends.
- Behind NAT (Contact host:port differs from the packet's source) the binding
  keeps the source, and the 200 OK shows it as `;received="sip:IP:PORT"` on
  the Contact, the form Kamailio's registrar uses, readable in sngrep.
- At maxContacts, a new Contact evicts the binding refreshed longest ago, so a
  phone that restarted (new Call-ID, new port) is never locked out by its own
  stale bindings; a single REGISTER with more Contacts than allowed gets 403.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from registrar.authentication import REGISTRAR, Authenticator, AuthenticationStep, Identified
from registrar.model import Binding, Catalog, Connection, ConnectionKey, Domain, NotHeld
from registrar.service import ALLOW_WITHOUT_REGISTER, CONNECTION_READS, store_unavailable
from registrar.sip.grammar import quote
from registrar.sip.headers import NameAddr, parse_delta_seconds, parse_name_addr
from registrar.sip.message import Request, Response, SipError, check_extensions, error_response, server_response
from registrar.sip.source import Source
from registrar.sip.uri import URI, URIError, parameters_agree, parse_uri
from registrar.store import LocationStore, StoreUnavailable

MAX_PATH = 8  # Path hops a binding keeps: an edge proxy or two, not a header stuffed with routes


@dataclass(slots=True)  # not frozen: a frozen __init__ costs 4x, and this is made per Contact per REGISTER
class ContactRequest:
    """One Contact of a REGISTER, validated, with the expiry the registrar grants."""

    uri_text: str
    uri: URI
    expires: int
    q: float | None
    instance: str | None
    reg_id: int | None
    key: tuple  # what makes it the same binding as another (_binding_key)


class Registrar:
    def __init__(
        self,
        catalog: Catalog,
        store: LocationStore,
        authenticator: Authenticator,
        *,
        node: str = "",
        clock: Callable[[], float] = time.time,
        on_result: Callable[[str, int], None] | None = None,
        on_authenticated: Callable[[Source], None] = lambda source: None,
        on_identified: Identified = lambda request, source, connection: None,
        on_bound: Callable[[Source, Domain, list[Binding]], None] = lambda source, domain, bindings: None,
        expires_spread: float = 0.0,
        rng: Callable[[], float] = random.random,
        read_connection: Callable[[ConnectionKey], Awaitable[None]] | None = None,
    ):
        self.catalog = catalog
        # What reads a connection the catalogue raised NotHeld for (CatalogSource.read_connection);
        # None: the catalogue holds every connection.
        self._read_connection = read_connection
        self.store = store
        self.node = node
        self.clock = clock
        self._on_result = on_result or (lambda domain, status: None)
        # Tells on_authenticated the source of every REGISTER that proved who it is (credentials or address).
        # Tells on_identified of every REGISTER for one of our connections, proved or not (its trace).
        self._authentication = AuthenticationStep(authenticator, REGISTRAR, on_authenticated, on_identified)
        # Told (source, domain, the AOR's bindings) after a REGISTER with contacts is stored: the
        # connection it came over is kept open as long as they live, a phone behind NAT is pinged.
        self._on_bound = on_bound
        # Up to this fraction is taken off each granted expiry, at random: UAs that all
        # registered at once (a registrar restart, a power cut) refresh spread out,
        # not in one wave every expiry period.
        self.expires_spread = expires_spread
        self._random = rng

    # -- entry point ------------------------------------------------------------------
    def register(
        self, request: Request, source: Source, reads_left: int = CONNECTION_READS
    ) -> Response | Awaitable[Response]:
        """Answer a REGISTER.

        Requests that need no store access (malformed, unserved, unauthenticated:
        half of all REGISTERs are the first leg of a challenge) are answered at
        once; an authenticated one returns an awaitable that updates the store.
        That keeps the challenge leg free of task scheduling on the hot path. `reads_left`: the
        connections it may still read first (a ConnectionCache's NotHeld).
        """
        if not self.store.ready:
            # Without the store the catalogue may be stale or empty too: no answer
            # but "try again" would be true, not even a challenge.
            return self._reject(request, store_unavailable(), None)
        domain = None
        try:
            domain = self._served_domain(request)
            connection = self._precheck(request, source, domain)
            aor, contacts, wildcard = self._contacts(request, domain, connection)
            path = _path(request)
        except SipError as rejection:
            return self._reject(request, rejection, domain)
        except NotHeld as unknown:
            if not reads_left or self._read_connection is None:
                return self._reject(request, store_unavailable(), domain)
            return self._register_once_read(unknown.key, request, source, reads_left - 1, domain)
        return self._store_bindings(request, source, domain, connection, aor, contacts, wildcard, path)

    async def _register_once_read(
        self, key: ConnectionKey, request: Request, source: Source, reads_left: int, domain: Domain | None
    ) -> Response:
        """Answer a REGISTER whose connection had to be read first (its credentials are checked then)."""
        try:
            await self._read_connection(key)  # type: ignore[misc]
        except StoreUnavailable:
            return self._reject(request, store_unavailable(), domain)
        answer = self.register(request, source, reads_left)
        return answer if isinstance(answer, Response) else await answer

    async def _store_bindings(
        self,
        request: Request,
        source: Source,
        domain: Domain,
        connection: Connection,
        aor: str,
        contacts: list[ContactRequest],
        wildcard: bool,
        path: tuple[str, ...],
    ) -> Response:
        try:
            now = self.clock()
            change = self._change(request, source, aor, contacts, wildcard, connection, now, path)
            try:
                bindings = await self.store.update(aor, change)
            except StoreUnavailable:
                raise store_unavailable() from None
        except SipError as rejection:
            return self._reject(request, rejection, domain)
        response = server_response(request, 200, "OK")
        now = self.clock()
        for binding in bindings:
            response.add("Contact", _contact_value(binding, now))
        # Supported is read only when it could change the answer: most REGISTERs have no Path and no reg-id.
        outbound = _outbound_flows(contacts, path)
        supported = _option_tags(request, "Supported") if path or outbound else set()
        if path and "path" in supported:
            for value in path:  # RFC 3327 5.3: the UA learns the route its calls will come by
                response.add("Path", value)
        if outbound and "outbound" in supported:
            # RFC 5626 6: the flow is kept; the UA keeps it alive (CRLF, STUN) and uses it for its requests.
            response.add("Require", "outbound")
            response.add("Flow-Timer", str(domain.keepalive.flow_timer(source.transport)))
        response.add("Date", _sip_date(int(now)))
        self._on_result(domain.name, 200)
        if contacts:
            self._on_bound(source, domain, bindings)
        return response

    # -- RFC 3261 10.3 steps 1-4: domain, extensions, authentication, authorisation ---------
    def _served_domain(self, request: Request) -> Domain:
        try:
            request_uri = parse_uri(request.uri)
        except URIError as exc:
            raise SipError(400, f"Bad Request-URI: {exc}") from None
        domain = self.catalog.domains.get(request_uri.host)
        if domain is None:
            raise SipError(404, "Domain Not Served")
        return domain

    def _precheck(self, request: Request, source: Source, domain: Domain) -> Connection:
        """Steps 2-4 for a served domain: the connection the REGISTER is made for."""
        if not domain.registration.enabled:
            raise SipError(405, "Registration Disabled For This Domain", [("Allow", ALLOW_WITHOUT_REGISTER)])
        check_extensions(request, "Require")

        # Step 3 (authentication) comes before step 5 (the AOR from To): where no
        # connection authenticates by address, a request without credentials can
        # be challenged at once, and that is half of all REGISTERs.
        credentials = self._authentication.credentials(request, domain)
        if credentials is None and domain.name not in self.catalog.ip_authenticated_domains:
            raise self._authentication.challenge(domain)
        connection = self._authentication.authenticate(
            request, source, domain, self.catalog.connections, self._aor_user(request, domain), credentials
        )
        self._check_inbound(connection)
        return connection

    @staticmethod
    def _aor_user(request: Request, domain: Domain) -> str:
        """Step 5's user: whose AOR the REGISTER is for (To)."""
        to = request.name_addr("To")
        if to.uri.scheme not in ("sip", "sips") or not to.uri.user:
            raise SipError(400, "Bad To: AOR must be a sip: or sips: URI with a user")
        if to.uri.host != domain.name:
            raise SipError(403, "To Domain Does Not Match Request-URI")
        return to.uri.user

    def _check_inbound(self, connection: Connection) -> None:
        if not connection.inbound:
            raise SipError(403, "Registration Not Allowed: Inbound Disabled")

    # -- steps 5-7: the AOR and its Contacts --------------------------------------------
    def _contacts(
        self, request: Request, domain: Domain, connection: Connection
    ) -> tuple[str, list[ContactRequest], bool]:
        aor = connection.aor
        policy = domain.registration
        expires_header = request.get("Expires")
        try:
            default = parse_delta_seconds(expires_header) if expires_header is not None else policy.default_expires
        except ValueError:
            raise SipError(400, "Bad Expires Header") from None

        values = request.get_all("Contact")
        if "*" in values:
            if len(values) != 1:
                raise SipError(400, "Wildcard Contact Must Be The Only Contact")
            if expires_header is None or default != 0:
                raise SipError(400, "Wildcard Contact Requires Expires: 0")
            return aor, [], True

        contacts = []
        for value in values:
            contact = _sip_name_addr(value, "Contact", "only sip: and sips: URIs can be registered")
            params = contact.params
            try:
                expires = parse_delta_seconds(params["expires"] or "") if "expires" in params else default
            except ValueError:
                raise SipError(400, "Bad Contact expires Parameter") from None
            if 0 < expires < policy.min_expires:
                raise SipError(423, "Interval Too Brief", [("Min-Expires", str(policy.min_expires))])
            if params:
                instance, reg_id = _instance(params.get("+sip.instance")), _reg_id(params.get("reg-id"))
                q = _q_value(params.get("q")) if "q" in params else None
            else:  # the usual "<sip:...>": nothing more to look up
                instance = reg_id = q = None
            contacts.append(
                ContactRequest(
                    uri_text=contact.uri_text,
                    uri=contact.uri,
                    expires=self._granted(
                        expires if expires < policy.max_expires else policy.max_expires, policy.min_expires
                    ),
                    q=q,
                    instance=instance,
                    reg_id=reg_id,
                    key=_binding_key(contact.uri, instance, reg_id),
                )
            )
        if len(contacts) > 1:
            # A Contact listed twice (or two URIs of one +sip.instance/reg-id) is one
            # binding; the last mention wins, as if the UA had sent them in turn.
            contacts = [c for n, c in enumerate(contacts)
                        if not any(_same_binding(c.uri, c.instance, c.reg_id, later) for later in contacts[n + 1:])]
        limit = connection.max_contacts
        if len(contacts) > limit and len([c for c in contacts if c.expires]) > limit:
            raise SipError(403, f"Too Many Contacts (max {limit})")
        return aor, contacts, False

    def _granted(self, expires: int, min_expires: int) -> int:
        if not self.expires_spread or expires <= min_expires:
            return expires  # 0 (removal) and the minimum stay exact
        return max(min_expires, expires - int(expires * self.expires_spread * self._random()))

    def _change(
        self,
        request: Request,
        source: Source,
        aor: str,
        contacts: list[ContactRequest],
        wildcard: bool,
        connection: Connection,
        now: float,
        path: tuple[str, ...] = (),
    ) -> Callable[[Sequence[Binding]], list[Binding]]:
        """The pure update of step 7, run by the store atomically on the AOR's bindings."""
        call_id = request.call_id
        cseq, _ = request.cseq
        user_agent = request.get("User-Agent") or ""

        def change(current: Sequence[Binding]) -> list[Binding]:
            bindings = list(current)
            if wildcard:
                for existing in bindings:
                    _check_order(existing, call_id, cseq)
                return []
            added: list[Binding] = []
            for contact in contacts:
                for existing in bindings:
                    # A refresh repeats its Contact to the letter: equal text needs no parse.
                    same_text = existing.contact == contact.uri_text and existing.instance == contact.instance
                    if (same_text and existing.reg_id == contact.reg_id) or _same_binding(
                        parse_uri(existing.contact), existing.instance, existing.reg_id, contact
                    ):
                        _check_order(existing, call_id, cseq)
                        bindings.remove(existing)
                        break
                if contact.expires:
                    # Positional, in field order: NamedTuple.__new__ takes keywords at twice the cost.
                    added.append(
                        Binding(
                            aor,  # aor
                            contact.uri_text,  # contact
                            now + contact.expires,  # expires_at
                            call_id,  # call_id
                            cseq,  # cseq
                            contact.q,  # q
                            contact.instance,  # instance
                            contact.reg_id,  # reg_id
                            source.transport,  # type: ignore[arg-type]  # transport
                            source.host,  # source_host
                            source.port,  # source_port
                            source.flow,  # flow
                            self.node,  # node
                            user_agent,  # user_agent
                            now,  # registered_at
                            path,  # path
                        )
                    )
            # At the limit, the bindings refreshed longest ago make room for new ones.
            room = connection.max_contacts - len(added)
            if len(bindings) > room:
                bindings.sort(key=lambda b: b.registered_at)
                bindings = bindings[len(bindings) - room :] if room > 0 else []
            return bindings + added

        return change

    # -- answers -------------------------------------------------------------------------
    def _reject(self, request: Request, rejection: SipError, domain: Domain | None) -> Response:
        """The answer to a rejected REGISTER; `domain` is the served domain it is for, if known."""
        response = error_response(request, rejection)
        # Metric labels stay bounded: a domain we do not serve is "other".
        self._on_result(domain.name if domain is not None else "other", rejection.status)
        return response


@functools.lru_cache(maxsize=2)
def _sip_date(second: int) -> str:
    """RFC 3261 20.17 Date (RFC 1123 form, GMT); one string per second suffices."""
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(second))


def _check_order(existing: Binding, call_id: str, cseq: int) -> None:
    """RFC 3261 10.3 step 7: same Call-ID with a CSeq not higher aborts the request."""
    if existing.call_id == call_id and cseq <= existing.cseq:
        raise SipError(400, "Invalid CSeq: Not Higher Than The Binding's")


def _binding_key(uri: URI, instance: str | None, reg_id: int | None) -> tuple:
    """What makes two Contacts the same binding: the instance (RFC 5626), else the URI.

    The parts of RFC 3261 19.1.4's URI comparison that fit a key: scheme, user
    (case-sensitive), host and port (case-insensitive), transport; `_same_binding`
    adds the parameters.
    """
    if instance is not None:
        return ("instance", instance, reg_id)
    return ("uri", uri.scheme, uri.user, uri.host, uri.port, uri.transport)


def _same_binding(uri: URI, instance: str | None, reg_id: int | None, contact: ContactRequest) -> bool:
    """Whether a Contact (or a binding's) and `contact` are one binding (RFC 3261 10.3 step 7).

    The same +sip.instance and reg-id (RFC 5626) are, whatever the URIs; else the
    URIs must be equal by RFC 3261 19.1.4: the key's parts, and the parameters
    both carry (two Contacts that differ in one, e.g. rinstance, are two bindings).
    """
    if _binding_key(uri, instance, reg_id) != contact.key:
        return False
    return instance is not None or parameters_agree(uri, contact.uri)


def _path(request: Request) -> tuple[str, ...]:
    """The REGISTER's Path values (RFC 3327), checked: each a loose-routing sip: or sips: URI.

    Stored whether or not the UA said `Supported: path` (Kamailio's "lazy" mode): an edge
    proxy may add it for a UA that knows nothing of it, and its calls must still go through
    the edge. A strict route (no `lr`) would need the Request-URI rewritten: refused.
    """
    values = request.get_all("Path")
    if not values:
        return ()
    if len(values) > MAX_PATH:
        raise SipError(400, f"Bad Path: more than {MAX_PATH} hops")
    for value in values:
        hop = _sip_name_addr(value, "Path", "only sip: and sips: URIs route")
        if "lr" not in hop.uri.params:
            raise SipError(400, "Bad Path: not a loose route (no lr parameter)")
    return tuple(values)


def _outbound_flows(contacts: list[ContactRequest], path: tuple[str, ...]) -> bool:
    """Whether a REGISTER asks for RFC 5626 flows we can give: a Contact with +sip.instance and reg-id,
    and a first hop that keeps flows (us, when it came direct; an edge whose Path URI has `ob`)."""
    if not any(contact.instance is not None and contact.reg_id is not None for contact in contacts):
        return False
    return not path or "ob" in parse_name_addr(path[0]).uri.params


def _sip_name_addr(value: str, header: str, not_sip: str) -> NameAddr:
    """A header value as a name-addr with a sip: or sips: URI; SipError 400 "Bad `header`: ..." otherwise."""
    try:
        name_addr = parse_name_addr(value)
    except ValueError as exc:
        raise SipError(400, f"Bad {header}: {exc}") from None
    if name_addr.uri.scheme not in ("sip", "sips"):
        raise SipError(400, f"Bad {header}: {not_sip}")
    return name_addr


def _option_tags(request: Request, header: str) -> set[str]:
    return {tag.lower() for tag in request.get_all(header)}


def _contact_value(binding: Binding, now: float) -> str:
    value = f"<{binding.contact}>;expires={binding.expires_in(now)}"
    if binding.q is not None:
        value += f";q={binding.q:g}"
    if binding.instance is not None:
        value += f';+sip.instance="<{binding.instance}>"'
    if binding.reg_id is not None:
        value += f";reg-id={binding.reg_id}"
    received = binding.received_uri()
    if received is not None:
        value += f";received={quote(received)}"
    return value


def _q_value(text: str | None) -> float:
    try:
        q = float(text or "")
    except ValueError:
        raise SipError(400, "Bad Contact q Parameter") from None
    if not 0.0 <= q <= 1.0:
        raise SipError(400, "Bad Contact q Parameter: must be between 0 and 1")
    return q


def _instance(text: str | None) -> str | None:
    if not text:
        return None
    return text[1:-1] if text.startswith("<") and text.endswith(">") else text


def _reg_id(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit():
        raise SipError(400, "Bad Contact reg-id Parameter")
    return int(text)

