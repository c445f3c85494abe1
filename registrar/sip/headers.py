"""Typed SIP header values: names and compact forms, Via, name-addr (From/To/Contact), CSeq.

Header *text* lives on the message as received; these functions turn the text
of one header into a value when a caller needs it, so a message that is only
forwarded or answered never pays for parsing headers nobody reads.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

from registrar.sip.grammar import (
    TOKEN_CHARS,
    WHITESPACE,
    format_params,
    parse_digits,
    parse_params,
    split_outside_quotes,
    unquote,
)
from registrar.sip.uri import URI, URIError, parse_uri, split_hostport, unbracketed

# Canonical spelling of every header we read or write, keyed by lower-case name,
# including the compact forms of RFC 3261 section 7.3.3 and RFC 3841/4028/3515.
_CANONICAL = {
    "via": "Via", "v": "Via",
    "from": "From", "f": "From",
    "to": "To", "t": "To",
    "call-id": "Call-ID", "i": "Call-ID",
    "cseq": "CSeq",
    "contact": "Contact", "m": "Contact",
    "content-length": "Content-Length", "l": "Content-Length",
    "content-type": "Content-Type", "c": "Content-Type",
    "content-encoding": "Content-Encoding", "e": "Content-Encoding",
    "supported": "Supported", "k": "Supported",
    "subject": "Subject", "s": "Subject",
    "refer-to": "Refer-To", "r": "Refer-To",
    "event": "Event", "o": "Event",
    "allow-events": "Allow-Events", "u": "Allow-Events",
    "session-expires": "Session-Expires", "x": "Session-Expires",
    "max-forwards": "Max-Forwards",
    "expires": "Expires",
    "min-expires": "Min-Expires",
    "authorization": "Authorization",
    "proxy-authorization": "Proxy-Authorization",
    "www-authenticate": "WWW-Authenticate",
    "proxy-authenticate": "Proxy-Authenticate",
    "user-agent": "User-Agent",
    "server": "Server",
    "allow": "Allow",
    "accept": "Accept",
    "accept-encoding": "Accept-Encoding",
    "accept-language": "Accept-Language",
    "require": "Require",
    "proxy-require": "Proxy-Require",
    "unsupported": "Unsupported",
    "route": "Route",
    "record-route": "Record-Route",
    "path": "Path",
    "date": "Date",
    "retry-after": "Retry-After",
    "timestamp": "Timestamp",
    "warning": "Warning",
}

# Headers whose value is a comma-separated list (RFC 3261 7.3.1); all others are
# taken whole, because e.g. Authorization, Date and User-Agent contain commas.
LIST_HEADERS = frozenset(
    ["Via", "Contact", "Route", "Record-Route", "Path", "Allow", "Supported", "Require",
     "Proxy-Require", "Unsupported", "Accept", "Accept-Encoding", "Accept-Language",
     "Allow-Events", "Content-Encoding", "Warning"]
)


_SLASH_WITH_SPACE = re.compile(r"\s*/\s*")


def canonical_name(name: str) -> str:
    """The canonical spelling of a header name (compact forms expanded)."""
    found = _CANONICAL.get(name.lower())
    if found is not None:
        return found
    # Unknown extension header: keep it, normalised for case-insensitive lookups.
    return "-".join(part.capitalize() for part in name.split("-"))


def split_list(value: str) -> list[str]:
    """Split a list header's value on commas outside quotes and <...>."""
    parts = split_outside_quotes(value, ",", angle_brackets=True)
    return parts if all(parts) else [part for part in parts if part]  # empty elements are rare


# RFC 3261 8.1.1.7: a branch that starts with this is unique per transaction, and the
# transaction is matched by it (RFC 3261 17.2.3).
MAGIC_COOKIE = "z9hG4bK"


@dataclass(slots=True)
class Via:
    """One Via header value (RFC 3261 20.42, RFC 3581 rport)."""

    transport: str  # upper case: UDP, TCP, TLS, SCTP, WS...
    host: str
    port: int | None
    params: dict[str, str | None] = field(default_factory=dict)
    protocol: str = "SIP/2.0"

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def host_no_brackets(self) -> str:
        return unbracketed(self.host)

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.protocol}/{self.transport} {self.host}{port}{format_params(self.params)}"


# The Via nearly every UA sends: SIP/2.0/UDP host[:port];params, no odd spacing.
_PLAIN_VIA = re.compile(r"SIP/2\.0/([A-Za-z]+) ([A-Za-z0-9.\-]+)(?::([0-9]{1,5}))?(;.*)?")


def parse_via(value: str) -> Via:
    """Parse one Via value ("SIP/2.0/UDP host:port;params"); raises ValueError."""
    plain = _PLAIN_VIA.fullmatch(value)
    if plain is not None:
        transport, host, port_text, params_text = plain.groups()
        port = int(port_text) if port_text else None
        if port is None or 0 < port < 65536:
            return Via(transport.upper(), host.lower(), port, parse_params(params_text or ""))
    head, _, params = value.partition(";")
    # sent-protocol allows whitespace around its slashes (SLASH = SWS "/" SWS).
    words = _SLASH_WITH_SPACE.sub("/", head).split()
    if len(words) < 2:
        raise ValueError("bad Via: expected sent-protocol and sent-by")
    parts = words[0].split("/")
    if len(parts) != 3 or not all(parts):
        raise ValueError("bad Via sent-protocol")
    try:
        host, port = split_hostport("".join(words[1:]))
    except URIError as exc:
        raise ValueError(f"bad Via sent-by: {exc}") from None
    return Via(
        transport=parts[2].upper(),
        host=host,
        port=port,
        params=parse_params(params),
        protocol=f"{parts[0].upper()}/{parts[1]}",
    )


@dataclass(slots=True)  # read-only, not frozen: shared by parse_name_addr's cache, like URI
class NameAddr:
    """A From, To, Contact, Route... value: optional display name, URI, header params."""

    uri: URI
    display_name: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    uri_text: str = ""  # the URI exactly as it appeared, for echoing it back

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def __str__(self) -> str:
        name = f"{self.display_name} " if self.display_name else ""
        return f"{name}<{self.uri_text or self.uri}>{format_params(self.params)}"


# Memoized like parse_uri (To, From and Contact values repeat on every refresh);
# a cached NameAddr is shared: treat it, params included, as read-only.
@functools.lru_cache(maxsize=4096)
def parse_name_addr(value: str) -> NameAddr:
    """Parse name-addr or addr-spec with header params (RFC 3261 20.10); raises ValueError.

    In the addr-spec form (no angle brackets) everything after the first ';'
    belongs to the header, not to the URI.
    """
    value = value.strip(WHITESPACE)
    display = None
    lt = 0 if value[:1] == "<" else _find_unquoted(value, "<")  # the usual "<sip:...>": no display name
    if lt >= 0:
        gt = value.find(">", lt)
        if gt < 0:
            raise ValueError("unterminated <URI>")
        display_text = value[:lt].strip(WHITESPACE) if lt else ""
        if display_text:
            if display_text[0] != '"':
                _check_unquoted_display_name(display_text)
            display = display_text
        uri_text = value[lt + 1 : gt].strip(WHITESPACE)
        params_text = value[gt + 1 :].strip(WHITESPACE)
        if params_text and not params_text.startswith(";"):
            raise ValueError("junk after >")
    else:
        uri_text, _, params_text = value.partition(";")
        uri_text = uri_text.strip(WHITESPACE)
        if " " in uri_text or '"' in uri_text:
            raise ValueError("addr-spec contains whitespace; use <URI>")
        # RFC 3261 20.10: a URI with a comma, question mark or semicolon MUST be
        # enclosed in <>, or its ?headers would be read as the header's own
        # (RFC 4475 regbadct). ';' and ',' already end the addr-spec here.
        if "?" in uri_text:
            raise ValueError("addr-spec contains '?'; a URI with headers must be enclosed in <>")
    try:
        uri = parse_uri(uri_text)
    except URIError as exc:
        raise ValueError(str(exc)) from None
    params = parse_params(params_text) if params_text else {}
    return NameAddr(uri=uri, display_name=display, params=params, uri_text=uri_text)


# What an unquoted display name (*(token LWS), RFC 3261 25.1) may hold of ASCII. Beyond
# ASCII it is tolerated: phones send names in their users' scripts unquoted, and
# nothing of those can be mistaken for a separator.
_UNQUOTED_DISPLAY_NAME_ASCII = TOKEN_CHARS | frozenset(WHITESPACE)


def _check_unquoted_display_name(text: str) -> None:
    """ValueError naming the first ASCII character an unquoted display name may not have.

    RFC 4475 baddn ("Bell, Alexander" unquoted): an element may infer the quotes,
    but a proxy must then not pass the error on, and we forward From and To as
    they came; so it is rejected, saying what would fix it.
    """
    for char in text:
        if char < "\x80" and char not in _UNQUOTED_DISPLAY_NAME_ASCII:
            raise ValueError(f"unquoted display name with {char!r}: quote it")


def _find_unquoted(text: str, char: str) -> int:
    """The index of `char` outside quoted strings, or -1; raises ValueError on an unterminated quote."""
    in_quotes = False
    escaped = False
    for i, c in enumerate(text):
        if escaped:
            escaped = False
        elif c == "\\" and in_quotes:
            escaped = True
        elif c == '"':
            in_quotes = not in_quotes
        elif c == char and not in_quotes:
            return i
    if in_quotes:
        raise ValueError("unterminated quoted string")
    return -1


def display_name_text(display_name: str | None) -> str | None:
    return unquote(display_name) if display_name else None


def parse_cseq(value: str) -> tuple[int, str]:
    """CSeq "number METHOD"; the number is a 32-bit unsigned integer (RFC 3261 8.1.1.5)."""
    # CSeq = 1*DIGIT LWS Method: the separator may be tabs as well as spaces.
    parts = value.strip(WHITESPACE).split(None, 1)
    seq = parse_digits(parts[0], 2**31) if len(parts) == 2 else None
    if seq is None:
        raise ValueError("bad CSeq")
    method = parts[1].strip(WHITESPACE)
    if seq >= 2**31:
        raise ValueError("CSeq number out of range")
    return seq, method


def parse_delta_seconds(value: str) -> int:
    """Expires / Min-Expires / expires param: delta-seconds; very large values saturate."""
    seconds = parse_digits(value.strip(WHITESPACE), 2**32 - 1)
    if seconds is None:
        raise ValueError(f"bad delta-seconds {value[:20]!r}")
    return seconds
