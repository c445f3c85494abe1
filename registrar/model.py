"""The registrar's domain model: SIP domains, connections (trunks/users) and bindings.

These are plain values. The manifest loader builds Domain and Connection from
SipDomain/SipConnection objects; the location service stores Binding; the
registrar logic reads all three. None of them knows about YAML, etcd or sockets.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

Transport = Literal["udp", "tcp", "tls"]
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
class Domain:
    """A SIP domain this registrar serves (a SipDomain)."""

    name: str  # the FQDN in Request-URIs and AORs, lower case; also the digest realm
    registration: RegistrationPolicy = field(default_factory=RegistrationPolicy)
    mode: DomainMode = "proxy"
    outbound_gateway: str | None = None
    # Offered in this order, one WWW-Authenticate header each (RFC 8760 section 2.4).
    digest_algorithms: tuple[str, ...] = ("MD5",)


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
    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_contacts: int = 5
    inbound: bool = True
    outbound: bool = True
    name: str = ""  # the SipConnection's metadata.name, for status and logs

    @property
    def aor(self) -> str:
        return f"{self.username}@{self.domain}"

    def allows_address(self, host: str) -> bool:
        """True when `host` is in the allow-list (an empty list allows any address)."""
        if not self.allowed_networks:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.allowed_networks)


class Binding(NamedTuple):
    """One Contact registered for an AOR (RFC 3261 10.3), plus where it came from.

    `source` is the packet's transport address ("udp:203.0.113.5:40123"); when
    it differs from the Contact's host:port the UA is behind NAT and requests
    must go to `source`. `flow` names the connection the REGISTER arrived on, so
    that requests reach the UA over the connection it opened (RFC 5923/5626), and
    `node` the registrar process that holds that connection.

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
    source: str = ""
    flow: str | None = None
    node: str = ""
    user_agent: str = ""
    registered_at: float = 0.0

    def expires_in(self, now: float) -> int:
        """Seconds left, rounded up, never negative (for the 200 OK's expires param)."""
        seconds = int(self.expires_at - now + 0.999)
        return seconds if seconds > 0 else 0


@dataclass(frozen=True, slots=True)
class Catalog:
    """What a registrar serves: domains and connections.

    `domains` is keyed by the lower-case domain name; `connections` by
    (lower-case domain, username): usernames are case-sensitive, like the user
    part of a SIP URI (RFC 3261 19.1.4). A registrar swaps in a whole new
    Catalog when the configuration changes, never edits one in place.
    """

    domains: dict[str, Domain] = field(default_factory=dict)
    connections: dict[tuple[str, str], Connection] = field(default_factory=dict)
    # Derived: domains where some connection authenticates by source address. In the
    # others a REGISTER without credentials is challenged before anything else is read.
    ip_authenticated_domains: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        domains = frozenset(c.domain for c in self.connections.values() if c.authentication == "ip")
        object.__setattr__(self, "ip_authenticated_domains", domains)

    def only(self, domains: frozenset[str]) -> Catalog:
        """The part of this catalogue that serves `domains` (lower-case names)."""
        return Catalog(
            domains={name: domain for name, domain in self.domains.items() if name in domains},
            connections={key: c for key, c in self.connections.items() if key[0] in domains},
        )
