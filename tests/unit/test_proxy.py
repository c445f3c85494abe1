"""Unit tests for the proxy: routing, forking, CANCEL, in-dialog routing, hops between nodes, loops.

The proxy runs for real; only the network is replaced, by a `Wire` that
records what would be sent, and time by a fake clock that moves when a test
says (`Node.advance` fires the transaction timers due): nothing sleeps. The
cyclic garbage collector is off, as a loaded registrar's would rarely run: what
a call leaves behind must go by reference counting. Requests and responses are
SIP text parsed with `parse_message`, answered the way a UA would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import ipaddress
import re
import time

import pytest

from registrar import proxy as proxy_module
from registrar.authentication import Authenticator
from registrar.flows import DIALOG, HOP, FlowRef, TokenSigner, of_binding
from registrar.lockout import LockoutTable
from registrar.model import Binding, Catalog, Connection, Domain
from registrar.proxy import Answered, Branch, FindTargets, Identity, ProxyCore, Reach, ResponseContext
from registrar.proxy_driver import ProxyDriver, SendError
from registrar.sip.source import Destination, Source
from registrar.routing import Router, Target
from registrar.service import SipService
from registrar.sip import digest
from registrar.sip import proxy as relay
from registrar.sip.headers import Via
from registrar.sip.message import Request, Response, make_response, parse_message
from registrar.sip.uri import parse_uri
from registrar.sip.transaction import T1, T2, TIMEOUT, Send, Transaction, TransactionLayer, transaction_key
from registrar.store.memory import MemoryStore
from tests.helpers import FakeClock, authorization

DOMAIN = "sip.example.test"
REDIRECTING = "redirect.example.test"
SECRET = b"0123456789abcdef0123456789abcdef"
GATEWAY = "sip:127.0.0.9:5070"
CALLER = Source("udp", "192.0.2.1", 5062)
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw"}


def make_catalog() -> Catalog:
    connections = {
        (domain, user): Connection(domain, user, ha1={"MD5": digest.ha1("MD5", user, domain, password)})
        for domain in (DOMAIN, REDIRECTING)
        for user, password in PASSWORDS.items()
    }
    connections[(DOMAIN, "pbx")] = Connection(
        DOMAIN, "pbx", authentication="ip", allowed_networks=(ipaddress.ip_network("198.51.100.0/24"),)
    )
    connections[(DOMAIN, "mute")] = Connection(DOMAIN, "mute", ha1={"MD5": "0" * 32}, inbound=False, outbound=False)
    return Catalog(
        domains={
            DOMAIN: Domain(DOMAIN, outbound_gateway=GATEWAY),
            REDIRECTING: Domain(REDIRECTING, mode="redirect"),
        },
        connections=connections,
    )


@pytest.fixture(autouse=True)
def no_collector():  # type: ignore[no-untyped-def]
    gc.collect()
    gc.disable()
    yield
    gc.enable()


class Wire:
    """The transports, as the proxy sees them: what it sends is kept, parsed."""

    def __init__(self, flows: set[str] = frozenset()):
        self.flows = set(flows)
        self.sent: list[tuple[Destination, Request | Response]] = []
        self.connects: list[tuple[str, str, int]] = []

    def send(self, destination: Destination, data: bytes) -> None:
        if destination.flow is not None and destination.flow not in self.flows:
            raise SendError("closed")
        self.sent.append((destination, parse_message(data)))

    async def connect(self, transport: str, host: str, port: int) -> str:
        self.connects.append((transport, host, port))
        self.flows.add("out-1")
        return "out-1"

    def has_flow(self, flow: str) -> bool:
        return flow in self.flows

    def forwarded(self) -> list[tuple[Destination, Request]]:
        return [(d, m) for d, m in self.sent if isinstance(m, Request)]

    def requests(self, method: str) -> list[tuple[Destination, Request]]:
        return [(d, m) for d, m in self.sent if isinstance(m, Request) and m.method == method]


class Node:
    """One proxy with its store, wire and what it answered upstream."""

    def __init__(self, name: str = "n1", *, flows: set[str] = frozenset(), nodes: dict | None = None,
                 max_transactions: int = proxy_module.MAX_TRANSACTIONS, max_retained: int = 1000):
        # Bindings expire by the store's clock, the real one; the router's stands still at this.
        self.now = time.time()
        self.clock = FakeClock(1000.0)  # the transactions' (monotonic) clock
        self.catalog = make_catalog()
        self.store = MemoryStore()
        self.wire = Wire(flows)
        self.unreachable: list[tuple[str, str]] = []
        self.finals: list[tuple[str, int]] = []
        # Addresses that are trusted or proved credentials before (SourceLimiter.known): alice's.
        self.known_sources = {CALLER.host}
        authenticator = Authenticator(
            digest.DigestAuthenticator(digest.NonceAuthority(SECRET), digest.NonceCounts()), LockoutTable(), self.store,
            clock=lambda: self.now,
        )
        address = {"n1": "10.0.0.1", "n2": "10.0.0.2"}[name]
        router = Router(lambda: self.catalog, self.store, authenticator, lambda: self.now,
                        known_source=lambda host: host in self.known_sources)
        self.transactions = TransactionLayer(max_retained)
        self.core = ProxyCore(
            Identity(name, address, {"udp": 5060, "tcp": 5060, "tls": 5061}, {"udp": 5060, "tcp": 5060, "tls": 5061}, {address},
                     domains=lambda: self.catalog.domains),
            TokenSigner(SECRET),
            self.transactions,
            domain_of=router.domain_of,
            max_transactions=lambda: max_transactions,
        )
        self.proxy = ProxyDriver(
            self.core,
            router,
            self.wire,
            clock=self.clock,
            nodes=lambda: nodes or {},
            on_final=lambda request, domain, status: self.finals.append((domain, status)),
            on_unreachable=lambda target, why: self.unreachable.append((target.uri, why)),
        )

    async def bind(self, user: str, contact: str, source: Source, *, q: float | None = None, node: str = "n1",
                   path: tuple[str, ...] = (), instance: str | None = None, reg_id: int | None = None,
                   age: float = 0.0) -> None:
        """A binding of `user` registered `age` seconds ago from `source` (its flow too) on `node`, through `path`."""
        binding = Binding(f"{user}@{DOMAIN}", contact, self.now + 3600, "reg", 1, q, instance, reg_id,
                          transport=source.transport, source_host=source.host, source_port=source.port,
                          flow=source.flow, node=node, registered_at=self.now - age, path=path)
        await self.store.update(binding.aor, lambda current: [*current, binding])

    async def receive(self, data: bytes | Request, source: Source = CALLER) -> None:
        request = parse_message(data) if isinstance(data, bytes) else parse_message(data.to_bytes())
        assert isinstance(request, Request)
        self.proxy.receive_request(request, source, transaction_key(request))
        await settle()

    async def answer(self, request: Request, status: int, reason: str = "", *, to_tag: str = "callee") -> None:
        """The UA downstream answers a request we sent it."""
        response = make_response(request, status, reason or "Answer", to_tag=to_tag)
        if status >= 200 and request.get("Record-Route"):
            for value in request.get_all("Record-Route"):
                response.add("Record-Route", value)
        self.proxy.receive_response(parse_message(response.to_bytes()))
        await settle()

    async def advance(self, seconds: float) -> None:
        """Time passes: the transaction timers due fire."""
        self.clock.advance(seconds)
        self.proxy.tick(self.clock())
        await settle()

    @property
    def upstream(self) -> list[Response]:
        """What the proxy answered (it sends responses only back up)."""
        return [message for _, message in self.wire.sent if isinstance(message, Response)]

    def statuses(self) -> list[int]:
        return [response.status for response in self.upstream]


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def invite(uri: str = f"sip:bob@{DOMAIN}", *, caller: str = f"alice@{DOMAIN}", branch: str = "z9hG4bK-caller-1",
           call_id: str = "call-1", extra: str = "", max_forwards: int = 70, method: str = "INVITE",
           to_tag: str = "", to: str = "") -> bytes:
    """A request from alice; in a dialog (`to_tag`), `to` is the callee's AOR as first called."""
    to = f"<{to or uri}>" + (f";tag={to_tag}" if to_tag else "")
    return (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {CALLER.host}:{CALLER.port};branch={branch}\r\n"
        f"Max-Forwards: {max_forwards}\r\n"
        f"From: <sip:{caller}>;tag=caller-tag\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: 1 {method}\r\n"
        f"Contact: <sip:alice@{CALLER.host}:{CALLER.port}>\r\n{extra}Content-Length: 0\r\n\r\n"
    ).encode()


def cancel(branch: str = "z9hG4bK-caller-1") -> bytes:
    return (
        f"CANCEL sip:bob@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER.host}:{CALLER.port};branch={branch}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:alice@{DOMAIN}>;tag=caller-tag\r\nTo: <sip:bob@{DOMAIN}>\r\n"
        "Call-ID: call-1\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"
    ).encode()


UDP_NAT_CONTACT = "sip:bob@192.0.2.20:5060"
TCP_CONTACT = "sip:bob@192.0.2.21:5060;transport=tcp"


async def two_phones(**kwargs) -> Node:  # type: ignore[no-untyped-def]
    """bob on UDP behind NAT and on a TCP connection of this node, both q 1."""
    node = Node(flows={"tcp-x-1"}, **kwargs)
    await node.bind("bob", UDP_NAT_CONTACT, Source("udp", "198.51.100.7", 40000))
    await node.bind("bob", TCP_CONTACT, Source("tcp", "198.51.100.8", 50123, "tcp-x-1"))
    return node


# -- forwarding ---------------------------------------------------------------------------------


async def test_an_invite_goes_to_every_binding_over_its_own_flow_with_our_via_and_record_route() -> None:
    node = await two_phones()
    await node.receive(invite())
    assert node.statuses() == [100]
    sent = dict((request.uri, (destination, request)) for destination, request in node.wire.requests("INVITE"))
    assert set(sent) == {UDP_NAT_CONTACT, TCP_CONTACT}
    # UDP: to the address the REGISTER came from (the NAT's), not to the Contact.
    assert sent[UDP_NAT_CONTACT][0] == Destination("udp", "198.51.100.7", 40000)
    # TCP: down the connection bob opened, though his Contact names port 5060.
    assert sent[TCP_CONTACT][0] == Destination("tcp", "198.51.100.8", 50123, "tcp-x-1")
    for destination, request in sent.values():
        vias = request.get_all("Via")
        assert vias[0].startswith(f"SIP/2.0/{destination.transport.upper()} 10.0.0.1:5060;branch=z9hG4bK")
        assert vias[1].endswith("branch=z9hG4bK-caller-1")
        assert request.get("Max-Forwards") == "69"
        routes = request.get_all("Record-Route")
        assert all(";lr" in value and "ftag=caller-tag" in value and "@10.0.0.1:5060" in value for value in routes)
    # The UDP leg has one Record-Route; the TCP one two, one for each transport (RFC 5658).
    assert len(sent[UDP_NAT_CONTACT][1].get_all("Record-Route")) == 1
    assert [re.search(r"transport=(\w+)", v).group(1) for v in sent[TCP_CONTACT][1].get_all("Record-Route")] == [
        "tcp", "udp"]


async def test_an_invite_to_a_phone_behind_an_edge_proxy_goes_to_the_first_path_hop_with_the_path_as_route_set(
) -> None:
    node = Node()
    path = ("<sip:edge-token@192.0.2.50:5070;lr>", "<sip:sbc.example.test;lr>")
    # Registered through the edge: the REGISTER came from the edge's address, the Contact is the phone's.
    await node.bind("bob", "sip:bob@10.1.2.3:5060", Source("udp", "192.0.2.50", 5070), path=path)
    await node.receive(invite(extra="Route: <sip:10.0.0.1;lr>\r\n"))
    [(destination, request)] = node.wire.requests("INVITE")
    assert destination == Destination("udp", "192.0.2.50", 5070)
    assert request.uri == "sip:bob@10.1.2.3:5060"  # loose routing: the Request-URI stays the Contact
    assert request.get_all("Route") == list(path)  # ours popped, the Path pushed in order (RFC 3327 5.3)
    assert len(request.get_all("Record-Route")) == 1


async def test_a_phone_with_two_outbound_flows_rings_once_on_the_newest_and_falls_over_when_it_closes() -> None:
    node = Node(flows={"tcp-a", "tcp-b"})
    contact = "sip:bob@192.0.2.30:5060;transport=tcp;ob"
    instance = "urn:uuid:00000000-0000-1000-8000-000a95a0e128"
    # One UA, two flows (RFC 5626: one +sip.instance, reg-id 1 and 2), the second registered later.
    await node.bind("bob", contact, Source("tcp", "198.51.100.9", 50001, "tcp-a"), instance=instance, reg_id=1,
                    age=60)
    await node.bind("bob", contact, Source("tcp", "198.51.100.9", 50002, "tcp-b"), instance=instance, reg_id=2,
                    age=10)
    await node.receive(invite(call_id="call-1"))
    assert [destination.flow for destination, _ in node.wire.requests("INVITE")] == ["tcp-b"]  # rung once
    node.wire.flows.discard("tcp-b")  # its connection closes
    await node.receive(invite(call_id="call-2", branch="z9hG4bK-caller-2"))
    assert [destination.flow for destination, _ in node.wire.requests("INVITE")] == ["tcp-b", "tcp-a"]
    assert node.unreachable == [(contact, "closed")]
    node.wire.flows.discard("tcp-a")  # and the other: nothing to try, 480 at once
    await node.receive(invite(call_id="call-3", branch="z9hG4bK-caller-3"))
    assert len(node.wire.requests("INVITE")) == 2 and node.statuses()[-1] == 480


async def test_the_first_2xx_goes_upstream_and_the_other_branches_are_cancelled() -> None:
    node = await two_phones()
    await node.receive(invite())
    (udp_leg, udp_invite), (tcp_leg, tcp_invite) = node.wire.requests("INVITE")
    await node.answer(udp_invite, 180, "Ringing", to_tag="udp-phone")
    await node.answer(tcp_invite, 180, "Ringing", to_tag="tcp-phone")
    await node.answer(tcp_invite, 200, "OK", to_tag="tcp-phone")
    assert node.statuses() == [100, 180, 180, 200]
    assert node.upstream[-1].get_all("Via") == [f"SIP/2.0/UDP {CALLER.host}:{CALLER.port};branch=z9hG4bK-caller-1"]
    [(destination, cancel_request)] = node.wire.requests("CANCEL")
    assert destination == udp_leg and cancel_request.get("Via") == udp_invite.get("Via")
    assert cancel_request.uri == udp_invite.uri and cancel_request.get("CSeq") == "1 CANCEL"
    # RFC 3326: the losing phone shows no missed call.
    assert cancel_request.get("Reason") == 'SIP;cause=200;text="Call completed elsewhere"'
    await node.answer(udp_invite, 183, "Session Progress", to_tag="udp-phone")  # late: nothing after a final
    await node.answer(cancel_request, 200, "OK", to_tag="udp-phone")
    await node.answer(udp_invite, 487, "Request Terminated", to_tag="udp-phone")
    [(_, ack)] = node.wire.requests("ACK")  # hop by hop, for the 487
    assert ack.get("Via") == udp_invite.get("Via") and "udp-phone" in ack.get("To")
    assert node.statuses() == [100, 180, 180, 200]  # the 487 stays here
    assert node.finals == [(DOMAIN, 200)]


async def test_a_branch_that_had_not_rung_when_another_answered_is_cancelled_completed_elsewhere_once_it_rings() -> None:
    node = await two_phones()
    await node.receive(invite())
    (_, udp_invite), (_, tcp_invite) = node.wire.requests("INVITE")
    await node.answer(tcp_invite, 200, "OK", to_tag="tcp-phone")
    assert node.wire.requests("CANCEL") == []  # nothing to cancel before it rings (RFC 3261 9.1)
    await node.answer(udp_invite, 180, "Ringing", to_tag="udp-phone")
    [(_, cancel_request)] = node.wire.requests("CANCEL")
    assert cancel_request.get("Reason") == 'SIP;cause=200;text="Call completed elsewhere"'


async def test_forking_tries_the_highest_q_first_and_the_next_group_after_it_fails() -> None:
    node = Node(flows={"tcp-x-1"})
    await node.bind("bob", UDP_NAT_CONTACT, Source("udp", "198.51.100.7", 40000), q=0.5)
    await node.bind("bob", TCP_CONTACT, Source("tcp", "198.51.100.8", 50123, "tcp-x-1"), q=0.9)
    await node.receive(invite())
    [(_, first)] = node.wire.requests("INVITE")
    assert first.uri == TCP_CONTACT
    await node.answer(first, 486, "Busy Here")
    invites = node.wire.requests("INVITE")
    assert [request.uri for _, request in invites] == [TCP_CONTACT, UDP_NAT_CONTACT]
    await node.answer(invites[1][1], 200, "OK")
    assert node.statuses() == [100, 200]


async def test_when_every_branch_fails_the_best_answer_goes_upstream_and_6xx_stops_forking() -> None:
    node = Node(flows={"tcp-x-1"})
    await node.bind("bob", UDP_NAT_CONTACT, Source("udp", "198.51.100.7", 40000), q=0.5)
    await node.bind("bob", TCP_CONTACT, Source("tcp", "198.51.100.8", 50123, "tcp-x-1"), q=0.9)
    await node.receive(invite())
    [(_, first)] = node.wire.requests("INVITE")
    await node.answer(first, 603, "Decline")
    assert len(node.wire.requests("INVITE")) == 1  # the q 0.5 phone is never tried
    assert node.statuses() == [100, 603]


@pytest.mark.parametrize(
    ("statuses", "best"),
    [([486, 404, 503], 486), ([503, 408], 408), ([503], 500), ([486, 407], 407), ([302, 486], 302),
     ([486, 600, 404], 600)],
)
def test_the_best_of_the_final_responses(statuses: list[int], best: int) -> None:
    request = parse_message(invite())
    responses = [make_response(request, status, "x") for status in statuses]
    assert relay.best_response(responses).status == best


# -- CANCEL ------------------------------------------------------------------------------------


async def test_cancel_before_the_callee_rang_waits_for_its_provisional_then_the_caller_gets_487() -> None:
    node = Node()
    await node.bind("bob", UDP_NAT_CONTACT, Source("udp", "198.51.100.7", 40000))
    await node.receive(invite())
    [(_, sent)] = node.wire.requests("INVITE")
    await node.receive(cancel())
    assert node.statuses() == [100, 200] and node.upstream[-1].get("CSeq") == "1 CANCEL"
    assert node.wire.requests("CANCEL") == []  # not before a provisional (RFC 3261 9.1)
    await node.answer(sent, 180, "Ringing")
    [(_, cancel_request)] = node.wire.requests("CANCEL")
    assert cancel_request.get("Reason") is None  # the caller gave up: a missed call it is
    await node.answer(sent, 487, "Request Terminated")
    assert node.statuses() == [100, 200, 180, 487]
    # The caller's ACK for the 487 ends here: it is hop by hop.
    await node.receive(invite(method="ACK", to_tag="callee"))
    assert len(node.wire.requests("ACK")) == 1  # only ours, to the callee


async def test_a_cancel_matching_no_invite_gets_481() -> None:
    node = Node()
    await node.receive(cancel(branch="z9hG4bK-nothing"))
    assert node.statuses() == [481]


# -- answers instead of forwarding ---------------------------------------------------------------


async def test_nobody_registered_is_480_an_unknown_user_404_a_redirect_domain_302() -> None:
    node = Node()
    await node.receive(invite())
    await node.receive(invite(f"sip:nobody@{DOMAIN}", branch="z9hG4bK-2", call_id="call-2"))
    await node.receive(invite(f"sip:mute@{DOMAIN}", branch="z9hG4bK-3", call_id="call-3"))
    assert [(r.status, r.reason) for r in node.upstream if r.status >= 200] == [
        (480, "Temporarily Unavailable"), (404, "Not Found"), (403, "Inbound Calls Not Allowed For This User")]

    binding = Binding(f"bob@{REDIRECTING}", "sip:bob@192.0.2.30:5060", node.now + 120, "r", 1, 0.3)
    better = binding._replace(contact="sip:bob@192.0.2.31:5060", q=0.8)
    await node.store.update(binding.aor, lambda current: [binding, better])
    await node.receive(invite(f"sip:bob@{REDIRECTING}", branch="z9hG4bK-4", call_id="call-4"))
    moved = node.upstream[-1]
    assert (moved.status, moved.reason) == (302, "Moved Temporarily")
    assert moved.get_all("Contact") == ["<sip:bob@192.0.2.31:5060>;q=0.8;expires=120",
                                        "<sip:bob@192.0.2.30:5060>;q=0.3;expires=120"]


async def test_max_forwards_zero_gets_483() -> None:
    node = await two_phones()
    await node.receive(invite(max_forwards=0))
    assert node.statuses() == [483]
    assert node.wire.forwarded() == []


async def test_a_request_coming_back_unchanged_is_a_loop_482_and_a_spiral_is_not() -> None:
    node = Node()
    pbx = Source("udp", "198.51.100.9", 5060)
    await node.receive(invite("sip:carol@elsewhere.test", caller=f"pbx@{DOMAIN}"), pbx)
    [(gateway, sent)] = node.wire.requests("INVITE")
    assert gateway == Destination("udp", "127.0.0.9", 5070)
    gateway_source = Source("udp", "127.0.0.9", 5070)

    def back_from_gateway(branch: str, uri: str) -> Request:
        request = parse_message(sent.to_bytes())
        request.headers.insert(0, ("Via", f"SIP/2.0/UDP 127.0.0.9:5070;branch={branch}"))
        request.uri = uri
        return request

    await node.receive(back_from_gateway("z9hG4bK-gw-1", sent.uri), gateway_source)  # straight back: a loop
    assert node.upstream[-1].status == 482 and node.upstream[-1].reason == "Loop Detected"
    # Back with a new Request-URI: a legitimate spiral, routed again; as an outbound call from
    # the gateway's address it is not the PBX's to make, so routing (not loop detection)
    # challenges it, as it would any caller.
    await node.receive(back_from_gateway("z9hG4bK-gw-2", "sip:dave@elsewhere.test"), gateway_source)
    assert node.upstream[-1].status == 407


async def test_the_same_request_by_another_path_is_a_merged_request_482() -> None:
    node = await two_phones()
    await node.receive(invite())
    await node.receive(invite(branch="z9hG4bK-forked-upstream"))
    assert node.upstream[-1].status == 482 and node.upstream[-1].reason == "Loop Detected: Merged Request"
    assert len(node.wire.requests("INVITE")) == 2  # only the first one's branches


async def test_a_retransmitted_invite_gets_the_last_answer_and_is_not_forwarded_again() -> None:
    node = await two_phones()
    await node.receive(invite())
    await node.receive(invite())
    assert node.statuses() == [100, 100]
    assert len(node.wire.requests("INVITE")) == 2


# -- in the dialog -------------------------------------------------------------------------------


async def test_in_dialog_requests_follow_the_record_route_to_the_other_party_in_both_directions() -> None:
    node = Node(flows={"tcp-x-1"})
    await node.bind("bob", TCP_CONTACT, Source("tcp", "198.51.100.8", 50123, "tcp-x-1"))
    await node.receive(invite())
    [(_, sent)] = node.wire.requests("INVITE")
    route = ", ".join(sent.get_all("Record-Route"))
    await node.answer(sent, 200, "OK")

    # alice's BYE, with the route set she learnt from the 200: down bob's TCP connection.
    bye = invite(TCP_CONTACT, method="BYE", branch="z9hG4bK-bye-1", to_tag="callee", to=f"sip:bob@{DOMAIN}",
                 extra=f"Route: {route}\r\n")
    await node.receive(bye)
    [(destination, relayed)] = node.wire.requests("BYE")
    assert destination == Destination("tcp", "198.51.100.8", 50123, "tcp-x-1")
    assert relayed.uri == TCP_CONTACT and relayed.get("Route") is None  # our entries are taken off

    # bob's BYE (his tag in From), with the route set reversed: to alice's address.
    bob_bye = (
        f"BYE sip:alice@{CALLER.host}:{CALLER.port} SIP/2.0\r\nVia: SIP/2.0/TCP 198.51.100.8:50123;branch=z9hG4bK-b2\r\n"
        f"Route: {', '.join(reversed(sent.get_all('Record-Route')))}\r\nMax-Forwards: 70\r\n"
        f"From: <sip:bob@{DOMAIN}>;tag=callee\r\nTo: <sip:alice@{DOMAIN}>;tag=caller-tag\r\n"
        "Call-ID: call-1\r\nCSeq: 7 BYE\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    await node.receive(bob_bye, Source("tcp", "198.51.100.8", 50123, "tcp-x-1"))
    destination, relayed = node.wire.requests("BYE")[1]
    assert destination == Destination("udp", CALLER.host, CALLER.port)
    await node.answer(relayed, 200, "OK", to_tag="caller-tag")
    assert node.upstream[-1].status == 200 and node.upstream[-1].get("CSeq") == "7 BYE"


async def test_an_in_dialog_request_finds_the_callee_on_its_new_connection_after_it_reconnected() -> None:
    node = Node(flows={"tcp-x-1"})
    await node.bind("bob", TCP_CONTACT, Source("tcp", "198.51.100.8", 50123, "tcp-x-1"))
    await node.receive(invite())
    [(_, sent)] = node.wire.requests("INVITE")
    await node.answer(sent, 200, "OK")
    node.wire.flows = {"tcp-x-2"}  # the connection dropped; bob came back and registered again
    await node.store.update(f"bob@{DOMAIN}", lambda current: [])
    await node.bind("bob", TCP_CONTACT, Source("tcp", "198.51.100.8", 50999, "tcp-x-2"))
    route = ", ".join(sent.get_all("Record-Route"))
    await node.receive(invite(TCP_CONTACT, method="BYE", branch="z9hG4bK-bye", to_tag="callee", to=f"sip:bob@{DOMAIN}",
                              extra=f"Route: {route}\r\n"))
    [(destination, _)] = node.wire.requests("BYE")
    assert destination == Destination("tcp", "198.51.100.8", 50999, "tcp-x-2")


async def test_an_in_dialog_request_for_a_flow_that_is_gone_for_good_gets_430_flow_failed() -> None:
    node = Node(flows={"tcp-x-1"})
    await node.bind("bob", TCP_CONTACT, Source("tcp", "198.51.100.8", 50123, "tcp-x-1"))
    await node.receive(invite())
    [(_, sent)] = node.wire.requests("INVITE")
    await node.answer(sent, 200, "OK")
    node.wire.flows = set()  # bob's connection dropped, and he has not come back
    route = ", ".join(sent.get_all("Record-Route"))
    await node.receive(invite(TCP_CONTACT, method="BYE", branch="z9hG4bK-bye", to_tag="callee", to=f"sip:bob@{DOMAIN}",
                              extra=f"Route: {route}\r\n"))
    assert node.wire.requests("BYE") == []
    assert (node.upstream[-1].status, node.upstream[-1].reason) == (430, "Flow Failed")  # RFC 5626 5.3


async def test_an_in_dialog_request_without_our_route_is_refused_and_an_ack_dropped() -> None:
    node = Node()
    await node.receive(invite(method="BYE", to_tag="x", branch="z9hG4bK-b"))
    assert node.upstream[-1].status == 404
    await node.receive(invite(method="ACK", to_tag="x", branch="z9hG4bK-a"))
    assert node.wire.forwarded() == []


async def test_a_forged_route_token_is_not_ours() -> None:
    signer = TokenSigner(SECRET)
    ref = FlowRef("n1", "tcp", "198.51.100.8", 50123, "tcp-x-1")
    token = signer.token(DIALOG, (ref, None))
    assert signer.read(token).refs == (ref, None)
    assert TokenSigner(b"another secret, another cluster").read(token) is None
    payload, mac = token.split(".")
    assert signer.read(payload[:-2] + "AA." + mac) is None


# -- across nodes --------------------------------------------------------------------------------


async def test_a_callee_held_by_another_node_is_reached_through_it_with_a_hop_route() -> None:
    entry = Node("n1", nodes={"n2": {"address": "10.0.0.2", "sipPort": 5070}})
    await entry.bind("bob", TCP_CONTACT, Source("tcp", "198.51.100.8", 50123, "tcp-9-4"), node="n2")
    await entry.receive(invite())
    [(destination, handed)] = entry.wire.requests("INVITE")
    assert entry.wire.connects == [("tcp", "10.0.0.2", 5070)]
    assert destination == Destination("tcp", "10.0.0.2", 5070, "out-1")
    hop = relay.routes(handed)[0].uri
    assert (hop.host, hop.port) == ("10.0.0.2", 5070)
    assert TokenSigner(SECRET).read(hop.user) == (HOP, (FlowRef("n2", "tcp", "198.51.100.8", 50123, "tcp-9-4"),))

    holder = Node("n2", flows={"tcp-9-4", "tcp-in-1"})
    await holder.receive(handed, Source("tcp", "10.0.0.1", 40000, "tcp-in-1"))
    [(destination, delivered)] = holder.wire.requests("INVITE")
    assert destination == Destination("tcp", "198.51.100.8", 50123, "tcp-9-4")
    assert delivered.get("Route") is None and delivered.uri == TCP_CONTACT
    # The caller's Record-Route is the entry node's, the only one: the cluster is one hop to UAs.
    assert delivered.get_all("Record-Route") == handed.get_all("Record-Route")
    await holder.answer(delivered, 200, "OK")
    assert holder.statuses() == [100, 200]


INSTANCE = "urn:uuid:00000000-0000-1000-8000-000a95a0e128"
OB_CONTACT = "sip:bob@192.0.2.30:5060;transport=tcp;ob"


async def test_a_hop_to_a_flow_that_has_closed_gets_430_and_the_entry_node_falls_over_to_the_next_flow() -> None:
    entry = Node("n1", flows={"tcp-a"}, nodes={"n2": {"address": "10.0.0.2", "sipPort": 5070}})
    # One UA, two flows (RFC 5626): the newer through n2, the older through this node.
    await entry.bind("bob", OB_CONTACT, Source("tcp", "198.51.100.9", 50002, "tcp-9-4"), node="n2",
                     instance=INSTANCE, reg_id=2, age=10)
    await entry.bind("bob", OB_CONTACT, Source("tcp", "198.51.100.9", 50001, "tcp-a"), instance=INSTANCE, reg_id=1,
                     age=60)
    await entry.receive(invite())
    [(destination, handed)] = entry.wire.requests("INVITE")
    assert destination.host == "10.0.0.2"

    holder = Node("n2", flows={"tcp-in-1"})  # the flow the hop names has closed on n2
    await holder.receive(handed, Source("tcp", "10.0.0.1", 40000, "tcp-in-1"))
    assert holder.wire.requests("INVITE") == []
    [flow_failed] = holder.upstream
    assert (flow_failed.status, flow_failed.reason) == (430, "Flow Failed")

    entry.proxy.receive_response(parse_message(flow_failed.to_bytes()))
    await settle()
    [(_, ack)] = entry.wire.requests("ACK")  # the 430's, hop by hop
    await holder.receive(ack, Source("tcp", "10.0.0.1", 40000, "tcp-in-1"))
    assert holder.wire.forwarded() == [] and len(holder.unreachable) == 1  # absorbed: it ACKs our own answer
    invites = entry.wire.requests("INVITE")
    assert [destination.flow for destination, _ in invites] == ["out-1", "tcp-a"]
    await entry.answer(invites[1][1], 200, "OK")
    assert entry.statuses() == [100, 200]  # the caller saw one call, answered


async def test_a_send_down_a_flow_that_fails_falls_over_to_the_next_flow_and_the_last_one_failing_is_480() -> None:
    node = Node(flows={"tcp-a"})
    node.wire.has_flow = lambda flow: True  # tcp-b looks open, but what is written to it fails
    await node.bind("bob", OB_CONTACT, Source("tcp", "198.51.100.9", 50001, "tcp-a"), instance=INSTANCE, reg_id=1,
                    age=60)
    await node.bind("bob", OB_CONTACT, Source("tcp", "198.51.100.9", 50002, "tcp-b"), instance=INSTANCE, reg_id=2,
                    age=10)
    await node.receive(invite())
    [(destination, sent)] = node.wire.requests("INVITE")
    assert destination.flow == "tcp-a"  # tcp-b, the newer, was tried first and failed
    await node.answer(sent, 430, "Flow Failed")  # and tcp-a's edge says it failed too: nothing left
    assert node.upstream[-1].status == 480 and node.upstream[-1].reason == "Temporarily Unavailable: Flow Failed"


async def test_a_dead_nodes_tcp_flow_is_skipped_and_reported_its_udp_binding_sent_from_here() -> None:
    node = Node("n1", nodes={})
    await node.bind("bob", TCP_CONTACT, Source("tcp", "198.51.100.8", 50123, "tcp-9-4"), node="n2")
    await node.bind("bob", UDP_NAT_CONTACT, Source("udp", "198.51.100.7", 40000), node="n2")
    await node.receive(invite())
    assert [d for d, _ in node.wire.requests("INVITE")] == [Destination("udp", "198.51.100.7", 40000)]
    assert node.unreachable == [(TCP_CONTACT, "node_gone")]


async def test_a_node_that_refuses_connections_counts_as_gone_before_etcd_says_so() -> None:
    node = Node("n1", nodes={"n2": {"address": "10.0.0.2", "sipPort": 5070}})

    async def refused(transport: str, host: str, port: int) -> str:
        raise SendError("connection refused")

    node.wire.connect = refused
    await node.bind("bob", TCP_CONTACT, Source("tcp", "198.51.100.8", 50123, "tcp-9-4"), node="n2")
    await node.receive(invite())
    assert node.statuses() == [480]  # nothing went out: no 100 Trying, one answer
    assert node.unreachable == [(TCP_CONTACT, "node_gone")]


async def test_a_closed_connection_is_skipped_and_with_nothing_left_the_caller_gets_480() -> None:
    node = Node(flows=set())
    await node.bind("bob", TCP_CONTACT, Source("tcp", "198.51.100.8", 50123, "tcp-x-1"))
    await node.receive(invite())
    assert node.statuses() == [480]
    assert node.unreachable == [(TCP_CONTACT, "closed")]


def test_a_bindings_flow_ref_is_its_source_and_connection() -> None:
    binding = Binding("bob@x", "sip:bob@10.1.1.1", 0.0, "c", 1, transport="tls", source_host="2001:db8::7",
                      source_port=5061, flow="tls-1", node="n3")
    assert of_binding(binding) == FlowRef("n3", "tls", "2001:db8::7", 5061, "tls-1")
    assert of_binding(binding._replace(source_host="", source_port=0)) is None  # no source known: by its Contact


# -- outbound ------------------------------------------------------------------------------------


async def test_an_outbound_call_is_challenged_407_then_sent_to_the_gateway_without_the_credentials() -> None:
    node = Node()
    number = f"sip:+15551234@{DOMAIN}"
    await node.receive(invite(number))
    challenge = node.upstream[-1]
    assert (challenge.status, challenge.reason) == (407, "Proxy Authentication Required")
    nonce = re.search(r'nonce="([^"]+)"', challenge.get("Proxy-Authenticate")).group(1)
    assert f'realm="{DOMAIN}"' in challenge.get("Proxy-Authenticate")

    credentials = authorization("alice", "alice-pw", nonce, 1, uri=number, method="INVITE")
    await node.receive(invite(number, branch="z9hG4bK-2", extra=f"Proxy-Authorization: {credentials}\r\n"))
    [(destination, sent)] = node.wire.requests("INVITE")
    assert destination == Destination("udp", "127.0.0.9", 5070)
    assert sent.uri == "sip:+15551234@127.0.0.9:5070"  # a number goes out in the gateway's name
    assert sent.get("Proxy-Authorization") is None and sent.get("Record-Route") is not None


async def test_unknown_callers_get_the_same_challenge_and_strangers_are_not_relayed() -> None:
    node = Node()
    await node.receive(invite("tel:+15551234", caller=f"alice@{DOMAIN}"))
    await node.receive(invite("tel:+15551234", caller=f"nobody@{DOMAIN}", branch="z9hG4bK-2", call_id="c2"))
    known, unknown = node.upstream
    shape = lambda response: re.sub(r'nonce="[^"]+"', "", response.get("Proxy-Authenticate"))  # noqa: E731
    assert known.status == unknown.status == 407 and shape(known) == shape(unknown)
    await node.receive(invite("sip:x@elsewhere.test", caller="eve@evil.test", branch="z9hG4bK-3", call_id="c3"))
    assert (node.upstream[-1].status, node.upstream[-1].reason) == (403, "Relaying Denied")


async def test_guessing_an_outbound_password_locks_the_caller_out_and_then_the_right_one_fails_too() -> None:
    node = Node()
    number = f"sip:+15551234@{DOMAIN}"
    for n in range(5):
        await node.receive(invite(number, branch=f"z9hG4bK-c{n}", call_id=f"c{n}"))
        nonce = re.search(r'nonce="([^"]+)"', node.upstream[-1].get("Proxy-Authenticate")).group(1)
        credentials = authorization("alice", f"guess-{n}", nonce, 1, uri=number, method="INVITE")
        await node.receive(invite(number, branch=f"z9hG4bK-g{n}", call_id=f"c{n}",
                                  extra=f"Proxy-Authorization: {credentials}\r\n"))
    assert [r.status for r in node.upstream if r.status != 100] == [407] * 9 + [403]
    assert node.upstream[-1].reason == "Too Many Failed Authentications"
    await node.receive(invite(number, branch="z9hG4bK-right-1", call_id="right"))
    nonce = re.search(r'nonce="([^"]+)"', node.upstream[-1].get("Proxy-Authenticate")).group(1)
    credentials = authorization("alice", "alice-pw", nonce, 1, uri=number, method="INVITE")
    await node.receive(invite(number, branch="z9hG4bK-right-2", call_id="right",
                              extra=f"Proxy-Authorization: {credentials}\r\n"))
    assert (node.upstream[-1].status, node.upstream[-1].reason) == (403, "Too Many Failed Authentications")
    assert node.wire.requests("INVITE") == []
    # From another address the right password calls out (the refused response was never verified:
    # its nonce count is still unused).
    await node.receive(invite(number, branch="z9hG4bK-right-3", call_id="right",
                              extra=f"Proxy-Authorization: {credentials}\r\n"), Source("udp", "192.0.2.77", 5062))
    assert len(node.wire.requests("INVITE")) == 1


async def test_a_caller_proving_another_user_or_outside_its_allow_list_gets_403_and_no_failure_record() -> None:
    node = Node()
    connections = dict(node.catalog.connections)
    connections[(DOMAIN, "bob")] = dataclasses.replace(
        connections[(DOMAIN, "bob")], allowed_networks=(ipaddress.ip_network("198.51.100.0/24"),)
    )
    node.catalog = Catalog(domains=node.catalog.domains, connections=connections)
    number = f"sip:+15551234@{DOMAIN}"

    async def call_as(caller: str, call_id: str) -> Response:
        """A call from `caller` that answers its 407 with bob's password."""
        await node.receive(invite(number, caller=f"{caller}@{DOMAIN}", branch=f"z9hG4bK-{call_id}", call_id=call_id))
        nonce = re.search(r'nonce="([^"]+)"', node.upstream[-1].get("Proxy-Authenticate")).group(1)
        credentials = authorization("bob", "bob-pw", nonce, 1, uri=number, method="INVITE")
        await node.receive(invite(number, caller=f"{caller}@{DOMAIN}", branch=f"z9hG4bK-{call_id}-2", call_id=call_id,
                                  extra=f"Proxy-Authorization: {credentials}\r\n"))
        return node.upstream[-1]

    mismatch = await call_as("alice", "c1")
    assert (mismatch.status, mismatch.reason) == (403, "Authenticated User Does Not Match From")
    outside = await call_as("bob", "c2")  # CALLER is not in bob's allow-list
    assert (outside.status, outside.reason) == (403, "Source Address Not Allowed")
    assert node.wire.requests("INVITE") == []
    # A connection's failure record is its last failed registration: a refused call is none.
    assert await node.store.last_failure(DOMAIN, "bob") is None
    assert await node.store.last_failure(DOMAIN, "alice") is None


async def test_an_ip_authenticated_connection_calls_out_from_its_addresses_only() -> None:
    node = Node()
    await node.receive(invite("sip:carol@elsewhere.test", caller=f"pbx@{DOMAIN}"), Source("udp", "198.51.100.9", 5060))
    [(_, sent)] = node.wire.requests("INVITE")
    assert sent.uri == "sip:carol@elsewhere.test"  # another domain keeps its Request-URI
    # From elsewhere it gets the challenge anyone gets (a 403 would tell that the name exists).
    await node.receive(invite("sip:carol@elsewhere.test", caller=f"pbx@{DOMAIN}", branch="z9hG4bK-2", call_id="c2"),
                       Source("udp", "203.0.113.1", 5060))
    await node.receive(invite("sip:carol@elsewhere.test", caller=f"nobody@{DOMAIN}", branch="z9hG4bK-3",
                              call_id="c3"), Source("udp", "203.0.113.1", 5060))
    pbx, nobody = node.upstream[-2], node.upstream[-1]  # stateless refusals: no 100 Trying
    shape = lambda response: re.sub(r'nonce="[^"]+"', "", response.get("Proxy-Authenticate"))  # noqa: E731
    assert pbx.status == nobody.status == 407 and shape(pbx) == shape(nobody)
    assert len(node.wire.requests("INVITE")) == 1


# -- hostile callers ------------------------------------------------------------------------------

STRANGER = Source("udp", "203.0.113.66", 5060)


async def test_a_stranger_cannot_tell_unknown_unregistered_and_closed_users_from_a_number() -> None:
    node = Node()
    await node.bind("alice", "sip:alice@192.0.2.40:5060", Source("udp", "192.0.2.40", 5060))
    for n, user in enumerate(["nobody", "bob", "mute", "15551234"]):  # the last: a number, a call out
        await node.receive(invite(f"sip:{user}@{DOMAIN}", caller=f"{user}@{DOMAIN}", branch=f"z9hG4bK-s{n}",
                                  call_id="probe"), STRANGER)
    assert [(r.status, r.reason) for r in node.upstream] == [(407, "Proxy Authentication Required")] * 4
    # Byte for byte the same but for the URIs the scanner chose, the tag and the nonce.
    shapes = {re.sub(r"<sip:\w+|tag=[\w.-]+|branch=\S+|nonce=\"[^\"]+\"", "", r.to_bytes().decode())
              for r in node.upstream}
    assert len(shapes) == 1
    # A registered user is reached all the same: calls from other services need no credentials.
    await node.receive(invite(f"sip:alice@{DOMAIN}", branch="z9hG4bK-s9", call_id="call"), STRANGER)
    assert [request.uri for _, request in node.wire.requests("INVITE")] == ["sip:alice@192.0.2.40:5060"]
    assert node.upstream[-1].status == 100


async def test_a_stranger_who_proves_to_be_our_user_is_told_the_precise_answer() -> None:
    node = Node()
    node.known_sources = set()
    await node.receive(invite(f"sip:bob@{DOMAIN}"), STRANGER)
    challenge = node.upstream[-1]
    assert challenge.status == 407
    nonce = re.search(r'nonce="([^"]+)"', challenge.get("Proxy-Authenticate")).group(1)
    credentials = authorization("alice", "alice-pw", nonce, 1, uri=f"sip:bob@{DOMAIN}", method="INVITE")
    await node.receive(invite(f"sip:bob@{DOMAIN}", branch="z9hG4bK-2", extra=f"Proxy-Authorization: {credentials}\r\n"),
                       STRANGER)
    assert (node.upstream[-1].status, node.upstream[-1].reason) == (480, "Temporarily Unavailable")


async def test_refused_calls_are_counted_under_their_domain_not_other() -> None:
    node = Node()
    await node.receive(invite(f"sip:nobody@{DOMAIN}"), STRANGER)  # in: the callee's domain
    await node.receive(invite("sip:carol@elsewhere.test", branch="z9hG4bK-2", call_id="c2"))  # out: the caller's
    await node.receive(invite("sip:x@elsewhere.test", caller="eve@evil.test", branch="z9hG4bK-3", call_id="c3"))
    await node.receive(invite(f"sip:bob@{DOMAIN}", branch="z9hG4bK-4", call_id="c4"))  # known caller: 480
    assert node.finals == [(DOMAIN, 407), (DOMAIN, 407), ("", 403), (DOMAIN, 480)]


async def test_a_refusal_is_one_stateless_answer_even_retransmitted_and_without_an_ack() -> None:
    node = Node()
    for _ in range(3):  # the stranger retransmits and never ACKs
        await node.receive(invite(f"sip:nobody@{DOMAIN}"), STRANGER)
    await node.advance(2 * T1)  # Timer G would have resent the final twice by now
    assert node.statuses() == [407, 407, 407]
    assert not node.transactions.servers and not node.transactions.answered


async def test_over_the_transaction_cap_requests_are_shed_with_503_and_retry_after() -> None:
    node = await two_phones(max_transactions=1)
    await node.receive(invite())
    await node.receive(invite(branch="z9hG4bK-2", call_id="call-2"))
    shed = node.upstream[-1]
    assert (shed.status, shed.reason, shed.get("Retry-After")) == (503, "Service Unavailable: Overloaded", "5")
    assert len(node.transactions.servers) == 1


# -- timers --------------------------------------------------------------------------------------


async def test_a_silent_udp_callee_gets_retransmissions_then_the_caller_408() -> None:
    node = Node()
    await node.bind("bob", UDP_NAT_CONTACT, Source("udp", "198.51.100.7", 40000))
    await node.receive(invite())
    sent_at = []
    while node.statuses()[1:] == []:
        sent_at.append(len(node.wire.requests("INVITE")))
        await node.advance(T1 / 2)
    # Timer A: at T1, then at twice the interval each time (sampled every T1/2), then Timer B.
    assert sent_at[:15] == [1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 4]
    assert node.clock() == 1000.0 + TIMEOUT
    assert len(node.wire.requests("INVITE")) == 7  # the INVITE, then at 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s
    assert node.statuses() == [100, 408]
    # Timer G: the 408 goes again, at T1 then doubling up to T2, until the caller's ACK; then never again.
    await node.advance(T1)
    await node.advance(2 * T1)
    assert node.statuses() == [100, 408, 408, 408]
    await node.receive(invite(method="ACK", to_tag=node.upstream[1].name_addr("To").tag))
    await node.advance(TIMEOUT)
    assert node.statuses() == [100, 408, 408, 408]
    assert not node.transactions.servers and not node.transactions.clients


async def test_a_caller_that_never_acks_our_failure_is_resent_it_until_timer_h() -> None:
    node = Node()
    await node.bind("bob", UDP_NAT_CONTACT, Source("udp", "198.51.100.7", 40000))
    await node.receive(invite())
    [(_, sent)] = node.wire.requests("INVITE")
    await node.answer(sent, 486, "Busy Here")
    for _ in range(int(TIMEOUT / T1) + 1):
        await node.advance(T1)
    # At 0.5, 1.5, 3.5, 7.5, then every T2 up to 32 s: 4 + 6 = 10 retransmissions.
    assert node.statuses() == [100] + [486] * 11
    assert not node.transactions.servers


async def test_a_ringing_branch_is_cancelled_after_timer_c_and_given_up_if_the_cancel_goes_unanswered() -> None:
    node = Node()
    await node.bind("bob", UDP_NAT_CONTACT, Source("udp", "198.51.100.7", 40000))
    await node.receive(invite())
    [(_, sent)] = node.wire.requests("INVITE")
    await node.answer(sent, 180, "Ringing")
    await node.advance(proxy_module.TIMER_C - 1)
    assert node.wire.requests("CANCEL") == []
    await node.advance(1)
    assert len(node.wire.requests("CANCEL")) == 1
    await node.advance(TIMEOUT)
    assert node.statuses() == [100, 180, 408]


async def test_a_non_invite_request_is_retransmitted_at_t2_after_a_provisional_until_its_final() -> None:
    node = Node()
    await node.bind("bob", UDP_NAT_CONTACT, Source("udp", "198.51.100.7", 40000))
    await node.receive(invite(method="MESSAGE"))
    [(_, message)] = node.wire.requests("MESSAGE")[:1]
    await node.advance(T1)
    assert len(node.wire.requests("MESSAGE")) == 2  # Timer E, at T1
    await node.answer(message, 100, "Trying")
    await node.advance(2 * T1)
    await node.advance(T2)
    await node.advance(T2)
    assert len(node.wire.requests("MESSAGE")) == 5  # on at 2*T1, then every T2 (RFC 3261 17.1.2.2)
    await node.answer(message, 200, "OK")
    await node.advance(TIMEOUT)
    assert len(node.wire.requests("MESSAGE")) == 5
    assert node.statuses() == [200]


# -- after the end ---------------------------------------------------------------------------------


async def test_a_finished_call_leaves_only_plain_records_that_still_answer_retransmissions() -> None:
    """Live transaction objects go when a call is set up; what retransmissions need stays, as tuples.

    With the cyclic collector off, nothing of the transaction may survive: 30 s of finished
    calls kept as objects in cycles made full collections last a second under load.
    """
    try:
        node = Node()
        await node.bind("bob", UDP_NAT_CONTACT, Source("udp", "198.51.100.7", 40000))
        await node.receive(invite())
        [(leg, sent)] = node.wire.requests("INVITE")
        await node.answer(sent, 200, "OK")
        assert node.transactions.servers == {} and node.transactions.clients == {}
        del sent
        assert not [o for o in gc.get_objects() if isinstance(o, (ResponseContext, Branch, Transaction))]
    finally:
        gc.enable()
    gc.collect()  # the collector stops tracking tuples of plain values when it first sees them
    records = [*node.transactions.answered.values(), *node.transactions.finished.values()]
    assert records and not any(gc.is_tracked(record) for record in records)
    [(_, sent)] = node.wire.requests("INVITE")
    first = node.upstream[-1]
    await node.answer(sent, 200, "OK")  # bob did not hear alice's ACK yet: his 200 again, up to alice
    to, again = node.wire.sent[-1]
    assert to == Destination("udp", CALLER.host, CALLER.port) and again.status == 200
    assert again.get_all("Via") == first.get_all("Via")  # ours taken off, as the first time
    await node.receive(invite())  # a late copy of alice's INVITE: the answer again, no new branch
    assert node.statuses() == [100, 200, 200, 200]
    assert len(node.wire.requests("INVITE")) == 1


async def test_a_retransmitted_non_2xx_final_gets_our_ack_again_after_the_end() -> None:
    node = Node()
    await node.bind("bob", UDP_NAT_CONTACT, Source("udp", "198.51.100.7", 40000))
    await node.receive(invite())
    [(leg, sent)] = node.wire.requests("INVITE")
    await node.answer(sent, 486, "Busy Here")
    await node.receive(invite(method="ACK", to_tag="callee"))  # alice's ACK ends Timer G
    assert node.transactions.servers == {} and node.transactions.clients == {}
    await node.answer(sent, 486, "Busy Here")  # bob missed our ACK
    acks = node.wire.requests("ACK")
    assert len(acks) == 2 and acks[0] == acks[1] and acks[1][0] == leg
    assert node.statuses() == [100, 486]


def test_options_to_us_is_answered_here_and_to_a_user_or_malformed_is_the_proxys() -> None:
    def options(uri: str) -> Request:
        return parse_message(invite(uri, method="OPTIONS"))

    assert not SipService.proxied(options(f"sip:{DOMAIN}"))
    assert SipService.proxied(options(f"sip:bob@{DOMAIN}"))
    assert SipService.proxied(options("sip:[2001:db8::1"))  # the proxy answers it 400, naming the URI


async def test_a_malformed_request_uri_or_to_is_answered_400_naming_it() -> None:
    node = Node()
    await node.receive(invite("sip:[2001:db8::1", method="OPTIONS", to=f"sip:bob@{DOMAIN}"))
    assert node.upstream[-1].status == 400 and node.upstream[-1].reason.startswith("Bad Request-URI")
    await node.receive(invite(f"sip:bob@{DOMAIN}", to="sip:[2001:db8::1", branch="z9hG4bK-to"))
    assert node.upstream[-1].status == 400 and node.upstream[-1].reason.startswith("Bad To")
    assert node.transactions.servers == {}  # answered before any transaction state


async def test_what_finished_transactions_leave_is_bounded_however_fast_calls_come() -> None:
    node = await two_phones(max_retained=20)
    for n in range(30):
        await node.receive(invite(branch=f"z9hG4bK-b{n}", call_id=f"call-b{n}"))
        for _, sent in node.wire.requests("INVITE")[-2:]:
            await node.answer(sent, 486, "Busy Here")
        await node.receive(invite(branch=f"z9hG4bK-b{n}", call_id=f"call-b{n}", method="ACK"))
    assert [r.status for r in node.upstream].count(486) == 30 and not node.transactions.servers
    assert len(node.transactions.answered) <= 20  # else 30: each is kept 32 s
    assert len(node.transactions.finished) <= 20  # else 60


# -- the core alone: no event loop, no driver ------------------------------------------------------


def test_the_core_asks_for_targets_then_how_to_reach_them_then_sends_and_nothing_else() -> None:
    node = Node()
    request = parse_message(invite())
    [find] = node.core.receive_request(request, CALLER, transaction_key(request), 1000.0)
    assert find == FindTargets(find.context) and find.context.record_route  # an INVITE: record-routed
    targets = [Target(UDP_NAT_CONTACT, FlowRef("n1", "udp", "198.51.100.7", 40000)),
               Target(TCP_CONTACT, FlowRef("n1", "tcp", "198.51.100.8", 50123, "tcp-x-1"))]
    reaches = node.core.targets_found(find.context, [targets], 1000.0)
    assert [reach.target for reach in reaches] == targets and all(isinstance(r, Reach) for r in reaches)
    first = node.core.reached(reaches[0], Destination("udp", "198.51.100.7", 40000), None, 1000.0)
    assert [type(action) for action in first] == [Send, Send]  # the INVITE down, 100 Trying up
    assert first[0].destination == Destination("udp", "198.51.100.7", 40000)
    assert parse_message(first[1].data).status == 100 and first[1].destination == CALLER.reply_to
    # The TCP flow has closed meanwhile: the driver says "skip it"; the UDP branch rings on alone.
    assert node.core.reached(reaches[1], None, None, 1000.0) == []
    # Timer A, on the caller's clock: the INVITE again at T1, not before.
    assert node.core.tick(1000.0 + T1 - 0.01) == []
    [again] = node.core.tick(1000.0 + T1)
    assert again.data == first[0].data
    # The callee refuses: our ACK down, the best (only) answer up, counted once.
    busy = make_response(parse_message(first[0].data), 486, "Busy Here", to_tag="b")
    actions = node.core.receive_response(parse_message(busy.to_bytes()), 1001.0)
    assert [parse_message(a.data).method for a in actions if isinstance(a, Send) and a.destination != CALLER.reply_to] \
        == ["ACK"]
    assert Answered(request, DOMAIN, 486) in actions
    assert [parse_message(a.data).status for a in actions if isinstance(a, Send) and a.destination == CALLER.reply_to] \
        == [486]


def test_a_cancel_while_the_location_service_is_asked_answers_487_and_the_late_targets_are_ignored() -> None:

    node = Node()
    request = parse_message(invite())
    [find] = node.core.receive_request(request, CALLER, transaction_key(request), 1000.0)
    cancel_request = parse_message(cancel())
    actions = node.core.receive_request(cancel_request, CALLER, transaction_key(cancel_request), 1000.1)
    assert [parse_message(a.data).status for a in actions if isinstance(a, Send)] == [200, 487]
    target = Target(UDP_NAT_CONTACT, FlowRef("n1", "udp", "198.51.100.7", 40000))
    assert node.core.targets_found(find.context, [[target]], 1000.2) == []


def test_a_request_whose_lookup_never_comes_back_is_given_up_and_frees_its_slot() -> None:
    node = Node(max_transactions=1)
    stuck = parse_message(invite())
    [find] = node.core.receive_request(stuck, CALLER, transaction_key(stuck), 1000.0)
    later = 1000.0 + proxy_module.SAFETY_NET - 1
    other = parse_message(invite(branch="z9hG4bK-caller-2", call_id="call-2"))
    [shed] = node.core.receive_request(other, CALLER, transaction_key(other), later)
    assert parse_message(shed.data).status == 503  # the stuck one still holds the only slot
    # Past the safety net, the next request that comes sweeps it: 408 for it, and room for a new one.
    again = parse_message(invite(branch="z9hG4bK-caller-3", call_id="call-3"))
    actions = node.core.receive_request(again, CALLER, transaction_key(again), later + proxy_module.SWEEP_INTERVAL)
    given_up = [parse_message(a.data) for a in actions if isinstance(a, Send)]
    assert [(r.status, r.call_id) for r in given_up] == [(408, "call-1")]
    assert Answered(stuck, DOMAIN, 408) in actions and isinstance(actions[-1], FindTargets)
    assert node.core.targets_found(find.context, [], later + 61) == []  # its lookup, late: ignored


def test_what_names_us_is_our_address_with_a_port_we_listen_on_for_that_transport() -> None:
    identity = Identity("n1", "10.0.0.1", {"udp": 5060, "tcp": 5060, "tls": 5061, "ws": 5066},
                        {"udp": 5060, "tcp": 5060, "tls": 5061, "ws": 8066}, {"127.0.0.1"})
    assert identity.is_us(parse_uri("sip:10.0.0.1")) and identity.is_us(parse_uri("sip:127.0.0.1:5060;lr"))
    assert identity.is_us(parse_uri("sip:10.0.0.1:5066;transport=ws")) and identity.is_us(
        parse_uri("sip:127.0.0.1:8066;transport=ws"))
    # A gateway on our host, on UDP, at the number of our WebSocket port: somebody else.
    assert not identity.is_us(parse_uri("sip:127.0.0.1:8066"))
    assert not identity.is_us(parse_uri("sip:127.0.0.1:5061;transport=tcp"))
    assert identity.is_us(parse_uri("sips:127.0.0.1:5061"))
    assert identity.sent_by(Via("TLS", "10.0.0.1", 5061, {})) and not identity.sent_by(Via("UDP", "10.0.0.1", 5061, {}))
