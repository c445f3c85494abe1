"""The registrar's domain model: SIP domains, connections (trunks/users) and bindings.

These are plain values. The manifest loader builds Domain and Connection from
SipDomain/SipConnection objects; the location service stores Binding; the
registrar logic reads all three. None of them knows about YAML, etcd or sockets.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import ClassVar, Literal, NamedTuple

from registrar.sip.source import source_text
from registrar.sip.uri import URIError, bracketed, parse_uri

Transport = Literal["udp", "tcp", "tls", "ws", "wss"]  # registrar.sip.source.TRANSPORTS
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
AuthenticationType = Literal["credentials", "ip"]
DomainMode = Literal["proxy", "redirect"]


@dataclass(frozen=True, slots=True)
class RegistrationPolicy:
    """How a domain accepts REGISTER (RFC 3261 10.3 steps 7-8: expiry bounds)."""

    enabled: bool = True
    min_expires: int = 60
    default_expires: int = 600
    max_expires: int = 3600


@dataclass(frozen=True, slots=True)
class SourceLimits:
    """How fast one source address may send before it is refused, then banned (Kamailio's pike + htable).

    Counted before parsing, per address, as a token bucket. Requests that prove
    their credentials give their token back: an office behind one NAT address
    pays only for its unauthenticated first legs (the 401s), not for its users.
    """

    # 50/s is some 30 times what 200 phones behind one address send steadily
    # (registrations, 30 s OPTIONS keep-alives); a flood is thousands.
    requests_per_second: float = 50.0
    # 200 phones re-registering at once after an outage send 200 unauthenticated
    # REGISTERs together: the bucket holds twice that.
    burst: int = 400
    # Refused this many more times while the bucket is empty, the source is banned:
    # its packets are dropped unread.
    ban_after: int = 400
    # The first ban; each further one within a day doubles, up to the maximum: a NAT
    # that tripped once is back in a minute, a scanner that keeps at it is out for hours.
    ban_seconds: int = 60
    max_ban_seconds: int = 3600


@dataclass(frozen=True, slots=True)
class LockoutPolicy:
    """Online password guessing: which failed digest responses lock out whom, and for how long.

    The pair (username, source address) is locked first; the username across all
    addresses only at a much higher count, and then not for addresses that have
    proved that user's password before (the user's own phones keep working).
    Enforced by registrar.lockout.
    """

    # A phone with a wrong password fails every registration attempt; five
    # tries are plenty for a human typing one in.
    failures_per_source: int = 5
    # From all addresses together: a botnet gets this many guesses per lockout.
    failures_per_user: int = 30
    # A failure counts this long at least, and is forgotten within twice this. A day: a
    # botnet pacing its guesses below the counts gets 29 in two days, not 29 every 20
    # minutes; the user's own phones, having proved the password, are spared a user lock
    # whatever its count, and a phone with a wrong password is locked after 5 either way.
    window_seconds: int = 86400
    # The first lockout; each further failure after one doubles it, up to the maximum.
    lockout_seconds: int = 60
    max_lockout_seconds: int = 3600
    # Failed responses one nonce admits; after them it is spent (a new challenge).
    failures_per_nonce: int = 3
    # Not settable per domain (class constants, not fields, so not in the CRD or etcd):
    # A lock is remembered this long after it ends, and any failure meanwhile locks again
    # for twice as long: a guesser who waits out a lock gets one guess, not a fresh set.
    # A day, like the rate limiter's bans. A success from the address forgets its pair's
    # locks at once (the user typed the new password in); a user lock only time forgets.
    remember_lock_seconds: ClassVar[int] = 86_400
    # An address that proved the password is spared the user lock this long after. Phones
    # refresh every few minutes, so theirs never lapses; a day covers a laptop's night off.
    proof_seconds: ClassVar[int] = 86_400


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """TCP/TLS connections: how many, and how long a peer may take to send what it must."""

    # An office of phones behind one NAT address, each with its own connection.
    per_source: int = 256
    # Measured in `sipreg serve` (uvloop): an idle connection holds 2 KiB on TCP, 46 KiB on
    # TLS, 52-60 KiB in a TLS handshake (which an attacker can keep going). 5,000 of the
    # last are under 300 MiB, which leaves a 512 MiB pod room for its bindings; 10,000
    # would not fit.
    total: int = 5_000
    # A whole SIP message, from its first byte: one byte every 20 s keeps no connection.
    message_seconds: float = 10.0
    # A TLS handshake, from the TCP accept (mobile networks can be slow).
    handshake_seconds: float = 10.0


@dataclass(frozen=True, slots=True)
class SecurityPolicy:
    """A domain's defences against hostile traffic (a SipDomain's spec.security)."""

    # Sources exempt from the rate limits and bans (an edge proxy, a load balancer, a carrier).
    # The allow-lists of `ip` connections are trusted too. Password lockouts apply to all.
    trusted_networks: tuple[Network, ...] = ()
    sources: SourceLimits = field(default_factory=SourceLimits)
    lockout: LockoutPolicy = field(default_factory=LockoutPolicy)
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)
    # Proxy transactions alive at once; more are answered 503 with Retry-After. A live
    # transaction holds its request and branches (some KiB): 5,000 stay within tens of MiB.
    max_transactions: int = 5000
    # The Origins (lower case, "https://phone.example.com") whose pages may open a WebSocket to
    # us; empty: any. A browser sends its page's Origin and a page cannot forge it, so this keeps
    # other sites' pages from using a visitor's browser against us. Other clients send whatever
    # they like, so it is no authentication: digest is.
    websocket_origins: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class KeepalivePolicy:
    """How a domain keeps its phones reachable through NATs (RFC 5626 4.4; Kamailio's nathelper pings)."""

    # OPTIONS to each UDP contact behind NAT (its Contact is not where its packets come from), sent by the
    # replica holding it, this often; 0: no pings. A NAT forgets an idle UDP mapping after 30 s or more.
    ping_interval: int = 30
    # Pings in a row without an answer after which the contact is removed (and its trunk status says so).
    ping_failures: int = 3
    # Flow-Timer (RFC 5626 4.4.1): how often an outbound UA must show its flow alive, over UDP (a NAT's
    # mapping may last 30 s) and over a connection (a NAT's or firewall's state lasts minutes).
    flow_timer_udp: int = 25
    flow_timer_stream: int = 120

    def flow_timer(self, transport: str) -> int:
        return self.flow_timer_udp if transport == "udp" else self.flow_timer_stream


@dataclass(frozen=True, slots=True)
class Domain:
    """A SIP domain this registrar serves (a SipDomain)."""

    name: str  # the FQDN in Request-URIs and AORs, lower case; also the digest realm
    registration: RegistrationPolicy = field(default_factory=RegistrationPolicy)
    mode: DomainMode = "proxy"
    outbound_gateway: str | None = None
    # Offered in this order, one WWW-Authenticate header each (RFC 8760 section 2.4).
    digest_algorithms: tuple[str, ...] = ("MD5",)
    security: SecurityPolicy = field(default_factory=SecurityPolicy)
    keepalive: KeepalivePolicy = field(default_factory=KeepalivePolicy)


@dataclass(frozen=True, slots=True)
class Connection:
    """A SipConnection: one username in a domain and how it authenticates.

    Holds HA1 digests, never the password: HA1 = H(username:realm:password) per
    algorithm ("MD5", "SHA-256"), which is all digest verification needs.
    """

    domain: str
    username: str
    authentication: AuthenticationType = "credentials"
    ha1: dict[str, str] = field(default_factory=dict)
    allowed_networks: tuple[Network, ...] = ()
    max_contacts: int = 5
    inbound: bool = True
    outbound: bool = True
    name: str = ""  # the SipConnection's metadata.name, for status and logs

    @property
    def aor(self) -> str:
        return f"{self.username}@{self.domain}"

    def allows_address(self, host: str) -> bool:
        """True when `host` is in the allow-list (an empty list allows any address)."""
        return not self.allowed_networks or in_networks(host, self.allowed_networks)


def in_networks(host: str, networks: tuple[Network, ...]) -> bool:
    """Whether the address `host` (as a packet's source names it) is in one of `networks`."""
    if not networks:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in networks)


class Binding(NamedTuple):
    """One Contact registered for an AOR (RFC 3261 10.3), plus where it came from.

    `transport`, `source_host` and `source_port` are where the REGISTER's packets
    came from; when that differs from the Contact's host:port the UA is behind
    NAT and requests must go there (`received_uri`). `flow` names the connection
    the REGISTER arrived on, so that requests reach the UA over the connection it
    opened (RFC 5923/5626), and `node` the registrar process that holds that
    connection. The source is kept as fields, not as one "udp:host:port" text, so
    nobody parses it; `source` writes it so for people.

    A NamedTuple, not a dataclass, on purpose: a tuple whose fields are all
    strings and numbers is untracked by Python's cyclic garbage collector, so a
    table of a million bindings adds nothing to a full collection's pause (as
    slots objects, 100k bindings made it tens of milliseconds, straight into p99).
    """

    aor: str
    contact: str  # the Contact URI exactly as the UA sent it
    expires_at: float  # wall-clock seconds (time.time())
    call_id: str
    cseq: int
    q: float | None = None
    instance: str | None = None  # +sip.instance (RFC 5626), without the <> quotes
    reg_id: int | None = None
    transport: Transport = "udp"
    source_host: str = ""  # the packet's address, IPv6 without brackets; "" for none known
    source_port: int = 0
    flow: str | None = None
    node: str = ""
    user_agent: str = ""
    registered_at: float = 0.0
    # The Path header values of the REGISTER (RFC 3327), in order: the proxies between us and
    # the UA (an edge proxy, an SBC), which requests to it go through as their Route set.
    path: tuple[str, ...] = ()

    def expires_in(self, now: float) -> int:
        """Seconds left, rounded up, never negative (for the 200 OK's expires param)."""
        seconds = int(self.expires_at - now + 0.999)
        return seconds if seconds > 0 else 0

    @property
    def source(self) -> str:
        """Where the REGISTER came from as people read it ("udp:203.0.113.5:40123"), "" for none known."""
        return source_text(self.transport, self.source_host, self.source_port) if self.source_host else ""

    def received_uri(self) -> str | None:
        """The source as a SIP URI when it differs from the Contact's host:port (NAT), else None.

        The 200 OK shows it as the Contact's `received` parameter, the form Kamailio's registrar uses.
        """
        if not self.source_host:
            return None
        try:
            contact = parse_uri(self.contact)
        except URIError:
            return None
        default_port = 5061 if contact.scheme == "sips" or self.transport == "tls" else 5060
        if contact.host_no_brackets == self.source_host and (contact.port or default_port) == self.source_port:
            return None
        suffix = "" if self.transport == "udp" else f";transport={self.transport}"
        return f"sip:{bracketed(self.source_host)}:{self.source_port}{suffix}"


ConnectionKey = tuple[str, str]  # (lower-case domain, username)


class NotHeld(LookupError):
    """The catalogue cannot say whether this connection exists before reading it (ConnectionCache)."""

    def __init__(self, key: ConnectionKey):
        super().__init__(key)
        self.key = key


class ConnectionCache(Mapping[ConnectionKey, Connection]):
    """The connections of a registrar that reads them from etcd on demand: a catalogue's `connections`.

    Held whole: the `ip` connections (`held`), as a REGISTER without credentials
    is checked against them before it is challenged. The others: those read lately,
    present or known absent, at most `size` of them, the least recently read going
    first. `get` of one it can say nothing of raises NotHeld: the caller reads it
    (CatalogSource.read_connection) and asks again. Unlike a catalogue's dict, this
    changes in place as connections are read and as etcd's watch reports changes.
    """

    def __init__(self, size: int):
        self.size = size
        self.held: dict[ConnectionKey, Connection] = {}
        self._read: dict[ConnectionKey, tuple[int, Connection | None]] = {}  # -> (etcd revision, record or None)
        self._reading: set[ConnectionKey] = set()  # being read (one read per key at a time): changes are kept

    def get(self, key: ConnectionKey, default: Connection | None = None) -> Connection | None:  # type: ignore[override]
        connection = self.held.get(key)
        if connection is not None:
            return connection
        entry = self._read.get(key)
        if entry is None:
            raise NotHeld(key)
        return default if entry[1] is None else entry[1]

    def __getitem__(self, key: ConnectionKey) -> Connection:
        connection = self.get(key)
        if connection is None:
            raise KeyError(key)
        return connection

    def __iter__(self) -> Iterator[ConnectionKey]:
        yield from self.held
        yield from (key for key, (_, c) in list(self._read.items()) if c is not None and key not in self.held)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def reading(self, key: ConnectionKey) -> None:
        """A read of `key` starts: a change the watch brings before its answer is kept, and wins if newer."""
        self._reading.add(key)

    def read_failed(self, key: ConnectionKey) -> None:
        self._reading.discard(key)

    def read(self, key: ConnectionKey, revision: int, connection: Connection | None) -> None:
        """What etcd held for `key` at `revision` (None: nothing), unless the cache holds newer news."""
        self._reading.discard(key)
        self._keep(key, revision, connection)

    def wants(self, key: ConnectionKey) -> bool:
        """Whether a change of `key` is news here: it is cached, or being read (the rest are read when asked for)."""
        return key in self._read or key in self._reading

    def changed(self, key: ConnectionKey, revision: int, connection: Connection | None) -> None:
        """The watch saw `key` change at `revision` (`wants` it)."""
        self._keep(key, revision, connection)

    def _keep(self, key: ConnectionKey, revision: int, connection: Connection | None) -> None:
        entry = self._read.pop(key, None)
        self._read[key] = entry if entry is not None and entry[0] > revision else (revision, connection)
        while len(self._read) > self.size:
            del self._read[next(iter(self._read))]

    def forget_read(self) -> None:
        """Drop every connection read (etcd's watch could not resume: what changed meanwhile is unknown)."""
        self._read.clear()


@dataclass(frozen=True, slots=True)
class Catalog:
    """What a registrar serves: domains and connections.

    `domains` is keyed by the lower-case domain name; `connections` by
    (lower-case domain, username): usernames are case-sensitive, like the user
    part of a SIP URI (RFC 3261 19.1.4). A registrar swaps in a whole new
    Catalog when the configuration changes, never edits one in place; the
    connections of one reading etcd on demand are a ConnectionCache, which
    fills as they are read and raises NotHeld for one not read yet.
    """

    domains: dict[str, Domain] = field(default_factory=dict)
    connections: Mapping[ConnectionKey, Connection] = field(default_factory=dict)
    # Derived: domains where some connection authenticates by source address. In the
    # others a REGISTER without credentials is challenged before anything else is read.
    ip_authenticated_domains: frozenset[str] = field(init=False)
    # Derived: the process-wide part of the domains' security policies (see `serving_policy`).
    security: SecurityPolicy = field(init=False)

    def __post_init__(self) -> None:
        domains = frozenset(c.domain for c in _ip_connections(self) if c.authentication == "ip")
        object.__setattr__(self, "ip_authenticated_domains", domains)
        object.__setattr__(self, "security", serving_policy(self))

    def connections_per_domain(self) -> dict[str, int]:
        """How many connections each domain has here (of a ConnectionCache: those it holds and has read)."""
        counts: dict[str, int] = {}
        for domain, _ in self.connections:
            counts[domain] = counts.get(domain, 0) + 1
        return counts

    def only(self, domains: frozenset[str]) -> Catalog:
        """The part of this catalogue that serves `domains` (lower-case names)."""
        served = {name: domain for name, domain in self.domains.items() if name in domains}
        if isinstance(self.connections, ConnectionCache):
            return Catalog(served, self.connections)  # it holds and reads the served domains' only
        return Catalog(served, {key: c for key, c in self.connections.items() if key[0] in domains})


def _ip_connections(catalog: Catalog) -> Iterator[Connection]:
    """Every connection that may authenticate by address (of a ConnectionCache, those it holds whole)."""
    connections = catalog.connections
    return iter(connections.held.values() if isinstance(connections, ConnectionCache) else connections.values())


def serving_policy(catalog: Catalog) -> SecurityPolicy:
    """What one registrar process enforces for all the domains it serves.

    Rate limits, connection limits and the transaction cap guard the process, not
    a domain. In a cluster a registrar serves one SipDomain and takes its policy
    as it is; serving several (`sipreg serve`), each limit is the most generous
    any of them sets, so no domain is held tighter than it asked. Trusted
    networks are all of theirs, plus the allow-lists of `ip` connections.
    The WebSocket Origins too (a WebSocket is open before any domain is named).
    Lockouts stay per domain (`Domain.security.lockout`).
    """
    policies = [domain.security for domain in catalog.domains.values()] or [SecurityPolicy()]
    networks = dict.fromkeys(network for policy in policies for network in policy.trusted_networks)
    for connection in _ip_connections(catalog):
        if connection.authentication == "ip":
            networks.update(dict.fromkeys(connection.allowed_networks))
    return SecurityPolicy(
        trusted_networks=tuple(networks),
        sources=_most_generous([policy.sources for policy in policies]),
        lockout=policies[0].lockout,
        connections=_most_generous([policy.connections for policy in policies]),
        max_transactions=max(policy.max_transactions for policy in policies),
        # Any Origin when some domain allows any; else the Origins any of them allows.
        websocket_origins=()
        if any(not policy.websocket_origins for policy in policies)
        else tuple(dict.fromkeys(origin for policy in policies for origin in policy.websocket_origins)),
    )


def _most_generous(limits: list):  # type: ignore[no-untyped-def]
    """Field by field, the largest of several limits of one kind (all of them are 'more is laxer')."""
    names = [f.name for f in fields(limits[0])]
    return type(limits[0])(*[max(getattr(limit, name) for limit in limits) for name in names])
