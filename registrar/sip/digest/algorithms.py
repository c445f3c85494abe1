"""The Digest algorithms and the response computation (RFC 7616 section 3.4, RFC 8760, RFC 2617), pure code.

- Algorithms: MD5 and SHA-256 (RFC 8760), and their "-sess" variants when a UA
  answers with one: the stored HA1 is the base algorithm's, re-hashed with
  nonce and cnonce per request.
- Strings are hashed as UTF-8 with surrogateescape, so a message decoded
  with surrogateescape hashes the bytes the UA sent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from registrar.sip.digest.errors import DigestError, naming

__all__ = ["SUPPORTED_ALGORITHMS", "canonical_algorithm", "compute_response", "ha1"]


def utf8(text: str) -> bytes:
    """The bytes hashed for `text`."""
    return text.encode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class Algorithm:
    """One Digest algorithm and how it computes a response."""

    name: str  # the canonical token, as offered and as keyed in Connection.ha1
    base: str  # whose HA1 is stored: "MD5" for "MD5-sess"
    hash: Callable[..., Any]  # hashlib constructor
    session: bool  # "-sess": HA1 is re-hashed with nonce and cnonce per request
    hex_length: int  # of every digest, the response included

    def response(
        self,
        ha1: str,
        nonce: str,
        method: str,
        uri: str,
        qop: str | None,
        nc: str | None,
        cnonce: str | None,
    ) -> str:
        """The `response` in hex, unchecked: compute_response checks its arguments first."""
        hash_ = self.hash
        if self.session:
            ha1 = hash_(utf8(f"{ha1}:{nonce}:{cnonce}")).hexdigest()
        ha2 = hash_(utf8(f"{method}:{uri}")).hexdigest()
        if qop is None:
            return hash_(utf8(f"{ha1}:{nonce}:{ha2}")).hexdigest()
        return hash_(utf8(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")).hexdigest()


MD5 = Algorithm("MD5", "MD5", hashlib.md5, False, 32)
SHA256 = Algorithm("SHA-256", "SHA-256", hashlib.sha256, False, 64)
MD5_SESS = Algorithm("MD5-sess", "MD5", hashlib.md5, True, 32)
SHA256_SESS = Algorithm("SHA-256-sess", "SHA-256", hashlib.sha256, True, 64)

# Keyed by canonical and by lower-case name: the parser looks up lower case,
# verify() the canonical name the parser stored.
ALGORITHMS: dict[str, Algorithm] = {}
for _algorithm in (MD5, SHA256, MD5_SESS, SHA256_SESS):
    ALGORITHMS[_algorithm.name] = _algorithm
    ALGORITHMS[_algorithm.name.lower()] = _algorithm
del _algorithm

SUPPORTED_ALGORITHMS = frozenset({"MD5", "SHA-256", "MD5-sess", "SHA-256-sess"})


def algorithm_named(name: str) -> Algorithm:
    """The algorithm `name` names, in any case; raises DigestError for an unsupported one."""
    algorithm = ALGORITHMS.get(name) or ALGORITHMS.get(name.lower())
    if algorithm is None:
        raise DigestError(naming("unsupported algorithm", name))
    return algorithm


def canonical_algorithm(name: str) -> str:
    """The canonical token for an algorithm name ("sha-256" -> "SHA-256")."""
    return algorithm_named(name).name


def ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """HA1 = H(username ":" realm ":" password), in hex: what is stored instead of the password.

    For the "-sess" variants the stored HA1 is the base algorithm's, so only
    "MD5" and "SHA-256" are accepted here.
    """
    hash_algorithm = algorithm_named(algorithm)
    if hash_algorithm.session:
        raise ValueError(f"{hash_algorithm.name} has no HA1 of its own: store the {hash_algorithm.base} one")
    return hash_algorithm.hash(utf8(f"{username}:{realm}:{password}")).hexdigest()


def compute_response(
    algorithm: str,
    ha1: str,
    nonce: str,
    method: str,
    uri: str,
    *,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
) -> str:
    """The `response` parameter for these values (RFC 7616 section 3.4.1), in hex.

    `nc` is the 8 hex digits as sent. Without `qop` this is the RFC 2069
    form, H(HA1:nonce:HA2).
    """
    hash_algorithm = algorithm_named(algorithm)
    if qop is not None and (nc is None or cnonce is None):
        raise DigestError("qop needs nc and cnonce")
    if hash_algorithm.session and cnonce is None:
        raise DigestError("missing cnonce")
    return hash_algorithm.response(ha1, nonce, method, uri, qop, nc, cnonce)
