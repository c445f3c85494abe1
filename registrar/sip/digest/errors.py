"""DigestError, the one exception of the digest package, and how its reason phrases name a value."""

from __future__ import annotations

from registrar.sip.grammar import is_token


class DigestError(ValueError):
    """Credentials that cannot be verified; str(error) is a short reason phrase."""


class UnsupportedScheme(DigestError):
    """Credentials of a scheme other than Digest (Basic, or RFC 4475 regaut01's NoOneKnowsThisScheme)."""


def naming(reason: str, value: str) -> str:
    """`reason` plus the offending value when it is a short token, so the
    phrase never carries quotes, control characters or a megabyte of input."""
    if len(value) <= 32 and is_token(value):
        return f"{reason} {value}"
    return reason
