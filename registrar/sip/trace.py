"""The SIP messages a registrar exchanged lately, kept per connection in bounded rings, for `sipreg trace`.

The endpoint records every SIP message it reads or writes (`received`, `sent`).
A message belongs to a connection once a request of its Call-ID names one of
ours: the authentication step and the router `identify` it, for the user a
REGISTER registers, a caller proves to be or a call is for. Until then it waits
in its peer address's ring. Identifying a Call-ID moves that peer's messages of
the Call-ID into the connection's ring: a phone's first, challenged REGISTER
names no connection we have read yet (issue 17: it reads nothing), and its
second does. Unknown users and unparsable messages belong to no connection and
stay in their address's ring, which is all a flood of made-up usernames can fill.

Everything is bounded, in messages and bytes per ring, in rings, and in bytes in
all; past a bound the oldest messages and the least recently used rings go.
Nothing here reads the clock of another node: traces of several replicas merge
by their wall-clock times (`merged`).
"""

from __future__ import annotations

import base64
import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Final, NamedTuple

from registrar.sip.uri import bracketed, typed_aor, unbracketed


class Captured(NamedTuple):
    """One SIP message as it crossed this node's sockets (a tuple: one is made per message, and fast).

    `source` and `destination` are (host, port) with the host as an IP literal (IPv6 unbracketed);
    `received` says which end was us. Over TLS and secure WebSockets `data` is the message
    after decryption, as the registrar read or wrote it.
    """

    time: float  # seconds since the epoch (wall clock, so traces of several nodes merge in order)
    node: str
    transport: str  # "udp", "tcp", "tls", "ws" or "wss"
    source: tuple[str, int]
    destination: tuple[str, int]
    received: bool
    data: bytes

    @property
    def timestamp(self) -> tuple[int, int]:
        """`time` as capture formats write it (pcap, HEP): whole seconds and microseconds."""
        seconds, microseconds = divmod(round(self.time * 1_000_000), 1_000_000)
        return seconds, microseconds


@dataclass(frozen=True)
class TraceLimits:
    """How much a node keeps: rings of three kinds, each bounded in messages and bytes per ring, in rings,
    and in bytes in all (32 MiB together by default), the least recently used ring going first."""

    messages_per_connection: int = 64
    bytes_per_connection: int = 128 * 1024
    connections: int = 4096
    connection_bytes: int = 20 * 1024 * 1024
    # Connections whose REGISTER failed, kept apart: on a busy node the others' traffic would push
    # a failing trunk's exchanges out within seconds, and they are what someone will come to read.
    failed_connections: int = 1024
    failed_bytes: int = 8 * 1024 * 1024
    # A peer address's messages that belong to no connection (yet): a first REGISTER and its 401,
    # or a scanner's guesses, of which the last few are all anyone needs.
    messages_per_address: int = 16
    bytes_per_address: int = 16 * 1024
    addresses: int = 4096
    address_bytes: int = 4 * 1024 * 1024
    # Call-IDs remembered as some connection's, so that the rest of their messages follow.
    calls: int = 32_768


# What a message costs beyond its bytes: its entry tuple, the address tuples and strings, the
# Call-ID, the bytes object's header, the ring's slot (measured with tracemalloc: 315-403 bytes,
# compiled the most), so that the budgets bound memory, not just the messages' text.
RECORD_OVERHEAD = 448

# A ring's entry, one flat tuple, as cheap to make as anything per message can be: the message as
# (time, transport, source, destination, received, data), then its Call-ID and the bytes it counts for.
_Entry = tuple[float, str, tuple[str, int], tuple[str, int], bool, bytes, "str | None", int]
_CALL_ID: Final = 6
_COST: Final = 7


class _Rings:
    """Rings of one kind by key, least recently used first, within their bounds."""

    __slots__ = ("rings", "sizes", "size", "most_rings", "most_messages", "most_bytes", "most_total")

    def __init__(self, most_rings: int, most_messages: int, most_bytes: int, most_total: int) -> None:
        self.rings: OrderedDict[str, deque[_Entry]] = OrderedDict()
        self.sizes: dict[str, int] = {}
        self.size = 0  # bytes in all of them
        self.most_rings, self.most_messages, self.most_bytes, self.most_total = (
            most_rings, most_messages, most_bytes, most_total)

    def add(self, key: str, entries: Iterable[_Entry], added: int) -> None:
        """Append `entries` (of `added` bytes) to `key`'s ring, made if need be; then keep within the bounds."""
        rings = self.rings
        ring = rings.get(key)
        if ring is None:
            ring = rings[key] = deque()
            self.sizes[key] = 0
        else:
            rings.move_to_end(key)
        ring.extend(entries)
        size = self.sizes[key] + added
        total = self.size + added
        while size > self.most_bytes or len(ring) > self.most_messages:
            gone = ring.popleft()[_COST]
            size -= gone
            total -= gone
        self.sizes[key] = size
        self.size = total
        while total > self.most_total or len(rings) > self.most_rings:
            total = self.size = total - self.drop_oldest()

    def drop_oldest(self) -> int:
        """Forget the least recently used ring: the bytes it held."""
        key, _ = self.rings.popitem(last=False)
        return self.sizes.pop(key)

    def take(self, key: str, call_id: str | None = None) -> tuple[list[_Entry], int]:
        """Remove the entries of `call_id` (None: every one) from `key`'s ring: them, and their bytes."""
        ring = self.rings.get(key)
        if ring is None:
            return [], 0
        if call_id is None:
            del self.rings[key]
            size = self.sizes.pop(key)
            self.size -= size
            return list(ring), size
        taken = [entry for entry in ring if entry[_CALL_ID] == call_id]
        if not taken:
            return [], 0
        kept = [entry for entry in ring if entry[_CALL_ID] != call_id]
        ring.clear()
        ring.extend(kept)
        size = sum(entry[_COST] for entry in taken)
        self.sizes[key] -= size
        self.size -= size
        return taken, size


class TraceRecorder:
    """This node's recent SIP messages: per connection (AOR "user@domain") and per peer address."""

    def __init__(
        self,
        node: str,
        limits: TraceLimits = TraceLimits(),
        clock: Callable[[], float] = time.time,
        copy: Callable[[Captured], None] | None = None,
    ):
        self.node = node
        self.limits = limits
        self.clock = clock
        # Told of every message as it is recorded (a HEP collector's sender).
        self._copy = copy
        self._connections = _Rings(limits.connections, limits.messages_per_connection, limits.bytes_per_connection,
                                   limits.connection_bytes)
        self._failed = _Rings(limits.failed_connections, limits.messages_per_connection, limits.bytes_per_connection,
                              limits.failed_bytes)
        self._addresses = _Rings(limits.addresses, limits.messages_per_address, limits.bytes_per_address,
                                 limits.address_bytes)
        self._calls: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        # A message is kept up to this many bytes (its start: the first line and the headers).
        self._longest = min(limits.bytes_per_address, limits.bytes_per_connection) - RECORD_OVERHEAD

    # -- recording --------------------------------------------------------------------------
    def received(
        self, data: bytes, transport: str, peer: tuple[str, int], local: tuple[str, int], call_id: str | None
    ) -> None:
        self._record(self.clock(), transport, peer, local, True, data, call_id, peer[0])

    def sent(
        self, data: bytes, transport: str, peer: tuple[str, int], local: tuple[str, int], call_id: str | None
    ) -> None:
        self._record(self.clock(), transport, local, peer, False, data, call_id, peer[0])

    def identify(self, call_id: str, aor: str, peer_host: str) -> None:
        """The messages of `call_id` are `aor`'s from now on, and so are those its peer sent or got before."""
        calls = self._calls
        owners = calls.get(call_id)
        if owners is not None and aor in owners:
            calls.move_to_end(call_id)
            return
        calls[call_id] = (*owners, aor) if owners else (aor,)
        if len(calls) > self.limits.calls:
            calls.popitem(last=False)
        taken, size = self._addresses.take(peer_host, call_id)
        if taken:
            self._of(aor).add(aor, taken, size)

    def failed(self, aor: str) -> None:
        """A REGISTER of `aor` failed: its trace is kept apart from now on, where the others' traffic cannot
        push it out (only other failed connections' can)."""
        if aor not in self._failed.rings:
            taken, size = self._connections.take(aor)
            self._failed.add(aor, taken, size)

    def _of(self, aor: str) -> _Rings:
        return self._failed if aor in self._failed.rings else self._connections

    def _record(
        self, now: float, transport: str, source: tuple[str, int], destination: tuple[str, int], received: bool,
        data: bytes, call_id: str | None, peer_host: str,
    ) -> None:
        if self._copy is not None:
            self._copy(Captured(now, self.node, transport, source, destination, received, data))
        if len(data) > self._longest:
            data = data[:self._longest]
        cost = len(data) + RECORD_OVERHEAD
        entry = ((now, transport, source, destination, received, data, call_id, cost),)
        owners = self._calls.get(call_id) if call_id is not None else None
        if owners is None:
            self._addresses.add(peer_host, entry, cost)
        else:
            for aor in owners:
                self._of(aor).add(aor, entry, cost)

    # -- reading ----------------------------------------------------------------------------
    def messages(self, key: str, since: float = 0.0) -> list[Captured]:
        """The messages kept for a connection ("user@domain") or a peer address, after `since`, oldest first."""
        rings = self._of(key) if "@" in key else self._addresses
        node = self.node
        return sorted((Captured(entry[0], node, *entry[1:6]) for entry in rings.rings.get(key, ()) if entry[0] > since),
                      key=_time)

    @property
    def size(self) -> int:
        """Bytes counted in all rings."""
        return self._connections.size + self._failed.size + self._addresses.size

    @property
    def rings(self) -> int:
        return len(self._connections.rings) + len(self._failed.rings) + len(self._addresses.rings)


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def ip_ends(captured: Captured) -> tuple[IPAddress, IPAddress]:
    """A message's source and destination as IP addresses of one family, as a packet has them (pcap, HEP).

    Our end, where it is no IP literal or not of the peer's family (a socket that could not be asked,
    a name given as the advertised address), is the peer's family's unspecified address.
    """
    peer_host, our_host = (captured.source[0], captured.destination[0]) if captured.received else (
        captured.destination[0], captured.source[0])
    peer = _ip(peer_host) or _UNSPECIFIED[4]
    ours = _ip(our_host)
    if ours is None or ours.version != peer.version:
        ours = _UNSPECIFIED[peer.version]
    return (peer, ours) if captured.received else (ours, peer)


_UNSPECIFIED: dict[int, IPAddress] = {4: ipaddress.IPv4Address(0), 6: ipaddress.IPv6Address(0)}


def _ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _time(captured: Captured) -> float:
    return captured.time


def merged(traces: Iterable[Iterable[Captured]]) -> list[Captured]:
    """Several nodes' messages as one trace, in time order."""
    return sorted((captured for trace in traces for captured in trace), key=_time)


# -- the wire form (the HTTP API's JSON) and the text form (`sipreg trace`) ---------------------

def to_json(captured: Captured) -> dict[str, Any]:
    return {
        "time": captured.time, "node": captured.node, "transport": captured.transport,
        "source": list(captured.source), "destination": list(captured.destination), "received": captured.received,
        "data": base64.b64encode(captured.data).decode("ascii"),
    }


def from_json(item: Any) -> Captured:
    """A message another node's API sent; ValueError says what is wrong with it."""
    try:
        return Captured(
            float(item["time"]), str(item["node"]), str(item["transport"]), _address(item["source"]),
            _address(item["destination"]), bool(item["received"]), base64.b64decode(item["data"], validate=True),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"not a traced message: {error!r}") from None


def _address(value: Any) -> tuple[str, int]:
    host, port = value
    return str(host), int(port)


def first_line(captured: Captured) -> str:
    return captured.data.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace")


def summary(captured: Captured) -> str:
    """One line per message, as sngrep lists them: when, which node, from whom to whom over what, the first line."""
    when = datetime.fromtimestamp(captured.time, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    return (f"{when} {captured.node} {_text(captured.source)} -> {_text(captured.destination)} "
            f"{captured.transport.upper()} {first_line(captured)}")


def as_text(messages: Iterable[Captured], whole: bool = False) -> str:
    """A trace as `sipreg trace` prints it: a line per message, each `whole` message after its line."""
    lines = []
    for captured in messages:
        lines.append(summary(captured))
        if whole:
            lines.append(captured.data.decode("utf-8", "replace").replace("\r\n", "\n").rstrip("\n") + "\n")
    return "".join(f"{line}\n" for line in lines)


def trace_key(text: str) -> str:
    """What a trace is asked for by: a connection's AOR (user@domain, a sip: or sips: URI's too) or an IP
    address (the messages from and to it that belong to no connection); ValueError otherwise."""
    if "@" in text:
        return typed_aor(text)
    try:
        return str(ipaddress.ip_address(unbracketed(text.strip())))
    except ValueError:
        raise ValueError(f"{text!r} is neither user@domain nor an IP address") from None


def _text(address: tuple[str, int]) -> str:
    host, port = address
    return f"{bracketed(host)}:{port}"
