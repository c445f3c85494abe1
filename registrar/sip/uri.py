"""SIP and SIPS URIs (RFC 3261 section 19.1): parsing, comparison keys, serialization.

`tel:` URIs (RFC 3966) are parsed too, enough to route them: their number is
the `user` and they have no host.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote as percent_decode

from registrar.sip.grammar import format_params, parse_params

SUPPORTED_SCHEMES = ("sip", "sips", "tel")


class URIError(ValueError):
    """A URI that does not follow RFC 3261 19.1; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
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
        return self.host[1:-1] if self.host.startswith("[") else self.host

    def __str__(self) -> str:
        if self.scheme == "tel":
            return f"tel:{self.user}{format_params(self.params)}"
        userinfo = ""
        if self.user is not None:
            userinfo = self.user if self.password is None else f"{self.user}:{self.password}"
            userinfo += "@"
        port = f":{self.port}" if self.port is not None else ""
        headers = f"?{self.headers}" if self.headers else ""
        return f"{self.scheme}:{userinfo}{self.host}{port}{format_params(self.params)}{headers}"


def parse_uri(text: str) -> URI:
    """Parse a SIP, SIPS or tel URI; raises URIError naming the problem."""
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

    rest, question, headers = rest.partition("?")
    user = password = None
    # The user part may itself contain ';' (user parameters) and escaped chars, but
    # never an unescaped '@', so the last '@' ends the userinfo.
    at = rest.rfind("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, colon, pw = userinfo.partition(":")
        if colon:
            password = pw
        if not user:
            raise URIError("empty user part in URI")
        user = percent_decode(user) if "%" in user else user
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
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise URIError(f"bad port {port_text!r} in URI")
    return host, int(port_text)


def split_hostport(hostport: str, default_port: int | None = None) -> tuple[str, int | None]:
    """host[:port] as used by Via sent-by; raises URIError."""
    host, port = _split_hostport(hostport.strip())
    return host, port if port is not None else default_port
