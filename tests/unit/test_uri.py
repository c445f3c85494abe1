"""Unit tests for registrar.sip.uri and the header values built on URIs (registrar.sip.headers).

URIs: sip/sips/tel, escapes, user parameters, passwords, IPv6 references, ports,
serialization. Header values: Via (rport, received, RFC 4475 wsinv whitespace),
name-addr / addr-spec, CSeq and delta-seconds.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registrar.sip.headers import (
    canonical_name,
    display_name_text,
    parse_cseq,
    parse_delta_seconds,
    parse_name_addr,
    parse_via,
    split_list,
)
from registrar.sip.uri import URI, URIError, as_request_uri, parse_uri, split_hostport

# --- parse_uri: the good ones ------------------------------------------------------------


def test_plain_sip_uri() -> None:
    uri = parse_uri("sip:alice@example.com")
    assert uri == URI(scheme="sip", user="alice", host="example.com")
    assert uri.port is None and uri.password is None and uri.params == {} and uri.headers == ""
    assert uri.aor == "alice@example.com"


def test_scheme_and_host_are_case_insensitive_but_user_is_not() -> None:
    uri = parse_uri("SIP:Alice@EXAMPLE.Com:5070")
    assert (uri.scheme, uri.user, uri.host, uri.port) == ("sip", "Alice", "example.com", 5070)
    assert uri.aor == "Alice@example.com"


def test_sips_uri_with_params_and_headers() -> None:
    uri = parse_uri("sips:bob@example.com:5061;transport=TCP;lr;maddr=192.0.2.1?subject=project%20x&priority=urgent")
    assert uri.scheme == "sips"
    assert uri.port == 5061
    assert uri.params == {"transport": "TCP", "lr": None, "maddr": "192.0.2.1"}
    assert uri.transport == "tcp"
    assert uri.headers == "subject=project%20x&priority=urgent"


def test_uri_without_user_has_the_host_as_aor() -> None:
    uri = parse_uri("sip:example.com")
    assert uri.user is None
    assert uri.aor == "example.com"


def test_parameter_names_are_lowercased_values_keep_case() -> None:
    uri = parse_uri("sip:example.com;Transport=UDP;X-Mine=AbC")
    assert uri.params == {"transport": "UDP", "x-mine": "AbC"}


def test_user_with_escapes_is_decoded() -> None:
    # RFC 4475 esc01: the user of the Request-URI is "sips:user@example.com".
    uri = parse_uri("sip:sips%3Auser%40example.com@example.net")
    assert uri.user == "sips:user@example.com"
    assert uri.host == "example.net"
    # %75se%72 is just "user" (RFC 3261 19.1.4: compare after unescaping).
    assert parse_uri("sip:%75se%72@example.com").aor == parse_uri("sip:user@example.com").aor
    assert parse_uri("sip:I%20have%20spaces@example.net").user == "I have spaces"
    assert parse_uri("sip:null-%00-null@example.com").user == "null-\x00-null"


def test_user_parameters_stay_in_the_user_part() -> None:
    # RFC 4475 semiuri: ';' before the '@' belongs to the user, not to the URI params.
    uri = parse_uri("sip:user;par=u%40example.net@example.com")
    assert uri.user == "user;par=u@example.net"
    assert uri.host == "example.com"
    assert uri.params == {}


def test_telephone_subscriber_user_with_user_phone() -> None:
    uri = parse_uri("sip:+1-212-555-1212:1234@gateway.com;user=phone")
    assert uri.user == "+1-212-555-1212"
    assert uri.password == "1234"
    assert uri.params == {"user": "phone"}


def test_password() -> None:
    uri = parse_uri("sip:alice:secretword@atlanta.com;transport=tcp")
    assert (uri.user, uri.password, uri.host, uri.transport) == ("alice", "secretword", "atlanta.com", "tcp")


def test_question_mark_in_user_part_is_not_the_start_of_headers() -> None:
    # RFC 4475 intmeth: '?' and '/' are user-unreserved (RFC 3261 25.1); the '@'
    # after them still ends the userinfo, and the URI has no headers at all.
    text = "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com"
    uri = parse_uri(text)
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert uri.host == "example.com"
    assert uri.headers == ""
    assert uri.params == {}


def test_headers_after_the_host_are_still_headers() -> None:
    uri = parse_uri("sip:user@example.com?Route=%3Csip:example.com%3E")
    assert (uri.user, uri.host, uri.headers) == ("user", "example.com", "Route=%3Csip:example.com%3E")


@pytest.mark.parametrize(
    ("text", "request_uri"),
    [
        ("sip:user@example.com?Route=%3Csip:sip.example.com%3E", "sip:user@example.com"),  # RFC 4475 regescrt
        ("sip:user@192.0.2.1:5062;transport=tcp?X=1&Y=2", "sip:user@192.0.2.1:5062;transport=tcp"),
        ("sip:crazy?,/;;*@example.com", "sip:crazy?,/;;*@example.com"),  # a '?' of the user part stays
        ("sip:crazy?@example.com?X=1", "sip:crazy?@example.com"),
        ("sip:user@example.com", "sip:user@example.com"),
        ("sip:?", "sip:?"),  # not a URI: left as it is, for what reads it to refuse
    ],
)
def test_a_uri_as_a_request_uri_has_no_headers(text: str, request_uri: str) -> None:
    assert as_request_uri(text) == request_uri


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("sip:[2001:db8::1]", "[2001:db8::1]", None),
        ("sip:alice@[2001:db8::1]:5060", "[2001:db8::1]", 5060),
        ("sip:alice@[2001:DB8::A]:5061;transport=tls", "[2001:db8::a]", 5061),
        ("sip:[::1]:5060", "[::1]", 5060),
    ],
)
def test_ipv6_references(text: str, host: str, port: int | None) -> None:
    uri = parse_uri(text)
    assert uri.host == host
    assert uri.port == port
    assert uri.host_no_brackets == host[1:-1]


def test_tel_uri() -> None:
    uri = parse_uri("tel:+1-201-555-0123;phone-context=example.com")
    assert uri.scheme == "tel"
    assert uri.user == "+1-201-555-0123"
    assert uri.host == ""
    assert uri.params == {"phone-context": "example.com"}


# --- parse_uri: the bad ones -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("example.com", "no scheme"),
        ("http://example.com/", "unsupported URI scheme 'http'"),
        ("mailto:alice@example.com", "unsupported URI scheme 'mailto'"),
        ("sip:", "without a host"),
        ("sip:alice@", "without a host"),
        ("sip:;transport=udp", "without a host"),
        ("sip:@example.com", "empty user"),
        ("sip:alice@:5060", "bad host"),
        ("sip:ali ce@exa mple.com", "bad host"),
        ("sip:alice@example.com:0", "bad port"),
        ("sip:alice@example.com:65536", "bad port"),
        ("sip:alice@example.com:50x", "bad port"),
        ("sip:alice@example.com:", "bad port"),
        ("sip:alice@example.com:-1", "bad port"),
        ("sip:alice@example.com:\u00b2", "bad port"),  # '²' is isdigit() but not a DIGIT
        ("sip:alice@example.com:" + "9" * 5000, "bad port"),  # int() refuses > 4300 digits
        ("sip:[2001:db8::1", "unterminated IPv6"),
        ("sip:[2001:db8::1]x", "junk after IPv6"),
        ("sip:example.com;=x", "bad URI parameter"),
        ("sip:example.com;a;;b", "bad URI parameter"),
        ("tel:", "without a number"),
    ],
)
def test_bad_uris_raise_uri_error_naming_the_problem(text: str, problem: str) -> None:
    with pytest.raises(URIError, match=problem.replace("[", r"\[").replace("(", r"\(")):
        parse_uri(text)


def test_uri_error_is_a_value_error() -> None:
    # Callers that only know "malformed input" catch ValueError.
    assert issubclass(URIError, ValueError)


# --- serialization ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "sip:alice@example.com",
        "sips:bob@example.com:5061;transport=tcp;lr",
        "sip:alice:secret@atlanta.com",
        "sip:example.com;maddr=239.255.255.1;ttl=15",
        "sip:alice@[2001:db8::1]:5060;transport=udp",
        "sip:[::1]",
        "sip:bob@example.com?subject=project%20x&priority=urgent",
        "sip:+1-212-555-1212@gateway.com;user=phone",
        "tel:+1-201-555-0123;phone-context=example.com",
        "sip:alice@example.com;x-quoted=\"a b\"",
    ],
)
def test_str_round_trip_of_plain_uris(text: str) -> None:
    uri = parse_uri(text)
    assert str(uri) == text
    assert parse_uri(str(uri)) == uri


@pytest.mark.parametrize(
    "text",
    [
        "sip:sips%3Auser%40example.com@example.net",
        "sip:I%20have%20spaces@example.net",
        "sip:null-%00-null@example.com",
        "sip:user;par=u%40example.net@example.com",
        "sip:100%25@example.com",
        "sip:%C3%BCber@example.com",
    ],
)
def test_str_of_a_uri_with_an_escaped_user_parses_back_to_the_same_uri(text: str) -> None:
    # The user is stored decoded; serializing it must escape it again, or
    # "sips:user@example.com" as a user would come back as user "sips" with a password.
    uri = parse_uri(text)
    again = parse_uri(str(uri))
    assert again == uri


@settings(max_examples=300, deadline=None)
@given(
    user=st.text(min_size=1, max_size=20),
    host=st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z]{2,5}){1,2}", fullmatch=True),
    port=st.none() | st.integers(1, 65535),
)
def test_any_user_survives_a_str_round_trip(user: str, host: str, port: int | None) -> None:
    uri = URI(scheme="sip", user=user, host=host, port=port)
    assert parse_uri(str(uri)) == uri


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=80))
def test_parse_uri_raises_only_uri_error(text: str) -> None:
    try:
        uri = parse_uri(text)
    except URIError:
        return
    assert uri.scheme in ("sip", "sips", "tel")


# --- split_hostport (Via sent-by) -------------------------------------------------------


def test_split_hostport() -> None:
    assert split_hostport("Host.Example.com") == ("host.example.com", None)
    assert split_hostport("host.example.com", 5060) == ("host.example.com", 5060)
    assert split_hostport(" 192.0.2.1:5070 ") == ("192.0.2.1", 5070)
    assert split_hostport("[2001:db8::1]:5060") == ("[2001:db8::1]", 5060)
    with pytest.raises(URIError):
        split_hostport("host:99999")


# --- Via -----------------------------------------------------------------------------------


def test_parse_via_basic() -> None:
    via = parse_via("SIP/2.0/UDP pc33.atlanta.com:5066;branch=z9hG4bK776asdhds")
    assert (via.protocol, via.transport, via.host, via.port) == ("SIP/2.0", "UDP", "pc33.atlanta.com", 5066)
    assert via.branch == "z9hG4bK776asdhds"
    assert str(via) == "SIP/2.0/UDP pc33.atlanta.com:5066;branch=z9hG4bK776asdhds"


def test_parse_via_rport_and_received() -> None:
    via = parse_via("SIP/2.0/UDP 10.0.0.1:5060;rport;branch=z9hG4bKx")
    assert via.params == {"rport": None, "branch": "z9hG4bKx"}
    answered = parse_via("SIP/2.0/UDP 10.0.0.1:5060;received=192.0.2.4;rport=49152;branch=z9hG4bKx")
    assert answered.params["received"] == "192.0.2.4"
    assert answered.params["rport"] == "49152"
    assert answered.branch == "z9hG4bKx"


def test_parse_via_transport_is_uppercased_and_ipv6_sent_by() -> None:
    via = parse_via("sip/2.0/tls [2001:db8::9]:5061;branch=z9hG4bKa")
    assert (via.protocol, via.transport, via.host, via.port) == ("SIP/2.0", "TLS", "[2001:db8::9]", 5061)


@pytest.mark.parametrize(
    ("value", "transport", "host", "branch"),
    [
        # RFC 4475 wsinv, after unfolding: LWS around the slashes, before ';' and around '='.
        ("SIP  /   2.0 /UDP 192.0.2.2;branch=390skdjuw", "UDP", "192.0.2.2", "390skdjuw"),
        ("SIP  / 2.0  / TCP     spindle.example.com   ; branch  =   z9hG4bK9ikj8", "TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("SIP  /    2.0   / UDP  192.168.255.111   ; branch= z9hG4bK30239", "UDP", "192.168.255.111", "z9hG4bK30239"),
        # sent-by = host [ COLON port ], COLON allows whitespace around it.
        ("SIP/2.0/UDP host.example.com : 5062;branch=z9hG4bKq", "UDP", "host.example.com", "z9hG4bKq"),
    ],
)
def test_parse_via_tolerates_rfc_whitespace(value: str, transport: str, host: str, branch: str) -> None:
    via = parse_via(value)
    assert (via.protocol, via.transport, via.host, via.branch) == ("SIP/2.0", transport, host, branch)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("SIP/2.0/UDP", "expected sent-protocol and sent-by"),
        ("", "expected sent-protocol and sent-by"),
        ("SIP/2.0 host.example.com", "sent-protocol"),
        ("SIP//UDP host.example.com", "sent-protocol"),
        ("SIP/2.0/UDP host.example.com:99999", "sent-by"),
        ("SIP/2.0/UDP [::1", "sent-by"),
        ("SIP/2.0/UDP 192.0.2.15;;", "empty parameter"),  # RFC 4475 badinv01
    ],
)
def test_parse_via_rejects_malformed_values(value: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_via(value)


# --- name-addr / addr-spec -----------------------------------------------------------------


def test_name_addr_with_quoted_display_name_and_params() -> None:
    value = '"Bob \\"The Builder\\" \\\\ Smith" <sip:bob@biloxi.com;transport=tcp>;tag=a6c85cf;expires=60'
    addr = parse_name_addr(value)
    assert display_name_text(addr.display_name) == 'Bob "The Builder" \\ Smith'
    assert addr.uri.user == "bob"
    assert addr.uri.params == {"transport": "tcp"}
    assert addr.params == {"tag": "a6c85cf", "expires": "60"}
    assert addr.tag == "a6c85cf"
    assert addr.uri_text == "sip:bob@biloxi.com;transport=tcp"


def test_display_name_with_comma_and_angle_bracket_inside_quotes() -> None:
    addr = parse_name_addr('"Doe, <John>" <sip:john@example.com>')
    assert display_name_text(addr.display_name) == "Doe, <John>"
    assert addr.uri.aor == "john@example.com"


def test_addr_spec_params_belong_to_the_header() -> None:
    # RFC 3261 20.10: without <>, ";tag=..." and ";expires=" are header parameters.
    addr = parse_name_addr("sip:alice@example.com;transport=tcp;tag=88sja8x")
    assert addr.uri.params == {}
    assert addr.params == {"transport": "tcp", "tag": "88sja8x"}
    assert addr.display_name is None
    assert addr.uri_text == "sip:alice@example.com"


def test_token_display_name_without_space_before_angle_bracket() -> None:
    # RFC 4475 lwsdisp.
    addr = parse_name_addr("caller<sip:caller@example.com>;tag=323")
    assert addr.display_name == "caller"
    assert addr.uri.aor == "caller@example.com"
    assert addr.tag == "323"


def test_name_addr_str() -> None:
    addr = parse_name_addr('"Alice" <sip:alice@example.com;lr>;tag=1')
    assert str(addr) == '"Alice" <sip:alice@example.com;lr>;tag=1'
    assert parse_name_addr(str(addr)) == addr


def test_spaces_inside_angle_brackets_are_tolerated() -> None:
    # RFC 4475 badaspec: invalid, but RFC 4475 allows a liberal element to ignore the spaces.
    addr = parse_name_addr('"Watson, Thomas" < sip:t.watson@example.org >')
    assert addr.uri.aor == "t.watson@example.org"
    assert display_name_text(addr.display_name) == "Watson, Thomas"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("<sip:alice@example.com", "unterminated <URI>"),
        ("<sip:alice@example.com> junk", "junk after >"),
        ("sip:alice@example .com", "whitespace"),
        ('"Mr. J. User <sip:j.user@example.com>', "unterminated quoted string"),  # RFC 4475 quotbal
        ("<http://www.example.com>", "unsupported URI scheme"),
        ("<sip:alice@example.com>;;", "empty parameter"),
        ("", "no scheme"),
        # RFC 4475 regbadct: an addr-spec with '?' (or ',' or ';' in the URI) must use <>.
        ("sip:user@example.com?Route=%3Csip:sip.example.com%3E", "<>"),
    ],
)
def test_bad_name_addrs_raise_value_error_naming_the_problem(value: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_name_addr(value)


def test_escaped_headers_are_allowed_inside_angle_brackets() -> None:
    # RFC 4475 regescrt: the same Contact as regbadct, enclosed in <>, is well formed.
    addr = parse_name_addr("<sip:user@example.com?Route=%3Csip:sip.example.com%3E>")
    assert addr.uri.aor == "user@example.com"
    assert addr.uri.headers == "Route=%3Csip:sip.example.com%3E"


def test_split_list_keeps_commas_inside_quotes_and_angle_brackets() -> None:
    value = '"Doe, John" <sip:john@a.example;x=1,2>;q=0.5, <sip:j@b.example>,  sip:c@c.example ,'
    assert split_list(value) == [
        '"Doe, John" <sip:john@a.example;x=1,2>;q=0.5',
        "<sip:j@b.example>",
        "sip:c@c.example",
    ]


# --- CSeq, delta-seconds, header names --------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("4711 REGISTER", (4711, "REGISTER")),
        ("0009 INVITE", (9, "INVITE")),  # RFC 4475 wsinv: leading zeros
        ("  1   OPTIONS ", (1, "OPTIONS")),
        ("1\tREGISTER", (1, "REGISTER")),  # LWS between number and method may be a tab
        (f"{2**31 - 1} BYE", (2**31 - 1, "BYE")),
    ],
)
def test_parse_cseq(value: str, expected: tuple[int, str]) -> None:
    assert parse_cseq(value) == expected


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("REGISTER", "bad CSeq"),
        ("12", "bad CSeq"),
        ("-1 REGISTER", "bad CSeq"),
        ("1.5 REGISTER", "bad CSeq"),
        ("\u00b2 REGISTER", "bad CSeq"),
        ("", "bad CSeq"),
        (f"{2**31} REGISTER", "out of range"),  # RFC 3261 8.1.1.5: less than 2**31
        ("36893488147419103232 REGISTER", "out of range"),  # RFC 4475 scalar02
        ("9" * 5000 + " REGISTER", "out of range"),
    ],
)
def test_parse_cseq_rejects(value: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_cseq(value)


def test_parse_delta_seconds() -> None:
    assert parse_delta_seconds("3600") == 3600
    assert parse_delta_seconds(" 0 ") == 0
    assert parse_delta_seconds("007") == 7
    # RFC 4475 scalar02: overlarge expiry values saturate instead of failing.
    assert parse_delta_seconds("1" + "0" * 104) == 2**32 - 1
    assert parse_delta_seconds("280297596632815") == 2**32 - 1
    assert parse_delta_seconds("9" * 5000) == 2**32 - 1
    for bad in ("", "-1", "1.5", "sixty", "\u00b2", "60s"):
        with pytest.raises(ValueError, match="bad delta-seconds"):
            parse_delta_seconds(bad)


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("v", "Via"), ("V", "Via"), ("f", "From"), ("t", "To"), ("i", "Call-ID"), ("I", "Call-ID"),
        ("m", "Contact"), ("l", "Content-Length"), ("L", "Content-Length"), ("k", "Supported"),
        ("c", "Content-Type"), ("e", "Content-Encoding"), ("s", "Subject"), ("o", "Event"),
        ("u", "Allow-Events"), ("x", "Session-Expires"), ("r", "Refer-To"),
        ("cAlL-iD", "Call-ID"), ("CSEQ", "CSeq"), ("www-authenticate", "WWW-Authenticate"),
        ("x-custom-header", "X-Custom-Header"), ("X-CUSTOM-HEADER", "X-Custom-Header"),
    ],
)
def test_canonical_names(name: str, canonical: str) -> None:
    assert canonical_name(name) == canonical


# --- the fast path agrees with the careful parser ---------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from registrar.sip.uri import parse_uri_carefully  # noqa: E402

_URI_PIECES = st.text(alphabet="abcXYZ019-_.!~*'()&=+$,;:@?%[]\"<> ", max_size=12)


@settings(max_examples=600, deadline=None)
@given(
    scheme=st.sampled_from(["sip", "sips", "SIP", "tel"]),
    user=_URI_PIECES,
    host=st.sampled_from(["example.com", "EXAMPLE.com", "192.0.2.1", "[2001:db8::1]", "h", ""]),
    port=st.sampled_from(["", ":5060", ":0", ":65536", ":5x"]),
    params=_URI_PIECES,
)
def test_the_fast_path_gives_what_the_careful_parser_gives(scheme, user, host, port, params) -> None:
    text = f"{scheme}:{user + '@' if user else ''}{host}{port}{params}"
    try:
        careful = parse_uri_carefully(text)
    except URIError:
        careful = None
    parse_uri.cache_clear()
    try:
        fast = parse_uri(text)
    except URIError:
        fast = None
    assert fast == careful
