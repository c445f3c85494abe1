"""Where sipreg keeps things in etcd, and how each record is encoded: the one definition (v1).

Registrars and the operator both import this module; nothing else builds a key
or reads a record. Every key lives under a versioned prefix, so a future v2
layout can be written beside v1 and migrated to without a flag day:

    /sipreg/v1/domains/<domain>                  a SipDomain (Domain record)
    /sipreg/v1/connections/<domain>/<username>   a SipConnection (HA1 digests, ACL)
    /sipreg/v1/ip-connections/<domain>/<username>
                                                 the same record again, of a SipConnection that
                                                 authenticates by source address: registrars hold
                                                 these whole and read the others on demand
    /sipreg/v1/bindings/<domain>/<user>          every binding of one AOR
    /sipreg/v1/failures/<domain>/<username>      a connection's last failure (a REGISTER refused, a
                                                 contact removed for not answering pings)
    /sipreg/v1/nodes/<node-id>                   a live registrar (under a kept-alive lease)
    /sipreg/v1/claims/<domain>/<username>        which SipConnection owns that user ("namespace/name"):
                                                 made with a compare, so two cannot both own it

Records are JSON objects whose field names are those of the SipDomain and
SipConnection specs (camelCase), so `etcdctl get --prefix /sipreg/v1/` reads
like the manifests. Domain names never contain "/", so everything after the
domain's "/" is the user part, whatever characters it holds.

All bindings of one AOR share one key. RFC 3261 10.3 orders REGISTERs per AOR
(Call-ID/CSeq, maxContacts), so one key makes each update a single
compare-and-swap on that key's mod revision: a write from another replica, a
removal included, makes the compare fail. The key carries a lease that ends
after its latest binding expires; bindings that expired earlier stay in the
record until the next write and are dropped by `decode_bindings`, so no reader
ever sees them.

A registrar follows (reads whole, then watches) the domains, the ip connections
of the domains it serves and the nodes; it watches its domains' connections
without reading them, to hear of changes to those it read (`served`). The
operator follows everything (`EVERYTHING`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from json.encoder import encode_basestring_ascii
from typing import Any

from registrar.model import (
    Binding,
    Connection,
    ConnectionLimits,
    Domain,
    KeepalivePolicy,
    LockoutPolicy,
    RegistrationPolicy,
    SecurityPolicy,
    SourceLimits,
)
from registrar.sip.uri import unbracketed
from registrar.store import REGISTER_FAILED, RegistrationFailure

PREFIX = "/sipreg/v1/"
DOMAINS = PREFIX + "domains/"
CONNECTIONS = PREFIX + "connections/"
BINDINGS = PREFIX + "bindings/"
FAILURES = PREFIX + "failures/"
NODES = PREFIX + "nodes/"
CLAIMS = PREFIX + "claims/"
IP_CONNECTIONS = PREFIX + "ip-connections/"


class BadRecord(ValueError):
    """A record in etcd that this version cannot read (written by hand, or by a newer sipreg)."""


def prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with `prefix` (etcd's convention)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def prefix_range(prefix: bytes) -> tuple[bytes, bytes]:
    """The [key, range_end) of every key starting with `prefix`."""
    return prefix, prefix_end(prefix)


KeyRange = tuple[bytes, bytes]  # [key, range_end)


@dataclasses.dataclass(frozen=True)
class Followed:
    """What a store follows: `held` ranges are read whole, then watched; `watched` ones only watched."""

    held: tuple[KeyRange, ...]
    watched: tuple[KeyRange, ...] = ()


# The operator's: every connection's status comes from every binding and failure.
EVERYTHING = Followed((prefix_range(PREFIX.encode()),))


def served(domains: frozenset[str] | None) -> Followed:
    """What a registrar serving `domains` (None: every domain) follows: the domains, the nodes, and its
    domains' ip connections, held; its domains' connections, watched (it reads them on demand). Never the
    bindings: following them would cost every replica every replica's writes."""

    def of_domains(prefix: str) -> tuple[KeyRange, ...]:
        if domains is None:
            return (prefix_range(prefix.encode()),)
        return tuple(prefix_range(f"{prefix}{domain}/".encode()) for domain in sorted(domains))

    return Followed(
        held=(*of_domains(IP_CONNECTIONS), prefix_range(DOMAINS.encode()), prefix_range(NODES.encode())),
        watched=of_domains(CONNECTIONS),
    )


# -- keys ----------------------------------------------------------------------------------


def domain_key(domain: str) -> bytes:
    return f"{DOMAINS}{domain}".encode()


def connection_key(domain: str, username: str) -> bytes:
    return f"{CONNECTIONS}{domain}/{username}".encode()


def connection_keys(domain: str, username: str) -> list[bytes]:
    """Every key a connection may be written under (connection_records): what removing it deletes."""
    return [connection_key(domain, username), f"{IP_CONNECTIONS}{domain}/{username}".encode()]


def bindings_key(aor: str) -> bytes:
    user, _, domain = aor.rpartition("@")
    return f"{BINDINGS}{domain}/{user}".encode()


def connections_domain_prefix(domain: str) -> bytes:
    return f"{CONNECTIONS}{domain}/".encode()


def bindings_domain_prefix(domain: str) -> bytes:
    return f"{BINDINGS}{domain}/".encode()


def aor_of(key: bytes) -> str:
    """The AOR a bindings key stands for."""
    domain, user = split_key(BINDINGS, key)
    return f"{user}@{domain}"


def failure_key(domain: str, username: str) -> bytes:
    return f"{FAILURES}{domain}/{username}".encode()


def node_key(node: str) -> bytes:
    return f"{NODES}{node}".encode()


def claim_key(domain: str, username: str) -> bytes:
    return f"{CLAIMS}{domain}/{username}".encode()


def claimant(namespace: str, name: str) -> bytes:
    """A claim's value: the SipConnection that owns the user."""
    return f"{namespace}/{name}".encode()


def split_key(prefix: str, key: bytes) -> tuple[str, str]:
    """(domain, rest) of a key under `prefix` (CONNECTIONS, BINDINGS, FAILURES)."""
    domain, _, rest = key.decode()[len(prefix) :].partition("/")
    return domain, rest


# -- records -------------------------------------------------------------------------------


def _dumps(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()


def _loads(value: bytes, what: str) -> dict[str, Any]:
    try:
        record = json.loads(value)
    except (ValueError, UnicodeDecodeError) as error:
        raise BadRecord(f"{what}: not JSON ({error})") from None
    if not isinstance(record, dict):
        raise BadRecord(f"{what}: not a JSON object")
    return record


def encode_domain(domain: Domain) -> bytes:
    policy = domain.registration
    return _dumps(
        {
            "domain": domain.name,
            "registration": {
                "enabled": policy.enabled,
                "minExpires": policy.min_expires,
                "defaultExpires": policy.default_expires,
                "maxExpires": policy.max_expires,
            },
            "mode": domain.mode,
            "outboundGateway": domain.outbound_gateway,
            "digestAlgorithms": list(domain.digest_algorithms),
            "security": _security_record(domain.security),
            "keepalive": _keepalive_record(domain.keepalive),
        }
    )


def decode_domain(value: bytes) -> Domain:
    record = _loads(value, "domain")
    try:
        policy = record["registration"]
        return Domain(
            name=str(record["domain"]),
            registration=RegistrationPolicy(
                enabled=bool(policy["enabled"]),
                min_expires=int(policy["minExpires"]),
                default_expires=int(policy["defaultExpires"]),
                max_expires=int(policy["maxExpires"]),
            ),
            mode=record["mode"],
            outbound_gateway=record.get("outboundGateway"),
            digest_algorithms=tuple(map(str, record["digestAlgorithms"])),
            # Written before security existed: the defaults.
            security=_security_of(record["security"]) if "security" in record else SecurityPolicy(),
            keepalive=_keepalive_of(record["keepalive"]) if "keepalive" in record else KeepalivePolicy(),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise BadRecord(f"domain: missing or bad field {error}") from None


def _keepalive_record(policy: KeepalivePolicy) -> dict[str, Any]:
    return {
        "pingIntervalSeconds": policy.ping_interval,
        "pingFailures": policy.ping_failures,
        "flowTimerUdpSeconds": policy.flow_timer_udp,
        "flowTimerStreamSeconds": policy.flow_timer_stream,
    }


def _keepalive_of(record: dict[str, Any]) -> KeepalivePolicy:
    return KeepalivePolicy(
        ping_interval=int(record["pingIntervalSeconds"]),
        ping_failures=int(record["pingFailures"]),
        flow_timer_udp=int(record["flowTimerUdpSeconds"]),
        flow_timer_stream=int(record["flowTimerStreamSeconds"]),
    )


def _security_record(policy: SecurityPolicy) -> dict[str, Any]:
    return {
        "trustedNetworks": [str(network) for network in policy.trusted_networks],
        "sources": dataclasses.asdict(policy.sources),
        "lockout": dataclasses.asdict(policy.lockout),
        "connections": dataclasses.asdict(policy.connections),
        "maxTransactions": policy.max_transactions,
        "webSocketOrigins": list(policy.websocket_origins),
    }


def _security_of(record: dict[str, Any]) -> SecurityPolicy:
    return SecurityPolicy(
        trusted_networks=tuple(ipaddress.ip_network(text) for text in record["trustedNetworks"]),
        sources=SourceLimits(**record["sources"]),
        lockout=LockoutPolicy(**record["lockout"]),
        connections=ConnectionLimits(**record["connections"]),
        max_transactions=int(record["maxTransactions"]),
        # Written before WebSocket: any Origin, as then.
        websocket_origins=tuple(map(str, record.get("webSocketOrigins", ()))),
    )


def encode_connection(connection: Connection) -> bytes:
    return _dumps(
        {
            "name": connection.name,
            "domain": connection.domain,
            "username": connection.username,
            "authentication": connection.authentication,
            "ha1": connection.ha1,
            "allowedAddresses": [str(network) for network in connection.allowed_networks],
            "maxContacts": connection.max_contacts,
            "inbound": connection.inbound,
            "outbound": connection.outbound,
        }
    )


def connection_records(connection: Connection) -> dict[bytes, bytes]:
    """The keys and records a connection is written as: its record, and the same again under
    ip-connections/ when it authenticates by address."""
    record = encode_connection(connection)
    keys = connection_keys(connection.domain, connection.username)
    return dict.fromkeys(keys if connection.authentication == "ip" else keys[:1], record)


def decode_connection(value: bytes) -> Connection:
    record = _loads(value, "connection")
    try:
        return Connection(
            domain=str(record["domain"]),
            username=str(record["username"]),
            authentication=record["authentication"],
            ha1={str(k): str(v) for k, v in record["ha1"].items()},
            allowed_networks=tuple(ipaddress.ip_network(n) for n in record["allowedAddresses"]),
            max_contacts=int(record["maxContacts"]),
            inbound=bool(record["inbound"]),
            outbound=bool(record["outbound"]),
            name=str(record.get("name", "")),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise BadRecord(f"connection: missing or bad field {error}") from None


# A binding's record: the fields of Binding in camelCase but the AOR (the key says it), and the
# source as one text, "udp:203.0.113.5:40123" (IPv6 in brackets), as every version has written it:
#
#     {"contact", "expiresAt", "callId", "cseq", "q", "instance", "regId", "transport", "source",
#      "flow", "node", "userAgent", "registeredAt"[, "path"]}
#
# "path" (a list of Path header values, RFC 3327) is written only when there is one, so a
# binding without is the record every version wrote; a reader that predates it ignores it
# (and sends to the source instead: an upgrade's window, not a lost call).
#
# Binding keeps the source as fields (source_host, source_port); the text is written from them
# here and read back into them here, nowhere else. Keeping the text, not writing new fields,
# keeps the record what older registrars and operators read and write, both ways: in a rolling
# upgrade each side reads what the other wrote. The transport is the record's "transport"; the
# same word at the head of "source" is not read back. An empty "source" (none known) stays one.
_BINDING_ORDER = (
    "aor", "contact", "expires_at", "call_id", "cseq", "q", "instance", "reg_id", "transport", "source_host",
    "source_port", "flow", "node", "user_agent", "registered_at", "path",
)
assert Binding._fields == _BINDING_ORDER, "layout out of step with Binding"


def encode_bindings(bindings: tuple[Binding, ...] | list[Binding]) -> bytes:
    try:
        return ('{"bindings":[' + ",".join(map(_binding_json, bindings)) + "]}").encode()
    except (_Unusual, TypeError):  # a value json.dumps writes its own way (from a record written by hand)
        return _dumps({"bindings": [_binding_record(binding) for binding in bindings]})


def _binding_record(binding: Binding) -> dict[str, Any]:
    """A binding's record as a dict, for json.dumps: the definition `_binding_json` writes faster."""
    b = binding
    return {
        "contact": b.contact, "expiresAt": b.expires_at, "callId": b.call_id, "cseq": b.cseq, "q": b.q,
        "instance": b.instance, "regId": b.reg_id, "transport": b.transport,
        "source": _source_text(b.transport, b.source_host, b.source_port), "flow": b.flow, "node": b.node,
        "userAgent": b.user_agent, "registeredAt": b.registered_at, **({"path": list(b.path)} if b.path else {}),
    }


# One binding written straight into its JSON text, byte for byte what json.dumps makes of
# it (tests/unit/test_layout.py checks): every REGISTER writes one, and json.dumps took
# 77k instructions for it, this a third of that. Only for the value types the registrar
# makes; anything else raises and goes the json.dumps way.
_json_string = encode_basestring_ascii  # what json.dumps writes a str as; TypeError for others


class _Unusual(Exception):
    pass


def _binding_json(binding: Binding) -> str:
    (_, contact, expires_at, call_id, cseq, q, instance, reg_id, transport, source_host, source_port, flow, node,
     user_agent, registered_at, path) = binding
    if path or not (type(expires_at) is float and type(registered_at) is float and type(cseq) is int):
        raise _Unusual
    if not (_FINITE > abs(expires_at) and _FINITE > abs(registered_at)):  # json.dumps writes NaN, Infinity
        raise _Unusual
    source = _source_text(transport, source_host, source_port)
    return (
        f'{{"contact":{_json_string(contact)},"expiresAt":{expires_at!r},"callId":{_json_string(call_id)},'
        f'"cseq":{cseq!r},"q":{_json_optional(q)},"instance":{_json_optional(instance)},'
        f'"regId":{_json_optional(reg_id)},"transport":{_json_string(transport)},"source":{_json_string(source)},'
        f'"flow":{_json_optional(flow)},"node":{_json_string(node)},"userAgent":{_json_string(user_agent)},'
        f'"registeredAt":{registered_at!r}}}'
    )


def _json_optional(value: object) -> str:
    if value is None:
        return "null"
    kind = type(value)
    if kind is str:
        return _json_string(value)
    if kind is int or (kind is float and _FINITE > abs(value)):  # exactly: a bool is an int json writes as true
        return repr(value)
    raise _Unusual


_FINITE = float("inf")


def _source_text(transport: str, host: str, port: int) -> str:
    """A record's "source" (the inverse of `_source_address`); "" when none is known.

    The text str(Source) writes too, but spelt out here: the record's form is fixed by the
    records already written, whatever logs and the API come to show.
    """
    if not host:
        return ""
    return f"{transport}:[{host}]:{port}" if ":" in host else f"{transport}:{host}:{port}"


def _source_address(text: object) -> tuple[str, int]:
    """(host, port) of a record's "source" ("udp:192.0.2.7:5060", "tls:[2001:db8::1]:5061", "": none)."""
    if text == "":
        return "", 0
    if type(text) is not str:
        raise TypeError(f"source {text!r} is not a string")
    host, _, port = text.partition(":")[2].rpartition(":")
    if not host or not (port.isascii() and port.isdigit()):
        raise ValueError(f"source {text!r} is not transport:host:port")
    return unbracketed(host), int(port)


def decode_bindings(aor: str, value: bytes, now: float | None = None) -> tuple[Binding, ...]:
    """An AOR's bindings from its record; with `now`, only those not yet expired."""
    record = _loads(value, f"bindings of {aor}")
    try:
        bindings = tuple(_binding(aor, item) for item in record["bindings"])
    except (KeyError, TypeError, ValueError) as error:
        raise BadRecord(f"bindings of {aor}: missing or bad field {error}") from None
    if now is not None:
        bindings = tuple(b for b in bindings if b.expires_at > now)
    return bindings


def _binding(aor: str, item: dict[str, Any]) -> Binding:
    source_host, source_port = _source_address(item["source"])
    # The fields that expiry and ordering compute with must be numbers, whoever wrote them.
    return Binding(
        aor, item["contact"], float(item["expiresAt"]), item["callId"], int(item["cseq"]), item["q"],
        item["instance"], item["regId"], item["transport"], source_host, source_port, item["flow"], item["node"],
        item["userAgent"], float(item["registeredAt"]), _path(item.get("path", ())),
    )


def _path(values: object) -> tuple[str, ...]:
    if not isinstance(values, (list, tuple)) or not all(isinstance(value, str) for value in values):
        raise TypeError(f"path {values!r} is not a list of strings")
    return tuple(values)


def encode_failure(failure: RegistrationFailure) -> bytes:
    optional = {name: value for name, value in
                (("kind", failure.kind if failure.kind != REGISTER_FAILED else ""), ("node", failure.node),
                 ("request", failure.request)) if value}
    return _dumps({"time": failure.time, "reason": failure.reason, "source": failure.source, **optional})


def decode_failure(domain: str, username: str, value: bytes) -> RegistrationFailure:
    record = _loads(value, "failure")
    try:
        return RegistrationFailure(
            domain, username, float(record["time"]), str(record["reason"]), str(record["source"]),
            str(record.get("kind", REGISTER_FAILED)), str(record.get("node", "")), str(record.get("request", "")),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise BadRecord(f"failure: missing or bad field {error}") from None


def encode_node(
    node: str, address: str, sip_port: int, started: float, http_port: int | None = None,
    domains: frozenset[str] | None = None,
) -> bytes:
    """A node's record: where its SIP listener is, its HTTP API when it serves one, and the domains it
    serves when not all (a SipDomain's pods): whom to ask for a connection's trace."""
    optional = {"httpPort": http_port, "domains": sorted(domains) if domains is not None else None}
    return _dumps({"node": node, "address": address, "sipPort": sip_port, "started": started,
                   **{name: value for name, value in optional.items() if value is not None}})


def decode_node(value: bytes) -> dict[str, Any]:
    record = _loads(value, "node")
    if not {"node", "address", "sipPort"} <= record.keys():
        raise BadRecord("node: needs node, address and sipPort")
    return record
