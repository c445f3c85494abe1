"""NAT keepalive pings: OPTIONS to the UDP phones behind NAT that this replica holds, and removal of those that stop answering.

A phone behind NAT is reachable only while the NAT keeps the mapping its
REGISTER opened, and a NAT forgets an idle UDP mapping after 30 s or more. Most
phones keep it open themselves (CRLF or STUN keepalives, RFC 5626 flows); for
the rest, the registrar sends an OPTIONS every `KeepalivePolicy.ping_interval`
(Kamailio's nathelper pings). The answer, any answer, keeps the mapping open
and proves the phone is there; `ping_failures` pings in a row without one and
the contact is removed, its connection's status saying why, so a call to the
user does not wait on a phone that has gone.

Pinged are the UDP contacts whose REGISTER this replica answered (the binding's
`node` is ours: with several replicas, each pings only its own, never N times
over), whose Contact is not where their packets come from (behind NAT), that
have no Path (the edge proxy's job) and no reg-id (an outbound phone keeps its
flow alive itself). Before each ping the binding is looked up again: one that
was refreshed through another replica, or removed, is dropped from the list.
The contacts due at one tick are looked up together (`LocationStore.lookup_many`:
with etcd, a read per MAX_TXN_OPS AORs, not one per ping).

Pings are stateless, one datagram each, as nathelper's are: no retransmissions,
no transaction. The answer is matched by the Via branch, a random token only
the phone has seen, so nobody else can keep a gone phone's contact alive. What
is kept is one small record per pinged contact, no more than the bindings this
replica stored.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from registrar.model import Binding, Domain
from registrar.sip.message import Response, SipError
from registrar.sip.uri import as_request_uri, bracketed
from registrar.store import CONTACT_UNREACHABLE, LocationStore, RegistrationFailure, StoreUnavailable, domain_of

log = logging.getLogger("sipreg.keepalive")

BRANCH_MARK = "z9hG4bK-ping-"
TICK = 1.0  # how often due pings are looked for: a ping is at most this late


@dataclass(slots=True)
class Pinged:
    """One contact this replica pings, and how its pings went."""

    aor: str
    contact: str
    host: str  # where its packets come from: the NAT's address and port
    port: int
    interval: int
    failures: int  # unanswered in a row that remove it
    expires_at: float
    due: int = 0  # the TICK it is next pinged at
    unanswered: int = 0
    branch: str | None = None  # the last ping's, until its answer comes


Send = Callable[[str, int, bytes], None]


class NatPinger:
    """The contacts this replica pings, the pings, and what an unanswered one leads to."""

    def __init__(
        self,
        store: LocationStore,
        send: Send,
        *,
        node: str,
        via: Callable[[], tuple[str, int]],
        clock: Callable[[], float] = time.time,
        on_ping: Callable[[str], None] = lambda result: None,
        on_removed: Callable[[Pinged], None] = lambda pinged: None,
        rng: random.Random | None = None,
    ):
        self.store = store
        self._send = send
        self.node = node
        self._via = via  # (host, port) our Via names: where the phone sends its answer
        self.clock = clock
        self._on_ping = on_ping  # "sent", "answered"
        self._on_removed = on_removed
        self._random = rng or random.Random()
        self.pinged: dict[tuple[str, str], Pinged] = {}
        self._due: dict[int, list[tuple[str, str]]] = {}  # tick -> contacts due then
        self._awaiting: dict[str, tuple[str, str]] = {}  # branch -> the contact pinged with it

    # -- in ---------------------------------------------------------------------------------
    def bound(self, domain: Domain, host: str, port: int, bindings: Sequence[Binding]) -> None:
        """A REGISTER from udp host:port stored `bindings` here: the ones behind NAT are pinged from now on."""
        policy = domain.keepalive
        if not policy.ping_interval:
            return
        for binding in bindings:
            if binding.source_port != port or binding.source_host != host or binding.node != self.node:
                continue
            key = (binding.aor, binding.contact)
            known = self.pinged.get(key)
            if known is not None and (known.host, known.port) == (host, port):
                known.expires_at = binding.expires_at  # a refresh: the phone is there
                known.unanswered = 0
                continue
            if binding.transport != "udp" or binding.reg_id is not None or binding.path or not binding.received_uri():
                continue
            pinged = Pinged(binding.aor, binding.contact, host, port, policy.ping_interval, policy.ping_failures,
                            binding.expires_at)
            self.pinged[key] = pinged
            # The first ping somewhere within the interval: phones that registered together are pinged spread out.
            self._schedule(pinged, self._tick() + 1 + int(self._random.random() * policy.ping_interval))

    def answered(self, response: Response) -> bool:
        """Whether `response` answers one of our pings (then it is taken: the phone is there)."""
        if BRANCH_MARK not in (response.get("Via") or ""):
            return False  # a call's response, most of the time: its Via is parsed once, by the proxy
        try:
            branch = response.top_via.branch or ""
        except SipError:
            return False
        if not branch.startswith(BRANCH_MARK):
            return False
        key = self._awaiting.pop(branch, None)
        pinged = self.pinged.get(key) if key is not None else None
        if pinged is not None and pinged.branch == branch:
            pinged.branch = None
            pinged.unanswered = 0
            self._on_ping("answered")
        return True

    # -- the pings ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Ping what is due, every TICK, until cancelled."""
        while True:
            await asyncio.sleep(TICK)
            try:
                await self.ping_due()
            except Exception as error:  # a bug must not stop the pings of every other phone
                log.error("sipreg: keepalive pings failed: %r", error)

    async def ping_due(self) -> None:
        tick = self._tick()
        due = []
        for when in sorted(t for t in self._due if t <= tick):
            for key in self._due.pop(when):
                pinged = self.pinged.get(key)
                if pinged is not None and pinged.due == when:
                    due.append(pinged)
        if not due:
            return
        try:
            current = await self.store.lookup_many({pinged.aor for pinged in due})
        except StoreUnavailable:
            for pinged in due:  # nothing is known of them now: again at the next tick
                self._schedule(pinged, tick + 1)
            return
        for pinged in due:
            await self._ping(pinged, tick, current[pinged.aor])

    async def _ping(self, pinged: Pinged, tick: int, bindings: Sequence[Binding]) -> None:
        key = (pinged.aor, pinged.contact)
        if not self._still_ours(pinged, bindings):
            self._forget(pinged)
            return
        if pinged.branch is not None:
            self._awaiting.pop(pinged.branch, None)
            pinged.branch = None
            pinged.unanswered += 1
            if pinged.unanswered >= pinged.failures:
                await self._remove(pinged)
                return
        pinged.branch = BRANCH_MARK + os.urandom(8).hex()
        self._awaiting[pinged.branch] = key
        self._send(pinged.host, pinged.port, self._options(pinged))
        self._on_ping("sent")
        self._schedule(pinged, tick + pinged.interval)

    def _still_ours(self, pinged: Pinged, bindings: Sequence[Binding]) -> bool:
        """Whether the binding is still among the AOR's `bindings`, held here, from the same address (not
        refreshed elsewhere)."""
        if pinged.expires_at <= self.clock():
            return False
        for binding in bindings:
            if binding.contact == pinged.contact:
                return (binding.node, binding.source_host, binding.source_port) == (self.node, pinged.host, pinged.port)
        return False

    async def _remove(self, pinged: Pinged) -> None:
        """The phone stopped answering: its contact goes, and its connection's status says why."""
        self._forget(pinged)
        now = self.clock()

        def without_it(current: Sequence[Binding]) -> list[Binding]:
            return [b for b in current if not _same_contact(b, pinged, self.node)]

        try:
            await self.store.update(pinged.aor, without_it)
        except StoreUnavailable:
            return  # it expires in its time; the store's outage is reported elsewhere
        user, _, domain = pinged.aor.rpartition("@")
        reason = f"contact {pinged.contact} removed: {pinged.failures} keepalive pings in a row unanswered"
        log.info("sipreg: %s of %s", reason, pinged.aor)
        self._on_removed(pinged)
        try:
            await self.store.record_failure(RegistrationFailure(
                domain_of(pinged.aor), user, now, reason, f"udp:{bracketed(pinged.host)}:{pinged.port}",
                CONTACT_UNREACHABLE))
        except StoreUnavailable:
            pass

    def _options(self, pinged: Pinged) -> bytes:
        host, port = self._via()
        token = pinged.branch[len(BRANCH_MARK):]  # type: ignore[index]
        uri = as_request_uri(pinged.contact)
        return (
            f"OPTIONS {uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {bracketed(host)}:{port};branch={pinged.branch};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:keepalive@{bracketed(host)}>;tag={token}\r\n"
            f"To: <{uri}>\r\n"
            f"Call-ID: {token}@{bracketed(host)}\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()

    # -- bookkeeping ---------------------------------------------------------------------------
    def _tick(self) -> int:
        return int(self.clock() / TICK)

    def _schedule(self, pinged: Pinged, tick: int) -> None:
        pinged.due = tick
        self._due.setdefault(tick, []).append((pinged.aor, pinged.contact))

    def _forget(self, pinged: Pinged) -> None:
        self.pinged.pop((pinged.aor, pinged.contact), None)
        if pinged.branch is not None:
            self._awaiting.pop(pinged.branch, None)


def _same_contact(binding: Binding, pinged: Pinged, node: str) -> bool:
    return (binding.contact, binding.node, binding.source_host, binding.source_port) == (
        pinged.contact, node, pinged.host, pinged.port)
