"""Digest credentials: Authorization and Proxy-Authorization values read into Credentials (RFC 7616 section 3.4).

Parameters are read with the auth-param rules of registrar/sip/grammar.py;
names we do not read are skipped, as RFC 7616 asks, and a value that cannot be
verified is refused with a short reason phrase naming what is wrong. qop
"auth" only: "auth-int" is refused by name, and so are username* (RFC 5987
encoding) and userhash, which this server cannot invert.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass

from registrar.sip.digest.algorithms import ALGORITHMS, MD5
from registrar.sip.digest.errors import DigestError, UnsupportedScheme, naming
from registrar.sip.grammar import auth_params, auth_scheme, plain_auth_params

__all__ = ["Credentials", "parse_credentials"]


# Not frozen: a frozen dataclass's __init__ sets each field through
# object.__setattr__, four times the cost of a plain one, and one of these is
# made for every authenticated REGISTER. Nothing keeps or shares one; read-only
# by convention.
@dataclass(slots=True)
class Credentials:
    """The parameters of a Digest credentials header, unquoted and unescaped.

    `algorithm` is canonical ("MD5" when absent); `nc` is the 8 hex digits as
    sent (they are hashed as sent); `qop` is as sent ("auth" in any case).
    """

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    cnonce: str | None = None
    qop: str | None = None
    nc: str | None = None
    opaque: str | None = None


# Parameters we read; duplicates of these are refused because two parties
# could each read a different copy. Others are ignored, as RFC 7616 asks.
_KNOWN_PARAMETERS = frozenset(
    {"username", "username*", "realm", "nonce", "uri", "response", "algorithm",
     "cnonce", "qop", "nc", "opaque", "userhash"}
)


def _parameters(header_value: str) -> dict[str, str]:
    """The known parameters of Digest credentials, unquoted; raises DigestError."""
    # The credentials nearly every UA sends take grammar's fast path; everything
    # else, and every error, goes the careful way.
    if header_value.startswith("Digest "):
        parameters = plain_auth_params(header_value, len("Digest "))
        # Only when every name is known is this what the careful loop gives;
        # otherwise it decides (skipping unknown names).
        if parameters is not None and _KNOWN_PARAMETERS.issuperset(parameters):
            return parameters
    return _parameters_carefully(header_value)


def _parameters_carefully(header_value: str) -> dict[str, str]:
    """_parameters without its fast path: any spacing, case, escapes and errors."""
    scheme = auth_scheme(header_value)
    if scheme is None:
        if not header_value.strip():
            raise DigestError("empty credentials")
        raise DigestError("malformed credentials scheme")
    name, start = scheme
    if name.lower() != "digest":
        raise UnsupportedScheme(naming("unsupported scheme", name))
    parameters: dict[str, str] = {}
    duplicate = None
    try:
        for name, value in auth_params(header_value, start):
            if name not in _KNOWN_PARAMETERS:
                continue
            if name in parameters:
                duplicate = name
                break
            parameters[name] = value
    except ValueError as error:
        raise DigestError(str(error)) from None
    if duplicate is not None:
        raise DigestError(f"duplicate {duplicate}")
    return parameters


def _is_hex(value: str, length: int) -> bool:
    """Whether `value` is `length` hex digits; `length` is even (8, 32 or 64).

    binascii checks them in C, a quarter of what a set of digits costs per
    response (measured); it refuses an odd length, hence the even `length`.
    """
    if len(value) != length:
        return False
    try:
        binascii.a2b_hex(value)
    except ValueError:  # binascii.Error is one, and so is a character that is not ASCII
        return False
    return True


def parse_credentials(header_value: str) -> Credentials:
    """Parse a Digest Authorization/Proxy-Authorization header value.

    Raises DigestError (and nothing else, for any string) when the value is
    malformed, incomplete or uses what this server does not support.
    """
    parameters = _parameters(header_value)
    get = parameters.get

    username = get("username")
    if username is None:
        # RFC 7616 username* (RFC 5987 encoding) is not supported.
        raise DigestError("username* is not supported" if "username*" in parameters else "missing username")
    if not username:
        raise DigestError("empty username")
    realm = get("realm")
    if realm is None:
        raise DigestError("missing realm")
    nonce = get("nonce")
    if nonce is None:
        raise DigestError("missing nonce")
    uri = get("uri")
    if uri is None:
        raise DigestError("missing uri")
    response = get("response")
    if response is None:
        raise DigestError("missing response")

    algorithm_name = get("algorithm")
    if algorithm_name is None:
        algorithm = MD5  # RFC 7616 section 3.4: absent means MD5
    else:
        found = ALGORITHMS.get(algorithm_name.lower())
        if found is None:
            raise DigestError(naming("unsupported algorithm", algorithm_name))
        algorithm = found
    if not _is_hex(response, algorithm.hex_length):
        raise DigestError(f"response is not {algorithm.hex_length} hex digits")

    qop = get("qop")
    cnonce = get("cnonce")
    nc = get("nc")
    if qop is not None:
        if qop.lower() != "auth":
            raise DigestError(naming("unsupported qop", qop))
        if cnonce is None:
            raise DigestError("missing cnonce")
        if nc is None:
            raise DigestError("missing nc")
    elif algorithm.session and cnonce is None:
        raise DigestError("missing cnonce")
    if nc is not None:
        if not _is_hex(nc, 8):
            raise DigestError("nc is not 8 hex digits")
        if nc == "00000000":
            raise DigestError("nc is zero")
    # The username would be H(username:realm), which this server cannot invert.
    userhash = get("userhash")
    if userhash is not None and userhash.lower() == "true":
        raise DigestError("userhash is not supported")

    return Credentials(
        username, realm, nonce, uri, response, algorithm.name, cnonce, qop, nc, get("opaque")
    )
