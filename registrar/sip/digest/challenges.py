"""The Digest challenges a server sends: WWW-Authenticate and Proxy-Authenticate values (RFC 7616 section 3.3)."""

from __future__ import annotations

from collections.abc import Iterable

from registrar.sip.digest.algorithms import canonical_algorithm
from registrar.sip.grammar import quote

__all__ = ["challenge", "challenge_values"]


def challenge_values(
    realm: str,
    nonce: str,
    algorithms: Iterable[str],
    *,
    stale: bool = False,
    opaque: str | None = None,
) -> list[str]:
    """One challenge header value per algorithm, in the given order, all with `nonce`.

    E.g. ``Digest realm="x", nonce="...", algorithm=MD5, qop="auth"``: the
    algorithm token is unquoted and qop quoted, as in RFC 7616. Challenges
    always carry qop="auth": a response without one is a downgrade.
    """
    # What the values share is quoted once: a 401 offers SHA-256 and MD5.
    before = f"Digest realm={quote(realm)}, nonce={quote(nonce)}, algorithm="
    after = ', qop="auth"'
    if opaque is not None:
        after += f", opaque={quote(opaque)}"
    if stale:
        after += ", stale=true"
    return [f"{before}{canonical_algorithm(algorithm)}{after}" for algorithm in algorithms]


def challenge(
    realm: str,
    nonce: str,
    algorithm: str,
    *,
    stale: bool = False,
    opaque: str | None = None,
) -> str:
    """One challenge header value, e.g. ``Digest realm="x", nonce="...", algorithm=MD5, qop="auth"``."""
    return challenge_values(realm, nonce, (algorithm,), stale=stale, opaque=opaque)[0]
