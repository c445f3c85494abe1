"""Unit tests for registrar.sip.message: parsing, limits, RFC 4475 torture messages,
stream framing, answering (make_response) and salvaging unparsable requests.

The RFC 4475 messages come from tests/rfc4475.py, as the RFC has them (the tests
that send them through a running server read the same), and each test asserts
what RFC 4475 says a parser must do with it.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registrar.sip.headers import (
    LIST_HEADERS,
    canonical_name,
    display_name_text,
    parse_delta_seconds,
    parse_name_addr,
    parse_via,
    split_list,
)
from registrar.sip.message import (
    KNOWN_METHODS,
    MAX_ECHOED_VALUE,
    MAX_HEADER_LINE,
    MAX_HEADERS,
    MAX_MESSAGE_SIZE,
    MAX_REASON_PHRASE,
    KeepAlive,
    Message,
    Request,
    Response,
    SipError,
    StreamFramer,
    make_response,
    parse_message,
    salvage_request,
    transaction_tag,
)
from registrar.sip.uri import parse_uri
from tests.fuzzing import FRAGMENTS, check_parse, mutated
from tests.rfc4475 import (
    BADASPEC,
    BADDATE,
    BADINV01,
    BADVERS,
    BIGCODE,
    CLERR,
    DBLREQ,
    ESC01,
    ESC02,
    ESCNULL,
    ESCRURI,
    INSUF,
    INTMETH,
    LONGREQ,
    LTGTRURI,
    LWSDISP,
    MISMATCH01,
    MISMATCH02,
    MPART01,
    MPART01_BODY,
    NCL,
    NOREASON,
    NOVELSC,
    QUOTBAL,
    REGBADCT,
    REGESCRT,
    SCALAR02,
    SEMIURI,
    TRANSPORTS,
    UNKSCM,
    UNREASON,
    WSINV,
    message,
    sdp,
)

# --- helpers ---------------------------------------------------------------------------------

REGISTER_LINES = (
    "REGISTER sip:example.com SIP/2.0",
    "Via: SIP/2.0/UDP 192.0.2.10:5060;rport;branch=z9hG4bK776asdhds",
    "Max-Forwards: 70",
    'From: "Alice" <sip:alice@example.com>;tag=1928301774',
    "To: <sip:alice@example.com>",
    "Call-ID: a84b4c76e66710@pc33.example.com",
    "CSeq: 314159 REGISTER",
    "Contact: <sip:alice@192.0.2.10:5060>;expires=3600",
    "Content-Length: 0",
)
REGISTER = message(*REGISTER_LINES)


def register_with(*replacements: tuple[str, str | None], extra: tuple[str, ...] = (), body: bytes = b"") -> bytes:
    """REGISTER with header lines replaced (by name prefix) or removed (None), plus extra lines."""
    lines = list(REGISTER_LINES)
    for prefix, new in replacements:
        index = next(i for i, line in enumerate(lines) if line.startswith(prefix))
        if new is None:
            del lines[index]
        else:
            lines[index] = new
    lines[-1:-1] = extra
    return message(*lines, body=body)


def request(data: bytes) -> Request:
    message = parse_message(data)
    assert isinstance(message, Request)
    return message


def response(data: bytes) -> Response:
    message = parse_message(data)
    assert isinstance(message, Response)
    return message


def rejected(data: bytes) -> SipError:
    with pytest.raises(SipError) as caught:
        parse_message(data)
    return caught.value


def test_the_rfc_sdp_body_is_150_octets() -> None:
    assert len(sdp()) == 150


# --- valid requests and responses ----------------------------------------------------------------


def test_parse_a_plain_register() -> None:
    req = request(REGISTER)
    assert (req.method, req.uri, req.version) == ("REGISTER", "sip:example.com", "SIP/2.0")
    assert req.call_id == "a84b4c76e66710@pc33.example.com"
    assert req.cseq == (314159, "REGISTER")
    assert req.get("Max-Forwards") == "70"
    assert req.body == b""
    via = req.top_via
    assert (via.transport, via.host, via.port, via.branch) == ("UDP", "192.0.2.10", 5060, "z9hG4bK776asdhds")
    assert via.params["rport"] is None
    sender = req.name_addr("From")
    assert display_name_text(sender.display_name) == "Alice"
    assert sender.tag == "1928301774"
    assert req.name_addr("To").tag is None
    contact = parse_name_addr(req.get("Contact") or "")
    assert (contact.uri.host, contact.uri.port, contact.params) == ("192.0.2.10", 5060, {"expires": "3600"})
    assert [name for name, _ in req.headers] == [
        "Via", "Max-Forwards", "From", "To", "Call-ID", "CSeq", "Contact", "Content-Length",
    ]


def test_parse_a_response() -> None:
    data = message(
        "SIP/2.0 200 OK",
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;received=192.0.2.99",
        "From: <sip:alice@example.com>;tag=1928301774",
        "To: <sip:alice@example.com>;tag=37GkEhwl6",
        "Call-ID: a84b4c76e66710@pc33.example.com",
        "CSeq: 314159 REGISTER",
        "Contact: <sip:alice@192.0.2.10>;expires=3600, <sip:alice@198.51.100.7>;expires=1200",
        "Content-Length: 0",
    )
    res = response(data)
    assert (res.status, res.reason, res.version) == (200, "OK", "SIP/2.0")
    assert len(res.get_all("Contact")) == 2
    assert res.name_addr("To").tag == "37GkEhwl6"


def test_multi_word_reason_phrase() -> None:
    res = response(message("SIP/2.0 401 Unauthorized Because We Say So", "CSeq: 1 REGISTER"))
    assert (res.status, res.reason) == (401, "Unauthorized Because We Say So")


def test_compact_header_forms_are_expanded() -> None:
    data = message(
        "INVITE sip:bob@example.com SIP/2.0",
        "v: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKcompact",
        "f: <sip:alice@example.com>;tag=1",
        "t: sip:bob@example.com",
        "i: compact@192.0.2.1",
        "CSeq: 1 INVITE",
        "m: <sip:alice@192.0.2.1>",
        "k: path, outbound",
        "c: application/sdp",
        "e: gzip",
        "s: lunch",
        "o: presence",
        "u: dialog",
        "x: 1800",
        "r: <sip:carol@example.com>",
        "l: 4",
        body=b"v=0\r\n",
    )
    req = request(data)
    assert [name for name, _ in req.headers] == [
        "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Supported", "Content-Type", "Content-Encoding",
        "Subject", "Event", "Allow-Events", "Session-Expires", "Refer-To", "Content-Length",
    ]
    assert req.call_id == "compact@192.0.2.1"
    assert req.get_all("Supported") == ["path", "outbound"]
    assert req.body == b"v=0\r"  # l: 4 frames the body


def test_header_names_are_case_insensitive_and_whitespace_before_colon_is_allowed() -> None:
    data = message(
        "REGISTER sip:example.com SIP/2.0",
        "VIA: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKcase",
        "fRoM : <sip:alice@example.com>;tag=1",
        "to\t: <sip:alice@example.com>",
        "cAlL-iD:case@192.0.2.10",
        "CSEQ: 1 REGISTER",
        "x-MY-header: kept",
        "content-LENGTH: 0",
    )
    req = request(data)
    assert req.has("Via") and req.has("From") and req.has("To")
    assert req.call_id == "case@192.0.2.10"
    assert req.get("X-My-Header") == "kept"
    assert req.get(canonical_name("X-MY-HEADER")) == "kept"


def test_contact_list_with_quoted_display_names_containing_commas() -> None:
    data = register_with(
        (
            "Contact",
            'Contact: "Doe, John" <sip:john@192.0.2.1>;q=0.7, <sip:john@192.0.2.2;transport=tcp>;q=0.3',
        ),
        extra=('m: "Quote \\"Me\\", Please" <sip:john@192.0.2.3>', "Contact: sip:john@192.0.2.4;expires=60"),
    )
    req = request(data)
    values = req.get_all("Contact")
    assert values == [
        '"Doe, John" <sip:john@192.0.2.1>;q=0.7',
        "<sip:john@192.0.2.2;transport=tcp>;q=0.3",
        '"Quote \\"Me\\", Please" <sip:john@192.0.2.3>',
        "sip:john@192.0.2.4;expires=60",
    ]
    contacts = [parse_name_addr(value) for value in values]
    assert display_name_text(contacts[0].display_name) == "Doe, John"
    assert contacts[1].uri.transport == "tcp"
    assert display_name_text(contacts[2].display_name) == 'Quote "Me", Please'
    assert contacts[3].params == {"expires": "60"}
    # get() is the first element of the first line.
    assert req.get("Contact") == values[0]


def test_via_lists_across_lines_and_commas_keep_their_order() -> None:
    data = register_with(
        ("Via", "Via: SIP/2.0/UDP proxy1.example.com;branch=z9hG4bK1, SIP/2.0/TCP proxy2.example.com:5070;branch=z9hG4bK2"),
        extra=("v: SIP/2.0/TLS ua.example.com;branch=z9hG4bK3",),
    )
    req = request(data)
    vias = [parse_via(value) for value in req.get_all("Via")]
    assert [(v.transport, v.host, v.port, v.branch) for v in vias] == [
        ("UDP", "proxy1.example.com", None, "z9hG4bK1"),
        ("TCP", "proxy2.example.com", 5070, "z9hG4bK2"),
        ("TLS", "ua.example.com", None, "z9hG4bK3"),
    ]
    assert req.top_via.host == "proxy1.example.com"


def test_headers_that_are_not_lists_are_never_split_on_commas() -> None:
    authorization = 'Digest username="alice", realm="example.com", nonce="abc", uri="sip:example.com", response="x"'
    req = request(register_with(extra=(
        "Date: Sat, 13 Nov 2010 23:29:00 GMT",
        "User-Agent: Softphone/1.0 (Linux, x86_64)",
        f"Authorization: {authorization}",
    )))
    assert req.get_all("Date") == ["Sat, 13 Nov 2010 23:29:00 GMT"]
    assert req.get("User-Agent") == "Softphone/1.0 (Linux, x86_64)"
    assert req.get_all("Authorization") == [authorization]


def test_quoted_display_name_with_escapes() -> None:
    req = request(register_with(("From", r'From: "Alice \"The Boss\" \\ Smith" <sip:alice@example.com>;tag=9')))
    sender = req.name_addr("From")
    assert display_name_text(sender.display_name) == 'Alice "The Boss" \\ Smith'
    assert sender.tag == "9"


def test_header_folding_joins_continuation_lines_with_one_space() -> None:
    data = register_with(extra=(
        "Subject: I know you're there,",
        "        pick up the phone",
        "\tand talk to me!",
        "Call-Info:",
        "   <http://wwww.example.com/alice/photo.jpg>",
        "X-Empty:",
    ))
    req = request(data)
    assert req.get("Subject") == "I know you're there, pick up the phone and talk to me!"
    # A value that begins on a continuation line has no leading whitespace.
    assert req.get("Call-Info") == "<http://wwww.example.com/alice/photo.jpg>"
    assert req.get("X-Empty") == ""


def test_folded_call_id_equals_the_unfolded_one() -> None:
    # The registrar compares Call-IDs (RFC 3261 10.3 step 7): folding must not change one.
    folded = request(register_with(("Call-ID", "Call-ID:\r\n a84b4c76e66710@pc33.example.com")))
    assert folded.call_id == request(REGISTER).call_id


def test_folding_before_any_header_is_rejected() -> None:
    error = rejected(b"REGISTER sip:example.com SIP/2.0\r\n continuation\r\n" + REGISTER.split(b"\r\n", 1)[1])
    assert error.status == 400
    assert "Folding" in error.reason


def test_name_addr_and_addr_spec_forms() -> None:
    req = request(register_with(
        ("From", "From: sip:alice@example.com;transport=tcp;tag=88sja8x"),
        ("To", "To: Alice <sip:alice@example.com;transport=tcp>;tag=abc"),
    ))
    sender = req.name_addr("From")
    # addr-spec: everything after ';' belongs to the header, not the URI.
    assert sender.uri.params == {}
    assert sender.params == {"transport": "tcp", "tag": "88sja8x"}
    to = req.name_addr("To")
    assert to.display_name == "Alice"
    assert to.uri.params == {"transport": "tcp"}
    assert to.params == {"tag": "abc"}


def test_request_uri_params() -> None:
    req = request(register_with(("REGISTER", "REGISTER sip:example.com;transport=tcp;lr SIP/2.0")))
    uri = parse_uri(req.uri)
    assert uri.host == "example.com"
    assert uri.params == {"transport": "tcp", "lr": None}


def test_request_uri_with_header_fields_is_400() -> None:
    # RFC 3261 19.1.1: header fields are not allowed in a Request-URI.
    error = rejected(register_with(("REGISTER", "REGISTER sip:example.com;transport=tcp;lr?X-Thing=1 SIP/2.0")))
    assert (error.status, error.reason) == (400, "Bad Request-URI: header fields (?...) not allowed")


def test_ipv6_references_in_request_uri_via_and_contact() -> None:
    req = request(register_with(
        ("REGISTER", "REGISTER sip:[2001:db8::1]:5060 SIP/2.0"),
        ("Via", "Via: SIP/2.0/UDP [2001:db8::10]:5062;branch=z9hG4bKv6"),
        ("Contact", "Contact: <sip:alice@[2001:db8::10]:5062;transport=udp>"),
    ))
    uri = parse_uri(req.uri)
    assert (uri.host, uri.port, uri.host_no_brackets) == ("[2001:db8::1]", 5060, "2001:db8::1")
    assert (req.top_via.host, req.top_via.port) == ("[2001:db8::10]", 5062)
    contact = req.name_addr("Contact")
    assert (contact.uri.host, contact.uri.port, contact.uri.transport) == ("[2001:db8::10]", 5062, "udp")


def test_content_length_frames_the_body() -> None:
    body = b"hello, registrar"
    exact = request(register_with(("Content-Length", f"Content-Length: {len(body)}"), body=body))
    assert exact.body == body
    # Bytes beyond Content-Length are not part of this message (RFC 3261 18.3).
    trailing = request(register_with(("Content-Length", "Content-Length: 5"), body=body))
    assert trailing.body == b"hello"
    zero = request(register_with(body=b"junk after the message"))
    assert zero.body == b""


def test_without_content_length_a_datagram_body_runs_to_the_end() -> None:
    # RFC 3261 18.3: Content-Length is optional over UDP; the body is the rest of the datagram.
    req = request(register_with(("Content-Length", None), body=b"v=0\r\n"))
    assert req.body == b"v=0\r\n"


def test_binary_body_is_kept_byte_for_byte() -> None:
    body = bytes(range(256))
    req = request(register_with(("Content-Length", f"Content-Length: {len(body)}"), body=body))
    assert req.body == body


@pytest.mark.parametrize("prefix", [b"\r\n", b"\r\n\r\n", b"\r\n\r\n\r\n"])
def test_crlfs_before_the_start_line_are_ignored(prefix: bytes) -> None:
    # RFC 3261 7.5: implementations SHOULD ignore CRLFs before the start line.
    req = request(prefix + REGISTER)
    assert req.method == "REGISTER"
    assert req.call_id == "a84b4c76e66710@pc33.example.com"


def test_a_keep_alive_datagram_alone_is_not_a_message() -> None:
    assert rejected(b"\r\n\r\n").status == 400


def _without_content_length(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(name, value) for name, value in headers if name != "Content-Length"]


@pytest.mark.parametrize(
    "data",
    [
        REGISTER,
        register_with(
            ("Contact", 'm: "Doe, John" <sip:john@192.0.2.1>;q=0.7, <sip:john@192.0.2.2>'),
            ("Content-Length", "l: 11"),
            extra=("Subject: folded\r\n  subject",),
            body=b"hello world",
        ),
        register_with(("REGISTER", "REGISTER sip:[2001:db8::1]:5060;transport=tcp SIP/2.0")),
    ],
)
def test_serialization_round_trip(data: bytes) -> None:
    original = request(data)
    again = request(original.to_bytes())
    assert (again.method, again.uri, again.version) == (original.method, original.uri, original.version)
    assert _without_content_length(again.headers) == _without_content_length(original.headers)
    assert again.get("Content-Length") == str(len(original.body))
    assert again.body == original.body
    # And it is a fixed point from there on.
    assert again.to_bytes() == original.to_bytes()


def test_response_round_trip() -> None:
    res = Response(headers=[("Via", "SIP/2.0/UDP a;branch=z9hG4bK1"), ("CSeq", "1 REGISTER")], status=486, reason="Busy Here")
    res.body = b"x"
    again = response(res.to_bytes())
    assert (again.status, again.reason, again.body) == (486, "Busy Here", b"x")
    assert _without_content_length(again.headers) == res.headers


def test_message_header_editing() -> None:
    req = request(REGISTER)
    req.add("Supported", "path")
    req.add("Supported", "outbound")
    assert req.get_all("Supported") == ["path", "outbound"]
    req.set("Supported", "gruu")
    assert req.get_all("Supported") == ["gruu"]
    req.remove("Supported")
    assert not req.has("Supported")
    assert req.get("Supported") is None


# --- limits and errors -----------------------------------------------------------------------


def test_oversized_message_is_513() -> None:
    padding = b"x" * (MAX_MESSAGE_SIZE + 1 - len(REGISTER))
    data = register_with(("Content-Length", f"Content-Length: {len(padding)}"), body=padding)
    assert len(data) > MAX_MESSAGE_SIZE
    error = rejected(data)
    assert error.status == 513
    assert "Too Large" in error.reason


def test_message_of_exactly_the_maximum_size_is_accepted() -> None:
    head = register_with(("Content-Length", "Content-Length: 00000"))
    body = b"y" * (MAX_MESSAGE_SIZE - len(head))
    data = register_with(("Content-Length", f"Content-Length: {len(body):05d}"), body=body)
    assert len(data) == MAX_MESSAGE_SIZE
    assert request(data).body == body


def test_too_many_headers() -> None:
    filler = tuple(f"X-Filler-{n}: {n}" for n in range(MAX_HEADERS))
    error = rejected(register_with(extra=filler))
    assert error.status == 400
    assert "Too Many Headers" in error.reason


def test_header_line_too_long() -> None:
    error = rejected(register_with(extra=("X-Long: " + "a" * MAX_HEADER_LINE,)))
    assert error.status == 400
    assert "Header Line Too Long" in error.reason


def test_a_long_header_line_within_the_limit_is_fine() -> None:
    value = "a" * (MAX_HEADER_LINE - len("X-Long: "))
    assert request(register_with(extra=(f"X-Long: {value}",))).get("X-Long") == value


@pytest.mark.parametrize("name", ["Via", "From", "To", "Call-ID", "CSeq"])
def test_missing_required_header(name: str) -> None:
    error = rejected(register_with((name, None)))
    assert error.status == 400
    assert error.reason == f"Missing {name} Header"


def test_max_forwards_may_be_missing() -> None:
    assert request(register_with(("Max-Forwards", None))).get("Max-Forwards") is None


def test_cseq_method_mismatch() -> None:
    error = rejected(register_with(("CSeq", "CSeq: 314159 INVITE")))
    assert error.status == 400
    assert "CSeq Method Does Not Match" in error.reason


@pytest.mark.parametrize("value", ["abc REGISTER", "REGISTER", "1.0 REGISTER", "\u00b2 REGISTER"])
def test_bad_cseq(value: str) -> None:
    error = rejected(register_with(("CSeq", f"CSeq: {value}")))
    assert error.status == 400
    assert error.reason.startswith("Bad CSeq")


@pytest.mark.parametrize(
    "value",
    ["abc", "-1", "+1", "1.5", "0x10", "", "1 2", "\u00b2", "\u0663"],  # superscript two, Arabic-Indic three
)
def test_bad_content_length(value: str) -> None:
    error = rejected(register_with(("Content-Length", f"Content-Length: {value}"), body=b"abc"))
    assert error.status == 400
    assert error.reason == "Bad Content-Length"


@pytest.mark.parametrize("value", ["4", "99999999999999999999", "9" * 5000])
def test_content_length_larger_than_the_message(value: str) -> None:
    error = rejected(register_with(("Content-Length", f"Content-Length: {value}"), body=b"abc"))
    assert error.status == 400
    assert error.reason == "Content-Length Larger Than Message"


@pytest.mark.parametrize(
    ("uri", "scheme"),
    [("http://example.com/", "http"), ("mailto:alice@example.com", "mailto"), ("urn:service:sos", "urn")],
)
def test_unsupported_request_uri_scheme_is_416(uri: str, scheme: str) -> None:
    error = rejected(register_with(("REGISTER", f"REGISTER {uri} SIP/2.0")))
    assert error.status == 416
    assert "Unsupported URI Scheme" in error.reason and scheme in error.reason


@pytest.mark.parametrize("uri", ["example.com", ":example.com", "<sip:example.com>", "s%69p:example.com"])
def test_request_uri_without_a_valid_scheme_is_400(uri: str) -> None:
    error = rejected(register_with(("REGISTER", f"REGISTER {uri} SIP/2.0")))
    assert error.status == 400
    assert "Request-URI" in error.reason


@pytest.mark.parametrize("version", ["SIP/3.0", "SIP/1.0", "SIP/2.1"])
def test_other_sip_versions_are_505(version: str) -> None:
    error = rejected(register_with(("REGISTER", f"REGISTER sip:example.com {version}")))
    assert error.status == 505
    assert "Version Not Supported" in error.reason


def test_lower_case_sip_version_is_accepted() -> None:
    # RFC 3261 7.1: the version string is case-insensitive.
    assert request(register_with(("REGISTER", "REGISTER sip:example.com sip/2.0"))).method == "REGISTER"


def test_response_with_other_version_is_505() -> None:
    assert rejected(message("SIP/3.0 200 OK", "CSeq: 1 REGISTER")).status == 505


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "Incomplete Message"),
        (b"hello world", "Incomplete Message"),
        (REGISTER[:-4], "Incomplete Message"),
        (b"\x00\xff\xfe garbage \x80\r\n\r\n", "Bad Request-Line: control character 0x00"),
        (b"\xff\xfe garbage \x80\r\n\r\n", "Bad Method"),
        (b"\x00\xff\xfe\x80\r\n\r\n", "Bad Request-Line"),
        (b"REGISTER\r\n\r\n", "Bad Request-Line"),
        (b"REGISTER sip:example.com\r\n\r\n", "Bad Request-Line"),
        (b"HTTP/1.1 200 OK\r\n\r\n", "Bad Method"),  # not a SIP status line, and '/' is no token char
        (b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", "Bad Request-Line: no SIP version"),
        (b"REG(ISTER sip:example.com SIP/2.0\r\n\r\n", "Bad Method"),
        (b"SIP/2.0 2000 OK\r\n\r\n", "Bad Status-Line"),
        (b"SIP/2.0 099 Low\r\n\r\n", "Bad Status-Line"),
        (b"SIP/2.0 700 High\r\n\r\n", "Bad Status-Line"),
        (b"SIP/2.0 OK\r\n\r\n", "Bad Status-Line"),
        ("SIP/2.0 \u00b2\u00b2\u00b2 Digits?\r\n\r\n".encode(), "Bad Status-Line"),
    ],
)
def test_garbage_is_400_naming_the_problem(data: bytes, reason: str) -> None:
    error = rejected(data)
    assert error.status == 400
    assert error.reason.startswith(reason)


def test_header_line_without_colon() -> None:
    error = rejected(register_with(extra=("This is not a header",)))
    assert error.status == 400
    assert error.reason.startswith("Bad Header Line")


@pytest.mark.parametrize("line", [": no name", "Bad Name: value", "X-Ünicode: value", "X(Y): value"])
def test_bad_header_name(line: str) -> None:
    error = rejected(register_with(extra=(line,)))
    assert error.status == 400
    assert error.reason.startswith("Bad Header Name")


@pytest.mark.parametrize(
    "line",
    ['Contact: "Unterminated <sip:alice@192.0.2.10>', 'Via: SIP/2.0/UDP 192.0.2.3;x="open;branch=z9hG4bKq'],
)
def test_list_header_with_an_unterminated_quote_is_rejected_at_parse_time(line: str) -> None:
    # Otherwise get()/get_all() on it would raise a bare ValueError long after parsing.
    error = rejected(register_with(extra=(line,)))
    assert error.status == 400
    assert "unterminated quoted string" in error.reason
    assert error.reason.startswith(f"Bad {line.split(':')[0]}")


def test_non_utf8_header_bytes_survive_a_round_trip() -> None:
    data = REGISTER.replace(b"Content-Length: 0", b"X-Latin1: caf\xe9\r\nContent-Length: 0")
    req = request(data)
    assert req.get("X-Latin1") == "caf\udce9"  # kept as surrogate escapes, not lost
    assert req.to_bytes().count(b"X-Latin1: caf\xe9\r\n") == 1


# --- RFC 4475 3.1.1: valid messages ------------------------------------------------------------


def test_rfc4475_wsinv_short_tortuous_invite() -> None:
    req = request(WSINV)
    assert req.method == "INVITE"
    assert req.uri == "sip:vivekg@chair-dnrc.example.com;unknownparam"
    assert parse_uri(req.uri).params == {"unknownparam": None}
    # Folding and LWS around ':' ';' '=' and inside values.
    assert req.get("To") == "sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n"
    to = req.name_addr("To")
    assert (to.uri.aor, to.tag, to.display_name) == ("vivekg@chair-dnrc.example.com", "1918181833n", None)
    sender = req.name_addr("From")
    assert display_name_text(sender.display_name) == 'J Rosenberg \\"'
    assert (sender.uri.aor, sender.tag) == ("jdrosen@example.com", "98asjd8")
    assert int(req.get("Max-Forwards") or "") == 68  # leading zeros
    assert req.cseq == (9, "INVITE")
    assert req.call_id == "wsinv.ndaksdj@192.0.2.1"
    # A mix of Via lines and a comma list, short and long forms, in order.
    vias = [parse_via(value) for value in req.get_all("Via")]
    assert [(v.protocol, v.transport, v.host, v.branch) for v in vias] == [
        ("SIP/2.0", "UDP", "192.0.2.2", "390skdjuw"),
        ("SIP/2.0", "TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("SIP/2.0", "UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert req.get("Subject") == ""  # an empty Subject
    assert req.get(canonical_name("NewFangledHeader")) == "newfangled value continued newfangled value"
    # Unknown header: taken whole, never parsed as params or a list.
    assert req.get_all(canonical_name("UnknownHeaderWithUnusualValue")) == [";;,,;;,;"]
    route = parse_name_addr(req.get("Route") or "")
    assert route.uri.params == {"lr": None, "unknownwith": "value", "unknown-no-value": None}
    (contact_value,) = req.get_all("Contact")
    contact = parse_name_addr(contact_value)
    assert display_name_text(contact.display_name) == 'Quoted string ""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert req.get("Content-Type") == "application/sdp"
    assert len(req.body) == 150 and req.body.startswith(b"v=0\r\n")


def test_rfc4475_intmeth_wide_range_of_valid_characters() -> None:
    req = request(INTMETH)
    method = "!interesting-Method0123456789_*+`.%indeed'~"
    # An unknown method; '%' is not an escape in a method.
    assert req.method == method and method not in KNOWN_METHODS
    assert req.cseq == (139122385, method)
    uri = parse_uri(req.uri)
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert (uri.host, uri.headers) == ("example.com", "")
    assert req.top_via.branch == "z9hG4bK-.!%66*_+`'~"
    to = req.name_addr("To")
    # quoted-pairs, including a quoted NUL
    assert display_name_text(to.display_name) == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert to.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    sender = req.name_addr("From")
    assert sender.display_name == "token1~` token2'+_ token3*%!.-"
    assert sender.params == {"fromparam''~+*_!.-%": "работающий", "tag": "_token~1'+`*%!-."}
    # In a Call-ID, '%' is no escape and quotes and brackets need not balance.
    assert req.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert req.get(canonical_name("extensionHeader-!.%*+_`'~")) == "\ufeff大停電"
    assert req.get("Max-Forwards") == "255"


def test_rfc4475_esc01_valid_use_of_escapes() -> None:
    req = request(ESC01)
    uri = parse_uri(req.uri)
    assert (uri.user, uri.host) == ("sips:user@example.com", "example.net")
    assert req.name_addr("To").uri.aor == "user@example.com"
    assert req.name_addr("From").uri.user == "I have spaces"
    assert req.call_id == "esc01.239409asdfakjkn23onasd0-3234"
    assert req.get("Content-Type") == "application/sdp"
    contact = req.name_addr("Contact")
    assert contact.uri.aor == "caller@host5.example.net"
    # The URI is kept as sent, so it can be echoed back byte for byte.
    assert contact.uri_text == "sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31"
    # The user still round-trips through serialization after decoding.
    assert parse_uri(str(uri)) == uri
    assert req.body == sdp()


def test_rfc4475_esc02_percent_that_is_not_an_escape() -> None:
    req = request(ESC02)
    # RE%47IST%45R is an unknown method, not REGISTER.
    assert req.method == "RE%47IST%45R"
    assert req.method != "REGISTER" and req.method not in KNOWN_METHODS
    assert req.cseq == (29344, "RE%47IST%45R")
    assert display_name_text(req.name_addr("To").display_name) == "%Z%45"
    assert req.top_via.branch == "z9hG4bK209%fzsnel234"
    # C%6Fntact is an extension header, not a third Contact.
    assert [parse_name_addr(v).uri.user for v in req.get_all("Contact")] == ["alias1", "alias3"]
    assert req.get(canonical_name("C%6Fntact")) == "<sip:alias2@host2.example.com>"


def test_rfc4475_escnull_escaped_nulls_in_uris() -> None:
    req = request(ESCNULL)
    to = req.name_addr("To")
    assert to.uri.user == "null-\x00-null"
    assert to.uri.aor == "null-\x00-null@example.com"
    assert req.name_addr("From").tag == "839923423"
    users = [parse_name_addr(v).uri.user for v in req.get_all("Contact")]
    assert users == ["\x00", "\x00\x00"]  # two different contacts, not truncated strings
    assert req.get("Content-Length") == "0"


def test_rfc4475_lwsdisp_no_lws_between_display_name_and_angle_bracket() -> None:
    sender = request(LWSDISP).name_addr("From")
    assert (sender.display_name, sender.uri.aor, sender.tag) == ("caller", "caller@example.com", "323")


def test_rfc4475_longreq_long_values_in_header_fields() -> None:
    req = request(LONGREQ)
    to = req.name_addr("To")
    assert display_name_text(to.display_name) == "I have a user name of " + "extreme" * 10 + " proportion"
    assert to.uri.port == 6000
    assert to.uri.params == {
        "unknownparam1": "very" + "long" * 20 + "value",
        "longparam" + "name" * 25: "shortvalue",
        "very" + "long" * 25 + "parameternamewithnovalue": None,
    }
    sender = req.name_addr("From")
    assert sender.uri.user == "amazinglylongcallername" * 5
    assert sender.tag == "12" + "982" * 50 + "424"
    assert sender.params["unknownvalueless" + "paramname" * 10] is None
    assert req.call_id == "longreq.one" + "really" * 20 + "longcallid"
    vias = [parse_via(value) for value in req.get_all("Via")]
    assert len(vias) == 34
    assert [v.host for v in vias[:33]] == [f"sip{n}.example.com" for n in range(33, 0, -1)]
    assert vias[-1].params == {"received": "192.0.2.5", "branch": "very" + "long" * 50 + "branchvalue"}
    assert req.top_via.host == "sip33.example.com"
    assert req.name_addr("Contact").uri.user == "amazinglylongcallername" * 5
    assert req.body == sdp()


# dblreq's two messages for a stream: its REGISTER, and the INVITE-like octets after it made a message of
# their own (the empty lines around them taken off, their Content-Length made their body's: the RFC's 150 is not).
DBLREQ_REGISTER = DBLREQ[: DBLREQ.index(b"\r\n\r\n") + 4]
DBLREQ_INVITE = DBLREQ[len(DBLREQ_REGISTER) + 2 : -2].replace(b"Content-Length: 150", b"Content-Length: 153")


def test_rfc4475_dblreq_only_the_first_message_of_a_datagram_is_parsed() -> None:
    req = request(DBLREQ)
    assert req.method == "REGISTER"
    assert req.call_id == "dblreq.0ha0isndaksdj99sdfafnl3lk233412"
    assert req.body == b""  # the INVITE is not the REGISTER's body
    assert req.name_addr("Contact").uri.aor == "j.user@host.example.com"
    # On a stream the REGISTER and the INVITE made whole are two messages.
    framer = StreamFramer()
    assert framer.feed(DBLREQ_REGISTER + DBLREQ_INVITE) == [DBLREQ_REGISTER, DBLREQ_INVITE]


def test_rfc4475_semiuri_semicolon_separated_parameters_in_uri_user_part() -> None:
    req = request(SEMIURI)
    uri = parse_uri(req.uri)
    # The user is "user;par=u@example.net" and the URI itself has no parameters.
    assert (uri.user, uri.host, uri.params) == ("user;par=u@example.net", "example.com", {})
    assert req.get_all("Accept") == [
        "application/sdp", "application/pkcs7-mime", "multipart/mixed",
        "multipart/signed", "message/sip", "message/sipfrag",
    ]


def test_rfc4475_transports_unusual_and_unknown_transport_types() -> None:
    req = request(TRANSPORTS)
    assert req.call_id == "transports.kijh4akdnaqjkwendsasfdj"
    vias = [parse_via(value) for value in req.get_all("Via")]
    assert [(v.transport, v.host) for v in vias] == [
        ("UDP", "t1.example.com"), ("SCTP", "t2.example.com"), ("TLS", "t3.example.com"),
        ("UNKNOWN", "t4.example.com"), ("TCP", "t5.example.com"),
    ]


def test_rfc4475_mpart01_multipart_body_with_binary_part() -> None:
    req = request(MPART01)
    assert req.body == MPART01_BODY
    assert req.get("Content-Type") == "multipart/mixed;boundary=7a9cbec02ceef655"
    assert req.top_via.params == {"branch": "z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543-", "rport": None}
    assert request(req.to_bytes()).body == MPART01_BODY


UNREASON_BODY = sdp("192.0.2.198")


def test_rfc4475_unreason_unusual_reason_phrase() -> None:
    assert len(UNREASON_BODY) == 154
    res = response(UNREASON)
    assert res.status == 200
    assert res.reason == "= 2**3 * 5**2 но сто девяносто девять - простое"
    assert res.body == UNREASON_BODY
    assert response(res.to_bytes()).reason == res.reason


def test_rfc4475_noreason_empty_reason_phrase() -> None:
    res = response(NOREASON)
    assert (res.status, res.reason) == (100, "")


def test_rfc4475_regescrt_escaped_headers_in_a_bracketed_contact_are_valid() -> None:
    req = request(REGESCRT)
    contact = req.name_addr("Contact")
    assert contact.uri.aor == "user@example.com"
    assert contact.uri.headers == "Route=%3Csip:sip.example.com%3E"


# --- RFC 4475 3.1.2: invalid messages ----------------------------------------------------------


def test_rfc4475_badinv01_extraneous_header_field_separators() -> None:
    req = request(BADINV01)
    # The framing is fine; the Via and Contact values are not, and reading them says so.
    with pytest.raises(SipError) as via_error:
        req.top_via
    assert (via_error.value.status, via_error.value.reason) == (400, "Bad Via: empty parameter")
    with pytest.raises(SipError) as contact_error:
        req.name_addr("Contact")
    assert (contact_error.value.status, contact_error.value.reason) == (400, "Bad Contact: empty parameter")


def test_rfc4475_clerr_content_length_larger_than_message() -> None:
    error = rejected(CLERR)
    assert (error.status, error.reason) == (400, "Content-Length Larger Than Message")
    # Over a stream it is simply incomplete: the framer waits for the rest.
    assert StreamFramer().feed(CLERR) == []
    # And the request can still be answered.
    salvaged = salvage_request(CLERR)
    assert salvaged is not None and salvaged.call_id == "clerr.0ha0isndaksdjweiafasdk3"


def test_rfc4475_ncl_negative_content_length() -> None:
    error = rejected(NCL)
    assert (error.status, error.reason) == (400, "Bad Content-Length")
    with pytest.raises(SipError) as stream_error:
        StreamFramer().feed(NCL)
    assert (stream_error.value.status, stream_error.value.reason) == (400, "Bad Content-Length")


def test_rfc4475_scalar02_overlarge_values_in_request_scalar_fields() -> None:
    error = rejected(SCALAR02)
    assert error.status == 400
    assert error.reason == "Bad CSeq: CSeq number out of range"
    # With a sane CSeq the expiry values would be treated as "very large", not crash.
    req = request(SCALAR02.replace(b"36893488147419103232", b"1"))
    assert parse_delta_seconds(req.get("Expires") or "") == 2**32 - 1
    assert parse_delta_seconds(req.name_addr("Contact").params["expires"] or "") == 2**32 - 1


def test_huge_content_length_on_a_stream_is_513() -> None:
    data = register_with(("Content-Length", "Content-Length: 99999999999999999999999"))
    with pytest.raises(SipError) as caught:
        StreamFramer().feed(data)
    assert caught.value.status == 513


def test_rfc4475_quotbal_unterminated_quoted_string_in_display_name() -> None:
    req = request(QUOTBAL)
    with pytest.raises(SipError) as caught:
        req.name_addr("To")
    assert caught.value.status == 400
    assert caught.value.reason == "Bad To: unterminated quoted string"


def _invite(start_line: str) -> bytes:
    return message(
        start_line,
        "To: sip:user@example.com",
        "From: sip:caller@example.net;tag=39291",
        "Max-Forwards: 23",
        "Call-ID: torture.1@192.0.2.5",
        "CSeq: 1 INVITE",
        "Via: SIP/2.0/UDP 192.0.2.5;branch=z9hG4bKtorture",
        "Contact: <sip:caller@host5.example.net>",
        "Content-Type: application/sdp",
        "Content-Length: 150",
        body=sdp("192.0.2.5"),
    )


def test_rfc4475_ltgtruri_request_uri_enclosed_in_angle_brackets_is_400_not_416() -> None:
    error = rejected(LTGTRURI)
    assert (error.status, error.reason) == (400, "Bad Request-URI: enclosed in <>")


@pytest.mark.parametrize(
    ("start_line", "problem"),
    [
        ("INVITE sip:user@example.com; lr SIP/2.0", "whitespace in Request-URI"),  # lwsruri
        ("INVITE  sip:user@example.com  SIP/2.0", "more than one SP between elements"),  # lwsstart
        ("INVITE sip:user@example.com SIP/2.0  ", "SP after SIP-Version"),  # trws
        (" INVITE sip:user@example.com SIP/2.0", "SP before Method"),
        ("INVITE\tsip:user@example.com\tSIP/2.0", "HTAB between elements, not SP"),
        ("INVITE sip:user@example.com", "not Method SP Request-URI SP SIP-Version"),
    ],
)
def test_rfc4475_lwsruri_lwsstart_trws_malformed_request_lines(start_line: str, problem: str) -> None:
    error = rejected(_invite(start_line))
    assert (error.status, error.reason) == (400, f"Bad Request-Line: {problem}")


def test_rfc4475_escruri_escaped_headers_in_request_uri() -> None:
    # RFC 4475 allows accepting this if the headers then reach no forwarded request;
    # rejecting it is the answer it names first.
    error = rejected(ESCRURI)
    assert (error.status, error.reason) == (400, "Bad Request-URI: header fields (?...) not allowed")
    # A '?' in the user part is no header field (RFC 4475 intmeth).
    assert request(_invite("INVITE sip:crazy?,/;;*@example.com SIP/2.0")).uri == "sip:crazy?,/;;*@example.com"


def test_rfc4475_baddate_non_gmt_date_is_kept_verbatim() -> None:
    req = request(BADDATE)
    assert req.get_all("Date") == ["Fri, 01 Jan 2010 16:00:00 EST"]


def test_rfc4475_regbadct_unbracketed_contact_with_escaped_headers() -> None:
    # The message frames fine; its Contact must be rejected (400) when read.
    req = request(REGBADCT)
    (value,) = req.get_all("Contact")
    with pytest.raises(ValueError, match="enclosed in <>"):
        parse_name_addr(value)
    with pytest.raises(SipError) as caught:
        req.name_addr("Contact")
    assert caught.value.status == 400
    assert caught.value.reason.startswith("Bad Contact: addr-spec contains '?'")


def test_rfc4475_badaspec_spaces_inside_angle_brackets_are_tolerated() -> None:
    req = request(BADASPEC)
    # RFC 4475 3.1.2.14: rejecting is reasonable, ignoring the spaces is allowed; we ignore them.
    assert req.name_addr("To").uri.aor == "t.watson@example.org"
    assert display_name_text(req.name_addr("From").display_name) == "Bell, Alexander"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("Bell, Alexander <sip:a.g.bell@example.com>;tag=43", "Bad From: unquoted display name with ',': quote it"),
        ("A. Bell; Jr <sip:a.g.bell@example.com>;tag=43", "Bad From: unquoted display name with ';': quote it"),
        ('Joe "the" Smith <sip:joe@example.com>;tag=43', "Bad From: unquoted display name with '\"': quote it"),
    ],
)
def test_rfc4475_baddn_unquoted_display_name_with_non_token_characters(value: str, reason: str) -> None:
    # RFC 4475 3.1.2.15: a proxy may not pass the error on, and we forward From as it came.
    req = request(register_with(("From", f"From: {value}")))
    with pytest.raises(SipError) as caught:
        req.name_addr("From")
    assert (caught.value.status, caught.value.reason) == (400, reason)


@pytest.mark.parametrize(
    "display_name", ["A. Bell", "token1~` token2'+_ token3*%!.-", "Jos\u00e9 M\u00fcller", "\u5927\u505c\u96fb", "1001"]
)
def test_unquoted_display_names_of_tokens_or_beyond_ascii_are_accepted(display_name: str) -> None:
    sender = parse_name_addr(f"{display_name} <sip:a@example.com>;tag=1")
    assert (sender.display_name, sender.uri.aor) == (display_name, "a@example.com")


def test_rfc4475_badbranch_magic_cookie_without_transaction_identifier_is_400() -> None:
    req = request(register_with(("Via", "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK")))
    with pytest.raises(SipError) as caught:
        req.top_via
    assert (caught.value.status, caught.value.reason) == (
        400, "Bad Via: branch z9hG4bK without a transaction identifier"
    )
    assert request(register_with(("Via", "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx"))).top_via.branch == "z9hG4bKx"


def test_rfc4475_badvers_unknown_protocol_version_is_505() -> None:
    error = rejected(BADVERS)
    assert error.status == 505
    assert "Version Not Supported" in error.reason
    # 505 can be answered: the headers a response needs are salvaged.
    salvaged = salvage_request(BADVERS)
    assert salvaged is not None and salvaged.call_id == "badvers.31417@c.example.com"


def test_rfc4475_mismatch01_cseq_method_differs_from_request_method() -> None:
    error = rejected(MISMATCH01)
    assert (error.status, error.reason) == (400, "CSeq Method Does Not Match Request Method")


def test_rfc4475_mismatch02_unknown_method_with_another_cseq_method_is_501() -> None:
    # RFC 4475 3.1.2.18: 400 would do; 501 is what it recommends, at proxies above all.
    error = rejected(MISMATCH02)
    assert (error.status, error.reason) == (501, "Not Implemented: NEWMETHOD")


@pytest.mark.parametrize(
    ("data", "scheme"),
    [pytest.param(UNKSCM, "nobodyKnowsThisScheme", id="unkscm"), pytest.param(NOVELSC, "soap.beep", id="novelsc")],
)
def test_rfc4475_unkscm_novelsc_unknown_request_uri_scheme_is_416(data: bytes, scheme: str) -> None:
    error = rejected(data)
    assert (error.status, error.reason) == (416, f"Unsupported URI Scheme: {scheme}")


def test_rfc4475_bigcode_response_code_out_of_range() -> None:
    error = rejected(BIGCODE)
    assert (error.status, error.reason) == (400, "Bad Status-Line")


def test_rfc4475_insuf_missing_required_header_fields() -> None:
    error = rejected(INSUF)
    assert (error.status, error.reason) == (400, "Missing From Header")
    assert salvage_request(INSUF) is None  # nothing to build a response from


# --- stream framing -------------------------------------------------------------------------------


def test_crlf_ping_wants_a_pong() -> None:
    framer = StreamFramer()
    (event,) = framer.feed(b"\r\n\r\n")
    assert isinstance(event, KeepAlive) and event.wants_pong


def test_single_crlf_is_a_pong_once_it_cannot_be_a_ping() -> None:
    framer = StreamFramer()
    # "\r\n" alone may be the first half of a "\r\n\r\n" ping split across segments.
    assert framer.feed(b"\r\n") == []
    events = framer.feed(REGISTER)
    assert len(events) == 2
    assert isinstance(events[0], KeepAlive) and not events[0].wants_pong
    assert events[1] == REGISTER


def test_ping_split_across_chunks() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r") == []
    assert framer.feed(b"\n\r") == []
    (event,) = framer.feed(b"\n")
    assert isinstance(event, KeepAlive) and event.wants_pong


def test_the_framer_tells_a_message_begun_from_a_pending_keep_alive() -> None:
    framer = StreamFramer()
    assert not framer.in_message
    framer.feed(b"\r\n")
    assert not framer.in_message  # maybe half a ping
    framer.feed(b"\r\nREG")
    assert framer.in_message
    framer.feed(REGISTER[3:-2])
    assert framer.in_message  # all but the blank line's last CRLF
    framer.feed(REGISTER[-2:] + b"\r")
    assert not framer.in_message


def test_two_messages_in_one_chunk() -> None:
    body = b"v=0\r\n"
    second = register_with(("Content-Length", f"Content-Length: {len(body)}"), ("CSeq", "CSeq: 314160 REGISTER"), body=body)
    assert StreamFramer().feed(REGISTER + second) == [REGISTER, second]


def test_message_split_across_chunks() -> None:
    body = b"hello"
    data = register_with(("Content-Length", f"l: {len(body)}"), body=body)
    framer = StreamFramer()
    assert framer.feed(data[:10]) == []
    assert framer.feed(data[10:-3]) == []
    assert framer.feed(data[-3:]) == [data]
    assert request(data).body == body


def test_every_split_point_yields_exactly_the_message() -> None:
    body = b"a body\r\n\r\nwith an empty line"
    data = register_with(("Content-Length", f"Content-Length  :  {len(body)}"), body=body)
    for cut in range(len(data) + 1):
        framer = StreamFramer()
        events = framer.feed(data[:cut]) + framer.feed(data[cut:])
        assert events == [data], cut
    framer = StreamFramer()
    byte_by_byte = [event for i in range(len(data)) for event in framer.feed(data[i : i + 1])]
    assert byte_by_byte == [data]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(WSINV)), max_size=12))
def test_any_chunking_yields_exactly_the_messages(cuts: list[int]) -> None:
    stream = b"\r\n\r\n" + WSINV + REGISTER
    points = sorted(set(cuts))
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)])]
    framer = StreamFramer()
    events = [event for chunk in chunks for event in framer.feed(chunk)]
    assert len(events) == 3
    assert isinstance(events[0], KeepAlive) and events[0].wants_pong
    assert events[1:] == [WSINV, REGISTER]


def test_missing_content_length_on_a_stream_means_zero() -> None:
    data = register_with(("Content-Length", None))
    assert StreamFramer().feed(data + REGISTER) == [data, REGISTER]


def test_compact_content_length_on_a_stream() -> None:
    body = b"12345"
    data = register_with(("Content-Length", f"l:{len(body)}"), body=body)
    message, ping = StreamFramer().feed(data + b"\r\n\r\n")
    assert message == data
    assert isinstance(ping, KeepAlive) and ping.wants_pong


def test_stream_without_end_of_headers_beyond_the_limit_is_513() -> None:
    framer = StreamFramer(max_message_size=1000)
    assert framer.feed(b"REGISTER sip:example.com SIP/2.0\r\n") == []
    with pytest.raises(SipError) as caught:
        framer.feed(b"X-Filler: " + b"a" * 1000)
    assert caught.value.status == 513


def test_stream_message_larger_than_the_limit_is_513() -> None:
    data = register_with(("Content-Length", "Content-Length: 2000"))
    with pytest.raises(SipError) as caught:
        StreamFramer(max_message_size=1000).feed(data)
    assert caught.value.status == 513


@pytest.mark.parametrize("value", [b"abc", b"-5", b"\xc2\xb2", b"9" * 5000])
def test_stream_with_bad_content_length(value: bytes) -> None:
    data = REGISTER.replace(b"Content-Length: 0", b"Content-Length: " + value)
    with pytest.raises(SipError) as caught:
        StreamFramer().feed(data)
    assert caught.value.status in (400, 513)


# --- answering --------------------------------------------------------------------------------------


def test_make_response_copies_the_transaction_headers_in_order() -> None:
    data = register_with(
        ("Via", "Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK1, SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK2"),
        extra=("Via: SIP/2.0/TCP 192.0.2.11;branch=z9hG4bK3", "User-Agent: phone", "Record-Route: <sip:p.example.com;lr>"),
    )
    req = request(data)
    res = make_response(req, 200, "OK", to_tag="abc123")
    assert (res.status, res.reason, res.body) == (200, "OK", b"")
    assert res.headers == [
        ("Via", "SIP/2.0/UDP proxy.example.com;branch=z9hG4bK1, SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK2"),
        ("From", '"Alice" <sip:alice@example.com>;tag=1928301774'),
        ("To", "<sip:alice@example.com>;tag=abc123"),
        ("Call-ID", "a84b4c76e66710@pc33.example.com"),
        ("CSeq", "314159 REGISTER"),
        ("Via", "SIP/2.0/TCP 192.0.2.11;branch=z9hG4bK3"),
    ]
    parsed = response(res.to_bytes())
    assert parsed.name_addr("To").tag == "abc123"
    assert parsed.get_all("Via") == req.get_all("Via")


@pytest.mark.parametrize(
    "to",
    [
        "<sip:alice@example.com>;tag=existing",
        "<sip:alice@example.com>;TAG=existing",
        "sip:alice@example.com ;   tag    = existing",
        "<sip:alice@example.com>;\ttag=existing",
        "<sip:alice@example.com> ;expires=5; tag=existing",
    ],
)
def test_make_response_keeps_an_existing_to_tag(to: str) -> None:
    req = request(register_with(("To", f"To: {to}")))
    res = make_response(req, 200, "OK", to_tag="new")
    assert res.get("To") == to
    assert res.name_addr("To").params.get("tag") == "existing"


def test_a_tag_parameter_of_the_to_uri_is_not_a_to_tag() -> None:
    req = request(register_with(("To", "To: <sip:alice@example.com;tag=uri-param>")))
    res = make_response(req, 200, "OK", to_tag="new")
    assert res.name_addr("To").tag == "new"


def test_no_to_tag_on_100_trying_and_a_stable_derived_tag_otherwise() -> None:
    req = request(REGISTER)
    assert make_response(req, 100, "Trying", to_tag="x").get("To") == "<sip:alice@example.com>"
    derived = make_response(req, 200, "OK").get("To")
    assert re.fullmatch(r"<sip:alice@example\.com>;tag=[0-9a-f]{8}", derived)
    # A retransmission (same Via) gets the same tag; another transaction another one.
    assert make_response(request(REGISTER), 401, "Unauthorized").get("To") == derived
    other = request(register_with(("Via:", "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKother")))
    assert make_response(other, 200, "OK").get("To") != derived


def test_make_response_to_a_salvaged_request() -> None:
    data = BADVERS
    salvaged = salvage_request(data)
    assert salvaged is not None
    res = make_response(salvaged, 505, "Version Not Supported", to_tag="t")
    assert res.get("Call-ID") == "badvers.31417@c.example.com"
    assert res.get("CSeq") == "1 OPTIONS"
    assert res.name_addr("To").tag == "t"


def test_a_reason_phrase_we_send_is_printable_and_bounded() -> None:
    reason = "Version Not Supported: SIP/2.0\rX-Injected:y\x00\x7f\udcff" + "x" * 500
    sent = make_response(request(REGISTER), 505, reason)
    for phrase in (SipError(505, reason).reason, sent.reason):
        assert phrase.startswith("Version Not Supported: SIP/2.0X-Injected:yxxx")
        assert phrase.isprintable() and MAX_REASON_PHRASE - 4 <= len(phrase) <= MAX_REASON_PHRASE
    assert sent.to_bytes().split(b"\r\n")[0] == f"SIP/2.0 505 {sent.reason}".encode()


def test_a_salvaged_via_with_an_open_quoted_string_is_echoed_up_to_it() -> None:
    data = register_with(("Via", 'Via: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKq;x="abc'))
    assert rejected(data).reason == "Bad Via: unterminated quoted string"
    salvaged = salvage_request(data)
    assert salvaged is not None
    sent = response(make_response(salvaged, 400, "Bad Via: unterminated quoted string").to_bytes())
    assert sent.top_via.branch == "z9hG4bKq"  # what the UA matches the answer by survives
    assert sent.get("Via") == "SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKq;x="


def test_a_salvaged_request_keeps_one_from_to_call_id_and_cseq_and_every_via() -> None:
    data = register_with(
        ("REGISTER", "REGISTER sip:example.com SIP/3.0"),
        extra=("From: <sip:mallory@example.com>;tag=2", "Via: SIP/2.0/UDP 192.0.2.99;branch=z9hG4bK2"),
    )
    salvaged = salvage_request(data)
    assert salvaged is not None
    assert [name for name, _ in salvaged.headers] == ["Via", "From", "To", "Call-ID", "CSeq", "Via"]
    assert salvaged.get("From") == '"Alice" <sip:alice@example.com>;tag=1928301774'
    response(make_response(salvaged, 505, "Version Not Supported").to_bytes())  # one From: it parses


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (REGISTER.replace(b"SIP/2.0\r\nVia", b"SIP/2.0\rX: y\r\nVia"), "Bad Request-Line: control character 0x0D"),
        (REGISTER.replace(b"REGISTER sip:", b"REGISTER\x00 sip:"), "Bad Request-Line: control character 0x00"),
        (REGISTER.replace(b"Call-ID: a84b", b"Call-ID: \x1ba84b"), "Bad Call-ID: control character 0x1B"),
        (REGISTER.replace(b"Max-Forwards: 70", b"Max-Forwards: 7\n0"), "Bad Max-Forwards: control character 0x0A"),
        (REGISTER.replace(b'"Alice"', b'"Ali\x7fce"'), "Bad From: control character 0x7F"),  # unescaped in quotes
        (REGISTER.replace(b'"Alice"', b'"Ali\\\rce"'), "Bad From: control character 0x0D"),  # CR never escapes
        (REGISTER.replace(b"Content-Length: 0", b"X-\x01: 0"), "Bad Header Line: control character 0x01"),
        (REGISTER.replace(b"Max-Forwards: 70", b"Max-Forwards:\r\n 7\x000"), "Bad Max-Forwards: control character 0x00"),
        (message("SIP/2.0 200 O\rK", "CSeq: 1 REGISTER"), "Bad Status-Line: control character 0x0D"),
    ],
    ids=["cr-in-version", "nul-in-request-line", "esc-in-call-id", "bare-lf", "del-in-quotes", "escaped-cr",
         "in-header-name", "in-continuation", "cr-in-reason"],
)
def test_control_characters_a_head_may_not_carry_are_400_naming_where(data: bytes, reason: str) -> None:
    error = rejected(data)
    assert (error.status, error.reason) == (400, reason)


def _first_disallowed_control(line: str) -> int:
    """RFC 3261 25.1 read character by character: a control but HTAB is allowed only as a quoted-pair, not CR or LF."""
    in_quotes = escaped = False
    for position, c in enumerate(line):
        if escaped:
            escaped = False
            if c in "\r\n":
                return position
        elif (c < " " and c != "\t") or c == "\x7f":
            return position
        elif c == '"':
            in_quotes = not in_quotes
        elif in_quotes and c == "\\":
            escaped = True
    return -1


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet='ab "\\\t\r\n\x00\x01\x1f\x7fé', max_size=16))
def test_the_parser_finds_the_control_character_a_character_by_character_reading_finds(line: str) -> None:
    if "\r\n" in line:  # a line end, as far as the message goes
        return
    data = register_with(extra=(f"X-Test: {line}",))
    position = _first_disallowed_control(f"X-Test: {line}")
    if position < 0:
        assert request(data).get("X-Test") == line.strip(" \t")
    else:
        code = ord(f"X-Test: {line}"[position])
        assert rejected(data).reason == f"Bad X-Test: control character 0x{code:02X}"


def test_a_tab_in_a_reason_phrase_is_read_as_a_space() -> None:
    # Found by bench/fuzz.py: a downstream "180 Ring<HTAB>ing" went upstream with its tab.
    assert response(message("SIP/2.0 180 Ring\ting", "CSeq: 1 INVITE")).reason == "Ring ing"


def test_a_quoted_pair_may_escape_a_control_character_and_tabs_are_whitespace() -> None:
    req = request(REGISTER.replace(b'"Alice"', b'"Ali\\\x00ce\\\x7f"').replace(b"CSeq: 314159", b"CSeq:\t314159"))
    assert display_name_text(req.name_addr("From").display_name) == "Ali\x00ce\x7f"
    assert req.cseq == (314159, "REGISTER")


def test_a_header_we_echo_leaves_room_for_what_an_answer_adds() -> None:
    long_to = "<sip:alice@example.com;x=" + "a" * (MAX_ECHOED_VALUE - 26) + ">"
    req = request(register_with(("To", f"To: {long_to}")))  # at the limit: accepted, and answered
    sent = make_response(req, 200, "OK").to_bytes()
    assert response(sent).get("To") == f"{long_to};tag={transaction_tag(req)}"
    too_long = register_with(("To", f"To: {long_to[:-1]}a>"))
    assert rejected(too_long).reason == f"Header Line Too Long: To (limit {MAX_ECHOED_VALUE} bytes)"
    # A response's To already has its tag, and an ACK's is a response's: nothing answers
    # either, so the line limit is theirs.
    assert response(message("SIP/2.0 200 OK", f"To: {long_to}aaaaa;tag=1", "CSeq: 1 REGISTER")).status == 200
    ack = message("ACK sip:alice@example.com SIP/2.0", "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa",
                "From: <sip:bob@example.com>;tag=2", f"To: {long_to}aaaaa;tag=1", "Call-ID: c", "CSeq: 1 ACK")
    assert request(ack).method == "ACK"


def test_the_accessors_of_a_message_not_made_by_the_parser_raise_sip_error() -> None:
    message = Message(headers=[("Via", 'SIP/2.0/UDP a;x="b'), ("CSeq", "one REGISTER")])
    for read in (lambda: message.get("Via"), lambda: message.get_all("Via"), lambda: message.top_via):
        with pytest.raises(SipError, match="Bad Via: unterminated quoted string"):
            read()
    with pytest.raises(SipError, match="Bad CSeq"):
        message.cseq  # noqa: B018


# --- salvage_request ----------------------------------------------------------------------------------


def test_salvage_request_keeps_only_what_a_response_needs() -> None:
    data = register_with(("REGISTER", "REGISTER <sip:example.com> SIP/2.0"))
    salvaged = salvage_request(data)
    assert salvaged is not None
    assert salvaged.method == "REGISTER"
    assert [name for name, _ in salvaged.headers] == ["Via", "From", "To", "Call-ID", "CSeq"]


def test_salvage_request_understands_compact_forms() -> None:
    salvaged = salvage_request(DBLREQ_INVITE.replace(b"SIP/2.0\r\n", b"SIP/9.9\r\n", 1))
    assert salvaged is not None
    assert salvaged.get("To") == "sip:joe@example.com"


@pytest.mark.parametrize(
    "data",
    [b"", b"\r\n\r\n", b"garbage", NOREASON, register_with(("Call-ID", None)), register_with(("Via", None))],
)
def test_salvage_request_gives_up_when_no_answer_is_possible(data: bytes) -> None:
    assert salvage_request(data) is None


# --- properties: bad input only ever raises SipError -------------------------------------------------

REGISTER_WITH_BODY = register_with(
    ("Contact", 'Contact: "Doe, John" <sip:john@[2001:db8::1]:5060;transport=tcp>;q=0.5;expires=60, <sip:x@y>'),
    ("Content-Length", "Content-Length: 5"),
    extra=("Supported: path, outbound", "Subject: folded\r\n value", 'Authorization: Digest username="a", nonce="b"'),
    body=b"hello",
)

def _parse_only_sip_errors(data: bytes) -> None:
    message = check_parse(data)
    if message is None:
        return
    # Whatever parsed serializes to something that parses to the same message
    # (or hits a limit: compact names grow when expanded, folded lines join).
    try:
        again = parse_message(message.to_bytes())
    except SipError as error:
        assert error.status == 513 or error.reason.startswith("Header Line Too Long")
        return
    assert type(again) is type(message)
    assert _without_content_length(again.headers) == _without_content_length(message.headers)
    assert again.body == message.body
    if isinstance(message, Request):
        assert isinstance(again, Request)
        assert (again.method, again.uri) == (message.method, message.uri)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=1024))
def test_parse_message_on_arbitrary_bytes_only_raises_sip_error(data: bytes) -> None:
    _parse_only_sip_errors(data)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=60).map(lambda parts: "".join(parts).encode("utf-8")))
def test_parse_message_on_sip_like_text_only_raises_sip_error(data: bytes) -> None:
    _parse_only_sip_errors(data)


@settings(max_examples=500, deadline=None)
@given(mutated(REGISTER_WITH_BODY))
def test_parse_message_on_mutated_register_only_raises_sip_error(data: bytes) -> None:
    _parse_only_sip_errors(data)


@settings(max_examples=300, deadline=None)
@given(mutated(WSINV))
def test_parse_message_on_mutated_wsinv_only_raises_sip_error(data: bytes) -> None:
    _parse_only_sip_errors(data)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=200) | mutated(REGISTER_WITH_BODY), max_size=8))
def test_stream_framer_on_arbitrary_chunks_only_raises_sip_error(chunks: list[bytes]) -> None:
    framer = StreamFramer(max_message_size=4096)
    for chunk in chunks:
        try:
            events = framer.feed(chunk)
        except SipError as error:
            assert error.status in (400, 513)
            return  # the stream is dead; the connection is closed
        for event in events:
            assert isinstance(event, (bytes, KeepAlive))
            if isinstance(event, bytes):
                _parse_only_sip_errors(event)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=1024) | mutated(REGISTER_WITH_BODY))
def test_salvage_request_never_raises(data: bytes) -> None:
    salvaged = salvage_request(data)
    if salvaged is not None:
        assert {"Via", "From", "To", "Call-ID", "CSeq"} <= {name for name, _ in salvaged.headers}
        # The To tag derived from the Via, as in answers to what does not parse: the answer parses.
        assert isinstance(parse_message(make_response(salvaged, 400, "Bad Request").to_bytes()), Response)


# --- headers that may appear once (RFC 4475 mcl01, multi01) ------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        ("Content-Length: 0",),
        ("CSeq: 314160 REGISTER",),
        ("l: 0",),  # the compact form is the same header
        ("Call-ID: another@pc33.example.com",),
        ("To: <sip:bob@example.com>",),
    ],
    ids=["content-length", "cseq", "compact-content-length", "call-id", "to"],
)
def test_a_header_that_may_appear_once_appearing_twice_is_400(extra: tuple[str, ...]) -> None:
    with pytest.raises(SipError) as caught:
        parse_message(register_with(extra=extra))
    assert caught.value.status == 400
    assert caught.value.reason.startswith("Duplicate ") and caught.value.reason.endswith(" Header")


@pytest.mark.parametrize("second", [b"Content-Length: 5", b"l: 13"])
def test_rfc4475_mcl01_two_content_lengths_lose_a_stream_s_framing(second: bytes) -> None:
    # Which one ends the message cannot be known: the connection cannot go on (RFC 4475 3.3.9).
    data = register_with(extra=(second.decode(),), body=b"There's no way to know")
    with pytest.raises(SipError) as caught:
        StreamFramer().feed(data.replace(b"Content-Length: 0", b"Content-Length: 13"))
    assert (caught.value.status, caught.value.reason) == (400, "Duplicate Content-Length Header")


def test_list_headers_may_repeat() -> None:
    message = request(register_with(extra=("Contact: <sip:alice@192.0.2.11>", "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx")))
    assert len(message.get_all("Contact")) == 2
    assert len(message.get_all("Via")) == 2


# --- header lookups by index give what a scan gives -----------------------------------------------

_LOOKUP_VALUES = st.text(alphabet='a<>,;" \t\\', max_size=10)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["Via", "Contact", "To"]), _LOOKUP_VALUES), max_size=5))
def test_indexed_lookups_give_what_a_scan_gives(headers: list[tuple[str, str]]) -> None:
    indexed = Message(headers=headers, first_index={})
    for position, (name, _) in enumerate(headers):
        indexed.first_index.setdefault(name, position)  # as the parser builds it
    scanned = Message(headers=headers)

    def outcome(lookup, name: str) -> object:
        try:
            return lookup(name)
        except SipError as error:  # what a Message raises for a list it cannot split
            assert error.status == 400 and error.reason.startswith(f"Bad {name}: "), error
            return error.reason.removeprefix(f"Bad {name}: ")
        except ValueError as error:  # what split_list raises (every_value)
            return str(error)

    def every_value(name: str) -> list[str]:  # what get_all means, spelled out
        values = [value for key, value in headers if key == name]
        return [part for value in values for part in split_list(value)] if name in LIST_HEADERS else values

    for name in ("Via", "Contact", "To"):
        assert outcome(indexed.get, name) == outcome(scanned.get, name)
        assert outcome(indexed.get_all, name) == outcome(every_value, name)
        assert outcome(scanned.get_all, name) == outcome(every_value, name)
