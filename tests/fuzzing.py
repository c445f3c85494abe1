"""Fuzzing the receive path: broken SIP messages, and the property every one of them must keep.

One place for both, shared by the unit tests (tests/unit/test_wire_fuzz.py,
tests/unit/test_message.py) and by `make bench` (bench/fuzz.py):

- `fuzzed_message(draws)`: one of BASES, valid requests and responses
  (REGISTER, INVITE, OPTIONS, ACK, BYE, CANCEL, MESSAGE, SUBSCRIBE; 100 to
  603), with a few mutations: header values replaced or spliced with nasty text
  (unterminated quotes, bad escapes, huge values, control characters, bytes
  that are not UTF-8), mandatory headers deleted or duplicated, folded lines,
  bad Content-Lengths, broken start lines, and blind byte edits on top. Its
  choices come from Hypothesis (`messages()`, in the tests) or from a seeded
  random.Random (`RandomDraws`, in the benchmark);
- `ReceivePath`: a registrar as `sipreg serve` assembles it (registrar.app:
  SipService, Registrar, memory store, proxy), with its transports replaced
  by recorders and an event loop that refuses to reach the network, and its
  `check(data)`, the property: parsing raises nothing but SipError (whose
  reason phrase is printable and bounded) and `SipEndpoint.receive` (over UDP
  and over a TCP connection) raises nothing, every answer that goes out parses
  as a response whose reason phrase has no control characters, whatever the
  proxy relays parses, no message runs into a bug (sipreg_internal_errors_total
  stays 0) or puts a traceback in the log, and a connection is closed only
  when its framing is lost.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import random
import socket
from collections.abc import Sequence
from typing import TypeVar

from hypothesis import strategies as st

from registrar.app import RegistrarServer, ServeConfig
from registrar.model import Catalog, Connection, Domain
from registrar.sip.source import Source
from registrar.sip import digest
from registrar.sip.headers import LIST_HEADERS
from registrar.sip.message import (
    MAX_REASON_PHRASE,
    Request,
    Response,
    SipError,
    StreamFramer,
    make_response,
    parse_message,
    salvage_request,
)
from registrar.sip.proxy import BRANCH_MARK
from registrar.sip.uri import parse_uri
from registrar.transport import StreamProtocol

DOMAIN = "fuzz.example.test"
# The address the messages come from: the PBX's, which registers by address, so
# that mutated REGISTERs get past authentication to the store.
SOURCE = Source("udp", "127.0.0.2", 5060)
STREAM_PEER = ("127.0.0.3", 5070)

# -- what is broken -----------------------------------------------------------------------

# Fragments of SIP: put together at random, they make text that looks like SIP.
FRAGMENTS = [
    "REGISTER", "INVITE", "ACK", "SIP/2.0", "SIP/2.0 200 OK", "sip:", "sips:", "tel:", "@", ":", ";", ",", "?",
    "=", '"', "\\", "<", ">", "[", "]", " ", "\t", "\r\n", "\r\n ", "\r\n\r\n", "Via: ", "v:", "From: ", "To: ",
    "Call-ID: ", "CSeq: ", "Contact: ", "m:", "Content-Length: ", "l:", "branch=z9hG4bK", "tag=", "rport",
    "SIP/2.0/UDP ", "example.com", "192.0.2.1", "[::1]", "5060", "0", "-1", "99999999999", "\u00b2", "é",
    "\x00", "%00", "%41", "*", "REGISTER sip:example.com SIP/2.0\r\n",
]

# What a broken header value, or a piece of one, looks like.
NASTY = [
    # quoting and escaping
    b'"', b'"abc', b'x="abc', b';x="abc', b'"abc\\', b'"\\', b'\\', b'\\"', b'"a\\"b', b'""', b'"\\\x00"', b'"\r\n"',
    # brackets, separators, parameters
    b"<", b">", b"<sip:", b"<>", b"<<sip:a@b>>", b";", b";;", b",", b",,", b" , ", b"=", b";=", b";a=", b";=b",
    b";tag", b";tag=", b";branch", b";branch=", b";rport", b";rport=abc", b";rport=99999", b";received=", b";lr",
    b";q=2", b";q=abc", b";q=0.5.5", b";expires=99999999999999999999", b";expires=-1", b";transport=bogus",
    b";maddr=", b"?", b"?a=b&c", b"&", b"*",
    # URIs and hosts
    b"sip:", b"sips:", b"tel:", b"sip:@", b"sip:a@", b"sip:a@b:", b"sip:a@b:0", b"sip:a@b:65536", b"sip:a@[::1",
    b"sip:a@[::1]x", b"sip:a@[]", b"sip:%zz@b", b"sip:%00@b", b"sip:a:b:c@d", b"mailto:a@b", b"http://x",
    b"[", b"]", b"[::1]", b"[::1]:5060", b"::1", b"1.2.3.4:", b":5060", b":99999", b":-1", b"@", b"@@",
    # Via pieces
    b"SIP/2.0/UDP", b"SIP/2.0/", b"SIP//UDP", b"SIP/2.0/UDP ", b"SIP / 2.0 / UDP host", b"SIP/2.0/UDP host:port",
    # numbers
    b"0", b"-1", b"2147483648", b"4294967296", b"99999999999999999999999999", b"1" * 5000, b"\xc2\xb2",
    b"\xd9\xa1\xd9\xa2", b"0x10", b"1e3", b"", b" ", b"\t",
    # digest credentials
    b'Digest username="a', b"Digest ,,,", b"Digest", b'Digest realm="fuzz.example.test", nonce=', b"Basic abc",
    # control characters and bytes that are not UTF-8
    b"\x00", b"\r", b"\n", b"\r\n", b"\x7f", b"\x1b[31m", b"\x08", b"\x0b\x0c", b"\xff\xfe", b"\xc3", b"\xed\xa0\x80",
    b"\xef\xbb\xbf", "\u2028".encode(), "\u0085".encode(), "é".encode(),
    # sizes
    b"a" * 300, b"a" * 8000, b"a" * 8180, b"a" * 8200, b"," * 2000, b";a" * 2000,
    b"<sip:pbx@127.0.0.2;x=" + b"a" * 7970 + b">", b"<sip:pbx@127.0.0.2;x=" + b"a" * 8150 + b">",
]

HEADER_NAMES = [
    b"Via", b"v", b"From", b"f", b"To", b"t", b"Call-ID", b"i", b"CSeq", b"Contact", b"m", b"Content-Length",
    b"l", b"Max-Forwards", b"Expires", b"Route", b"Record-Route", b"Authorization", b"Proxy-Authorization",
    b"Require", b"Proxy-Require", b"Supported", b"Content-Type", b"X-Extra", b"VIA", b"cseq", b"Via ", b"Bad Name",
    b"", b"X\x00Y", b"\xff",
]


# -- what is not, yet ---------------------------------------------------------------------------

SDP = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.5\r\ns=-\r\nc=IN IP4 127.0.0.5\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
# Where a request's Via branch and Call-ID get a number of fuzzed_message's choosing: a
# thousand transactions (and calls, and registrations), so most messages start a new one
# and some meet one that is under way.
TRANSACTION = "txn0"
# A branch the proxy chose: ReceivePath puts the last one it saw relayed in its place,
# so that a response meets a client transaction of the proxy now and then.
PROXY_BRANCH = (BRANCH_MARK + "fuzzed").encode()


# A message as the generator edits it: start line, (name, value) headers, body.
Parts = tuple[bytes, list[tuple[bytes, bytes]], bytes]


def _request(
    method: str, uri: str, *extra: tuple[str, str], to: str = f"<sip:pbx@{DOMAIN}>", body: bytes = b""
) -> Parts:
    headers = [
        ("Via", f"SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bK-{TRANSACTION}-fuzz;rport"),
        ("Max-Forwards", "70"),
        ("From", f'"PBX" <sip:pbx@{DOMAIN}>;tag=f1'),
        ("To", to),
        ("Call-ID", f"{TRANSACTION}@127.0.0.2"),
        ("CSeq", f"1 {'INVITE' if method == 'ACK' else method}"),
        *extra,
        ("Content-Length", str(len(body))),
    ]
    return f"{method} {uri} SIP/2.0".encode(), [(n.encode(), v.encode()) for n, v in headers], body


def _response(status: str, method: str, *extra: tuple[str, str], body: bytes = b"") -> Parts:
    headers = [
        ("Via", f"SIP/2.0/UDP 127.0.0.1:5060;branch={PROXY_BRANCH.decode()};rport=5060"),
        ("Via", "SIP/2.0/UDP 127.0.0.4:5060;branch=z9hG4bK-caller"),
        ("From", f"<sip:caller@{DOMAIN}>;tag=c1"),
        ("To", f"<sip:pbx@{DOMAIN}>;tag=callee"),
        ("Call-ID", "fuzz-call@127.0.0.4"),
        ("CSeq", f"1 {method}"),
        *extra,
        ("Content-Length", str(len(body))),
    ]
    return f"SIP/2.0 {status}".encode(), [(n.encode(), v.encode()) for n, v in headers], body


# Valid messages of every kind the server meets.
BASES: list[Parts] = [
    _request("REGISTER", f"sip:{DOMAIN}", ("Contact", "<sip:pbx@127.0.0.2:5060>;expires=600"), ("Expires", "600"),
             to=f"<sip:pbx@{DOMAIN}>"),
    _request("REGISTER", f"sip:{DOMAIN}", ("Contact", '"Alice, A." <sip:alice@127.0.0.2:5062;transport=tcp>;q=0.5, *'),
             ("Authorization", f'Digest username="alice", realm="{DOMAIN}", nonce="abc", uri="sip:{DOMAIN}", '
                               'response="00000000000000000000000000000000", algorithm=MD5, qop=auth, nc=00000001, '
                               'cnonce="x"'),
             to=f"<sip:alice@{DOMAIN}>"),
    _request("INVITE", f"sip:pbx@{DOMAIN}", ("Contact", "<sip:caller@127.0.0.2:5060>"),
             ("Content-Type", "application/sdp"), ("Supported", "100rel, timer"), body=SDP),
    _request("INVITE", f"sip:+15551234567@{DOMAIN};user=phone", ("Contact", "<sip:pbx@127.0.0.2>"),
             ("Route", f"<sip:{DOMAIN};lr>"), body=SDP),
    _request("OPTIONS", f"sip:{DOMAIN}", ("Accept", "application/sdp"), to=f"<sip:{DOMAIN}>"),
    _request("OPTIONS", f"sip:pbx@{DOMAIN}"),
    _request("ACK", f"sip:pbx@127.0.0.2:5060", ("Route", f"<sip:tok@{DOMAIN};lr>"), to=f"<sip:pbx@{DOMAIN}>;tag=t1"),
    _request("BYE", f"sip:pbx@127.0.0.2:5060", ("Route", f"<sip:tok@127.0.0.1:5060;lr>"),
             to=f"<sip:pbx@{DOMAIN}>;tag=t1"),
    _request("CANCEL", f"sip:pbx@{DOMAIN}"),
    _request("MESSAGE", f"sip:alice@{DOMAIN}", ("Content-Type", "text/plain"), body=b"hello"),
    _request("SUBSCRIBE", f"sip:alice@{DOMAIN}", ("Event", "presence"), ("Expires", "60")),
    _response("100 Trying", "INVITE"),
    _response("180 Ringing", "INVITE", ("Contact", "<sip:pbx@127.0.0.2>")),
    _response("200 OK", "INVITE", ("Contact", "<sip:pbx@127.0.0.2>"), ("Record-Route", f"<sip:{DOMAIN};lr>"),
              body=SDP),
    _response("401 Unauthorized", "INVITE", ("WWW-Authenticate", 'Digest realm="x", nonce="y"')),
    _response("486 Busy Here", "INVITE"),
    _response("200 OK", "BYE"),
    _response("603 Decline", "INVITE"),
]


def serialize(start: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    return b"".join([start, b"\r\n", *[name + b": " + value + b"\r\n" for name, value in headers], b"\r\n", body])


# -- mutations ----------------------------------------------------------------------------------

T = TypeVar("T")


class Draws:
    """The choices a generator makes, from whatever makes them.

    Hypothesis makes them in the tests (`HypothesisDraws`: a failure shrinks to
    its smallest message); a seeded `random.Random` in the benchmark
    (`RandomDraws`: many times faster, for the hundred thousand messages it runs).
    """

    def choice(self, options: Sequence[T]) -> T:
        raise NotImplementedError

    def integer(self, low: int, high: int) -> int:
        raise NotImplementedError

    def binary(self, max_size: int) -> bytes:
        raise NotImplementedError


class HypothesisDraws(Draws):
    def __init__(self, draw: st.DrawFn):
        self._draw = draw

    def choice(self, options: Sequence[T]) -> T:
        return self._draw(st.sampled_from(options))

    def integer(self, low: int, high: int) -> int:
        return self._draw(st.integers(low, high))

    def binary(self, max_size: int) -> bytes:
        return self._draw(st.binary(max_size=max_size))


class RandomDraws(Draws):
    def __init__(self, seed: int):
        self._random = random.Random(seed)

    def choice(self, options: Sequence[T]) -> T:
        return self._random.choice(options)

    def integer(self, low: int, high: int) -> int:
        return self._random.randint(low, high)

    def binary(self, max_size: int) -> bytes:
        return self._random.randbytes(self._random.randint(0, max_size))


_STRUCTURAL = ["replace", "splice", "delete", "duplicate", "fold", "rename", "add", "start", "length", "body"]
_BAD_LENGTHS = [b"-1", b"abc", b"", b"99999999999999999999", b"\xc2\xb2", b"1 2", b"0x10", b"65536"]


def _nasty(draws: Draws) -> bytes:
    return draws.binary(12) if draws.integer(0, 4) == 0 else draws.choice(NASTY)


def mutate_structure(draws: Draws, start: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> Parts:
    """One change to a message's structure: a header's value, name or place, the start line, the body."""
    kind = draws.choice(_STRUCTURAL)
    headers = list(headers)
    index = draws.integer(0, len(headers) - 1) if headers else None
    if kind == "start":
        words = start.split(b" ")
        words[draws.integer(0, len(words) - 1)] = _nasty(draws)
        start = b" ".join(words) if draws.integer(0, 1) else b"".join(words)
    elif kind == "length":
        headers = [(n, v) for n, v in headers if n not in (b"Content-Length", b"l")]
        length = draws.choice(_BAD_LENGTHS) if draws.integer(0, 1) else str(draws.integer(0, len(body) + 20)).encode()
        headers.append((draws.choice([b"Content-Length", b"l"]), length))
    elif kind == "body":
        body = draws.binary(64)
    elif kind == "add" or index is None:
        headers.insert(draws.integer(0, len(headers)), (draws.choice(HEADER_NAMES), _nasty(draws)))
    elif kind == "replace":
        headers[index] = (headers[index][0], _nasty(draws))
    elif kind == "splice":
        name, value = headers[index]
        at = draws.integer(0, len(value))
        headers[index] = (name, value[:at] + _nasty(draws) + value[at:])
    elif kind == "delete":
        del headers[index]
    elif kind == "duplicate":
        headers.insert(draws.integer(0, len(headers)), headers[index])
    elif kind == "fold":
        name, value = headers[index]
        at = draws.integer(0, len(value))
        headers[index] = (name, value[:at] + draws.choice([b"\r\n ", b"\r\n\t", b"\r\n"]) + value[at:])
    else:  # rename
        headers[index] = (draws.choice(HEADER_NAMES), headers[index][1])
    return start, headers, body


_BYTE_EDITS = ["flip", "truncate", "insert", "delete", "duplicate"]
_FRAGMENT_BYTES = [fragment.encode() for fragment in FRAGMENTS]


def mutate_bytes(draws: Draws, seed: bytes) -> bytes:
    """`seed` with a few blind byte edits: flips, cuts, insertions, deletions, repeats."""
    data = bytearray(seed)
    for _ in range(draws.integer(1, 6)):
        operation = draws.choice(_BYTE_EDITS)
        if not data:
            break
        at = draws.integer(0, len(data) - 1)
        if operation == "flip":
            data[at] = draws.integer(0, 255)
        elif operation == "truncate":
            del data[at:]
        elif operation == "insert":
            data[at:at] = draws.binary(8) or draws.choice(_FRAGMENT_BYTES)
        elif operation == "delete":
            del data[at : at + draws.integer(1, 16)]
        else:
            data[at:at] = data[at : at + draws.integer(1, 40)]
    return bytes(data)


def fuzzed_message(draws: Draws) -> bytes:
    """A valid message of BASES with up to four structural mutations, and sometimes byte edits on top."""
    start, headers, body = draws.choice(BASES)
    transaction = f"txn{draws.integer(0, 999)}".encode()
    headers = [(name, value.replace(TRANSACTION.encode(), transaction)) for name, value in headers]
    for _ in range(draws.integer(0, 4)):
        start, headers, body = mutate_structure(draws, start, headers, body)
    data = serialize(start, headers, body)
    return mutate_bytes(draws, data) if draws.integer(0, 3) == 0 else data


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    """`fuzzed_message` as a Hypothesis strategy."""
    return fuzzed_message(HypothesisDraws(draw))


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """`mutate_bytes` of `seed` as a Hypothesis strategy."""
    return mutate_bytes(HypothesisDraws(draw), seed)


# -- the property -------------------------------------------------------------------------------


def read_everything(message: Request | Response) -> None:
    """Read what a caller might read of a parsed message: SipError is the only failure allowed."""
    for name in LIST_HEADERS:
        message.get_all(name)
        message.get(name)
    readers = [lambda: message.call_id, lambda: message.top_via, lambda: message.cseq]
    readers += [functools.partial(message.name_addr, name) for name in ("From", "To", "Contact", "Route")]
    for read in readers:
        try:
            read()
        except SipError:
            pass
    if isinstance(message, Request):
        try:
            parse_uri(message.uri)
        except ValueError:  # URIError, what parse_uri raises
            pass


def check_parse(data: bytes) -> Request | Response | None:
    """The parser's half of the property: SipError with a printable, bounded reason, or a message to read."""
    try:
        message = parse_message(data)
    except SipError as error:
        assert 400 <= error.status <= 599, error
        assert _sendable_reason(error.reason), error
        salvaged = salvage_request(data)
        if salvaged is not None:
            _check_response_bytes(make_response(salvaged, error.status, error.reason).to_bytes())
        return None
    read_everything(message)
    return message


def _sendable_reason(reason: str) -> bool:
    """A reason phrase of ours: printable, bounded."""
    return reason.isprintable() and len(reason) <= MAX_REASON_PHRASE


def _check_response_bytes(data: bytes) -> Response:
    """An answer that goes out (ours or relayed): a response whose reason phrase has no control characters."""
    response = parse_message(data)
    assert isinstance(response, Response), data[:200]
    assert not any(c < " " or c == "\x7f" for c in response.reason), response.reason
    return response


class _Datagrams:
    """The UDP socket, as the endpoint and the proxy use it: what is sent is kept."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, address: tuple) -> None:
        self.sent.append(data)


class StreamConnection:
    """One TCP connection's transport, as StreamProtocol uses it: what is written is kept."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return STREAM_PEER if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def answers(self) -> list[bytes]:
        """The SIP messages written, framed as the peer reads the stream: several may share a write."""
        return [event for event in StreamFramer().feed(b"".join(self.written)) if isinstance(event, bytes)]


class _Tracebacks(logging.Handler):
    """The log records of the registrar that carry a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)


class OfflineLoop(asyncio.SelectorEventLoop):
    """An event loop that cannot reach the network: no name lookups, no connections.

    Fuzzed messages name any host they like; nothing of them may leave the machine.
    """

    async def getaddrinfo(self, *args, **kwargs):  # type: ignore[override]
        raise socket.gaierror(socket.EAI_NONAME, "offline")

    async def create_connection(self, *args, **kwargs):  # type: ignore[override]
        raise OSError("offline")


def catalog() -> Catalog:
    return Catalog(
        domains={DOMAIN: Domain(DOMAIN, outbound_gateway="sip:127.0.0.9:5070")},
        connections={
            (DOMAIN, "alice"): Connection(DOMAIN, "alice", ha1={"MD5": digest.ha1("MD5", "alice", DOMAIN, "pw")}),
            (DOMAIN, "pbx"): Connection(
                DOMAIN, "pbx", authentication="ip", allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),)
            ),
        },
    )


class ReceivePath:
    """A registrar as `sipreg serve` assembles it, fed messages in-process; `check` is the property."""

    def __init__(self) -> None:
        self.loop = OfflineLoop()
        self.server = RegistrarServer(
            ServeConfig(catalog=catalog(), node="fuzz", nonce_secret=b"0" * 32, tls_port=None, http_port=None)
        )
        self.endpoint = self.server.endpoint
        self.datagrams = _Datagrams()
        self.endpoint.use_udp(self.datagrams)  # type: ignore[arg-type]  # as listen_udp does
        self.branch = PROXY_BRANCH
        self.tracebacks = _Tracebacks()
        logging.getLogger("sipreg").addHandler(self.tracebacks)

    def close(self) -> None:
        logging.getLogger("sipreg").removeHandler(self.tracebacks)
        self.loop.close()

    # -- feeding it ---------------------------------------------------------------------------
    def receive(self, data: bytes, source: Source = SOURCE) -> list[bytes]:
        """What goes back for one datagram from `source`."""
        answers: list[bytes] = []
        self.loop.run_until_complete(self._receive(data, source, answers))
        return answers

    def receive_stream(self, *chunks: bytes) -> StreamConnection:
        """One TCP connection that carries `chunks` and is then closed by the peer: what went back on it."""
        connection = StreamConnection()
        self.loop.run_until_complete(self._receive_stream(chunks, connection))
        return connection

    def internal_errors(self) -> float:
        """sipreg_internal_errors_total: messages that ran into a bug."""
        [metric] = self.server.metrics.internal_errors.collect()
        return sum(sample.value for sample in metric.samples if sample.name.endswith("_total"))

    async def _receive(self, data: bytes, source: Source, answers: list[bytes]) -> None:
        self.endpoint.receive(data, source, answers.append)
        await asyncio.sleep(0)  # what the receive started (the store, the proxy) runs on

    async def _receive_stream(self, chunks: tuple[bytes, ...], connection: StreamConnection) -> None:
        protocol = StreamProtocol(self.endpoint, "tcp")
        protocol.connection_made(connection)  # type: ignore[arg-type]
        try:
            for chunk in chunks:
                protocol.data_received(chunk)
            await asyncio.sleep(0)
        finally:
            protocol.connection_lost(None)

    # -- the property -------------------------------------------------------------------------
    def check(self, data: bytes) -> None:
        """The property, for one message (see the module's docstring)."""
        errors_before = self.internal_errors()
        self.tracebacks.records.clear()
        self.datagrams.sent.clear()  # what an earlier failed check left
        check_parse(data)
        data = data.replace(PROXY_BRANCH, self.branch)
        # Over TCP as another transaction, lest one be taken for a retransmission of the
        # other, and first, so that a REGISTER's binding is the datagram's: the connection
        # closes after the check, and calls would find only closed ones.
        self._check_stream(data.replace(b";branch=z9hG4bK-", b";branch=z9hG4bK-tcp-"))
        for answer in self.receive(data):
            _check_response_bytes(answer)
        self._check_relayed()
        assert self.internal_errors() == errors_before, "a message ran into a bug: see registrar.transport's log line"
        logged = self.tracebacks.records
        assert not logged, f"a message put a traceback in the log: {logged[0].getMessage()}"

    def _check_relayed(self) -> None:
        """What the proxy sent on parses; its responses' reason phrases have no control characters."""
        sent, self.datagrams.sent = self.datagrams.sent, []
        for data in sent:
            message = parse_message(data)
            if isinstance(message, Response):
                _check_response_bytes(data)
            else:
                branch = message.top_via.branch
                if branch and branch.startswith(BRANCH_MARK):
                    self.branch = branch.encode()

    def _check_stream(self, data: bytes) -> None:
        """The message on a TCP connection, in two pieces: answered as a datagram is; closed only if unframeable."""
        connection = self.receive_stream(data[: len(data) // 2], data[len(data) // 2 :])
        for answer in connection.answers():
            _check_response_bytes(answer)
        try:
            StreamFramer().feed(data)
            framing_lost = False
        except SipError:
            framing_lost = True
        if connection.closed:
            assert framing_lost, "closed a connection whose framing was fine"
        else:
            assert not framing_lost, "kept a connection whose framing was lost"
