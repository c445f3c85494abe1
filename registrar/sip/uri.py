"""SIP and SIPS URIs (RFC 3261 section 19.1): parsing, comparison keys, serialization.

`tel:` URIs (RFC 3966) are parsed too, enough to route them: their number is
the `user` and they have no host.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from urllib.parse import quote as percent_encode
from urllib.parse import unquote as percent_decode

from registrar.sip.grammar import format_params, parse_digits, parse_params

SUPPORTED_SCHEMES = ("sip", "sips", "tel")

# Characters a user part may carry unescaped besides alphanumerics and "-_.~"
# (RFC 3261 25.1: the remaining marks of unreserved, and user-unreserved).
_USER_SAFE = "!*'()&=+$,;?/"


def unbracketed(host: str) -> str:
    """An IPv6 reference's address ("[::1]" -> "::1"); other hosts unchanged."""
    return host[1:-1] if host.startswith("[") else host


def bracketed(host: str) -> str:
    """An address as a URI or a host:port writes it: IPv6 in brackets ("::1" -> "[::1]"); other hosts unchanged."""
    return f"[{host}]" if ":" in host else host


def typed_aor(text: str) -> str:
    """An AOR as a person types it into an API or a command (user@domain, or a sip: or sips: URI's), the
    domain lower-cased as the location service keys it; ValueError unless it is user@domain."""
    text = text.strip()
    if text.startswith(("sip:", "sips:")):
        text = text.partition(":")[2]
    user, at, host = text.rpartition("@")
    if not at or not user or not host:
        raise ValueError(f"{text!r} is not user@domain")
    return f"{user}@{host.lower()}"


class URIError(ValueError):
    """A URI that does not follow RFC 3261 19.1; the message says what is wrong."""


# Not frozen, and read-only all the same: parse_uri shares each URI it returns
# (memoized), so nothing may assign to one. A frozen dataclass's __init__ sets
# each field through object.__setattr__, four times the cost, and two URIs are
# parsed per REGISTER (To and Contact) that no cache holds under a real load.
@dataclass(slots=True)
class URI:
    scheme: str  # lower case: "sip", "sips" or "tel"
    user: str | None = None  # percent-decoded
    host: str = ""  # lower case; IPv6 references keep their brackets: "[::1]"
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: str = ""  # the raw ?hname=hvalue&... part, without "?"
    password: str | None = None

    @property
    def aor(self) -> str:
        """user@host (or just host): the address-of-record form of RFC 3261 10.3 step 5."""
        return f"{self.user}@{self.host}" if self.user is not None else self.host

    @property
    def transport(self) -> str | None:
        value = self.params.get("transport")
        return value.lower() if value else None

    @property
    def host_no_brackets(self) -> str:
        return unbracketed(self.host)

    def __str__(self) -> str:
        if self.scheme == "tel":
            return f"tel:{self.user}{format_params(self.params)}"
        userinfo = ""
        if self.user is not None:
            # The user is kept decoded, so it must be escaped again: a user of
            # "sips:user@example.com" (RFC 4475 esc01) is "sips%3Auser%40example.com".
            user = percent_encode(self.user, safe=_USER_SAFE, errors="surrogateescape")
            userinfo = user if self.password is None else f"{user}:{self.password}"
            userinfo += "@"
        port = f":{self.port}" if self.port is not None else ""
        headers = f"?{self.headers}" if self.headers else ""
        return f"{self.scheme}:{userinfo}{self.host}{port}{format_params(self.params)}{headers}"


# sip:user@host:port;params with nothing unusual in it (no escapes, password,
# user parameters, IPv6 or ?headers): one regex pass. Everything else, and every
# error, goes the careful way below.
_PLAIN_SIP_URI = re.compile(
    r"(sips?):(?:([A-Za-z0-9\-_.!~*'()&=+$,]+)@)?([A-Za-z0-9\-.]+)(?::([0-9]{1,5}))?((?:;[^?;@ \t]+)*)"
)


# The same URIs come back on every refresh (the domain, each AOR, each Contact), so
# parses are memoized. A cached URI is shared: treat it, params included, as read-only.
@functools.lru_cache(maxsize=4096)
def parse_uri(text: str) -> URI:
    """Parse a SIP, SIPS or tel URI; raises URIError naming the problem."""
    plain = _PLAIN_SIP_URI.fullmatch(text)
    if plain is not None:
        scheme, user, host, port_text, params = plain.groups()
        port = int(port_text) if port_text else None
        if port is None or 0 < port < 65536:
            return URI(scheme=scheme, user=user, host=host.lower(), port=port, params=_params(params) if params else {})
    return parse_uri_carefully(text)


def parse_uri_carefully(text: str) -> URI:
    """parse_uri without its fast path: every form RFC 3261 19.1 allows, every error named."""
    scheme, colon, rest = text.strip().partition(":")
    if not colon:
        raise URIError(f"no scheme in URI {text!r}")
    scheme = scheme.lower()
    if scheme == "tel":
        number, _, params = rest.partition(";")
        if not number:
            raise URIError("tel URI without a number")
        return URI(scheme="tel", user=number, params=_params(params))
    if scheme not in ("sip", "sips"):
        raise URIError(f"unsupported URI scheme {scheme!r}")

    user = password = None
    at = _userinfo_end(rest)
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, colon, pw = userinfo.partition(":")
        if colon:
            password = pw
        if not user:
            raise URIError("empty user part in URI")
        user = percent_decode(user) if "%" in user else user
    rest, question, headers = rest.partition("?")
    hostport, _, params = rest.partition(";")
    host, port = _split_hostport(hostport)
    return URI(
        scheme=scheme,
        user=user,
        password=password,
        host=host,
        port=port,
        params=_params(params),
        headers=headers if question else "",
    )


def _userinfo_end(text: str) -> int:
    """The index of the '@' that ends the userinfo, or -1 when there is none.

    The user part may contain ';' and '?' (user-unreserved, RFC 3261 25.1;
    RFC 4475 intmeth has "...crazy?,/;;*@example.com"), so ?headers can only be
    split off after the userinfo. A bare '@' is valid nowhere else, but e-mail
    style user names ("alice@corp.example@sip.example") are common enough to
    tolerate: the last '@' before any '?' wins. Only when no '@' precedes the
    first '?' does that '?' belong to the user part.
    """
    question = text.find("?")
    if question < 0:
        return text.rfind("@")
    at = text.rfind("@", 0, question)
    return at if at >= 0 else text.find("@", question)


def _params(text: str) -> dict[str, str | None]:
    try:
        return parse_params(text)
    except ValueError as exc:
        raise URIError(f"bad URI parameter: {exc}") from None


def _split_hostport(hostport: str) -> tuple[str, int | None]:
    """Split host[:port]; IPv6 references are "[addr]" with an optional ":port" after."""
    if not hostport:
        raise URIError("URI without a host")
    if hostport[0] == "[":
        end = hostport.find("]")
        if end < 0:
            raise URIError("unterminated IPv6 reference in URI")
        host = hostport[: end + 1].lower()
        tail = hostport[end + 1 :]
        if tail and not tail.startswith(":"):
            raise URIError("junk after IPv6 reference in URI")
        port_text = tail[1:] if tail else None
    else:
        host, colon, port_text = hostport.partition(":")
        host = host.lower()
        if not colon:
            port_text = None
        if not host or any(c in host for c in " \t<>\"@[]"):
            raise URIError(f"bad host {host!r} in URI")
    if port_text is None:
        return host, None
    port = parse_digits(port_text, 65536)
    if port is None or not 0 < port < 65536:
        raise URIError(f"bad port {port_text[:20]!r} in URI")
    return host, port


def as_request_uri(text: str) -> str:
    """The URI `text` as a Request-URI may carry it: without ?headers (RFC 3261 19.1.1).

    A Contact may have them (RFC 4475 regescrt registers one); a proxy that sends a
    request there MUST remove them (RFC 3261 16.6 step 2), and the next hop would
    refuse the request if it did not.
    """
    if "?" not in text:
        return text
    try:
        headers = parse_uri(text).headers
    except URIError:
        return text
    return text[: -len(headers) - 1] if headers else text


def split_hostport(hostport: str, default_port: int | None = None) -> tuple[str, int | None]:
    """host[:port] as used by Via sent-by; raises URIError."""
    host, port = _split_hostport(hostport.strip())
    return host, port if port is not None else default_port


# RFC 3261 19.1.4: these parameters must match even when only one of two URIs has them.
_PARAMETERS_IN_EITHER = ("user", "ttl", "method", "maddr", "transport")


def parameters_agree(a: URI, b: URI) -> bool:
    """The uri-parameter part of RFC 3261 19.1.4's URI comparison.

    A parameter both carry must have the same value (case-insensitively); user,
    ttl, method, maddr and transport must be in both or in neither; any other
    parameter in only one of them does not count.
    """
    ours = {name.lower(): (value or "").lower() for name, value in a.params.items()}
    theirs = {name.lower(): (value or "").lower() for name, value in b.params.items()}
    if any((name in ours) != (name in theirs) for name in _PARAMETERS_IN_EITHER):
        return False
    return all(ours[name] == theirs[name] for name in ours.keys() & theirs.keys())
