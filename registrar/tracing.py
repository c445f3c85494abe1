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
from typing import Any


@dataclass(frozen=True, slots=True)
class Captured:
    """One SIP message as it crossed this node's sockets.

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

    @property
    def peer(self) -> tuple[str, int]:
        """The other end: whoever sent what we received, or got what we sent."""
        return self.source if self.received else self.destination


@dataclass(frozen=True)
class TraceLimits:
    """How much a node keeps. The defaults hold a busy trunk's last REGISTER exchanges and calls."""

    messages_per_connection: int = 64
    bytes_per_connection: int = 128 * 1024
    # A peer address's messages that belong to no connection (yet): a first REGISTER and its 401,
    # or a scanner's guesses, of which the last few are all anyone needs.
    messages_per_address: int = 16
    bytes_per_address: int = 16 * 1024
    # Rings of each kind, and bytes in all of them together.
    connections: int = 4096
    addresses: int = 4096
    total_bytes: int = 32 * 1024 * 1024
    # Call-IDs remembered as some connection's, so that the rest of their messages follow.
    calls: int = 32_768


# What a message costs beyond its bytes: the record, its tuples and the ring's slot.
RECORD_OVERHEAD = 240


class _Ring:
    """One key's recent messages with their Call-IDs, oldest first, and the bytes they count for."""

    __slots__ = ("entries", "size")

    def __init__(self) -> None:
        self.entries: deque[tuple[Captured, str | None]] = deque()
        self.size = 0


def _cost(captured: Captured) -> int:
    return len(captured.data) + RECORD_OVERHEAD


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
        self._connections: OrderedDict[str, _Ring] = OrderedDict()
        self._addresses: OrderedDict[str, _Ring] = OrderedDict()
        self._calls: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self.size = 0  # bytes counted in all rings

    # -- recording --------------------------------------------------------------------------
    def received(
        self, data: bytes, transport: str, peer: tuple[str, int], local: tuple[str, int], call_id: str | None
    ) -> None:
        self._record(Captured(self.clock(), self.node, transport, peer, local, True, data), call_id)

    def sent(
        self, data: bytes, transport: str, peer: tuple[str, int], local: tuple[str, int], call_id: str | None
    ) -> None:
        self._record(Captured(self.clock(), self.node, transport, local, peer, False, data), call_id)

    def identify(self, call_id: str, aor: str, peer_host: str) -> None:
        """The messages of `call_id` are `aor`'s from now on, and so are those its peer sent or got before."""
        owners = self._calls.get(call_id)
        if owners is not None and aor in owners:
            self._calls.move_to_end(call_id)
            return
        self._calls[call_id] = (*owners, aor) if owners else (aor,)
        if len(self._calls) > self.limits.calls:
            self._calls.popitem(last=False)
        waiting = self._addresses.get(peer_host)
        if waiting is None:
            return
        moved = [entry for entry in waiting.entries if entry[1] == call_id]
        if not moved:
            return
        waiting.entries = deque(entry for entry in waiting.entries if entry[1] != call_id)
        for captured, _ in moved:
            waiting.size -= _cost(captured)
            self.size -= _cost(captured)
        for captured, _ in moved:
            self._append(self._ring(self._connections, aor, self.limits.connections), captured, call_id,
                         self.limits.messages_per_connection, self.limits.bytes_per_connection)
        self._within_total()

    def _record(self, captured: Captured, call_id: str | None) -> None:
        if self._copy is not None:
            self._copy(captured)
        owners = self._calls.get(call_id) if call_id else None
        limits = self.limits
        if owners is None:
            self._append(self._ring(self._addresses, captured.peer[0], limits.addresses), captured, call_id,
                         limits.messages_per_address, limits.bytes_per_address)
        else:
            for aor in owners:
                self._append(self._ring(self._connections, aor, limits.connections), captured, call_id,
                             limits.messages_per_connection, limits.bytes_per_connection)
        self._within_total()

    def _ring(self, rings: OrderedDict[str, _Ring], key: str, most: int) -> _Ring:
        ring = rings.get(key)
        if ring is None:
            ring = rings[key] = _Ring()
            if len(rings) > most:
                _, gone = rings.popitem(last=False)
                self.size -= gone.size
        else:
            rings.move_to_end(key)
        return ring

    def _append(self, ring: _Ring, captured: Captured, call_id: str | None, most: int, most_bytes: int) -> None:
        if _cost(captured) > most_bytes:
            # Bigger than the ring: its start (the first line and headers) is what a reader wants.
            captured = _truncated(captured, most_bytes - RECORD_OVERHEAD)
        cost = _cost(captured)
        ring.entries.append((captured, call_id))
        ring.size += cost
        self.size += cost
        while len(ring.entries) > most or ring.size > most_bytes:
            old, _ = ring.entries.popleft()
            ring.size -= _cost(old)
            self.size -= _cost(old)

    def _within_total(self) -> None:
        # Strangers' rings go first: a connection's trace is what someone will ask for.
        for rings in (self._addresses, self._connections):
            while self.size > self.limits.total_bytes and rings:
                _, gone = rings.popitem(last=False)
                self.size -= gone.size

    # -- reading ----------------------------------------------------------------------------
    def messages(self, key: str, since: float = 0.0) -> list[Captured]:
        """The messages kept for a connection ("user@domain") or a peer address, after `since`, oldest first."""
        ring = self._connections.get(key) if "@" in key else self._addresses.get(key)
        if ring is None:
            return []
        return sorted((captured for captured, _ in ring.entries if captured.time > since), key=_time)

    @property
    def rings(self) -> int:
        return len(self._connections) + len(self._addresses)


def _time(captured: Captured) -> float:
    return captured.time


def _truncated(captured: Captured, size: int) -> Captured:
    return Captured(captured.time, captured.node, captured.transport, captured.source, captured.destination,
                    captured.received, captured.data[:max(size, 0)])


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
    line = captured.data.split(b"\r\n", 1)[0] or captured.data.split(b"\n", 1)[0]
    return line.decode("utf-8", "replace")


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
    text = text.strip()
    if text.startswith(("sip:", "sips:")):
        text = text.partition(":")[2]
    user, at, host = text.rpartition("@")
    if at:
        if not user or not host:
            raise ValueError(f"{text!r} is not user@domain")
        return f"{user}@{host.lower()}"
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        raise ValueError(f"{text!r} is neither user@domain nor an IP address") from None


def _text(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
