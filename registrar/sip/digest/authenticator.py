"""The Digest verdict (RFC 7616): DigestAuthenticator challenges requests and judges their credentials.

- Responses without qop (RFC 2069 style): challenges always carry
  qop="auth", so a response without qop is a downgrade that also skips the
  nonce-count replay check. ``DigestAuthenticator`` refuses it ("missing qop")
  unless built with ``require_qop=False`` for old UAs; then such a response
  is bounded only by the nonce lifetime.
- A "-sess" answer is accepted when its base algorithm was offered.
- stale=true is earned: a stale nonce yields STALE only when the response is
  right for it (RFC 7616 section 3.3); a wrong password with a stale nonce is
  FAILED, so a UA with a wrong password does not loop on stale challenges.
- Failures per nonce: with ``failures_per_nonce``, a response on a nonce that
  has met that many wrong responses (or replays) is FAILED ("nonce spent")
  unchecked, as one on an invalid nonce is (nonces.py keeps the counts).
- Unknown users: ``verify`` computes a response against a dummy HA1 and
  compares it exactly as for a known user, so the time taken does not tell
  which usernames exist.
- The ``uri`` parameter is hashed as sent; whether it must equal the
  Request-URI is the caller's policy (UAs differ in parameters and case).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from registrar.sip.digest.algorithms import ALGORITHMS
from registrar.sip.digest.challenges import challenge_values
from registrar.sip.digest.credentials import Credentials
from registrar.sip.digest.errors import naming
from registrar.sip.digest.nonces import NonceAuthority, NonceCounts, NonceCountStatus, NonceFailures, NonceStatus

__all__ = ["AuthOutcome", "AuthStatus", "DigestAuthenticator"]

# Stand-ins for the HA1 of a user that does not exist, so that the response is
# computed and compared all the same. Random, so that no response matches them.
_DUMMY_HA1 = {
    "MD5": hashlib.md5(os.urandom(32)).hexdigest(),
    "SHA-256": hashlib.sha256(os.urandom(32)).hexdigest(),
}


class AuthStatus(enum.Enum):
    OK = "ok"
    STALE = "stale"  # right password, old nonce: re-challenge with stale=true
    FAILED = "failed"


@dataclass(slots=True)  # not frozen, like Credentials: one per verification
class AuthOutcome:
    """The verdict on one request's credentials."""

    status: AuthStatus
    username: str
    reason: str = ""  # why not OK; for logs and trunk status, not per-case wire answers

    @property
    def ok(self) -> bool:
        return self.status is AuthStatus.OK


class DigestAuthenticator:
    """Challenges and verifies Digest credentials for the registrar and proxy."""

    __slots__ = ("_nonces", "_counts", "_failures", "require_qop")

    def __init__(
        self,
        nonces: NonceAuthority,
        counts: NonceCounts,
        *,
        require_qop: bool = True,
        failures: NonceFailures | None = None,
    ) -> None:
        self._nonces = nonces
        self._counts = counts
        self._failures = failures if failures is not None else NonceFailures()
        self.require_qop = require_qop

    def challenges(self, realm: str, algorithms: Iterable[str], stale: bool = False) -> list[str]:
        """One challenge header value per algorithm, in the given order, sharing one nonce."""
        return challenge_values(realm, self._nonces.issue(realm), algorithms, stale=stale)

    def verify(
        self,
        method: str,
        credentials: Credentials,
        realm: str,
        ha1_by_algorithm: Mapping[str, str] | None,
        *,
        offered_algorithms: Collection[str] | None = None,
        failures_per_nonce: int | None = None,
    ) -> AuthOutcome:
        """Verify `credentials` (from parse_credentials) for a request with `method`.

        `ha1_by_algorithm` is the user's Connection.ha1, or None for an unknown
        user. With `offered_algorithms`, an answer in an algorithm that was not
        offered fails (a "-sess" one counts as its base algorithm). With
        `failures_per_nonce`, a nonce that many responses failed on is spent.
        """
        username = credentials.username
        if credentials.realm != realm:
            return AuthOutcome(AuthStatus.FAILED, username, "realm mismatch")
        algorithm = ALGORITHMS.get(credentials.algorithm)
        if algorithm is None:
            return AuthOutcome(AuthStatus.FAILED, username, naming("unsupported algorithm", credentials.algorithm))
        if offered_algorithms is not None and algorithm.base not in offered_algorithms:
            return AuthOutcome(AuthStatus.FAILED, username, f"algorithm {algorithm.name} not offered")
        qop = credentials.qop
        nc = credentials.nc
        if qop is None:
            if self.require_qop:
                return AuthOutcome(AuthStatus.FAILED, username, "missing qop")
        elif nc is None or credentials.cnonce is None:  # only if not from parse_credentials
            return AuthOutcome(AuthStatus.FAILED, username, "missing nc or cnonce")
        nonce = credentials.nonce
        nonce_status, issued_at = self._nonces.inspect(nonce, realm)
        if nonce_status is NonceStatus.INVALID:
            return AuthOutcome(AuthStatus.FAILED, username, "invalid nonce")
        if failures_per_nonce is not None and self._failures.spent(nonce, failures_per_nonce):
            return AuthOutcome(AuthStatus.FAILED, username, "nonce spent")

        # From here on, unknown users and wrong passwords cost the same.
        stored_ha1 = None if ha1_by_algorithm is None else ha1_by_algorithm.get(algorithm.base)
        try:
            expected = algorithm.response(
                _DUMMY_HA1[algorithm.base] if stored_ha1 is None else stored_ha1,
                nonce,
                method,
                credentials.uri,
                qop,
                nc,
                credentials.cnonce,
            )
        except UnicodeEncodeError:
            return AuthOutcome(AuthStatus.FAILED, username, "malformed credentials")
        given = credentials.response.lower()
        matches = given.isascii() and hmac.compare_digest(expected, given)
        if stored_ha1 is None or not matches:
            self._failures.failed(nonce)
        if stored_ha1 is None:
            reason = "unknown user" if ha1_by_algorithm is None else f"no {algorithm.base} credentials"
            return AuthOutcome(AuthStatus.FAILED, username, reason)
        if not matches:
            # The digest of a known user does not match: to the operator reading the trunk status,
            # a wrong password (the realm and username are the ones we challenged with).
            return AuthOutcome(AuthStatus.FAILED, username, "wrong password")

        if nonce_status is NonceStatus.STALE:
            return AuthOutcome(AuthStatus.STALE, username, "nonce expired")
        if nc is not None and qop is not None:
            count_status = self._counts.accept(nonce, int(nc, 16), issued_at)
            if count_status is NonceCountStatus.REPLAYED:
                self._failures.failed(nonce)
                return AuthOutcome(AuthStatus.FAILED, username, "replayed nonce count")
            if count_status is NonceCountStatus.FORGOTTEN:
                return AuthOutcome(AuthStatus.STALE, username, "nonce count forgotten")
        return AuthOutcome(AuthStatus.OK, username)
