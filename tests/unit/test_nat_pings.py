"""Unit tests for the NAT keepalive pings: who is pinged, from where, and what an unanswered ping leads to.

The pinger runs for real over a memory store; the network is a list of what it
sent, and time a fake clock that `ping_due` is called at. Nothing sleeps.
"""

from __future__ import annotations

import random

import pytest

from registrar.model import Binding, Domain, KeepalivePolicy
from registrar.nat_pings import BRANCH_MARK, NatPinger
from registrar.sip.message import Request, make_response, parse_message
from registrar.store import CONTACT_UNREACHABLE
from registrar.store.memory import MemoryStore
from tests.helpers import FakeClock

DOMAIN = Domain("sip.example.test", keepalive=KeepalivePolicy(ping_interval=30, ping_failures=3))
NAT = ("198.51.100.7", 40000)  # where bob's packets come from
BEHIND_NAT = "sip:bob@192.168.1.20:5060"  # what bob's Contact says


class Pings:
    """One registrar's pinger, its store, its clock, and the datagrams it sent."""

    def __init__(self, node: str = "n1") -> None:
        self.clock = FakeClock()
        self.store = MemoryStore(clock=self.clock)
        self.sent: list[tuple[str, int, Request]] = []
        self.removed: list[str] = []
        self.pinger = NatPinger(
            self.store, lambda host, port, data: self.sent.append((host, port, parse_message(data))),
            node=node, via=lambda: ("203.0.113.1", 5060), clock=self.clock,
            on_removed=lambda pinged: self.removed.append(pinged.contact), rng=random.Random(7),
        )

    async def register(self, contact: str = BEHIND_NAT, source: tuple[str, int] = NAT, *, node: str = "n1",
                       transport: str = "udp", domain: Domain = DOMAIN, **fields) -> list[Binding]:
        """`contact` stored for bob by `node` from `source`, and the pinger told, as the registrar tells it."""
        binding = Binding(f"bob@{DOMAIN.name}", contact, self.clock() + 3600, "reg", 1, transport=transport,
                          source_host=source[0], source_port=source[1], node=node, **fields)
        bindings = await self.store.update(binding.aor, lambda current: [
            *(b for b in current if b.contact != contact), binding])
        self.pinger.bound(domain, source[0], source[1], bindings)
        return bindings

    async def after(self, seconds: float) -> list[Request]:
        """Time passes; the pings sent meanwhile."""
        before = len(self.sent)
        for _ in range(int(seconds)):
            self.clock.advance(1)
            await self.pinger.ping_due()
        return [request for _, _, request in self.sent[before:]]

    def answer(self, request: Request, status: int = 200) -> bool:
        return self.pinger.answered(parse_message(make_response(request, status, "OK").to_bytes()))


async def test_a_phone_behind_nat_is_pinged_at_its_nat_address_each_interval_with_an_options_it_can_answer() -> None:
    pings = Pings()
    await pings.register()
    [first] = await pings.after(30)  # once within the first interval, at a random point in it
    host, port, ping = pings.sent[0]
    assert (host, port) == NAT
    assert ping.method == "OPTIONS" and ping.uri == BEHIND_NAT
    assert ping.top_via.host == "203.0.113.1" and ping.top_via.branch.startswith(BRANCH_MARK)
    assert ping.get("Max-Forwards") == "70" and ping.get("CSeq") == "1 OPTIONS"
    assert pings.answer(first)
    assert len(await pings.after(30)) == 1  # and once each interval after
    assert pings.pinger.pinged[(f"bob@{DOMAIN.name}", BEHIND_NAT)].unanswered == 0


async def test_a_phone_that_stops_answering_is_removed_after_its_failures_and_its_status_says_why() -> None:
    pings = Pings()
    await pings.register()
    [first] = await pings.after(30)
    pings.answer(first)
    unanswered = await pings.after(90)  # three pings go out unanswered; at the fourth's time it is gone
    assert len(unanswered) == 3
    assert await pings.after(30) == []
    assert pings.removed == [BEHIND_NAT]
    assert await pings.store.lookup(f"bob@{DOMAIN.name}") == []
    failure = await pings.store.last_failure(DOMAIN.name, "bob")
    assert failure.kind == CONTACT_UNREACHABLE and failure.source == "udp:198.51.100.7:40000"
    assert "3 keepalive pings in a row unanswered" in failure.reason
    assert pings.pinger.pinged == {} and pings.pinger._awaiting == {}  # nothing kept for it


async def test_an_answer_nobody_was_sent_keeps_nothing_alive() -> None:
    pings = Pings()
    await pings.register()
    [ping] = await pings.after(30)
    forged = parse_message(ping.to_bytes())
    forged.headers = [(name, value.replace(ping.top_via.branch, BRANCH_MARK + "0" * 16)) for name, value in
                      forged.headers]
    assert pings.answer(forged)  # ours by its mark, so not the proxy's: taken, and nothing more
    assert len(await pings.after(90)) == 2 and pings.removed == [BEHIND_NAT]


async def test_a_register_resets_the_count_of_unanswered_pings() -> None:
    pings = Pings()
    await pings.register()
    await pings.after(80)  # two pings unanswered
    await pings.register()  # but the phone refreshes: it is there
    assert pings.pinger.pinged[(f"bob@{DOMAIN.name}", BEHIND_NAT)].unanswered == 0
    await pings.after(60)
    assert pings.removed == []


@pytest.mark.parametrize(
    ("why", "contact", "source", "fields"),
    [
        ("not behind NAT: its Contact is where its packets come from", "sip:bob@198.51.100.7:40000", NAT, {}),
        ("an outbound flow: the phone keeps it alive", BEHIND_NAT, NAT, {"instance": "urn:uuid:1", "reg_id": 1}),
        ("behind an edge proxy: the edge's job", BEHIND_NAT, NAT, {"path": ("<sip:edge.example.test;lr>",)}),
        ("over TCP: the connection is the keepalive", BEHIND_NAT, NAT, {"transport": "tcp", "flow": "tcp-1"}),
        ("registered through another replica", BEHIND_NAT, NAT, {"node": "n2"}),
        ("the domain pings nobody", BEHIND_NAT, NAT,
         {"domain": Domain(DOMAIN.name, keepalive=KeepalivePolicy(ping_interval=0))}),
    ],
)
async def test_who_is_not_pinged(why: str, contact: str, source: tuple[str, int], fields: dict) -> None:
    pings = Pings()
    await pings.register(contact, source, **fields)
    assert await pings.after(60) == [], why


async def test_a_phone_that_refreshed_through_another_replica_is_pinged_by_that_one_only() -> None:
    here, there = Pings("n1"), Pings("n2")
    there.store = here.pinger.store = here.store  # one store: etcd, shared
    there.pinger.store = here.store
    await here.register()
    [ping] = await here.after(30)
    here.answer(ping)
    await there.register(node="n2")  # the load balancer sent its refresh to n2
    assert await here.after(60) == []
    assert (f"bob@{DOMAIN.name}", BEHIND_NAT) not in here.pinger.pinged
    assert len(await there.after(30)) == 1
