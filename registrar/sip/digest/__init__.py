"""Server-side SIP Digest authentication (RFC 3261 section 22, RFC 7616, RFC 8760), pure code.

No sockets, no logging, no clock but the one passed in: values in, decisions
out. The registrar answers an unauthenticated REGISTER with one
`WWW-Authenticate` header per offered algorithm (`Proxy-Authenticate` for a
407), parses the `Authorization` header of the retry and asks for a verdict.
Each module holds one concern, and its docstring the decisions taken there:

- ``algorithms``: the hashes and the response computation.
- ``challenges``: the challenge header values.
- ``credentials``: the credentials header values, parsed.
- ``nonces``: stateless nonces, nonce counts (replays) and failures per nonce.
- ``authenticator``: the verdict on one request's credentials.
- ``errors``: DigestError.

Not thread-safe: one instance of each class per event loop.

API (every name here, as ``digest.X``)
---------------------------------------
- ``ha1(algorithm, username, realm, password) -> str``: the hex HA1 that is
  stored instead of the password (``Connection.ha1[algorithm]``, keyed by the
  canonical names "MD5" and "SHA-256").
- ``compute_response(algorithm, ha1, nonce, method, uri, *, qop=None, nc=None,
  cnonce=None) -> str``: the ``response`` value, as both a UA and the server
  compute it.
- ``canonical_algorithm(name) -> str``: "sha-256" -> "SHA-256"; raises
  DigestError for an unsupported one. ``SUPPORTED_ALGORITHMS``: their names.
- ``challenge(realm, nonce, algorithm, *, stale=False, opaque=None) -> str``:
  one ``WWW-Authenticate``/``Proxy-Authenticate`` header value.
- ``parse_credentials(header_value) -> Credentials``: parses an
  ``Authorization``/``Proxy-Authorization`` value; raises only DigestError.
- ``Credentials``: dataclass (username, realm, nonce, uri, response,
  algorithm, cnonce, qop, nc, opaque).
- ``DigestError(reason)``: a ValueError whose message is a short reason phrase;
  ``UnsupportedScheme``, one for credentials of another scheme (passed over, then challenged).
- ``NonceAuthority(secret, lifetime=300.0, clock=time.time, *,
  max_clock_skew=5.0)`` with ``issue(realm) -> str``,
  ``check(nonce, realm) -> NonceStatus`` and
  ``inspect(nonce, realm) -> (NonceStatus, issued_at)``.
- ``NonceStatus``: VALID, STALE, INVALID.
- ``NonceCounts(max_nonces=100_000, *, forget_issued_until=0.0)`` with
  ``accept(nonce, nc, issued_at) -> NonceCountStatus`` (ACCEPTED, REPLAYED,
  FORGOTTEN).
- ``NonceFailures(max_nonces=10_000)`` with ``spent(nonce, limit) -> bool``
  and ``failed(nonce)``.
- ``DigestAuthenticator(nonces, counts, *, require_qop=True, failures=None)``
  with ``challenges(realm, algorithms, stale=False) -> list[str]`` and
  ``verify(method, credentials, realm, ha1_by_algorithm, *,
  offered_algorithms=None, failures_per_nonce=None) -> AuthOutcome``.
- ``AuthOutcome(status, username, reason)`` with ``AuthStatus`` OK, STALE,
  FAILED. On STALE the caller re-challenges with ``stale=True``; on FAILED it
  answers 401/403 (``reason`` is for logs and the trunk status: "unknown user"
  and "wrong password" must look the same on the wire).
"""

from registrar.sip.digest.algorithms import SUPPORTED_ALGORITHMS, canonical_algorithm, compute_response, ha1
from registrar.sip.digest.authenticator import AuthOutcome, AuthStatus, DigestAuthenticator
from registrar.sip.digest.challenges import challenge
from registrar.sip.digest.credentials import Credentials, parse_credentials
from registrar.sip.digest.errors import DigestError, UnsupportedScheme
from registrar.sip.digest.nonces import NonceAuthority, NonceCounts, NonceCountStatus, NonceFailures, NonceStatus

__all__ = [
    "AuthOutcome",
    "AuthStatus",
    "Credentials",
    "DigestAuthenticator",
    "DigestError",
    "NonceAuthority",
    "NonceCountStatus",
    "NonceCounts",
    "NonceFailures",
    "NonceStatus",
    "SUPPORTED_ALGORITHMS",
    "UnsupportedScheme",
    "canonical_algorithm",
    "challenge",
    "compute_response",
    "ha1",
    "parse_credentials",
]
