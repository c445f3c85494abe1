"""RFC 4475's torture messages sent to a running registrar and proxy: each answered as the RFC says.

Every message of RFC 4475 section 3 (3.1.1 valid, 3.1.2 invalid, 3.2 transaction
layer, 3.3 application layer) goes over UDP, and the ones about framing over TCP
too, to a `RegistrarServer` as `sipreg serve` assembles it, listening on
127.0.0.1. Only the network is used: what answers, the parser, the registrar or
the proxy, is the server's business. Each test says what RFC 4475 asks of a
registrar or a proxy and checks the status line that comes back, or that
nothing does where a message cannot be answered; the relays play the endpoint
the proxy forwards to.

The messages are RFC 4475's bytes, as its Appendix A archive has them: the text's
<allOneLine> lines are one line here (written as adjacent literals where long),
and its <hex> spans are the bytes they spell (intmeth's control characters,
mpart01's binary part). Messages are addressed to example.com and friends; where
a case needs our domain (a REGISTER a registrar serves, a call it routes) the
copy says which names it changes, and nothing else of the torture changes.

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


def message(*lines: str, body: tuple[str, ...] | bytes = ()) -> bytes:
    """A message from its head's lines and its body's (each line ends in CRLF, the head in an empty line)."""
    if not isinstance(body, bytes):
        body = "".join(f"{line}\r\n" for line in body).encode()
    return "".join(f"{line}\r\n" for line in (*lines, "")).encode() + body


def sdp(origin: str, connection: str | None = None, time: str = "0 0") -> tuple[str, ...]:
    """The SDP body most RFC 4475 messages carry, with their addresses."""
    return (
        "v=0", f"o=mhandley 29739 7272939 IN IP4 {origin}", "s=-", f"c=IN IP4 {connection or origin}", f"t={time}",
        "m=audio 49217 RTP/AVP 0 12", "m=video 3227 RTP/AVP 31", "a=rtpmap:31 LPC",
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

# 3.1.1.1 A Short Tortuous INVITE
WSINV = message(
    "INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0",
    "TO :",
    " sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n",
    'from   : "J Rosenberg \\\\\\""       <sip:jdrosen@example.com>',
    "  ;",
    "  tag = 98asjd8",
    "MaX-fOrWaRdS: 0068",
    "Call-ID: wsinv.ndaksdj@192.0.2.1",
    "Content-Length   : 150",
    "cseq: 0009",
    "  INVITE",
    "Via  : SIP  /   2.0",
    " /UDP",
    "    192.0.2.2;branch=390skdjuw",
    "s :",
    "NewFangledHeader:   newfangled value",
    " continued newfangled value",
    "UnknownHeaderWithUnusualValue: ;;,,;;,;",
    "Content-Type: application/sdp",
    "Route:",
    " <sip:services.example.com;lr;unknownwith=value;unknown-no-value>",
    "v:  SIP  / 2.0  / TCP     spindle.example.com   ;",
    "  branch  =   z9hG4bK9ikj8  ,",
    " SIP  /    2.0   / UDP  192.168.255.111   ; branch=",
    " z9hG4bK30239",
    'm:"Quoted string \\"\\"" <sip:jdrosen@example.com> ; newparam =',
    "      newvalue ;",
    "  secondparam ; q = 0.33",
    body=sdp("192.0.2.3", "192.0.2.4"),
)


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


# 3.1.1.2 Wide Range of Valid Characters. The To has a quoted BEL, NUL and DEL (<hex> in the
# RFC's text); the From's parameter value and the extension header are UTF-8.
INTMETH = message(
    "!interesting-Method0123456789_*+`.%indeed'~ "
    "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com "
    "SIP/2.0",
    "Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~",
    'To: "BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" <sip:1_unusual.URI~(to-be!sure)&isn\'t+it$/crazy?,/;;*@example.com>',
    "From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%="
    '"работающий";tag=_token~1\'+`*%!-.',
    'Call-ID: intmeth.word%ZK-!.*_+\'@word`~)(><:\\/"][?}{',
    "CSeq: 139122385 !interesting-Method0123456789_*+`.%indeed'~",
    "Max-Forwards: 255",
    "extensionHeader-!.%*+_`'~:\ufeff大停電",
    "Content-Length: 0",
)
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


# 3.1.1.3 Valid Use of the % Escaping Mechanism
ESC01 = message(
    "INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0",
    "To: sip:%75se%72@example.com",
    "From: <sip:I%20have%20spaces@example.net>;tag=938",
    "Max-Forwards: 87",
    "i: esc01.239409asdfakjkn23onasd0-3234",
    "CSeq: 234234 INVITE",
    "Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bKkdjuw",
    "C: application/sdp",
    "Contact:",
    "  <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>",
    "Content-Length: 150",
    body=sdp("192.0.2.1"),
)


def test_esc01_request_uri_user_is_unescaped_before_it_is_looked_up(pbx: Peer) -> None:
    # "The application using the message must treat the % HEX HEX expansions as equivalent
    # to the character being encoded." The user "sips:user@example.com" is ours (example.net
    # is our domain here), and nobody is registered for it: 480, where the user as written,
    # escapes and all, would be unknown (404).
    answer = pbx.ask(served(ESC01, ("@example.net SIP/2.0", f"@{DOMAIN} SIP/2.0")))
    assert status_line(answer) == (480, "Temporarily Unavailable")


# 3.1.1.4 Escaped Nulls in URIs
ESCNULL = message(
    "REGISTER sip:example.com SIP/2.0",
    "To: sip:null-%00-null@example.com",
    "From: sip:null-%00-null@example.com;tag=839923423",
    "Max-Forwards: 70",
    "Call-ID: escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd",
    "CSeq: 14398234 REGISTER",
    "Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw",
    "Contact: <sip:%00@host5.example.com>",
    "Contact: <sip:%00%00@host5.example.com>",
    "L:0",
)


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


# 3.1.1.5 Use of % When It Is Not an Escape
ESC02 = message(
    "RE%47IST%45R sip:registrar.example.com SIP/2.0",
    'To: "%Z%45" <sip:resource@example.com>',
    'From: "%Z%45" <sip:resource@example.com>;tag=f232jadfj23',
    "Call-ID: esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf",
    "Via: SIP/2.0/TCP host.example.com;branch=z9hG4bK209%fzsnel234",
    "CSeq: 29344 RE%47IST%45R",
    "Max-Forwards: 70",
    "Contact: <sip:alias1@host1.example.com>",
    "C%6Fntact: <sip:alias2@host2.example.com>",
    "Contact: <sip:alias3@host3.example.com>",
    "l: 0",
)


def test_esc02_is_an_unknown_method_not_register_and_gets_501(stranger: Peer) -> None:
    # "The request method is unknown. It is NOT equivalent to REGISTER. [...] An endpoint
    # would reject this message with a 501." Sent to the registrar itself (registrar.example.com
    # is our domain here), we are that endpoint: no 401 challenge as for a REGISTER.
    stranger.send(served(ESC02, ("registrar.example.com", DOMAIN)))
    answer = stranger.response()
    assert status_line(answer) == (501, "Not Implemented: RE%47IST%45R")
    assert {"REGISTER", "INVITE", "OPTIONS"} <= set(answer.get_all("Allow"))


# 3.1.1.6 No LWS between Display Name and <
LWSDISP = message(
    "OPTIONS sip:user@example.com SIP/2.0",
    "To: sip:user@example.com",
    "From: caller<sip:caller@example.com>;tag=323",
    "Max-Forwards: 70",
    "Call-ID: lwsdisp.1234abcd@funky.example.com",
    "CSeq: 60 OPTIONS",
    "Via: SIP/2.0/UDP funky.example.com;branch=z9hG4bKkdjuw",
    "l: 0",
)


def test_lwsdisp_is_accepted_and_routed(pbx: Peer) -> None:
    # "Elements should accept this request as well formed." Routed to our user (example.com is
    # our domain here in the Request-URI), whom nobody registered.
    answer = pbx.ask(served(LWSDISP, ("OPTIONS sip:user@example.com", f"OPTIONS sip:user@{DOMAIN}")))
    assert status_line(answer) == (480, "Temporarily Unavailable")
    assert answer.get("From") == "caller<sip:caller@example.com>;tag=323"


# 3.1.1.7 Long Values in Header Fields (<allOneLine> in the RFC's text: one line each here)
LONGREQ = message(
    "INVITE sip:user@example.com SIP/2.0",
    'To: "I have a user name of ' + "extreme" * 10 + ' proportion"<sip:user@example.com:6000;unknownparam1=very'
    + "long" * 20 + "value;longparam" + "name" * 25 + "=shortvalue;very" + "long" * 25 + "ParameterNameWithNoValue>",
    "F: sip:" + "amazinglylongcallername" * 5 + "@example.net;tag=12" + "982" * 50 + "424;unknownheaderparam"
    + "name" * 20 + "=unknowheaderparam" + "value" * 15 + ";unknownValueless" + "paramname" * 10,
    "Call-ID: longreq.one" + "really" * 20 + "longcallid",
    "CSeq: 3882340 INVITE",
    "Unknown-" + "Long" * 20 + "-Name: unknown-" + "long" * 20 + "-value; unknown-" + "long" * 20
    + "-parameter-name = unknown-" + "long" * 20 + "-parameter-value",
    "Via: SIP/2.0/TCP sip33.example.com",
    "v: SIP/2.0/TCP sip32.example.com",
    "V: SIP/2.0/TCP sip31.example.com",
    "Via: SIP/2.0/TCP sip30.example.com",
    "ViA: SIP/2.0/TCP sip29.example.com",
    "VIa: SIP/2.0/TCP sip28.example.com",
    "VIA: SIP/2.0/TCP sip27.example.com",
    "via: SIP/2.0/TCP sip26.example.com",
    "viA: SIP/2.0/TCP sip25.example.com",
    "vIa: SIP/2.0/TCP sip24.example.com",
    "vIA: SIP/2.0/TCP sip23.example.com",
    "V :  SIP/2.0/TCP sip22.example.com",
    "v :  SIP/2.0/TCP sip21.example.com",
    "V  : SIP/2.0/TCP sip20.example.com",
    "v  : SIP/2.0/TCP sip19.example.com",
    "Via : SIP/2.0/TCP sip18.example.com",
    "Via  : SIP/2.0/TCP sip17.example.com",
    *[f"Via: SIP/2.0/TCP sip{number}.example.com" for number in range(16, 0, -1)],
    "Via: SIP/2.0/TCP host.example.com;received=192.0.2.5;branch=very" + "long" * 50 + "branchvalue",
    "Max-Forwards: 70",
    "Contact: <sip:" + "amazinglylongcallername" * 5 + "@host5.example.net>",
    "Content-Type: application/sdp",
    "l: 150",
    body=sdp("192.0.2.1"),
)


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


# 3.1.1.8 Extra Trailing Octets in a UDP Datagram
DBLREQ = message(
    "REGISTER sip:example.com SIP/2.0",
    "To: sip:j.user@example.com",
    "From: sip:j.user@example.com;tag=43251j3j324",
    "Max-Forwards: 8",
    "I: dblreq.0ha0isndaksdj99sdfafnl3lk233412",
    "Contact: sip:j.user@host.example.com",
    "CSeq: 8 REGISTER",
    "Via: SIP/2.0/UDP 192.0.2.125;branch=z9hG4bKkdjuw23492",
    "Content-Length: 0",
    body=(
        "",
        "INVITE sip:joe@example.com SIP/2.0",
        "t: sip:joe@example.com",
        "From: sip:caller@example.net;tag=141334",
        "Max-Forwards: 8",
        "Call-ID: dblreq.0ha0isnda977644900765@192.0.2.15",
        "CSeq: 8 INVITE",
        "Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw380234",
        "Content-Type: application/sdp",
        "Content-Length: 150",
        "",
        *sdp("192.0.2.15")[:6], "m =video 3227 RTP/AVP 31", "a=rtpmap:31 LPC",
        "",
    ),
)


def test_dblreq_the_register_is_handled_and_the_octets_after_it_ignored(stranger: Peer) -> None:
    # "A SIP element receiving this datagram would handle the REGISTER request normally and
    # ignore the extra bits that look like an INVITE request." Normally: j.user has a password
    # (example.com is our domain here), so the REGISTER is challenged; the INVITE gets nothing.
    stranger.send(served(DBLREQ, ("sip:example.com", f"sip:{DOMAIN}"), ("user@example.com", f"user@{DOMAIN}")))
    answer = stranger.response()
    assert status_line(answer) == (401, "Unauthorized")
    assert (answer.call_id, answer.cseq) == ("dblreq.0ha0isndaksdj99sdfafnl3lk233412", (8, "REGISTER"))
    stranger.nothing_more()


# 3.1.1.9 Semicolon-Separated Parameters in URI User Part
SEMIURI = message(
    "OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0",
    "To: sip:j_user@example.com",
    "From: sip:caller@example.org;tag=33242",
    "Max-Forwards: 3",
    "Call-ID: semiuri.0ha0isndaksdj",
    "CSeq: 8 OPTIONS",
    "Accept: application/sdp, application/pkcs7-mime,",
    "        multipart/mixed, multipart/signed,",
    "        message/sip, message/sipfrag",
    "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkdjuw",
    "l: 0",
)


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


# 3.1.1.10 Varied and Unknown Transport Types
TRANSPORTS = message(
    "OPTIONS sip:user@example.com SIP/2.0",
    "To: sip:user@example.com",
    "From: <sip:caller@example.com>;tag=323",
    "Max-Forwards: 70",
    "Call-ID:  transports.kijh4akdnaqjkwendsasfdj",
    "Accept: application/sdp",
    "CSeq: 60 OPTIONS",
    "Via: SIP/2.0/UDP t1.example.com;branch=z9hG4bKkdjuw",
    "Via: SIP/2.0/SCTP t2.example.com;branch=z9hG4bKklasjdhf",
    "Via: SIP/2.0/TLS t3.example.com;branch=z9hG4bK2980unddj",
    "Via: SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en",
    "Via: SIP/2.0/TCP t5.example.com;branch=z9hG4bK0a9idfnee",
    "l: 0",
)


def test_transports_unknown_transports_in_later_vias_change_nothing(pbx: Peer) -> None:
    # "Elements receiving this message would process it exactly as if the 2nd and subsequent
    # header field values specified UDP." Routed to our user (our domain here in the Request-URI).
    answer = pbx.ask(served(TRANSPORTS, ("OPTIONS sip:user@example.com", f"OPTIONS sip:user@{DOMAIN}")))
    assert status_line(answer) == (480, "Temporarily Unavailable")
    assert [via.split()[0] for via in answer.get_all("Via")] == [
        "SIP/2.0/UDP", "SIP/2.0/SCTP", "SIP/2.0/TLS", "SIP/2.0/UNKNOWN", "SIP/2.0/TCP"
    ]


# 3.1.1.11 Multipart MIME Message. Its second part is binary: <hex> in the RFC's text.
MPART01_BODY = (
    b"--7a9cbec02ceef655\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: binary\r\n\r\nHello\r\n"
    b"--7a9cbec02ceef655\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n"
    + bytes.fromhex(
        "3082015206092a864886f70d010702a08201433082013f0201013109300706052b0e03021a300b06092a864886f70d010701"
        "318201203082011c020101307c3070310b3009060355040613025553311330110603550408130a43616c69666f726e696131"
        "11300f0603550407130853616e204a6f7365310e300c060355040a1305736970697431293027060355040b13205369706974"
        "205465737420436572746966696361746520417574686f7269747902080195007102330113300706052b0e03021a300d0609"
        "2a864886f70d01010105000481808ef466f948f0522dd2e5978e9d95aae9f2fe15a06659716292e8da2aa8d8350a68ceffae"
        "3cbd2bff1675ddd5648e593dd64728f26220f7e941749e330d9a15edabdb93d10c42102e7b7289d29cc0c9ae2efbc7c0cff9"
        "172f3b027e4fc027e1546de4b6aa3abb3e66cccb5dd6c64b8383149cb8e6ff182d944fe57b65bc99d005"
    )
    + b"\r\n--7a9cbec02ceef655--\r\n"
)
MPART01 = message(
    "MESSAGE sip:kumiko@example.org SIP/2.0",
    "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543-;rport",
    "Max-Forwards: 70",
    "Route: <sip:127.0.0.1:5080>",
    "Identity: r5mwreLuyDRYBi/0TiPwEsY3rEVsk/G2WxhgTV1PF7hHuLIK0YWVKZhKv9Mj8UeXqkMVbnVq37CD+813gvYjcBUaZngQmXc9WNZSD"
    "NGCzA+fWl9MEUHWIZo1CeJebdY/XlgKeTa0Olvq0rt70Q5jiSfbqMJmQFteeivUhkMWYUA=",
    "Contact: <sip:fluffy@127.0.0.1:5070>",
    "To: <sip:kumiko@example.org>",
    "From: <sip:fluffy@example.com>;tag=2fb0dcc9",
    "Call-ID: 3d9485ad0c49859b@Zmx1ZmZ5LW1hYy0xNi5sb2NhbA..",
    "CSeq: 1 MESSAGE",
    "Content-Transfer-Encoding: binary",
    "Content-Type: multipart/mixed;boundary=7a9cbec02ceef655",
    "Date: Sat, 15 Oct 2005 04:44:56 GMT",
    "User-Agent: SIPimp.org/0.2.5 (curses)",
    "Content-Length: 553",
    body=MPART01_BODY,
)


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


# 3.1.1.12 Unusual Reason Phrase
UNREASON = message(
    "SIP/2.0 200 = 2**3 * 5**2 но сто девяносто девять - простое",
    "Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923",
    "Call-ID: unreason.1234ksdfak3j2erwedfsASdf",
    "CSeq: 35 INVITE",
    "From: sip:user@example.com;tag=11141343",
    "To: sip:user@example.edu;tag=2229",
    "Content-Length: 154",
    "Content-Type: application/sdp",
    "Contact: <sip:user@host198.example.com>",
    body=sdp("192.0.2.198"),
)


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


# 3.1.1.13 Empty Reason Phrase
NOREASON = message(
    "SIP/2.0 100 ",
    "Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe",
    "Call-ID: noreason.asndj203insdf99223ndf",
    "CSeq: 35 INVITE",
    "From: <sip:user@example.com>;tag=39ansfi3",
    "To: <sip:user@example.edu>;tag=902jndnke3",
    "Content-Length: 0",
    "Contact: <sip:user@host105.example.com>",
)


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

# 3.1.2.1 Extraneous Header Field Separators
BADINV01 = message(
    "INVITE sip:user@example.com SIP/2.0",
    "To: sip:j.user@example.com",
    "From: sip:caller@example.net;tag=134161461246",
    "Max-Forwards: 7",
    "Call-ID: badinv01.0ha0isndaksdjasdf3234nas",
    "CSeq: 8 INVITE",
    "Via: SIP/2.0/UDP 192.0.2.15;;,;,,",
    'Contact: "Joe" <sip:joe@example.org>;;;;',
    "Content-Length: 152",
    "Content-Type: application/sdp",
    body=sdp("192.0.2.15"),
)

# 3.1.2.2 Content Length Larger Than Message
CLERR = message(
    "INVITE sip:user@example.com SIP/2.0",
    "Max-Forwards: 80",
    "To: sip:j.user@example.com",
    "From: sip:caller@example.net;tag=93942939o2",
    "Contact: <sip:caller@hungry.example.net>",
    "Call-ID: clerr.0ha0isndaksdjweiafasdk3",
    "CSeq: 8 INVITE",
    "Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bK-39234-23523",
    "Content-Type: application/sdp",
    "Content-Length: 9999",
    body=sdp("192.0.2.155"),
)

# 3.1.2.3 Negative Content-Length
NCL = message(
    "INVITE sip:user@example.com SIP/2.0",
    "Max-Forwards: 254",
    "To: sip:j.user@example.com",
    "From: sip:caller@example.net;tag=32394234",
    "Call-ID: ncl.0ha0isndaksdj2193423r542w35",
    "CSeq: 0 INVITE",
    "Via: SIP/2.0/UDP 192.0.2.53;branch=z9hG4bKkdjuw",
    "Contact: <sip:caller@example53.example.net>",
    "Content-Type: application/sdp",
    "Content-Length: -999",
    body=sdp("192.0.2.53"),
)

# 3.1.2.4 Request Scalar Fields with Overlarge Values
SCALAR02 = message(
    "REGISTER sip:example.com SIP/2.0",
    "Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bK342sdfoi3",
    "To: <sip:user@example.com>",
    "From: <sip:user@example.com>;tag=239232jh3",
    "CSeq: 36893488147419103232 REGISTER",
    "Call-ID: scalar02.23o0pd9vanlq3wnrlnewofjas9ui32",
    "Max-Forwards: 300",
    "Expires: 1" + "0" * 100,
    "Contact: <sip:user@host129.example.com>",
    "  ;expires=280297596632815",
    "Content-Length: 0",
)

# 3.1.2.6 Unterminated Quoted String in Display Name
QUOTBAL = message(
    "INVITE sip:user@example.com SIP/2.0",
    'To: "Mr. J. User <sip:j.user@example.com>',
    "From: sip:caller@example.net;tag=93334",
    "Max-Forwards: 10",
    "Call-ID: quotbal.aksdj",
    "Contact: <sip:caller@host59.example.net>",
    "CSeq: 8 INVITE",
    "Via: SIP/2.0/UDP 192.0.2.59:5050;branch=z9hG4bKkdjuw39234",
    "Content-Type: application/sdp",
    "Content-Length: 152",
    body=sdp("192.0.2.15"),
)

# 3.1.2.7 <> Enclosing Request-URI
LTGTRURI = message(
    "INVITE <sip:user@example.com> SIP/2.0",
    "To: sip:user@example.com",
    "From: sip:caller@example.net;tag=39291",
    "Max-Forwards: 23",
    "Call-ID: ltgtruri.1@192.0.2.5",
    "CSeq: 1 INVITE",
    "Via: SIP/2.0/UDP 192.0.2.5",
    "Contact: <sip:caller@host5.example.net>",
    "Content-Type: application/sdp",
    "Content-Length: 159",
    body=sdp("192.0.2.5", time="3149328700 0"),
)

# 3.1.2.8 Malformed SIP Request-URI (embedded LWS)
LWSRURI = message(
    "INVITE sip:user@example.com; lr SIP/2.0",
    "To: sip:user@example.com;tag=3xfe-9921883-z9f",
    "From: sip:caller@example.net;tag=231413434",
    "Max-Forwards: 5",
    "Call-ID: lwsruri.asdfasdoeoi2323-asdfwrn23-asd834rk423",
    "CSeq: 2130706432 INVITE",
    "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKkdjuw2395",
    "Contact: <sip:caller@host1.example.net>",
    "Content-Type: application/sdp",
    "Content-Length: 159",
    body=sdp("192.0.2.1", time="3149328700 0"),
)

# 3.1.2.9 Multiple SP Separating Request-Line Elements
LWSSTART = message(
    "INVITE  sip:user@example.com  SIP/2.0",
    "Max-Forwards: 8",
    "To: sip:user@example.com",
    "From: sip:caller@example.net;tag=8814",
    "Call-ID: lwsstart.dfknq234oi243099adsdfnawe3@example.com",
    "CSeq: 1893884 INVITE",
    "Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw3923",
    "Contact: <sip:caller@host1.example.net>",
    "Content-Type: application/sdp",
    "Content-Length: 150",
    body=sdp("192.0.2.1"),
)

# 3.1.2.10 SP Characters at End of Request-Line
TRWS = message(
    "OPTIONS sip:remote-target@example.com SIP/2.0  ",
    "Via: SIP/2.0/TCP host1.examle.com;branch=z9hG4bK299342093",
    "To: <sip:remote-target@example.com>",
    "From: <sip:local-resource@example.com>;tag=329429089",
    "Call-ID: trws.oicu34958239neffasdhr2345r",
    "Accept: application/sdp",
    "CSeq: 238923 OPTIONS",
    "Max-Forwards: 70",
    "Content-Length: 0",
)

# 3.1.2.11 Escaped Headers in SIP Request-URI
ESCRURI = message(
    "INVITE sip:user@example.com?Route=%3Csip:example.com%3E SIP/2.0",
    "To: sip:user@example.com",
    "From: sip:caller@example.net;tag=341518",
    "Max-Forwards: 7",
    "Contact: <sip:caller@host39923.example.net>",
    "Call-ID: escruri.23940-asdfhj-aje3br-234q098w-fawerh2q-h4n5",
    "CSeq: 149209342 INVITE",
    "Via: SIP/2.0/UDP host-of-the-hour.example.com;branch=z9hG4bKkdjuw",
    "Content-Type: application/sdp",
    "Content-Length: 150",
    body=sdp("192.0.2.1"),
)

# 3.1.2.14 Spaces within addr-spec (accepted: see its test)
# 3.1.2.15 Non-token Characters in Display Name
BADDN = message(
    "OPTIONS sip:t.watson@example.org SIP/2.0",
    "Via:     SIP/2.0/UDP c.example.com:5060;branch=z9hG4bKkdjuw",
    "Max-Forwards:      70",
    "From:    Bell, Alexander <sip:a.g.bell@example.com>;tag=43",
    "To:      Watson, Thomas <sip:t.watson@example.org>",
    "Call-ID: baddn.31415@c.example.com",
    "Accept: application/sdp",
    "CSeq:    3923239 OPTIONS",
    "l: 0",
)

# 3.1.2.16 Unknown Protocol Version
BADVERS = message(
    "OPTIONS sip:t.watson@example.org SIP/7.0",
    "Via:     SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw",
    "Max-Forwards:     70",
    "From:    A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe",
    "To:      T. Watson <sip:t.watson@example.org>",
    "Call-ID: badvers.31417@c.example.com",
    "CSeq:    1 OPTIONS",
    "l: 0",
)

# 3.1.2.17 Start Line and CSeq Method Mismatch
MISMATCH01 = message(
    "OPTIONS sip:user@example.com SIP/2.0",
    "To: sip:j.user@example.com",
    "From: sip:caller@example.net;tag=34525",
    "Max-Forwards: 6",
    "Call-ID: mismatch01.dj0234sxdfl3",
    "CSeq: 8 INVITE",
    "Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw",
    "l: 0",
)

# 3.1.2.18 Unknown Method with CSeq Method Mismatch
MISMATCH02 = message(
    "NEWMETHOD sip:user@example.com SIP/2.0",
    "To: sip:j.user@example.com",
    "From: sip:caller@example.net;tag=34525",
    "Max-Forwards: 6",
    "Call-ID: mismatch02.dj0234sxdfl3",
    "CSeq: 8 INVITE",
    "Contact: <sip:caller@host.example.net>",
    "Via: SIP/2.0/UDP host.example.net;branch=z9hG4bKkdjuw",
    "Content-Type: application/sdp",
    "l: 138",
    body=(
        "v=0", "o=mhandley 29739 7272939 IN IP4 192.0.2.1", "c=IN IP4 192.0.2.1", "m=audio 49217 RTP/AVP 0 12",
        "m=video 3227 RTP/AVP 31", "a=rtpmap:31 LPC",
    ),  # fmt: skip
)


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


# 3.1.2.5 Response Scalar Fields with Overlarge Values
SCALARLG = message(
    "SIP/2.0 503 Service Unavailable",
    "Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bKzzxdiwo34sw;received=192.0.2.129",
    "To: <sip:user@example.com>",
    "From: <sip:other@example.net>;tag=2easdjfejw",
    "CSeq: 9292394834772304023312 OPTIONS",
    "Call-ID: scalarlg.noase0of0234hn2qofoaf0232aewf2394r",
    "Retry-After: 949302838503028349304023988",
    'Warning: 1812 overture "In Progress"',
    "Content-Length: 0",
)


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


# 3.1.2.12 Invalid Time Zone in Date Header Field
BADDATE = message(
    "INVITE sip:user@example.com SIP/2.0",
    "To: sip:user@example.com",
    "From: sip:caller@example.net;tag=2234923",
    "Max-Forwards: 70",
    "Call-ID: baddate.239423mnsadf3j23lj42--sedfnm234",
    "CSeq: 1392934 INVITE",
    "Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw",
    "Date: Fri, 01 Jan 2010 16:00:00 EST",
    "Contact: <sip:caller@host5.example.net>",
    "Content-Type: application/sdp",
    "Content-Length: 150",
    body=sdp("192.0.2.5"),
)


def test_baddate_is_accepted_because_the_date_plays_no_part(pbx: Peer) -> None:
    # "It is acceptable to reject this request as malformed (though an element shouldn't do
    # that unless the contents of the Date header field were actually important to its
    # processing)." Ours never reads Date: routed to our user (our domain here in the Request-URI).
    answer = pbx.ask(served(BADDATE, ("INVITE sip:user@example.com", f"INVITE sip:user@{DOMAIN}")))
    assert status_line(answer) == (480, "Temporarily Unavailable")


# 3.1.2.13 Failure to Enclose name-addr URI in <>
REGBADCT = message(
    "REGISTER sip:example.com SIP/2.0",
    "To: sip:user@example.com",
    "From: sip:user@example.com;tag=998332",
    "Max-Forwards: 70",
    "Call-ID: regbadct.k345asrl3fdbv@10.0.0.1",
    "CSeq: 1 REGISTER",
    "Via: SIP/2.0/UDP 135.180.130.133:5060;branch=z9hG4bKkdjuw",
    "Contact: sip:user@example.com?Route=%3Csip:sip.example.com%3E",
    "l: 0",
)


def test_regbadct_contact_with_headers_not_in_angle_brackets_is_400(pbx: Peer) -> None:
    # "It is reasonable for an element receiving this request to respond with a 400 Bad
    # Request." To our registrar (example.com is our domain here, in the Request-URI, To and
    # From), for our user, who needs no challenge from PEER: the Contact is read, and refused.
    answer = pbx.ask(to_our_registrar(REGBADCT, "user"))
    assert status_line(answer) == (
        400, "Bad Contact: addr-spec contains '?'; a URI with headers must be enclosed in <>"
    )


# 3.1.2.14 Spaces within addr-spec
BADASPEC = message(
    "OPTIONS sip:user@example.org SIP/2.0",
    "Via: SIP/2.0/UDP host4.example.com:5060;branch=z9hG4bKkdju43234",
    "Max-Forwards: 70",
    'From: "Bell, Alexander" <sip:a.g.bell@example.com>;tag=433423',
    'To: "Watson, Thomas" < sip:t.watson@example.org >',
    "Call-ID: badaspec.sdf0234n2nds0a099u23h3hnnw009cdkne3",
    "Accept: application/sdp",
    "CSeq: 3923239 OPTIONS",
    "l: 0",
)


def test_badaspec_spaces_inside_angle_brackets_are_ignored(pbx: Peer) -> None:
    # "Parsers receiving this request must not break. It is reasonable to reject this request
    # with a 400 Bad Request response. Elements attempting to be liberal may ignore the
    # spaces." We are liberal here: nothing is ambiguous. Routed to our user (example.org is
    # our domain here in the Request-URI).
    answer = pbx.ask(served(BADASPEC, ("OPTIONS sip:user@example.org", f"OPTIONS sip:user@{DOMAIN}")))
    assert status_line(answer) == (480, "Temporarily Unavailable")


# 3.1.2.19 Overlarge Response Code
BIGCODE = message(
    "SIP/2.0 4294967301 better not break the receiver",
    "Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe",
    "Call-ID: bigcode.asdof3uj203asdnf3429uasdhfas3ehjasdfas9i",
    "CSeq: 353494 INVITE",
    "From: <sip:user@example.com>;tag=39ansfi3",
    "To: <sip:user@example.edu>;tag=902jndnke3",
    "Content-Length: 0",
    "Contact: <sip:user@host105.example.com>",
)


def test_bigcode_response_is_dropped(stranger: Peer) -> None:
    # "An element receiving this response should simply drop it."
    stranger.send(BIGCODE)
    stranger.nothing_more()


# == 3.2 Transaction layer semantics ========================================================

# 3.2.1 Missing Transaction Identifier
BADBRANCH = message(
    "OPTIONS sip:user@example.com SIP/2.0",
    "To: sip:user@example.com",
    "From: sip:caller@example.org;tag=33242",
    "Max-Forwards: 3",
    "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK",
    "Accept: application/sdp",
    "Call-ID: badbranch.sadonfo23i420jv0as0derf3j3n",
    "CSeq: 8 OPTIONS",
    "l: 0",
)


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

# 3.3.1 Missing Required Header Fields
INSUF = message(
    "INVITE sip:user@example.com SIP/2.0",
    "CSeq: 193942 INVITE",
    "Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf",
    "Content-Type: application/sdp",
    "l: 152",
    body=sdp("192.0.2.95"),
)


def test_insuf_does_not_break_the_server_and_gets_no_answer(stranger: Peer) -> None:
    # "An element receiving this message must not break because of the missing information.
    # Ideally, it will respond with a 400 Bad Request error." No well-formed 400 exists for it:
    # every response carries From, To and Call-ID (RFC 3261 8.2.6.2), which it lacks. It is
    # dropped, and the next request is served.
    stranger.send(INSUF)
    stranger.nothing_more()


# 3.3.2 Request-URI with Unknown Scheme
UNKSCM = message(
    "OPTIONS nobodyKnowsThisScheme:totallyopaquecontent SIP/2.0",
    "To: sip:user@example.com",
    "From: sip:caller@example.net;tag=384",
    "Max-Forwards: 3",
    "Call-ID: unkscm.nasdfasser0q239nwsdfasdkl34",
    "CSeq: 3923423 OPTIONS",
    "Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234",
    "Content-Length: 0",
)

# 3.3.3 Request-URI with Known but Atypical Scheme
NOVELSC = message(
    "OPTIONS soap.beep://192.0.2.103:3002 SIP/2.0",
    "To: sip:user@example.com",
    "From: sip:caller@example.net;tag=384",
    "Max-Forwards: 3",
    "Call-ID: novelsc.asdfasser0q239nwsdfasdkl34",
    "CSeq: 3923423 OPTIONS",
    "Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234",
    "Content-Length: 0",
)


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


# 3.3.4 Unknown URI Schemes in Header Fields
UNKSM2 = message(
    "REGISTER sip:example.com SIP/2.0",
    "To: isbn:2983792873",
    "From: <http://www.example.com>;tag=3234233",
    "Call-ID: unksm2.daksdj@hyphenated-host.example.com",
    "CSeq: 234902 REGISTER",
    "Max-Forwards: 70",
    "Via: SIP/2.0/UDP 192.0.2.21:5060;branch=z9hG4bKkdjuw",
    "Contact: <name:John_Smith>",
    "l: 0",
)


def test_unksm2_register_with_a_non_sip_to_is_400(stranger: Peer) -> None:
    # "A registrar would reject this request with a 400 Bad Request response, since the To:
    # header field is required to contain a SIP or SIPS URI as an AOR." (example.com is our
    # domain here, in the Request-URI.)
    stranger.send(served(UNKSM2, ("REGISTER sip:example.com", f"REGISTER sip:{DOMAIN}")))
    assert status_line(stranger.response()) == (400, "Bad To: unsupported URI scheme 'isbn'")


# 3.3.5 Proxy-Require and Require
BEXT01 = message(
    "OPTIONS sip:user@example.com SIP/2.0",
    "To: sip:j_user@example.com",
    "From: sip:caller@example.net;tag=242etr",
    "Max-Forwards: 6",
    "Call-ID: bext01.0ha0isndaksdj",
    "Require: nothingSupportsThis, nothingSupportsThisEither",
    "Proxy-Require: noProxiesSupportThis, norDoAnyProxiesSupportThis",
    "CSeq: 8 OPTIONS",
    "Via: SIP/2.0/TLS fold-and-staple.example.com;branch=z9hG4bKkdjuw",
    "Content-Length: 0",
)


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


# 3.3.6 Invalid/Unacceptable Content-Type
INVUT = message(
    "INVITE sip:user@example.com SIP/2.0",
    "Contact: <sip:caller@host5.example.net>",
    "To: sip:j.user@example.com",
    "From: sip:caller@example.net;tag=8392034",
    "Max-Forwards: 70",
    "Call-ID: invut.0ha0isndaksdjadsfij34n23d",
    "CSeq: 235448 INVITE",
    "Via: SIP/2.0/UDP somehost.example.com;branch=z9hG4bKkdjuw",
    "Content-Type: application/unknownformat",
    "Content-Length: 40",
    body=("<audio>", ' <pcmu port="443"/>', "</audio>"),
)


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


# 3.3.7 Unknown Authorization Scheme
REGAUT01 = message(
    "REGISTER sip:example.com SIP/2.0",
    "To: sip:j.user@example.com",
    "From: sip:j.user@example.com;tag=87321hj23128",
    "Max-Forwards: 8",
    "Call-ID: regaut01.0ha0isndaksdj",
    "CSeq: 9338 REGISTER",
    "Via: SIP/2.0/TCP 192.0.2.253;branch=z9hG4bKkdjuw",
    "Authorization: NoOneKnowsThisScheme opaque-data=here",
    "Content-Length:0",
)


def test_regaut01_unknown_authorization_scheme_gets_a_digest_challenge(stranger: Peer) -> None:
    # "A registrar that does care about challenge-response authentication will reject this
    # request with a 401, issuing a new challenge with a scheme it understands." (example.com
    # is our domain here; j.user has a password.)
    stranger.send(served(REGAUT01, ("sip:example.com", f"sip:{DOMAIN}"), ("user@example.com", f"user@{DOMAIN}")))
    answer = stranger.response()
    assert status_line(answer) == (401, "Unauthorized")
    assert answer.get("WWW-Authenticate").startswith(f'Digest realm="{DOMAIN}"')


# 3.3.8 Multiple Values in Single Value Required Fields
MULTI01 = message(
    "INVITE sip:user@company.com SIP/2.0",
    "Contact: <sip:caller@host25.example.net>",
    "Via: SIP/2.0/UDP 192.0.2.25;branch=z9hG4bKkdjuw",
    "Max-Forwards: 70",
    "CSeq: 5 INVITE",
    "Call-ID: multi01.98asdh@192.0.2.1",
    "CSeq: 59 INVITE",
    "Call-ID: multi01.98asdh@192.0.2.2",
    "From: sip:caller@example.com;tag=3413415",
    "To: sip:user@example.com",
    "To: sip:other@example.net",
    "From: sip:caller@example.net;tag=2923420123",
    "Content-Type: application/sdp",
    "l: 154",
    "Contact: <sip:caller@host36.example.net>",
    "Max-Forwards: 5",
    body=(*sdp("192.0.2.25"), ""),
)


def test_multi01_is_400(stranger: Peer) -> None:
    # "An element receiving this request would respond with a 400 Bad Request error." The
    # answer copies one of each header it needs, the first.
    stranger.send(MULTI01)
    answer = stranger.response()
    assert status_line(answer) == (400, "Duplicate CSeq Header")
    assert (answer.call_id, answer.cseq) == ("multi01.98asdh@192.0.2.1", (5, "INVITE"))


# 3.3.9 Multiple Content-Length Values
MCL01 = message(
    "OPTIONS sip:user@example.com SIP/2.0",
    "Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bK293423",
    "To: sip:user@example.com",
    "From: sip:other@example.net;tag=3923942",
    "Call-ID: mcl01.fhn2323orihawfdoa3o4r52o3irsdf",
    "CSeq: 15932 OPTIONS",
    "Content-Length: 13",
    "Max-Forwards: 60",
    "Content-Length: 5",
    "Content-Type: text/plain",
    body=("There's no way to know how many octets are supposed to be here.", ""),
)


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


# 3.3.10 200 OK Response with Broadcast Via Header Field Value
BCAST = message(
    "SIP/2.0 200 OK",
    "Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923",
    "Via: SIP/2.0/UDP 255.255.255.255;branch=z9hG4bK1saber23",
    "Call-ID: bcast.0384840201234ksdfak3j2erwedfsASdf",
    "CSeq: 35 INVITE",
    "From: sip:user@example.com;tag=11141343",
    "To: sip:user@example.edu;tag=2229",
    "Content-Length: 154",
    "Content-Type: application/sdp",
    "Contact: <sip:user@host28.example.com>",
    body=sdp("192.0.2.198"),
)


def test_bcast_response_is_dropped(stranger: Peer) -> None:
    # "To protect against this as an avenue of attack, proxies should drop such responses."
    # It answers nothing we sent: dropped, never relayed by its Vias (which our proxy never
    # does: a response goes where its request came from).
    stranger.send(BCAST)
    stranger.nothing_more()


# 3.3.11 Max-Forwards of Zero
ZEROMF = message(
    "OPTIONS sip:user@example.com SIP/2.0",
    "To: sip:user@example.com",
    "From: sip:caller@example.net;tag=3ghsd41",
    "Call-ID: zeromf.jfasdlfnm2o2l43r5u0asdfas",
    "CSeq: 39234321 OPTIONS",
    "Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw2349i",
    "Max-Forwards: 0",
    "Content-Length: 0",
)


def test_zeromf_to_a_user_the_proxy_answers_483(stranger: Peer) -> None:
    # "A proxy should not forward the request and should respond 483 (Too Many Hops)."
    stranger.send(ZEROMF)
    assert status_line(stranger.response()) == (483, "Too Many Hops")


def test_zeromf_to_the_server_itself_is_answered_as_if_max_forwards_were_positive(stranger: Peer) -> None:
    # "An endpoint should process the request as if the Max-Forwards field value were still
    # positive." The same OPTIONS to the domain itself (no user): we are its endpoint.
    stranger.send(own_branch(served(ZEROMF, ("OPTIONS sip:user@example.com", f"OPTIONS sip:{DOMAIN}")), "uas"))
    assert status_line(stranger.response()) == (200, "OK")


# 3.3.12 REGISTER with a Contact Header Parameter
CPARAM01 = message(
    "REGISTER sip:example.com SIP/2.0",
    "Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw",
    "Max-Forwards: 70",
    "From: sip:watson@example.com;tag=DkfVgjkrtMwaerKKpe",
    "To: sip:watson@example.com",
    "Call-ID: cparam01.70710@saturn.example.com",
    "CSeq: 2 REGISTER",
    "Contact: sip:+19725552222@gw1.example.net;unknownparam",
    "l: 0",
)

# 3.3.13 REGISTER with a url-parameter
CPARAM02 = message(
    "REGISTER sip:example.com SIP/2.0",
    "Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw",
    "Max-Forwards: 70",
    "From: sip:watson@example.com;tag=838293",
    "To: sip:watson@example.com",
    "Call-ID: cparam02.70710@saturn.example.com",
    "CSeq: 3 REGISTER",
    "Contact: <sip:+19725552222@gw1.example.net;unknownparam>",
    "l: 0",
)

# 3.3.14 REGISTER with a URL Escaped Header
REGESCRT = message(
    "REGISTER sip:example.com SIP/2.0",
    "To: sip:user@example.com",
    "From: sip:user@example.com;tag=8",
    "Max-Forwards: 70",
    "Call-ID: regescrt.k345asrl3fdbv@192.0.2.1",
    "CSeq: 14398234 REGISTER",
    "Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw",
    "M: <sip:user@example.com?Route=%3Csip:sip.example.com%3E>",
    "L:0",
)


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


# 3.3.15 Unacceptable Accept Offering
SDP01 = message(
    "INVITE sip:user@example.com SIP/2.0",
    "To: sip:j_user@example.com",
    "Contact: <sip:caller@host15.example.net>",
    "From: sip:caller@example.net;tag=234",
    "Max-Forwards: 5",
    "Call-ID: sdp01.ndaksdj9342dasdd",
    "Accept: text/nobodyKnowsThis",
    "CSeq: 8 INVITE",
    "Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw",
    "Content-Length: 150",
    "Content-Type: application/sdp",
    body=sdp("192.0.2.5"),
)


def test_sdp01_accept_is_the_endpoint_s_business_the_proxy_routes_it(pbx: Peer) -> None:
    # "The recipient of this request could respond with a 406 Not Acceptable [...]": the
    # recipient is the endpoint; a proxy routes it as any INVITE. Routed to our user (our
    # domain here in the Request-URI), whom nobody registered.
    answer = pbx.ask(served(SDP01, ("INVITE sip:user@example.com", f"INVITE sip:user@{DOMAIN}")))
    assert status_line(answer) == (480, "Temporarily Unavailable")


# 3.3.16 INVITE with RFC 2543 Syntax
INV2543 = message(
    "INVITE sip:UserB@example.com SIP/2.0",
    "Via: SIP/2.0/UDP iftgw.example.com",
    "From: <sip:+13035551111@ift.client.example.net;user=phone>",
    "Record-Route: <sip:UserB@example.com;maddr=ss1.example.com>",
    "To: sip:+16505552222@ss1.example.net;user=phone",
    "Call-ID: inv2543.1717@ift.client.example.com",
    "CSeq: 56 INVITE",
    "Content-Type: application/sdp",
    body=(*sdp("192.0.2.5")[:5], "m=audio 49217 RTP/AVP 0"),
)


def test_inv2543_is_accepted_without_branch_from_tag_content_length_or_max_forwards(pbx: Peer) -> None:
    # "This is a legal message per RFC 2543 (and several bis versions) that should be accepted
    # by RFC 3261 elements that want to maintain backwards compatibility." Routed to UserB, not
    # a user of ours (example.com is our domain here in the Request-URI): 404, with a To tag
    # of ours and the From without one, as it came.
    answer = pbx.ask(served(INV2543, ("INVITE sip:UserB@example.com", f"INVITE sip:UserB@{DOMAIN}")))
    assert status_line(answer) == (404, "Not Found")
    assert answer.get_all("Via")[0].startswith("SIP/2.0/UDP iftgw.example.com;received=127.0.0.2")
    assert answer.name_addr("To").tag is not None and answer.name_addr("From").tag is None
