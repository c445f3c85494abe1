"""RFC 4475's torture messages sent to a running registrar and proxy: each answered as the RFC says.

Every message of RFC 4475 section 3 (3.1.1 valid, 3.1.2 invalid, 3.2 transaction
layer, 3.3 application layer) goes over UDP, and the ones about framing over TCP
too, to a `RegistrarServer` as `sipreg serve` assembles it, listening on
127.0.0.1. Only the network is used: what answers, the parser, the registrar or
the proxy, is the server's business. Each test says what RFC 4475 asks of a
registrar or a proxy and checks the status line that comes back, or that
nothing does where a message cannot be answered; the relays play the endpoint
the proxy forwards to.

The messages are RFC 4475's bytes, from tests/rfc4475.py (the parser's tests
read the same). They are addressed to example.com and friends; where a case
needs our domain (a REGISTER a registrar serves, a call it routes) the copy
says which names it changes, and nothing else of the torture changes.

The server serves DOMAIN. Its users are known by address from PEER (a PBX or an
SBC: trusted, it gets the precise answers, 480 for a user nobody registered),
all but j.user, who has a password. STRANGER is anyone else: a registered user
is reached from anywhere, anything else gets the answer a stranger gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import itertools
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from registrar.app import RegistrarServer, ServeConfig
from registrar.model import Catalog, Connection, ConnectionLimits, Domain, SecurityPolicy
from registrar.sip import digest
from registrar.sip.headers import canonical_name, parse_name_addr, parse_via
from registrar.sip.message import Request, Response, StreamFramer, make_response, parse_message
from tests.helpers import DOMAIN, free_port
from tests.rfc4475 import (
    BADASPEC,
    BADBRANCH,
    BADDATE,
    BADDN,
    BADINV01,
    BADVERS,
    BCAST,
    BEXT01,
    BIGCODE,
    CLERR,
    CPARAM01,
    CPARAM02,
    DBLREQ,
    ESC01,
    ESC02,
    ESCNULL,
    ESCRURI,
    INSUF,
    INTMETH,
    INV2543,
    INVUT,
    LONGREQ,
    LTGTRURI,
    LWSDISP,
    LWSRURI,
    LWSSTART,
    MCL01,
    MISMATCH01,
    MISMATCH02,
    MPART01,
    MPART01_BODY,
    MULTI01,
    NCL,
    NOREASON,
    NOVELSC,
    QUOTBAL,
    REGAUT01,
    REGBADCT,
    REGESCRT,
    SCALAR02,
    SCALARLG,
    SDP01,
    SEMIURI,
    TRANSPORTS,
    TRWS,
    UNKSCM,
    UNKSM2,
    UNREASON,
    WSINV,
    ZEROMF,
    message,
)

SERVER_HOST = "127.0.0.1"
PEER = "127.0.0.2"
STRANGER = "127.0.0.4"
ANSWER_SECONDS = 3.0
# How long a message may take to arrive whole on a connection (ConnectionLimits.message_seconds):
# short, so that clerr's connection is seen closed without a long wait.
MESSAGE_SECONDS = 0.2

# intmeth's Request-URI user (RFC 3261 25.1 user-unreserved and more).
UNUSUAL_USER = "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
BY_ADDRESS = (
    "watson", "user", "null-\x00-null", UNUSUAL_USER, "sips:user@example.com", "user;par=u@example.net", "kumiko",
    "callee",
)  # fmt: skip


def served(data: bytes, *changes: tuple[str, str]) -> bytes:
    """`data` with the names in `changes` replaced (by ours, mostly); each must be there."""
    for old, new in changes:
        assert old.encode() in data, old
        data = data.replace(old.encode(), new.encode())
    return data


def own_branch(data: bytes, suffix: str) -> bytes:
    """`data` with its top Via's branch made its own by `suffix`.

    RFC 4475's messages share branches (z9hG4bKkdjuw from host5.example.com twice): a
    server that gets two with one branch, sent-by and method within 32 s rightly takes
    the second for a retransmission of the first (RFC 3261 17.2.3), and answers it so.
    """
    return re.sub(rb"(;branch=[^;,\r]+)", lambda match: match[1] + b"-" + suffix.encode(), data, count=1)


def to_our_registrar(data: bytes, user: str) -> bytes:
    """A REGISTER for example.com's `user` made ours: example.com is our domain in its Request-URI, To and
    From; its branch is its own (own_branch), as the registrar keeps its answer for retransmissions."""
    call_id = data.split(b"Call-ID: ", 1)[1].split(b".", 1)[0].decode()
    return own_branch(served(data, ("REGISTER sip:example.com", f"REGISTER sip:{DOMAIN}"),
                             (f"To: sip:{user}@example.com", f"To: sip:{user}@{DOMAIN}"),
                             (f"From: sip:{user}@example.com", f"From: sip:{user}@{DOMAIN}")), call_id)


# -- the server, and peers that talk to it ----------------------------------------------------


@dataclass(frozen=True)
class Server:
    address: tuple[str, int]


def catalog() -> Catalog:
    domain = Domain(DOMAIN, security=SecurityPolicy(connections=ConnectionLimits(message_seconds=MESSAGE_SECONDS)))
    pbx = (ipaddress.ip_network(f"{PEER}/32"),)
    connections = {
        (DOMAIN, name): Connection(DOMAIN, name, authentication="ip", allowed_networks=pbx) for name in BY_ADDRESS
    }
    password = {"MD5": digest.ha1("MD5", "j.user", DOMAIN, "pw")}
    connections[(DOMAIN, "j.user")] = Connection(DOMAIN, "j.user", ha1=password)
    return Catalog(domains={DOMAIN: domain}, connections=connections)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """A registrar and proxy for DOMAIN on 127.0.0.1, its event loop in a thread of its own."""
    port = free_port(SERVER_HOST)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="rfc4475-server", daemon=True)
    thread.start()

    async def start() -> RegistrarServer:
        running = RegistrarServer(ServeConfig(
            catalog=catalog(), host=SERVER_HOST, sip_port=port, tls_port=None, http_port=None, node="rfc4475",
            nonce_secret=b"4" * 32,
        ))
        await running.start()
        gc.unfreeze()  # start() freezes what is alive for a long-lived server; this process is pytest
        return running

    running = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield Server((SERVER_HOST, port))
    finally:
        asyncio.run_coroutine_threadsafe(running.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


_numbers = itertools.count(1)


def branch() -> str:
    """A branch of its own for each request we send."""
    return f"z9hG4bK-rfc4475-{next(_numbers)}"


def options(peer: Peer, uri: str) -> bytes:
    """A plain OPTIONS from `peer` (a caller of our domain) to `uri`."""
    call_id = f"options-{next(_numbers)}@{peer.host}"
    return message(
        f"OPTIONS {uri} SIP/2.0", f"Via: SIP/2.0/UDP {peer.host}:{peer.port};branch={branch()}",
        "Max-Forwards: 70", f"From: <sip:caller@{DOMAIN}>;tag=c1", f"To: <{uri}>", f"Call-ID: {call_id}",
        "CSeq: 1 OPTIONS", "Content-Length: 0",
    )  # fmt: skip


def ack(invite: Request, response: Response) -> bytes:
    """The ACK of a non-2xx final response to `invite` (RFC 3261 17.1.1.3): its top Via, the response's To."""
    number, _ = invite.cseq
    return message(
        f"ACK {invite.uri} SIP/2.0", f"Via: {invite.get_all('Via')[0]}", f"From: {invite.get('From')}",
        f"To: {response.get('To')}", f"Call-ID: {invite.call_id}", f"CSeq: {number} ACK", "Max-Forwards: 70",
        "Content-Length: 0",
    )  # fmt: skip


class Peer:
    """A SIP peer with a UDP socket of its own at `host` (a 127.x address standing for a host)."""

    def __init__(self, server: Server, host: str):
        self.server = server
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind((host, 0))
        self.socket.settimeout(ANSWER_SECONDS)
        self.host, self.port = self.socket.getsockname()

    def close(self) -> None:
        self.socket.close()

    def send(self, data: bytes) -> None:
        self.socket.sendto(data, self.server.address)

    def receive(self) -> bytes:
        data, _ = self.socket.recvfrom(65_535)
        return data

    def response(self) -> Response:
        """The next datagram, which must be a response."""
        answer = parse_message(self.receive())
        assert isinstance(answer, Response), answer
        return answer

    def final(self) -> bytes:
        """The next final response, as it came (provisional ones skipped)."""
        while True:
            data = self.receive()
            answer = parse_message(data)
            if isinstance(answer, Response) and answer.status >= 200:
                return data

    def request(self) -> Request:
        """The next datagram, which must be a request (what the proxy relays to us)."""
        relayed = parse_message(self.receive())
        assert isinstance(relayed, Request), relayed
        return relayed

    def ask(self, data: bytes) -> Response:
        """Send a request that parses and return its final response; an INVITE's non-2xx one is ACKed."""
        sent = parse_message(data)
        assert isinstance(sent, Request)
        self.send(data)
        while True:  # what else comes (a stray of a failed test) is passed over
            answer = parse_message(self.receive())
            if isinstance(answer, Response) and answer.status >= 200 and answer.call_id == sent.call_id:
                if answer.cseq == sent.cseq:
                    break
        if sent.method == "INVITE" and answer.status >= 300:
            self.send(ack(sent, answer))
        return answer

    def reply(self, request: Request, status: int, reason: str, *headers: tuple[str, str], body: bytes = b"") -> None:
        """Answer a request the proxy relayed to us, as the endpoint it is for."""
        response = make_response(request, status, reason, to_tag="callee")
        for name, value in headers:
            response.set(name, value)
        response.body = body
        self.send(response.to_bytes())

    def send_as_answer(self, torture: bytes, relayed: Request, *kept: str) -> None:
        """Answer a request the proxy relayed to us with the response `torture`: its status line, body
        and `kept` headers, and the rest of what makes it that request's answer (Via, From, To, Call-ID,
        CSeq) from `relayed`."""
        head, _, body = torture.partition(b"\r\n\r\n")
        start, *lines = head.split(b"\r\n")
        kept = (*kept, "Content-Length")
        ours = make_response(relayed, int(start.split(b" ")[1]), "", to_tag="callee").headers
        self.send(b"\r\n".join([
            start, *[f"{name}: {value}".encode() for name, value in ours if name not in kept],
            *[line for line in lines if line.split(b":")[0].decode() in kept], b"", body,
        ]))  # fmt: skip

    def nothing_more(self) -> None:
        """Nothing comes back for what this peer sent so far: an OPTIONS to us sent next is answered first, alone."""
        probe = options(self, f"sip:{DOMAIN}")
        self.send(probe)
        answer = self.response()
        assert answer.call_id == parse_message(probe).call_id, f"unexpected answer: {answer.status} {answer.reason}"
        self.socket.settimeout(0.05)
        try:
            extra = self.receive()
        except TimeoutError:
            return
        finally:
            self.socket.settimeout(ANSWER_SECONDS)
        raise AssertionError(f"unexpected answer: {extra[:60]!r}")


class Stream:
    """A TCP connection to the server from `host`."""

    def __init__(self, server: Server, host: str):
        self.socket = socket.create_connection(server.address, ANSWER_SECONDS, source_address=(host, 0))
        self.framer = StreamFramer()
        self.pending: list[bytes] = []

    def close(self) -> None:
        self.socket.close()

    def send(self, data: bytes) -> None:
        self.socket.sendall(data)

    def response(self) -> Response:
        while not self.pending:
            data = self.socket.recv(65_535)
            assert data, "closed with no answer"
            self.pending += [event for event in self.framer.feed(data) if isinstance(event, bytes)]
        answer = parse_message(self.pending.pop(0))
        assert isinstance(answer, Response)
        return answer

    def closed(self, seconds: float = ANSWER_SECONDS) -> bool:
        """Whether the server closes the connection within `seconds`, sending nothing more."""
        self.socket.settimeout(seconds)
        try:
            return self.socket.recv(65_535) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


@pytest.fixture
def stranger(server: Server) -> Iterator[Peer]:
    peer = Peer(server, STRANGER)
    yield peer
    peer.close()


@pytest.fixture
def pbx(server: Server) -> Iterator[Peer]:
    """A peer at PEER: trusted (it vouches for our users), it gets the precise answers."""
    peer = Peer(server, PEER)
    yield peer
    peer.close()


def register(ua: Peer, aor: str, call_id: str, cseq: int, *binding: str) -> bytes:
    """A REGISTER of `aor` from `ua`; `binding`: its Contact and Expires lines (none: a query, RFC 3261 10.2.3)."""
    return message(
        f"REGISTER sip:{DOMAIN} SIP/2.0", f"Via: SIP/2.0/UDP {ua.host}:{ua.port};branch={branch()}",
        "Max-Forwards: 70", f"From: <{aor}>;tag=ua", f"To: <{aor}>", f"Call-ID: {call_id}", f"CSeq: {cseq} REGISTER",
        *binding, "Content-Length: 0",
    )  # fmt: skip


@contextlib.contextmanager
def registered(server: Server, aor: str) -> Iterator[Peer]:
    """A UA at PEER with `aor` registered to it (our users are known by that address); unregistered after."""
    ua = Peer(server, PEER)
    call_id = f"ua-{ua.port}@{PEER}"
    try:
        answer = ua.ask(register(ua, aor, call_id, 1, f"Contact: <sip:ua@{ua.host}:{ua.port}>", "Expires: 600"))
        assert answer.status == 200, f"{answer.status} {answer.reason}"
        yield ua
    finally:
        ua.socket.settimeout(ANSWER_SECONDS)
        unregister_all(ua, aor, call_id, 2)
        ua.close()


def bindings(peer: Peer, aor: str, call_id: str, cseq: int) -> list[str]:
    """The Contact URIs the registrar lists for `aor`."""
    answer = peer.ask(register(peer, aor, call_id, cseq))
    assert answer.status == 200, f"{answer.status} {answer.reason}"
    return [parse_name_addr(value).uri_text for value in answer.get_all("Contact")]


def unregister_all(peer: Peer, aor: str, call_id: str, cseq: int) -> None:
    assert peer.ask(register(peer, aor, call_id, cseq, "Contact: *", "Expires: 0")).status == 200


def status_line(answer: Response) -> tuple[int, str]:
    return answer.status, answer.reason


# == 3.1.1 Valid messages =====================================================================


def test_wsinv_is_well_formed_and_its_dialog_not_ours_to_relay(stranger: Peer) -> None:
    # "All elements should treat this as a well-formed request." It is in a dialog (To has
    # a tag) that does not go through us (its Route is another host's): a proxy that is
    # no open relay refuses it, and its answer carries back what the folding hid.
    stranger.send(WSINV)
    answer = stranger.response()
    assert status_line(answer) == (404, "Not Here: No Route For In-Dialog Request")
    vias = [parse_via(value) for value in answer.get_all("Via")]
    assert [(via.transport, via.host, via.branch) for via in vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"), ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]  # fmt: skip
    assert vias[0].params["received"] == STRANGER
    assert (answer.call_id, answer.cseq) == ("wsinv.ndaksdj@192.0.2.1", (9, "INVITE"))
    assert (answer.name_addr("From").tag, answer.name_addr("To").tag) == ("98asjd8", "1918181833n")


INTMETH_METHOD = "!interesting-Method0123456789_*+`.%indeed'~"


def test_intmeth_to_a_defined_uri_is_forwarded_and_the_endpoint_s_501_comes_back(
    server: Server, stranger: Peer
) -> None:
    # "If this unusual URI has been defined at a proxy, the proxy will forward this request
    # normally. [...] Endpoints will generate a 501 listing the methods they understand in
    # an Allow header field." The URI is defined at ours: example.com is our domain here.
    with registered(server, f"sip:{UNUSUAL_USER}@{DOMAIN}") as ua:
        to_us = served(INTMETH, ("@example.com SIP/2.0", f"@{DOMAIN} SIP/2.0"), ("*@example.com>", f"*@{DOMAIN}>"))
        stranger.send(to_us)
        relayed = ua.request()
        assert (relayed.method, relayed.uri) == (INTMETH_METHOD, f"sip:ua@{ua.host}:{ua.port}")
        assert relayed.cseq == (139122385, INTMETH_METHOD)
        assert relayed.get("To") == f'"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" <sip:{UNUSUAL_USER}@{DOMAIN}>'
        assert relayed.name_addr("From").params["fromparam''~+*_!.-%"] == "работающий"
        assert relayed.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
        assert relayed.get(canonical_name("extensionHeader-!.%*+_`'~")) == "\ufeff大停電"
        ua.reply(relayed, 501, "Not Implemented", ("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS"))
        answer = parse_message(stranger.final())
        assert status_line(answer) == (501, "Not Implemented")
        assert answer.get_all("Allow") == ["INVITE", "ACK", "CANCEL", "BYE", "OPTIONS"]


def test_esc01_request_uri_user_is_unescaped_before_it_is_looked_up(pbx: Peer) -> None:
    # "The application using the message must treat the % HEX HEX expansions as equivalent
    # to the character being encoded." The user "sips:user@example.com" is ours (example.net
    # is our domain here), and nobody is registered for it: 480, where the user as written,
    # escapes and all, would be unknown (404).
    answer = pbx.ask(served(ESC01, ("@example.net SIP/2.0", f"@{DOMAIN} SIP/2.0")))
    assert status_line(answer) == (480, "Temporarily Unavailable")


def test_escnull_registers_two_distinct_contacts_for_the_whole_aor(pbx: Peer) -> None:
    # "Implementations must take special care when unescaping the Address-of-Record (AOR) in
    # this request so as to not prematurely shorten the username. This request registers two
    # distinct contact URIs." (example.com is our domain here; null-%00-null is our user.)
    to_us = served(ESCNULL, ("sip:example.com", f"sip:{DOMAIN}"), ("null@example.com", f"null@{DOMAIN}"))
    answer = pbx.ask(own_branch(to_us, "escnull"))
    assert status_line(answer) == (200, "OK")
    assert sorted(parse_name_addr(value).uri_text for value in answer.get_all("Contact")) == [
        "sip:%00%00@host5.example.com", "sip:%00@host5.example.com"
    ]
    aor = f"sip:null-%00-null@{DOMAIN}"
    assert len(bindings(pbx, aor, "escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd", 14398235)) == 2
    unregister_all(pbx, aor, "escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd", 14398236)


def test_esc02_is_an_unknown_method_not_register_and_gets_501(stranger: Peer) -> None:
    # "The request method is unknown. It is NOT equivalent to REGISTER. [...] An endpoint
    # would reject this message with a 501." Sent to the registrar itself (registrar.example.com
    # is our domain here), we are that endpoint: no 401 challenge as for a REGISTER.
    stranger.send(served(ESC02, ("registrar.example.com", DOMAIN)))
    answer = stranger.response()
    assert status_line(answer) == (501, "Not Implemented: RE%47IST%45R")
    assert {"REGISTER", "INVITE", "OPTIONS"} <= set(answer.get_all("Allow"))


def test_lwsdisp_is_accepted_and_routed(pbx: Peer) -> None:
    # "Elements should accept this request as well formed." Routed to our user (example.com is
    # our domain here in the Request-URI), whom nobody registered.
    answer = pbx.ask(served(LWSDISP, ("OPTIONS sip:user@example.com", f"OPTIONS sip:user@{DOMAIN}")))
    assert status_line(answer) == (480, "Temporarily Unavailable")
    assert answer.get("From") == "caller<sip:caller@example.com>;tag=323"


def test_longreq_is_accepted_and_its_answer_carries_every_long_value_back(pbx: Peer) -> None:
    # "This well-formed request contains header fields with many values and values that are
    # very long." Routed to our user (example.com is our domain here in the Request-URI).
    answer = pbx.ask(served(LONGREQ, ("INVITE sip:user@example.com", f"INVITE sip:user@{DOMAIN}")))
    assert status_line(answer) == (480, "Temporarily Unavailable")
    vias = answer.get_all("Via")
    assert len(vias) == 34 and vias[0].startswith("SIP/2.0/TCP sip33.example.com;received=127.0.0.2")
    assert vias[-1].endswith("branch=very" + "long" * 50 + "branchvalue")
    assert answer.name_addr("From").tag == "12" + "982" * 50 + "424"
    assert answer.name_addr("To").uri.params["longparam" + "name" * 25] == "shortvalue"
    assert answer.call_id == "longreq.one" + "really" * 20 + "longcallid"


def test_dblreq_the_register_is_handled_and_the_octets_after_it_ignored(stranger: Peer) -> None:
    # "A SIP element receiving this datagram would handle the REGISTER request normally and
    # ignore the extra bits that look like an INVITE request." Normally: j.user has a password
    # (example.com is our domain here), so the REGISTER is challenged; the INVITE gets nothing.
    stranger.send(served(DBLREQ, ("sip:example.com", f"sip:{DOMAIN}"), ("user@example.com", f"user@{DOMAIN}")))
    answer = stranger.response()
    assert status_line(answer) == (401, "Unauthorized")
    assert (answer.call_id, answer.cseq) == ("dblreq.0ha0isndaksdj99sdfafnl3lk233412", (8, "REGISTER"))
    stranger.nothing_more()


def test_semiuri_user_part_is_user_semicolon_par_not_user_with_a_parameter(server: Server, stranger: Peer) -> None:
    # "The Request-URI will parse so that the user part is "user;par=u@example.net"." That
    # user of ours (example.com is our domain here) is registered, "user" is not: the
    # OPTIONS reaches the one registered.
    with registered(server, f"sip:user;par=u%40example.net@{DOMAIN}") as ua:
        stranger.send(served(SEMIURI, ("@example.com SIP/2.0", f"@{DOMAIN} SIP/2.0")))
        relayed = ua.request()
        assert (relayed.method, relayed.call_id) == ("OPTIONS", "semiuri.0ha0isndaksdj")
        ua.reply(relayed, 200, "OK")
        assert parse_message(stranger.final()).status == 200


def test_transports_unknown_transports_in_later_vias_change_nothing(pbx: Peer) -> None:
    # "Elements receiving this message would process it exactly as if the 2nd and subsequent
    # header field values specified UDP." Routed to our user (our domain here in the Request-URI).
    answer = pbx.ask(served(TRANSPORTS, ("OPTIONS sip:user@example.com", f"OPTIONS sip:user@{DOMAIN}")))
    assert status_line(answer) == (480, "Temporarily Unavailable")
    assert [via.split()[0] for via in answer.get_all("Via")] == [
        "SIP/2.0/UDP", "SIP/2.0/SCTP", "SIP/2.0/TLS", "SIP/2.0/UNKNOWN", "SIP/2.0/TCP"
    ]


def mpart01_to_us(server: Server, branch: str) -> bytes:
    # Its Route is the proxy at 127.0.0.1:5080: ours here; kumiko@example.org is our user.
    return served(
        MPART01, ("Route: <sip:127.0.0.1:5080>", f"Route: <sip:{SERVER_HOST}:{server.address[1]}>"),
        ("MESSAGE sip:kumiko@example.org", f"MESSAGE sip:kumiko@{DOMAIN}"), ("z9hG4bK-d87543-", f"z9hG4bK-{branch}-"),
    )  # fmt: skip


def test_mpart01_binary_body_is_framed_and_relayed_whole_over_udp(server: Server, stranger: Peer) -> None:
    # "Receivers must take care to frame the received message properly. Parsers must accept
    # this message as well formed."
    assert len(MPART01_BODY) == 553 and b"\x00" in MPART01_BODY
    with registered(server, f"sip:kumiko@{DOMAIN}") as ua:
        stranger.send(mpart01_to_us(server, "udp"))
        relayed = ua.request()
        assert (relayed.method, relayed.body, relayed.get("Content-Length")) == ("MESSAGE", MPART01_BODY, "553")
        assert relayed.get("Route") is None  # ours, taken off
        ua.reply(relayed, 200, "OK")
        assert parse_message(stranger.final()).status == 200


def test_mpart01_binary_body_is_framed_and_relayed_whole_over_tcp(server: Server) -> None:
    with registered(server, f"sip:kumiko@{DOMAIN}") as ua:
        stream = Stream(server, STRANGER)
        try:
            data = mpart01_to_us(server, "tcp")
            stream.send(data[:300])  # a message in pieces, the binary part split too
            stream.send(data[300:700])
            stream.send(data[700:])
            relayed = ua.request()
            assert (relayed.method, relayed.body) == ("MESSAGE", MPART01_BODY)
            ua.reply(relayed, 200, "OK")
            assert status_line(stream.response()) == (200, "OK")
        finally:
            stream.close()


def test_unreason_response_is_accepted_and_relayed_with_its_reason_phrase(server: Server, pbx: Peer) -> None:
    # "This response is well formed. A parser must accept this message." A proxy's parser
    # meets it as an answer to what it relayed: the endpoint answers our OPTIONS with its
    # status line, Content-Type, Contact and body; the proxy passes all of them on.
    status, body = UNREASON.split(b"\r\n", 1)[0], UNREASON.split(b"\r\n\r\n", 1)[1]
    with registered(server, f"sip:callee@{DOMAIN}") as ua:
        pbx.send(options(pbx, f"sip:callee@{DOMAIN}"))
        ua.send_as_answer(UNREASON, ua.request(), "Content-Type", "Contact")
        answer = pbx.final()
        assert answer.split(b"\r\n", 1)[0] == status
        assert answer.split(b"\r\n\r\n", 1)[1] == body and len(body) == 154


def test_noreason_response_is_accepted_and_an_empty_reason_phrase_relayed(server: Server, pbx: Peer) -> None:
    # "This well-formed response contains no reason phrase. A parser must accept this
    # message." As the endpoint's first answer to what the proxy relayed, a 100 is hop by
    # hop: the proxy takes it and passes nothing on; the final answer, with an empty reason
    # phrase too, goes up as it came.
    with registered(server, f"sip:callee@{DOMAIN}") as ua:
        pbx.send(options(pbx, f"sip:callee@{DOMAIN}"))
        relayed = ua.request()
        ua.send_as_answer(NOREASON, relayed, "Contact")
        ua.reply(relayed, 200, "")
        assert pbx.receive().startswith(b"SIP/2.0 200 \r\n")


# == 3.1.2 Invalid messages ==================================================================


@pytest.mark.parametrize(
    ("data", "answer"),
    [
        # "An element receiving this request should respond with a 400 Bad Request error."
        pytest.param(BADINV01, (400, "Bad Via: empty parameter"), id="badinv01"),
        # "When sent over UDP [...] the receiving element should respond with a 400 Bad Request error."
        pytest.param(CLERR, (400, "Content-Length Larger Than Message"), id="clerr"),
        # "An element receiving this message should respond with an error."
        pytest.param(NCL, (400, "Bad Content-Length"), id="ncl"),
        # "An element receiving this request should respond with a 400 Bad Request due to the CSeq error."
        pytest.param(SCALAR02, (400, "Bad CSeq: CSeq number out of range"), id="scalar02"),
        # "An element receiving this request should return a 400 Bad Request error."
        pytest.param(QUOTBAL, (400, "Bad To: unterminated quoted string"), id="quotbal"),
        # "It is reasonable always to reject a request with this error with a 400 Bad Request."
        pytest.param(LTGTRURI, (400, "Bad Request-URI: enclosed in <>"), id="ltgtruri"),
        # "An element receiving this request should respond with a 400 Bad Request."
        pytest.param(LWSRURI, (400, "Bad Request-Line: whitespace in Request-URI"), id="lwsruri"),
        # "It is acceptable to reject this request as malformed." (we do: a proxy that read it
        # liberally would have to rewrite the line it forwards)
        pytest.param(LWSSTART, (400, "Bad Request-Line: more than one SP between elements"), id="lwsstart"),
        pytest.param(TRWS, (400, "Bad Request-Line: SP after SIP-Version"), id="trws"),
        # "It is acceptable for an element to reject this request with a 400 Bad Request."
        pytest.param(ESCRURI, (400, "Bad Request-URI: header fields (?...) not allowed"), id="escruri"),
        # "It is reasonable always to reject this kind of error with a 400 Bad Request response."
        pytest.param(BADDN, (400, "Bad To: unquoted display name with ',': quote it"), id="baddn"),
        # "The element should respond to the request with a 505 Version Not Supported error."
        pytest.param(BADVERS, (505, "Version Not Supported: SIP/7.0"), id="badvers"),
        # "Any element receiving this request will respond with a 400 Bad Request."
        pytest.param(MISMATCH01, (400, "CSeq Method Does Not Match Request Method"), id="mismatch01"),
        # "Any element receiving this response should respond with a 501 Not Implemented."
        pytest.param(MISMATCH02, (501, "Not Implemented: NEWMETHOD"), id="mismatch02"),
    ],
)
def test_invalid_request_is_answered_with_a_reason_that_names_the_fault(
    stranger: Peer, data: bytes, answer: tuple[int, str]
) -> None:
    stranger.send(data)
    response = stranger.response()
    assert status_line(response) == answer
    # Answered as the request it is: what an answer copies comes back.
    assert response.call_id == data.split(b"Call-ID: ", 1)[1].split(b"\r\n", 1)[0].decode()


def test_clerr_over_tcp_waits_for_the_rest_then_closes_the_connection(server: Server) -> None:
    # "If this message arrived over a stream-based transport, such as TCP, there's not much the
    # receiving party could do but wait for more data on the stream and close the connection if
    # none is forthcoming within a reasonable period of time." (here ConnectionLimits.message_seconds)
    stream = Stream(server, STRANGER)
    try:
        stream.send(CLERR)
        assert stream.closed(seconds=MESSAGE_SECONDS + 2.0)
    finally:
        stream.close()


def test_ncl_over_tcp_is_answered_and_the_connection_closed(server: Server) -> None:
    # "If a request like this arrives over TCP, the framing error is not recoverable, and the
    # connection should be closed."
    stream = Stream(server, STRANGER)
    try:
        stream.send(NCL)
        assert status_line(stream.response()) == (400, "Bad Content-Length")
        assert stream.closed()
    finally:
        stream.close()


def test_scalarlg_response_is_discarded_even_as_an_answer_to_what_the_proxy_relayed(
    server: Server, pbx: Peer
) -> None:
    # "An element receiving this response will simply discard it." Sent to us out of the
    # blue, and as the endpoint's answer to our relayed OPTIONS (that transaction's Via, From,
    # To and Call-ID, the RFC's CSeq, Retry-After and Warning): dropped, so the transaction
    # still waits, and the endpoint's next answer is the one that goes up.
    pbx.send(SCALARLG)
    pbx.nothing_more()
    with registered(server, f"sip:callee@{DOMAIN}") as ua:
        pbx.send(options(pbx, f"sip:callee@{DOMAIN}"))
        relayed = ua.request()
        ua.send_as_answer(SCALARLG, relayed, "CSeq", "Retry-After", "Warning")
        ua.reply(relayed, 200, "OK")
        assert pbx.final().startswith(b"SIP/2.0 200 OK\r\n")


def test_baddate_is_accepted_because_the_date_plays_no_part(pbx: Peer) -> None:
    # "It is acceptable to reject this request as malformed (though an element shouldn't do
    # that unless the contents of the Date header field were actually important to its
    # processing)." Ours never reads Date: routed to our user (our domain here in the Request-URI).
    answer = pbx.ask(served(BADDATE, ("INVITE sip:user@example.com", f"INVITE sip:user@{DOMAIN}")))
    assert status_line(answer) == (480, "Temporarily Unavailable")


def test_regbadct_contact_with_headers_not_in_angle_brackets_is_400(pbx: Peer) -> None:
    # "It is reasonable for an element receiving this request to respond with a 400 Bad
    # Request." To our registrar (example.com is our domain here, in the Request-URI, To and
    # From), for our user, who needs no challenge from PEER: the Contact is read, and refused.
    answer = pbx.ask(to_our_registrar(REGBADCT, "user"))
    assert status_line(answer) == (
        400, "Bad Contact: addr-spec contains '?'; a URI with headers must be enclosed in <>"
    )


def test_badaspec_spaces_inside_angle_brackets_are_ignored(pbx: Peer) -> None:
    # "Parsers receiving this request must not break. It is reasonable to reject this request
    # with a 400 Bad Request response. Elements attempting to be liberal may ignore the
    # spaces." We are liberal here: nothing is ambiguous. Routed to our user (example.org is
    # our domain here in the Request-URI).
    answer = pbx.ask(served(BADASPEC, ("OPTIONS sip:user@example.org", f"OPTIONS sip:user@{DOMAIN}")))
    assert status_line(answer) == (480, "Temporarily Unavailable")


def test_bigcode_response_is_dropped(stranger: Peer) -> None:
    # "An element receiving this response should simply drop it."
    stranger.send(BIGCODE)
    stranger.nothing_more()


# == 3.2 Transaction layer semantics ========================================================


def test_badbranch_is_rejected_statelessly(stranger: Peer) -> None:
    # "An element receiving this request could reject the request with a 400 Response
    # (preferably statelessly, as other requests from the source are likely also to have a
    # malformed branch parameter)." Statelessly: another request with the same branch is
    # answered for itself, not taken for a retransmission of the first.
    for call_id in ("badbranch.sadonfo23i420jv0as0derf3j3n", "badbranch.another"):
        stranger.send(served(BADBRANCH, ("badbranch.sadonfo23i420jv0as0derf3j3n", call_id)))
        answer = stranger.response()
        assert status_line(answer) == (400, "Bad Via: branch z9hG4bK without a transaction identifier")
        assert answer.call_id == call_id


# == 3.3 Application layer semantics =======================================================


def test_insuf_does_not_break_the_server_and_gets_no_answer(stranger: Peer) -> None:
    # "An element receiving this message must not break because of the missing information.
    # Ideally, it will respond with a 400 Bad Request error." No well-formed 400 exists for it:
    # every response carries From, To and Call-ID (RFC 3261 8.2.6.2), which it lacks. It is
    # dropped, and the next request is served.
    stranger.send(INSUF)
    stranger.nothing_more()


@pytest.mark.parametrize(
    ("data", "scheme"), [pytest.param(UNKSCM, "nobodyKnowsThisScheme", id="unkscm"),
                         pytest.param(NOVELSC, "soap.beep", id="novelsc")]
)
def test_request_uri_scheme_we_never_route_is_416_whatever_the_to(stranger: Peer, data: bytes, scheme: str) -> None:
    # unkscm: "An element receiving this request will reject it with a 416 Unsupported URI
    # Scheme response. [...] the To header field contains no routing information." novelsc:
    # "If an element will never accept this scheme as meaningful in a Request-URI, it is
    # appropriate to treat it as unknown and return a 416." The To is a sip: URI of our
    # domain here, which must change nothing.
    stranger.send(served(data, ("To: sip:user@example.com", f"To: sip:user@{DOMAIN}")))
    assert status_line(stranger.response()) == (416, f"Unsupported URI Scheme: {scheme}")


def test_unksm2_register_with_a_non_sip_to_is_400(stranger: Peer) -> None:
    # "A registrar would reject this request with a 400 Bad Request response, since the To:
    # header field is required to contain a SIP or SIPS URI as an AOR." (example.com is our
    # domain here, in the Request-URI.)
    stranger.send(served(UNKSM2, ("REGISTER sip:example.com", f"REGISTER sip:{DOMAIN}")))
    assert status_line(stranger.response()) == (400, "Bad To: unsupported URI scheme 'isbn'")


def test_bext01_to_a_user_the_proxy_answers_420_naming_the_proxy_require_tags(pbx: Peer) -> None:
    # "Any element receiving this request will respond with a 420 Bad Extension response,
    # containing an Unsupported header field listing these features from either the Require or
    # Proxy-Require header field, depending on the role in which the element is responding."
    # To a user of ours (our domain here in the Request-URI) we are its proxy.
    answer = pbx.ask(served(BEXT01, ("OPTIONS sip:user@example.com", f"OPTIONS sip:user@{DOMAIN}")))
    assert status_line(answer) == (420, "Bad Extension")
    assert answer.get_all("Unsupported") == ["noProxiesSupportThis", "norDoAnyProxiesSupportThis"]


def test_bext01_to_the_server_itself_it_answers_420_naming_the_require_tags(stranger: Peer) -> None:
    # The same OPTIONS to the domain itself (no user): we are its UAS, and Require is ours.
    stranger.send(own_branch(served(BEXT01, ("OPTIONS sip:user@example.com", f"OPTIONS sip:{DOMAIN}")), "uas"))
    answer = stranger.response()
    assert status_line(answer) == (420, "Bad Extension")
    assert answer.get_all("Unsupported") == ["nothingSupportsThis", "nothingSupportsThisEither"]


def test_invut_is_forwarded_like_any_invite_and_the_endpoint_s_415_comes_back(server: Server, stranger: Peer) -> None:
    # "A proxy receiving this request would process it just as it would any other INVITE. An
    # endpoint receiving this request would reject it with a 415 Unsupported Media Type error."
    # Its user is registered at ours (example.com is our domain here in the Request-URI).
    with registered(server, f"sip:user@{DOMAIN}") as ua:
        invite = served(INVUT, ("INVITE sip:user@example.com", f"INVITE sip:user@{DOMAIN}"))
        stranger.send(invite)
        relayed = ua.request()
        assert (relayed.method, relayed.get("Content-Type")) == ("INVITE", "application/unknownformat")
        assert relayed.body == b'<audio>\r\n <pcmu port="443"/>\r\n</audio>\r\n'
        ua.reply(relayed, 415, "Unsupported Media Type", ("Accept", "application/sdp"))
        answer = parse_message(stranger.final())
        assert isinstance(answer, Response)
        assert status_line(answer) == (415, "Unsupported Media Type")
        assert answer.get("Accept") == "application/sdp"
        request = parse_message(invite)
        assert isinstance(request, Request)
        stranger.send(ack(request, answer))


def test_regaut01_unknown_authorization_scheme_gets_a_digest_challenge(stranger: Peer) -> None:
    # "A registrar that does care about challenge-response authentication will reject this
    # request with a 401, issuing a new challenge with a scheme it understands." (example.com
    # is our domain here; j.user has a password.)
    stranger.send(served(REGAUT01, ("sip:example.com", f"sip:{DOMAIN}"), ("user@example.com", f"user@{DOMAIN}")))
    answer = stranger.response()
    assert status_line(answer) == (401, "Unauthorized")
    assert answer.get("WWW-Authenticate").startswith(f'Digest realm="{DOMAIN}"')


def test_multi01_is_400(stranger: Peer) -> None:
    # "An element receiving this request would respond with a 400 Bad Request error." The
    # answer copies one of each header it needs, the first.
    stranger.send(MULTI01)
    answer = stranger.response()
    assert status_line(answer) == (400, "Duplicate CSeq Header")
    assert (answer.call_id, answer.cseq) == ("multi01.98asdh@192.0.2.1", (5, "INVITE"))


def test_mcl01_over_udp_is_400(stranger: Peer) -> None:
    # "An element receiving this message should respond with an error. This request appeared
    # over UDP, so the remainder of the datagram can simply be discarded."
    stranger.send(MCL01)
    assert status_line(stranger.response()) == (400, "Duplicate Content-Length Header")
    stranger.nothing_more()


def test_mcl01_over_tcp_is_answered_and_the_connection_closed(server: Server) -> None:
    # "If a request like this arrives over TCP, the framing error is not recoverable, and the
    # connection should be closed."
    stream = Stream(server, STRANGER)
    try:
        stream.send(MCL01)
        assert status_line(stream.response()) == (400, "Duplicate Content-Length Header")
        assert stream.closed()
    finally:
        stream.close()


def test_bcast_response_is_dropped(stranger: Peer) -> None:
    # "To protect against this as an avenue of attack, proxies should drop such responses."
    # It answers nothing we sent: dropped, never relayed by its Vias (which our proxy never
    # does: a response goes where its request came from).
    stranger.send(BCAST)
    stranger.nothing_more()


def test_zeromf_to_a_user_the_proxy_answers_483(stranger: Peer) -> None:
    # "A proxy should not forward the request and should respond 483 (Too Many Hops)."
    stranger.send(ZEROMF)
    assert status_line(stranger.response()) == (483, "Too Many Hops")


def test_zeromf_to_the_server_itself_is_answered_as_if_max_forwards_were_positive(stranger: Peer) -> None:
    # "An endpoint should process the request as if the Max-Forwards field value were still
    # positive." The same OPTIONS to the domain itself (no user): we are its endpoint.
    stranger.send(own_branch(served(ZEROMF, ("OPTIONS sip:user@example.com", f"OPTIONS sip:{DOMAIN}")), "uas"))
    assert status_line(stranger.response()) == (200, "OK")


@pytest.mark.parametrize(
    ("data", "call_id", "cseq", "contact"),
    [
        # "This REGISTER should succeed. The response must not include "unknownparam" as a
        # url-parameter for this binding. Likewise, "unknownparam" must not appear as a
        # url-parameter in any binding during subsequent fetches."
        pytest.param(CPARAM01, "cparam01.70710@saturn.example.com", 2, "sip:+19725552222@gw1.example.net",
                     id="cparam01"),
        # "The register should succeed, and a subsequent retrieval of the registration must
        # include "unknownparam" as a url-parameter."
        pytest.param(CPARAM02, "cparam02.70710@saturn.example.com", 3,
                     "sip:+19725552222@gw1.example.net;unknownparam", id="cparam02"),
    ],
)
def test_cparam_register_succeeds_and_binds_the_contact_uri_as_sent(
    pbx: Peer, data: bytes, call_id: str, cseq: int, contact: str
) -> None:
    # watson is our user (known by PEER's address: no challenge).
    answer = pbx.ask(to_our_registrar(data, "watson"))
    assert status_line(answer) == (200, "OK")
    assert [parse_name_addr(value).uri_text for value in answer.get_all("Contact")] == [contact]
    aor = f"sip:watson@{DOMAIN}"
    assert bindings(pbx, aor, call_id, cseq + 1) == [contact]
    unregister_all(pbx, aor, call_id, cseq + 2)


def test_regescrt_register_succeeds_and_keeps_the_escaped_route_in_the_binding(pbx: Peer) -> None:
    # "The register should succeed, and a subsequent retrieval of the registration must
    # include the escaped Route header in the contact URI for this binding." (user is our user.)
    contact = "sip:user@example.com?Route=%3Csip:sip.example.com%3E"
    answer = pbx.ask(to_our_registrar(REGESCRT, "user"))
    assert status_line(answer) == (200, "OK")
    assert [parse_name_addr(value).uri_text for value in answer.get_all("Contact")] == [contact]
    aor = f"sip:user@{DOMAIN}"
    call_id = "regescrt.k345asrl3fdbv@192.0.2.1"
    try:
        assert bindings(pbx, aor, call_id, 14398235) == [contact]
    finally:
        unregister_all(pbx, aor, call_id, 14398236)


def test_regescrt_binding_is_called_without_the_escaped_headers(pbx: Peer, stranger: Peer) -> None:
    # What a proxy then does with the binding: the Request-URI of a request it forwards there
    # carries no header fields (RFC 3261 19.1.1), they "MUST be removed" (16.6 step 2), and
    # never become the request's own (RFC 4475 escruri).
    aor, call_id = f"sip:user@{DOMAIN}", "regescrt.k345asrl3fdbv@192.0.2.1"
    assert pbx.ask(own_branch(to_our_registrar(REGESCRT, "user"), "again")).status == 200
    try:
        stranger.send(options(stranger, aor))
        relayed = pbx.request()  # the binding's source: the REGISTER came from there
        assert relayed.uri == "sip:user@example.com"
        assert relayed.get("Route") is None
        pbx.reply(relayed, 200, "OK")
        assert parse_message(stranger.final()).status == 200
    finally:
        unregister_all(pbx, aor, call_id, 14398235)


def test_sdp01_accept_is_the_endpoint_s_business_the_proxy_routes_it(pbx: Peer) -> None:
    # "The recipient of this request could respond with a 406 Not Acceptable [...]": the
    # recipient is the endpoint; a proxy routes it as any INVITE. Routed to our user (our
    # domain here in the Request-URI), whom nobody registered.
    answer = pbx.ask(served(SDP01, ("INVITE sip:user@example.com", f"INVITE sip:user@{DOMAIN}")))
    assert status_line(answer) == (480, "Temporarily Unavailable")


def test_inv2543_is_accepted_without_branch_from_tag_content_length_or_max_forwards(pbx: Peer) -> None:
    # "This is a legal message per RFC 2543 (and several bis versions) that should be accepted
    # by RFC 3261 elements that want to maintain backwards compatibility." Routed to UserB, not
    # a user of ours (example.com is our domain here in the Request-URI): 404, with a To tag
    # of ours and the From without one, as it came.
    answer = pbx.ask(served(INV2543, ("INVITE sip:UserB@example.com", f"INVITE sip:UserB@{DOMAIN}")))
    assert status_line(answer) == (404, "Not Found")
    assert answer.get_all("Via")[0].startswith("SIP/2.0/UDP iftgw.example.com;received=127.0.0.2")
    assert answer.name_addr("To").tag is not None and answer.name_addr("From").tag is None
