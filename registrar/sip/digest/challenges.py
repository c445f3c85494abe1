"""The Digest challenges a server sends: WWW-Authenticate and Proxy-Authenticate values (RFC 7616 section 3.3)."""

from __future__ import annotations

from registrar.sip.digest.algorithms import canonical_algorithm
from registrar.sip.grammar import quote

__all__ = ["challenge"]


def challenge(
    realm: str,
    nonce: str,
    algorithm: str,
    *,
    stale: bool = False,
    opaque: str | None = None,
) -> str:
    """One challenge header value, e.g. ``Digest realm="x", nonce="...", algorithm=MD5, qop="auth"``.

    The algorithm token is unquoted and qop quoted, as in RFC 7616. Challenges
    always carry qop="auth": a response without one is a downgrade.
    """
    value = (
        f"Digest realm={quote(realm)}, nonce={quote(nonce)}, "
        f'algorithm={canonical_algorithm(algorithm)}, qop="auth"'
    )
    if opaque is not None:
        value += f", opaque={quote(opaque)}"
    if stale:
        value += ", stale=true"
    return value
