"""SIP messages: the request/response model, the parser and the serializer (RFC 3261 section 7).

Pure code: bytes in, `Request`/`Response` out, and back. The parser enforces
limits (message size, header count, line length) and raises `SipError`
carrying the status code and a reason phrase that names the problem, so the
caller can answer a bad request precisely (or drop it when no answer is possible).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from registrar.sip.headers import (
    LIST_HEADERS,
    MAGIC_COOKIE,
    NameAddr,
    Via,
    canonical_name,
    parse_cseq,
    parse_name_addr,
    parse_via,
    split_list,
)
from registrar.sip.grammar import (
    CONTROL_BYTES,
    TOKEN_CHARS,
    WHITESPACE,
    WITHOUT_CONTROLS,
    is_token,
    parse_digits,
    unescaped_control,
    unterminated_quote,
)
from registrar.sip.uri import as_request_uri

# scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) (RFC 3986 3.1, used by RFC 3261 25.1)
_SCHEME_FIRST = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_SCHEME_CHARS = _SCHEME_FIRST | frozenset("0123456789+-.")

SIP_VERSION = "SIP/2.0"

# Methods of RFC 3261 and its extensions (3262, 3265, 3311, 3428, 3515, 3903, 6086).
KNOWN_METHODS = frozenset(
    ["REGISTER", "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "SUBSCRIBE", "NOTIFY",
     "PUBLISH", "MESSAGE", "INFO", "PRACK", "UPDATE", "REFER"]
)

# Limits. A UDP datagram cannot exceed 65,507 bytes; on streams we accept the same.
MAX_MESSAGE_SIZE = 65_535
MAX_HEADER_LINE = 8_192
MAX_HEADERS = 128
# Via, From, To, Call-ID and CSeq come back in every answer, with a To tag, received
# and rport added and compact names spelled out, and a REGISTER's Contacts in its 200
# with expires and received: a request's values of these get this much less room than
# a line, so that the lines of an answer stay within MAX_HEADER_LINE too.
MAX_ECHOED_VALUE = MAX_HEADER_LINE - 192
# A reason phrase we send: room for a precise one ("Bad Via: ..." with the offending
# text's first 40 characters), not for a request's text reflected at length.
MAX_REASON_PHRASE = 128

# Headers every request must carry (RFC 3261 8.1.1); Max-Forwards is tolerated
# when missing, as Kamailio and Asterisk do, because old UAs omit it on REGISTER.
REQUIRED_REQUEST_HEADERS = ("Via", "From", "To", "Call-ID", "CSeq")
_REQUIRED_REQUEST_HEADER_SET = frozenset(REQUIRED_REQUEST_HEADERS)


class SipError(Exception):
    """A request we cannot accept: `status`, `reason` and extra `headers` form the answer.

    The reason often quotes the request; it is kept printable (`reason_phrase`), so
    that neither the answer nor a log line carries the request's control characters.
    """

    def __init__(self, status: int, reason: str, headers: Sequence[tuple[str, str]] = ()):
        if len(reason) > MAX_REASON_PHRASE or not reason.isprintable():  # not the usual constant phrase
            reason = reason_phrase(reason)
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers = list(headers)


def reason_phrase(text: str) -> str:
    """`text` fit to be a reason phrase we send: printable characters only, at most MAX_REASON_PHRASE.

    Reason phrases quote requests ("Version Not Supported: SIP/3.0"). What is not
    printable goes: CR and LF (which would end the status line and start headers
    of the sender's choosing), NUL, the other C0 controls, DEL, C1 controls, and
    bytes that were not UTF-8.
    """
    if len(text) > MAX_REASON_PHRASE:  # cut first: what follows reads it character by character
        text = text[:MAX_REASON_PHRASE].rstrip()
    return text if text.isprintable() else "".join([c for c in text if c.isprintable()])


def _parsed_cseq(value: str) -> tuple[int, str]:
    try:
        return parse_cseq(value)
    except ValueError as exc:
        raise SipError(400, f"Bad CSeq: {exc}") from None


def list_elements(name: str, value: str) -> list[str]:
    """The elements of one line of list header `name`; SipError 400 when its quotes do not balance."""
    try:
        return split_list(value)
    except ValueError as exc:
        raise SipError(400, f"Bad {name}: {exc}") from None


@dataclass(slots=True)
class Message:
    """Headers and body shared by requests and responses.

    `headers` keeps (canonical name, raw value) pairs in wire order; a
    comma-separated line stays one entry until a caller asks for `get_all`.
    """

    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    # Where each header name first occurs in `headers`, built by the parser (None:
    # not built, or invalidated by add/set/remove). A request is read a dozen
    # times on its way through and never reordered, so lookups need not scan.
    first_index: dict[str, int] | None = field(default=None, compare=False, repr=False)
    # CSeq as parsed, once: the parser checks it and the registrar reads it again.
    _cseq: tuple[int, str] | None = field(default=None, compare=False, repr=False)

    # -- header access ------------------------------------------------------------
    def get(self, name: str) -> str | None:
        """The first value of a header (the first list element for list headers)."""
        index = self.first_index
        if index is not None:
            position = index.get(name)
            if position is None:
                return None
            value = self.headers[position][1]
            if name not in LIST_HEADERS:
                return value
            if "," not in value and '"' not in value:
                # One element (the usual single Via or Contact): split_list would
                # give just this, stripped, at the cost of three calls.
                value = value.strip(WHITESPACE)
                if value:
                    return value
            else:
                values = list_elements(name, value)
                if values:
                    return values[0]
            # An empty list element first: look further, the slow way.
        for key, value in self.headers:
            if key == name:
                if name in LIST_HEADERS:
                    values = list_elements(name, value)
                    if values:
                        return values[0]
                    continue
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        """Every value of a header, comma-separated lines split for list headers."""
        headers = self.headers
        if self.first_index is not None:
            position = self.first_index.get(name)
            if position is None:
                return []
            headers = headers[position:]  # nothing before the first occurrence to look at
        values = [value for key, value in headers if key == name]
        if name not in LIST_HEADERS:
            return values
        if len(values) == 1 and "," not in values[0] and '"' not in values[0]:
            # One line of one element (the usual Contact): what split_list gives, as in get().
            value = values[0].strip(WHITESPACE)
            return [value] if value else []
        return [element for value in values for element in list_elements(name, value)]

    def has(self, name: str) -> bool:
        return any(key == name for key, _ in self.headers)

    def add(self, name: str, value: str) -> None:
        self.headers.append((name, value))
        if self.first_index is not None:
            self.first_index.setdefault(name, len(self.headers) - 1)

    def set(self, name: str, value: str) -> None:
        self.remove(name)
        self.add(name, value)

    def remove(self, name: str) -> None:
        self.headers = [(k, v) for k, v in self.headers if k != name]
        self.first_index = None
        self._cseq = None

    # -- the headers every transaction needs ------------------------------------------
    @property
    def call_id(self) -> str:
        return self.get("Call-ID") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        """(number, method); SipError 400 for a malformed CSeq."""
        cseq = self._cseq
        if cseq is None:
            cseq = self._cseq = _parsed_cseq(self.get("CSeq") or "")
        return cseq

    @property
    def top_via(self) -> Via:
        value = self.get("Via")
        if value is None:
            raise SipError(400, "Missing Via")
        try:
            via = parse_via(value)
        except ValueError as exc:
            raise SipError(400, f"Bad Via: {exc}") from None
        if via.params.get("branch") == MAGIC_COOKIE:
            # RFC 4475 badbranch: it claims RFC 3261 transaction matching with nothing to
            # match by, so every such request from one host would be one transaction.
            # Rejected, statelessly, as RFC 4475 prefers to a fallback to RFC 2543 matching.
            raise SipError(400, f"Bad Via: branch {MAGIC_COOKIE} without a transaction identifier")
        return via

    def name_addr(self, name: str) -> NameAddr:
        value = self.get(name)
        if value is None:
            raise SipError(400, f"Missing {name}")
        try:
            return parse_name_addr(value)
        except ValueError as exc:
            raise SipError(400, f"Bad {name}: {exc}") from None

    def _serialize(self, start_line: str) -> bytes:
        lines = [f"{name}: {value}" for name, value in self.headers if name != "Content-Length"]
        head = "\r\n".join([start_line, *lines, f"Content-Length: {len(self.body)}", "", ""])
        return head.encode("utf-8", "surrogateescape") + self.body


def serialized_call_id(data: bytes) -> str | None:
    """The Call-ID of a message `_serialize` wrote (canonical header names, one per line), found
    without parsing it again; None when it has none."""
    start = data.find(b"\r\nCall-ID: ")
    if start < 0:
        return None
    start += 11
    end = data.find(b"\r\n", start)
    return data[start:end].decode("utf-8", "surrogateescape") if end > 0 else None


@dataclass(slots=True)
class Request(Message):
    method: str = ""
    uri: str = ""  # the Request-URI text; parse with registrar.sip.uri.parse_uri
    version: str = SIP_VERSION

    def to_bytes(self) -> bytes:
        return self._serialize(f"{self.method} {self.uri} {self.version}")


@dataclass(slots=True)
class Response(Message):
    status: int = 200
    reason: str = "OK"
    version: str = SIP_VERSION

    def to_bytes(self) -> bytes:
        return self._serialize(f"{self.version} {self.status} {self.reason}")


# -- parsing -------------------------------------------------------------------------


def parse_message(data: bytes, exact: bool = False) -> Request | Response:
    """Parse one whole message (a datagram, or one framed by `StreamFramer`).

    `exact`: `data` must be one message and nothing more (a WebSocket message, RFC 7118
    section 5), where a datagram's bytes past Content-Length are dropped (RFC 3261 18.3).
    Raises SipError: 513 for an oversized message, 400 for malformed syntax,
    416 for an unsupported Request-URI scheme, 505 for another SIP version.
    """
    if len(data) > MAX_MESSAGE_SIZE:
        raise SipError(513, "Message Too Large")
    # RFC 3261 7.5: implementations SHOULD ignore CRLFs before the start line.
    # Done on the bytes, because "\r\n\r\n" + message would otherwise look
    # like an empty header block.
    start = 0
    while data.startswith(b"\r\n", start):
        start += 2
    end = data.find(b"\r\n\r\n", start)
    if end < 0:
        raise SipError(400, "Incomplete Message: no empty line after headers")
    raw_head = data[start:end]
    try:
        head = raw_head.decode("utf-8")
    except UnicodeDecodeError:
        # Keep going with the raw bytes preserved: the answer must still be able to
        # echo Via/From/To back, and RFC 4475 allows non-UTF-8 in some places.
        head = raw_head.decode("utf-8", "surrogateescape")
    body = data[end + 4 :]

    lines = head.split("\r\n")
    # Every control byte of the usual head is half of a line-ending CRLF: one C-level
    # pass counts them; only a head with others needs looking at closely.
    if len(raw_head) - len(raw_head.translate(None, CONTROL_BYTES)) != 2 * (len(lines) - 1):
        _check_control_characters(lines)
    headers, names = _parse_header_lines(head, lines)

    if lines[0].startswith("SIP/"):
        message: Request | Response = _parse_status_line(lines[0], headers, names)
    else:
        message = _parse_request_line(lines[0], headers, names)

    if "Content-Length" in names:
        length = parse_digits(headers[names["Content-Length"]][1], MAX_MESSAGE_SIZE + 1)
        if length is None:
            raise SipError(400, "Bad Content-Length")
        if length > len(body):
            raise SipError(400, "Content-Length Larger Than Message")
        if exact and body[length:].strip(b"\r\n"):
            raise SipError(400, "More Than One Message")
        body = body[:length]
    message.body = body
    return message


def _check_control_characters(lines: list[str]) -> None:
    """Raise SipError 400 naming the first control character that `lines` (a head split at CRLF) may not carry.

    A bare CR or LF above all: echoed in an answer, it would end the line it is
    in and start headers of the sender's choosing.
    """
    where = "Status-Line" if lines[0].startswith("SIP/") else "Request-Line"
    for index, line in enumerate(lines):
        if index and line[:1] not in (" ", "\t"):  # a continuation line is still its header's
            raw_name = line.partition(":")[0].rstrip(" \t")
            where = canonical_name(raw_name[:40]) if is_token(raw_name) else "Header Line"
        position = unescaped_control(line, quoted_pairs=index > 0)
        if position >= 0:
            raise SipError(400, f"Bad {where}: control character 0x{ord(line[position]):02X}")


def _parse_header_lines(head: str, lines: list[str]) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """The header lines as (canonical name, value) pairs, and where each name first occurs.

    `lines` is `head` (start line and headers) split at CRLF. Looking at the
    whole block first spares the usual message per-line work: most have no
    line that continues the one before (RFC 3261 7.3.1), no '"' (a challenge
    leg's REGISTER has none), and are shorter than the longest line allowed.
    """
    if len(lines) - 1 > MAX_HEADERS:
        raise SipError(400, f"Too Many Headers (limit {MAX_HEADERS})")
    if len(head) > MAX_HEADER_LINE and max(map(len, lines)) > MAX_HEADER_LINE:
        raise SipError(400, f"Header Line Too Long (limit {MAX_HEADER_LINE} bytes)")
    folded = "\r\n " in head or "\r\n\t" in head
    headers: list[tuple[str, str]] = []
    names: dict[str, int] = {}  # name -> position of its first occurrence
    known = _header_names.get
    for line in lines[1:]:
        if folded and line[:1] in (" ", "\t"):
            if not headers:
                raise SipError(400, "Bad Header Folding: continuation before any header")
            # A value that starts on the continuation line gets no leading space, so a
            # folded "Call-ID:\r\n abc" is the same Call-ID as "Call-ID: abc".
            name, value = headers[-1]
            continuation = line.strip(" \t")
            headers[-1] = (name, f"{value} {continuation}" if value and continuation else value or continuation)
            continue
        raw_name, colon, value = line.partition(":")
        if not colon:
            raise SipError(400, f"Bad Header Line: no colon in {line[:40]!r}")
        name = known(raw_name) or _header_name(raw_name)
        if name not in names:  # the usual case first: one lookup per line
            names[name] = len(headers)
        elif name in SINGLETON_HEADERS:
            # RFC 4475 mcl01/multi01: two Content-Lengths or CSeqs cannot both be right.
            raise SipError(400, f"Duplicate {name} Header")
        headers.append((name, value.strip(" \t")))
    if len(head) > MAX_ECHOED_VALUE:
        # Only what gets answered needs room for what an answer adds: not a response,
        # nor an ACK (whose To a proxy copies from the response it acknowledges).
        _check_value_lengths(headers, echoed=not lines[0].startswith(("SIP/", "ACK ")))
    # A list header whose quotes do not balance cannot be split into its values:
    # reject it here, with the precise error, rather than on some later get().
    if '"' in head:
        for name, value in [header for header in headers if '"' in header[1] and header[0] in LIST_HEADERS]:
            list_elements(name, value)
    return headers, names


def _check_value_lengths(headers: list[tuple[str, str]], *, echoed: bool) -> None:
    """SipError 400 for a header longer than we can send on in one line (a folded one), or echo in an answer."""
    for name, value in headers:
        limit = MAX_ECHOED_VALUE if echoed and name in _ECHOED else MAX_HEADER_LINE
        if len(value) > limit:
            raise SipError(400, f"Header Line Too Long: {name} (limit {limit} bytes)")


# Headers a message may carry once only (RFC 3261 20: not comma-separated lists).
SINGLETON_HEADERS = frozenset(["Call-ID", "CSeq", "Content-Length", "From", "To", "Max-Forwards", "Expires"])

# Raw header name (as spelled on the wire) -> canonical name. UAs spell the same
# dozen names on every message, so validating and canonicalizing each spelling
# once takes a per-character loop off the hot path. Bounded against junk.
_header_names: dict[str, str] = {}
_MAX_CACHED_HEADER_NAMES = 4096


def _header_name(raw: str) -> str:
    name = _header_names.get(raw)
    if name is not None:
        return name
    stripped = raw.rstrip(" \t")
    if not stripped or not all(c in TOKEN_CHARS for c in stripped):
        raise SipError(400, f"Bad Header Name {stripped[:40]!r}")
    name = canonical_name(stripped)
    if len(_header_names) < _MAX_CACHED_HEADER_NAMES:
        _header_names[raw] = name
    return name


def _parse_request_line(line: str, headers: list[tuple[str, str]], names: dict[str, int]) -> Request:
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        raise SipError(400, _request_line_problem(line, parts))
    method, uri, version = parts
    if method not in KNOWN_METHODS and not all(c in TOKEN_CHARS for c in method):
        raise SipError(400, "Bad Method")
    if version != SIP_VERSION and version.upper() != SIP_VERSION:
        if version.upper().startswith("SIP/"):
            raise SipError(505, f"Version Not Supported: {version[:20]}")
        raise SipError(400, "Bad Request-Line: no SIP version")
    scheme, colon, _ = uri.partition(":")
    if not colon or scheme not in _USUAL_SCHEMES:
        # Not a scheme at all (RFC 4475 ltgtruri: "<sip:user@example.com>") is a
        # malformed request, 400; only a well-formed but unknown scheme is 416.
        if uri.startswith("<"):
            raise SipError(400, "Bad Request-URI: enclosed in <>")
        if not colon or scheme[:1] not in _SCHEME_FIRST or not all(c in _SCHEME_CHARS for c in scheme):
            raise SipError(400, "Bad Request-URI: no scheme")
        if scheme.lower() not in ("sip", "sips", "tel"):
            raise SipError(416, f"Unsupported URI Scheme: {scheme[:40]}")
    if as_request_uri(uri) != uri:
        # RFC 3261 19.1.1: a Request-URI carries no header fields. RFC 4475 escruri
        # allows ignoring them, but a proxy must then take care that they never reach
        # a forwarded request or a 3xx's Contact; rejecting is the plain safe answer.
        raise SipError(400, "Bad Request-URI: header fields (?...) not allowed")
    request = Request(headers=headers, method=method, uri=uri, first_index=names)
    if not names.keys() >= _REQUIRED_REQUEST_HEADER_SET:  # one C-level check; the loop names the first missing
        for name in REQUIRED_REQUEST_HEADERS:
            if name not in names:
                raise SipError(400, f"Missing {name} Header")
    cseq = request._cseq = _parsed_cseq(headers[names["CSeq"]][1])  # what Request.cseq gives, kept
    if cseq[1] != method:
        if method not in KNOWN_METHODS:
            # RFC 4475 mismatch02: 400 would do, but 501 is what it recommends, proxies
            # above all: a method we do not know may one day be defined otherwise.
            raise SipError(501, f"Not Implemented: {method[:40]}")
        raise SipError(400, "CSeq Method Does Not Match Request Method")
    return request


_USUAL_SCHEMES = frozenset(["sip", "sips", "tel"])


def _request_line_problem(line: str, parts: list[str]) -> str:
    """What is wrong with a Request-Line that is not Method SP Request-URI SP SIP-Version (RFC 3261 7.1).

    RFC 4475 lwsstart, trws and lwsruri: each space out of place is rejected, and
    said which, rather than read liberally (a proxy would have to rewrite the line).
    """
    if "\t" in line:
        return "Bad Request-Line: HTAB between elements, not SP"
    if line.endswith(" "):
        return "Bad Request-Line: SP after SIP-Version"
    if line.startswith(" "):
        return "Bad Request-Line: SP before Method"
    if "" in parts:
        return "Bad Request-Line: more than one SP between elements"
    if len(parts) > 3 and parts[-1].upper().startswith("SIP/"):
        return "Bad Request-Line: whitespace in Request-URI"
    return "Bad Request-Line: not Method SP Request-URI SP SIP-Version"


def _parse_status_line(line: str, headers: list[tuple[str, str]], names: dict[str, int]) -> Response:
    version, _, rest = line.partition(" ")
    code, _, reason = rest.partition(" ")
    if version.upper() != SIP_VERSION:
        raise SipError(505, "Version Not Supported")
    status = parse_digits(code, 1000) if len(code) == 3 else None
    if status is None or not 100 <= status <= 699:
        raise SipError(400, "Bad Status-Line")
    if "\t" in reason:
        # RFC 3261 25.1 allows HTAB in a reason phrase; as a space it is no control
        # character in what a proxy passes on.
        reason = reason.replace("\t", " ")
    return Response(headers=headers, status=status, reason=reason, first_index=names)


# -- answering -----------------------------------------------------------------------


def make_response(request: Request, status: int, reason: str, to_tag: str | None = None) -> Response:
    """A response to `request` per RFC 3261 8.2.6: Via, From, To, Call-ID and CSeq copied.

    A final or provisional (not 100) response gets a To tag when the request's
    To has none: `to_tag`, or by default one derived from the top Via, so that a
    retransmitted request is answered with the same tag even when it is
    processed again.
    """
    # The request's own (name, value) pairs, in its order; only a To may need a new one.
    headers = [header for header in request.headers if header[0] in _COPIED_TO_RESPONSE]
    if status > 100:
        for position, (name, value) in enumerate(headers):
            if name == "To" and not _has_tag(value):
                headers[position] = (name, f"{value};tag={to_tag or transaction_tag(request)}")
    if len(reason) > MAX_REASON_PHRASE or not reason.isprintable():  # not the usual constant phrase
        reason = reason_phrase(reason)
    return Response(headers=headers, status=status, reason=reason)


# What this server calls itself in the Server header of its answers (no version: it tells an attacker nothing).
SERVER_NAME = "sipreg"


def server_response(
    request: Request, status: int, reason: str, headers: Sequence[tuple[str, str]] = ()
) -> Response:
    """An answer of this server to `request`: the RFC 3261 8.2.6 copy, our Server header, `headers`."""
    response = make_response(request, status, reason)
    response.add("Server", SERVER_NAME)
    for name, value in headers:
        response.add(name, value)
    return response


# The option tags (RFC 3261 19.2) this server supports.
SUPPORTED_EXTENSIONS: frozenset[str] = frozenset({"path", "outbound"})  # RFC 3327, RFC 5626
# A 420's Unsupported names the request's option tags back: the first few, each cut
# short, since a Require may carry any number of any length and an answer stays small.
MAX_OPTION_TAGS_NAMED = 8
MAX_OPTION_TAG = 64


def check_extensions(request: Request, header: str) -> None:
    """SipError 420 naming the option tags of `header` we do not support: Require as a UAS (RFC 3261
    8.2.2.3), Proxy-Require as a proxy (16.3 step 5); 400 for one that is not an option tag."""
    required = request.get_all(header)
    if not required:
        return
    unsupported = [option for option in required if option.lower() not in SUPPORTED_EXTENSIONS]
    if not unsupported:
        return
    for option in unsupported:
        if not is_token(option):
            raise SipError(400, f"Bad {header}: not an option tag: {option[:40]!r}")
    named = ", ".join([option[:MAX_OPTION_TAG] for option in unsupported[:MAX_OPTION_TAGS_NAMED]])
    raise SipError(420, "Bad Extension", [("Unsupported", named)])


def error_response(request: Request, error: SipError) -> Response:
    """The answer a SipError stands for."""
    return server_response(request, error.status, error.reason, error.headers)


def transaction_tag(request: Request) -> str:
    """A To tag that is the same for every copy of one request (8 hex digits)."""
    try:
        via = request.get("Via")
    except SipError:
        # A Via whose quotes do not balance, which neither the parser nor salvage_request lets
        # through: an answer must go out all the same, and the Call-ID tells requests apart too.
        via = None
    return "%08x" % zlib.crc32((via or request.call_id).encode("utf-8", "surrogateescape"))


_COPIED_TO_RESPONSE = frozenset(["Via", "From", "To", "Call-ID", "CSeq"])
_ECHOED = _COPIED_TO_RESPONSE | {"Contact"}  # see MAX_ECHOED_VALUE


def _has_tag(to_value: str) -> bool:
    """Whether a To value carries a tag header parameter (any LWS, any case; not a URI param)."""
    if "tag" not in to_value.lower():
        return False  # the usual request To: no need to parse it
    try:
        return "tag" in parse_name_addr(to_value).params
    except ValueError:
        # Unparsable: judge by the text, as adding a second tag would be worse.
        return ";tag=" in "".join(to_value.lower().split())


# -- streams ---------------------------------------------------------------------------


class KeepAlive:
    """A CRLF keep-alive on a stream (RFC 5626 4.4.1): a double CRLF "ping" wants a CRLF "pong"."""

    __slots__ = ("wants_pong",)

    def __init__(self, wants_pong: bool):
        self.wants_pong = wants_pong


class StreamFramer:
    """Cuts a TCP/TLS byte stream into whole SIP messages using Content-Length (RFC 3261 18.3).

    Feed bytes with `feed`; it returns the complete events: `bytes` of one
    message (to hand to `parse_message`) or `KeepAlive`. A stream that cannot be
    framed raises SipError; the connection must then be closed, because its
    position in the stream is lost.
    """

    def __init__(self, max_message_size: int = MAX_MESSAGE_SIZE):
        self._buffer = bytearray()
        self._max = max_message_size

    @property
    def unframed(self) -> bytes:
        """What was fed but is not a whole message yet (after an error: the offending one)."""
        return bytes(self._buffer)

    @property
    def in_message(self) -> bool:
        """Whether what is held is the start of a message not yet whole.

        What `feed` leaves unframed is either nothing, a CR or CRLF that may be
        the start of a keep-alive ping (which is not a message begun), or the
        first bytes of a message.
        """
        return bool(self._buffer) and self._buffer[0] not in b"\r\n"

    def feed(self, data: bytes) -> list[bytes | KeepAlive]:
        self._buffer += data
        events: list[bytes | KeepAlive] = []
        buffer = self._buffer
        while buffer:
            # Keep-alives and stray CRLFs between messages.
            if buffer[:1] == b"\r" or buffer[:1] == b"\n":
                if buffer.startswith(b"\r\n\r\n"):
                    del buffer[:4]
                    events.append(KeepAlive(wants_pong=True))
                    continue
                if buffer.startswith(b"\r\n"):
                    if len(buffer) < 4 and b"\r\n\r\n".startswith(bytes(buffer)):
                        break  # maybe the start of a ping: wait for more
                    del buffer[:2]
                    events.append(KeepAlive(wants_pong=False))
                    continue
                if len(buffer) == 1 and buffer[:1] == b"\r":
                    break
                del buffer[:1]
                continue
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > self._max:
                    raise SipError(513, "Message Too Large")
                break
            length = _content_length(bytes(buffer[:end]))
            total = end + 4 + length
            if total > self._max:
                raise SipError(513, "Message Too Large")
            if len(buffer) < total:
                break
            events.append(bytes(buffer[:total]))
            del buffer[:total]
        return events


def _content_length(head: bytes) -> int:
    """Content-Length from a header block; absent means 0 (lenient, like Kamailio).

    Two of them (RFC 4475 mcl01) lose the framing as surely as a bad one: which
    one ends the message cannot be known, so the stream cannot go on.
    """
    length: int | None = None
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        name = name.strip().lower()
        if name == b"content-length" or name == b"l":
            if length is not None:
                raise SipError(400, "Duplicate Content-Length Header")
            # Capped just past any allowed size: the caller answers 513 for it.
            length = parse_digits(value.strip().decode("latin-1"), MAX_MESSAGE_SIZE + 1)
            if length is None:
                raise SipError(400, "Bad Content-Length")
    return length or 0


def salvage_request(data: bytes) -> Request | None:
    """The parts of an unparsable request needed to answer it, or None.

    RFC 3261 needs Via, From, To, Call-ID and CSeq to form any response; when a
    message is malformed elsewhere (a bad header, a bad URI, a wrong version)
    we still answer it with the precise error instead of leaving the UA to
    retransmit into silence. Responses and messages without those headers are
    not answered. What is kept is what an answer can carry (`_echoable`), and a
    header that may appear once only once, so that the answer parses.
    """
    head = data[:MAX_MESSAGE_SIZE].split(b"\r\n\r\n", 1)[0].decode("utf-8", "surrogateescape")
    lines = head.split("\r\n")
    while lines and not lines[0]:
        lines.pop(0)
    if not lines or lines[0].startswith("SIP/"):
        return None
    method = lines[0].split(" ", 1)[0]
    headers: list[tuple[str, str]] = []
    names: set[str] = set()
    for line in lines[1 : MAX_HEADERS + 1]:
        name, colon, value = line.partition(":")
        if colon and len(value) <= MAX_ECHOED_VALUE:
            canonical = canonical_name(name.strip())
            if canonical in _COPIED_TO_RESPONSE and (canonical == "Via" or canonical not in names):
                names.add(canonical)
                headers.append((canonical, _echoable(value)))
    if not names.issuperset(REQUIRED_REQUEST_HEADERS):
        return None
    return Request(headers=headers, method=method, uri="")


def _echoable(value: str) -> str:
    """A header value of an unparsable request as its answer can carry it back.

    Without control characters (a bare CR would end the line in the answer and
    start a header of the sender's choosing), and cut where a quoted string is
    left open, which would make the answer as unparsable as the request.
    """
    value = value.translate(WITHOUT_CONTROLS)
    open_quote = unterminated_quote(value)
    return (value if open_quote < 0 else value[:open_quote]).strip(WHITESPACE)
