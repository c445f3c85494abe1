"""Server-side SIP Digest authentication (RFC 3261 section 22, RFC 7616, RFC 8760), pure code.

No sockets, no logging, no clock but the one passed in: values in, decisions
out. The registrar answers an unauthenticated REGISTER with one
`WWW-Authenticate` header per offered algorithm (`Proxy-Authenticate` for a
407), parses the `Authorization` header of the retry and asks for a verdict.

API
---
- ``ha1(algorithm, username, realm, password) -> str``: the hex HA1 that is
  stored instead of the password (``Connection.ha1[algorithm]``, keyed by the
  canonical names "MD5" and "SHA-256").
- ``compute_response(algorithm, ha1, nonce, method, uri, *, qop=None, nc=None,
  cnonce=None) -> str``: the ``response`` value, as both a UA and the server
  compute it.
- ``canonical_algorithm(name) -> str``: "sha-256" -> "SHA-256"; raises
  DigestError for an unsupported one.
- ``challenge(realm, nonce, algorithm, *, stale=False, opaque=None) -> str``:
  one ``WWW-Authenticate``/``Proxy-Authenticate`` header value.
- ``parse_credentials(header_value) -> Credentials``: parses an
  ``Authorization``/``Proxy-Authorization`` value; raises only DigestError.
- ``Credentials``: dataclass (username, realm, nonce, uri, response,
  algorithm, cnonce, qop, nc, opaque).
- ``DigestError(reason)``: a ValueError whose message is a short reason phrase.
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

Decisions
---------
- Algorithms: MD5 and SHA-256 (RFC 8760), and their "-sess" variants when a UA
  answers with one: the stored HA1 is the base algorithm's, re-hashed with
  nonce and cnonce per request. A "-sess" answer is accepted when its base
  algorithm was offered. qop "auth" only; "auth-int" is refused by name.
- Responses without qop (RFC 2069 style): challenges always carry
  qop="auth", so a response without qop is a downgrade that also skips the
  nonce-count replay check. ``DigestAuthenticator`` refuses it ("missing qop")
  unless built with ``require_qop=False`` for old UAs; then such a response
  is bounded only by the nonce lifetime.
- Nonce format: base64url (no padding, 44 characters, a valid token) of
  8 bytes issue time (whole seconds, big endian) + 9 random bytes +
  the first 16 bytes of HMAC-SHA256(secret, time + random + realm). Nothing is
  stored per nonce; any replica with the same secret checks it; a nonce is
  bound to its realm. Expired with a valid MAC -> STALE; issued more than
  ``max_clock_skew`` seconds in the future, or a bad MAC -> INVALID.
- stale=true is earned: a stale nonce yields STALE only when the response is
  right for it (RFC 7616 section 3.3); a wrong password with a stale nonce is
  FAILED, so a UA with a wrong password does not loop on stale challenges.
- Nonce counts: nc must be strictly greater than the last accepted nc of the
  nonce (a UA reusing a nonce on refresh sends 2, 3, ...; gaps are allowed,
  reordering is not). The table is bounded (least recently used entry
  evicted). Evicting a nonce raises a low-water mark to its issue time; an
  unknown nonce issued at or before the mark may have been evicted, so it is
  FORGOTTEN and the verdict is STALE: the UA retries at once with a fresh
  nonce, and a replay of an evicted nonce never passes. Pass the process
  start time as ``forget_issued_until`` to extend that to a restart.
  The table is per process: across replicas a replay within the nonce
  lifetime is stopped by the registrar's Call-ID/CSeq rule, not here.
- Failures per nonce: with ``failures_per_nonce``, a nonce that has met that
  many wrong responses (or replays) is spent: a response on it is FAILED
  ("nonce spent") unchecked, as an invalid nonce is, and the caller's fresh
  challenge is the way on. The counts sit in their own bounded table, not
  NonceCounts: a guesser's nonces must not push out (and so make stale) the
  nonces phones reuse, and forgetting a count is harmless, as a fresh nonce
  is one request away anyway. Also per process.
- Unknown users: ``verify`` computes a response against a dummy HA1 and
  compares it exactly as for a known user, so the time taken does not tell
  which usernames exist.
- The ``uri`` parameter is hashed as sent; whether it must equal the
  Request-URI is the caller's policy (UAs differ in parameters and case).
- Strings are hashed as UTF-8 with surrogateescape, so a message decoded
  with surrogateescape hashes the bytes the UA sent.
- Not thread-safe: one instance per event loop.
"""

from __future__ import annotations

import binascii
import enum
import hashlib
import hmac
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from registrar.sip.grammar import auth_params, auth_scheme, is_token, plain_auth_params, quote

__all__ = [
    "AuthOutcome",
    "AuthStatus",
    "Credentials",
    "DigestAuthenticator",
    "DigestError",
    "NonceAuthority",
    "NonceCountStatus",
    "NonceCounts",
    "NonceStatus",
    "SUPPORTED_ALGORITHMS",
    "canonical_algorithm",
    "challenge",
    "compute_response",
    "ha1",
    "parse_credentials",
]


class DigestError(ValueError):
    """Credentials that cannot be verified; str(error) is a short reason phrase."""


# ---------------------------------------------------------------------------
# Algorithms and the digest computation (RFC 7616 section 3.4)


@dataclass(frozen=True, slots=True)
class _Algorithm:
    name: str  # the canonical token, as offered and as keyed in Connection.ha1
    base: str  # whose HA1 is stored: "MD5" for "MD5-sess"
    hash: Callable[..., Any]  # hashlib constructor
    session: bool  # "-sess": HA1 is re-hashed with nonce and cnonce per request
    hex_length: int  # of every digest, the response included


_MD5 = _Algorithm("MD5", "MD5", hashlib.md5, False, 32)
_SHA256 = _Algorithm("SHA-256", "SHA-256", hashlib.sha256, False, 64)
_MD5_SESS = _Algorithm("MD5-sess", "MD5", hashlib.md5, True, 32)
_SHA256_SESS = _Algorithm("SHA-256-sess", "SHA-256", hashlib.sha256, True, 64)

# Keyed by canonical and by lower-case name: the parser looks up lower case,
# verify() the canonical name the parser stored.
_ALGORITHMS: dict[str, _Algorithm] = {}
for _algorithm in (_MD5, _SHA256, _MD5_SESS, _SHA256_SESS):
    _ALGORITHMS[_algorithm.name] = _algorithm
    _ALGORITHMS[_algorithm.name.lower()] = _algorithm
del _algorithm

SUPPORTED_ALGORITHMS = frozenset({"MD5", "SHA-256", "MD5-sess", "SHA-256-sess"})

# Stand-ins for the HA1 of a user that does not exist, so that the response is
# computed and compared all the same. Random, so that no response matches them.
_DUMMY_HA1 = {
    "MD5": hashlib.md5(os.urandom(32)).hexdigest(),
    "SHA-256": hashlib.sha256(os.urandom(32)).hexdigest(),
}


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _lookup_algorithm(name: str) -> _Algorithm:
    algorithm = _ALGORITHMS.get(name) or _ALGORITHMS.get(name.lower())
    if algorithm is None:
        raise DigestError(_naming("unsupported algorithm", name))
    return algorithm


def canonical_algorithm(name: str) -> str:
    """The canonical token for an algorithm name ("sha-256" -> "SHA-256")."""
    return _lookup_algorithm(name).name


def ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """HA1 = H(username ":" realm ":" password), in hex: what is stored instead of the password.

    For the "-sess" variants the stored HA1 is the base algorithm's, so only
    "MD5" and "SHA-256" are accepted here.
    """
    hash_algorithm = _lookup_algorithm(algorithm)
    if hash_algorithm.session:
        raise ValueError(f"{hash_algorithm.name} has no HA1 of its own: store the {hash_algorithm.base} one")
    return hash_algorithm.hash(_utf8(f"{username}:{realm}:{password}")).hexdigest()


def _response(
    algorithm: _Algorithm,
    ha1: str,
    nonce: str,
    method: str,
    uri: str,
    qop: str | None,
    nc: str | None,
    cnonce: str | None,
) -> str:
    hash_ = algorithm.hash
    if algorithm.session:
        ha1 = hash_(_utf8(f"{ha1}:{nonce}:{cnonce}")).hexdigest()
    ha2 = hash_(_utf8(f"{method}:{uri}")).hexdigest()
    if qop is None:
        return hash_(_utf8(f"{ha1}:{nonce}:{ha2}")).hexdigest()
    return hash_(_utf8(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")).hexdigest()


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
    hash_algorithm = _lookup_algorithm(algorithm)
    if qop is not None and (nc is None or cnonce is None):
        raise DigestError("qop needs nc and cnonce")
    if hash_algorithm.session and cnonce is None:
        raise DigestError("missing cnonce")
    return _response(hash_algorithm, ha1, nonce, method, uri, qop, nc, cnonce)


# ---------------------------------------------------------------------------
# Challenges (WWW-Authenticate / Proxy-Authenticate values)


def challenge(
    realm: str,
    nonce: str,
    algorithm: str,
    *,
    stale: bool = False,
    opaque: str | None = None,
) -> str:
    """One challenge header value, e.g. ``Digest realm="x", nonce="...", algorithm=MD5, qop="auth"``.

    The algorithm token is unquoted and qop quoted, as in RFC 7616.
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


# ---------------------------------------------------------------------------
# Credentials (Authorization / Proxy-Authorization values)


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


_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
# Parameters we read; duplicates of these are refused because two parties
# could each read a different copy. Others are ignored, as RFC 7616 asks.
_KNOWN_PARAMETERS = frozenset(
    {"username", "username*", "realm", "nonce", "uri", "response", "algorithm",
     "cnonce", "qop", "nc", "opaque", "userhash"}
)


def _naming(reason: str, value: str) -> str:
    """`reason` plus the offending value when it is a short token, so the
    phrase never carries quotes, control characters or a megabyte of input."""
    if len(value) <= 32 and is_token(value):
        return f"{reason} {value}"
    return reason


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
        raise DigestError(_naming("unsupported scheme", name))
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
    return len(value) == length and _HEX_DIGITS.issuperset(value)


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
        algorithm = _MD5  # RFC 7616 section 3.4: absent means MD5
    else:
        found = _ALGORITHMS.get(algorithm_name.lower())
        if found is None:
            raise DigestError(_naming("unsupported algorithm", algorithm_name))
        algorithm = found
    if not _is_hex(response, algorithm.hex_length):
        raise DigestError(f"response is not {algorithm.hex_length} hex digits")

    qop = get("qop")
    cnonce = get("cnonce")
    nc = get("nc")
    if qop is not None:
        if qop.lower() != "auth":
            raise DigestError(_naming("unsupported qop", qop))
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


# ---------------------------------------------------------------------------
# Stateless nonces


class NonceStatus(enum.Enum):
    VALID = "valid"
    STALE = "stale"  # ours and intact, but expired: re-challenge with stale=true
    INVALID = "invalid"  # not ours, altered, another realm's, or from the future


_TIME_BYTES = 8
_RANDOM_BYTES = 9
_MAC_BYTES = 16
_SIGNED_BYTES = _TIME_BYTES + _RANDOM_BYTES
# 33 bytes, a multiple of 3, so base64 needs no padding and has no spare bits:
# every 44-character string decodes to exactly one nonce, and back.
_NONCE_BYTES = _SIGNED_BYTES + _MAC_BYTES
_NONCE_LENGTH = _NONCE_BYTES * 4 // 3
# base64url -> base64; "+" and "/" become "!", which the strict decoder refuses,
# so the standard alphabet is not accepted as an alias.
_FROM_BASE64URL = bytes.maketrans(b"-_+/", b"+/!!")
_TO_BASE64URL = bytes.maketrans(b"+/", b"-_")


def _hmac_sha256_pads(key: bytes) -> tuple[Any, Any]:
    """SHA-256 states that have taken the HMAC key's inner and outer pads (RFC 2104).

    HMAC(key, m) = H(outer pad || H(inner pad || m)). Hashing the pads once and
    copying these states per message is what hmac.HMAC.copy() does too, minus
    its Python-level wrapper calls (half the cost of a nonce's MAC, measured).
    """
    block = hashlib.sha256().block_size
    if len(key) > block:
        key = hashlib.sha256(key).digest()
    key = key.ljust(block, b"\0")
    return (
        hashlib.sha256(key.translate(_XOR_0x36)),
        hashlib.sha256(key.translate(_XOR_0x5C)),
    )


_XOR_0x36 = bytes(byte ^ 0x36 for byte in range(256))
_XOR_0x5C = bytes(byte ^ 0x5C for byte in range(256))


class NonceAuthority:
    """Issues and checks stateless nonces: issue time + randomness + HMAC.

    Every replica built with the same `secret` checks every replica's nonces;
    nothing is stored per nonce. `clock` returns wall-clock seconds; replicas'
    clocks may differ by up to `max_clock_skew` seconds.
    """

    __slots__ = ("_hmac_inner", "_hmac_outer", "lifetime", "max_clock_skew", "_clock", "_random_pool", "_random_used")

    def __init__(
        self,
        secret: bytes,
        lifetime: float = 300.0,
        clock: Callable[[], float] = time.time,
        *,
        max_clock_skew: float = 5.0,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("nonce secret must be at least 16 bytes")
        self._hmac_inner, self._hmac_outer = _hmac_sha256_pads(secret)
        self.lifetime = lifetime
        self.max_clock_skew = max_clock_skew
        self._clock = clock
        self._random_pool = b""
        self._random_used = 0

    def _random_bytes(self) -> bytes:
        """_RANDOM_BYTES from the OS's CSPRNG, drawn in blocks: one syscall per ~450 nonces."""
        start = self._random_used
        if start + _RANDOM_BYTES > len(self._random_pool):
            self._random_pool, start = os.urandom(4095), 0
        self._random_used = start + _RANDOM_BYTES
        return self._random_pool[start : start + _RANDOM_BYTES]

    def _mac(self, signed: bytes, realm: str) -> bytes:
        """HMAC-SHA256(secret, signed + realm), truncated to _MAC_BYTES.

        The fixed-length prefix makes time+random+realm unambiguous.
        """
        inner = self._hmac_inner.copy()
        inner.update(signed + _utf8(realm))
        outer = self._hmac_outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:_MAC_BYTES]

    def issue(self, realm: str) -> str:
        """A fresh nonce for `realm`; a token (base64url), 44 characters."""
        issued_at = int(self._clock())
        if issued_at < 0:
            issued_at = 0
        signed = issued_at.to_bytes(_TIME_BYTES, "big") + self._random_bytes()
        raw = signed + self._mac(signed, realm)
        return binascii.b2a_base64(raw, newline=False).translate(_TO_BASE64URL).decode("ascii")

    def inspect(self, nonce: str, realm: str) -> tuple[NonceStatus, int]:
        """The nonce's status and issue time (whole seconds; 0 when INVALID)."""
        if len(nonce) != _NONCE_LENGTH or not nonce.isascii():
            return NonceStatus.INVALID, 0
        try:
            raw = binascii.a2b_base64(nonce.encode("ascii").translate(_FROM_BASE64URL), strict_mode=True)
        except ValueError:  # binascii.Error is one
            return NonceStatus.INVALID, 0
        signed = raw[:_SIGNED_BYTES]
        if not hmac.compare_digest(raw[_SIGNED_BYTES:], self._mac(signed, realm)):
            return NonceStatus.INVALID, 0
        issued_at = int.from_bytes(raw[:_TIME_BYTES], "big")
        age = self._clock() - issued_at
        if age < -self.max_clock_skew:
            return NonceStatus.INVALID, 0
        if age > self.lifetime:
            return NonceStatus.STALE, issued_at
        return NonceStatus.VALID, issued_at

    def check(self, nonce: str, realm: str) -> NonceStatus:
        """VALID, STALE (expired but genuine) or INVALID."""
        return self.inspect(nonce, realm)[0]


# ---------------------------------------------------------------------------
# Nonce-count replay rejection


class NonceCountStatus(enum.Enum):
    ACCEPTED = "accepted"
    REPLAYED = "replayed"  # nc not above the last accepted one
    FORGOTTEN = "forgotten"  # may have been evicted: answer stale, get a new nonce


class NonceCounts:
    """The last accepted nc of recently used nonces, in bounded memory.

    See the module docstring for the low-water mark that keeps eviction safe.
    """

    __slots__ = ("max_nonces", "_entries", "_low_water_mark")

    def __init__(self, max_nonces: int = 100_000, *, forget_issued_until: float = 0.0) -> None:
        if max_nonces < 1:
            raise ValueError("max_nonces must be at least 1")
        self.max_nonces = max_nonces
        # nonce -> (issue time, last accepted nc); least recently used first.
        self._entries: OrderedDict[str, tuple[float, int]] = OrderedDict()
        # Unknown nonces issued at or before this time may have been seen.
        self._low_water_mark = forget_issued_until

    def __len__(self) -> int:
        return len(self._entries)

    def accept(self, nonce: str, nc: int, issued_at: float) -> NonceCountStatus:
        """Record `nc` for `nonce` (issued at `issued_at`) unless it is a replay."""
        entries = self._entries
        entry = entries.get(nonce)
        if entry is None:
            if issued_at <= self._low_water_mark:
                return NonceCountStatus.FORGOTTEN
            entries[nonce] = (issued_at, nc)
            if len(entries) > self.max_nonces:
                _, (evicted_issued_at, _) = entries.popitem(last=False)
                if evicted_issued_at > self._low_water_mark:
                    self._low_water_mark = evicted_issued_at
            return NonceCountStatus.ACCEPTED
        if nc <= entry[1]:
            return NonceCountStatus.REPLAYED
        entries[nonce] = (entry[0], nc)
        entries.move_to_end(nonce)
        return NonceCountStatus.ACCEPTED


class NonceFailures:
    """Failed responses per nonce, of recently failed nonces, in bounded memory (least recently failed evicted)."""

    __slots__ = ("max_nonces", "_failures")

    def __init__(self, max_nonces: int = 10_000) -> None:
        if max_nonces < 1:
            raise ValueError("max_nonces must be at least 1")
        self.max_nonces = max_nonces
        self._failures: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def spent(self, nonce: str, limit: int) -> bool:
        """True when `nonce` has met `limit` failures."""
        return self._failures.get(nonce, 0) >= limit

    def failed(self, nonce: str) -> None:
        failures = self._failures
        failures[nonce] = failures.get(nonce, 0) + 1
        failures.move_to_end(nonce)
        if len(failures) > self.max_nonces:
            failures.popitem(last=False)


# ---------------------------------------------------------------------------
# The verdict


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
        nonce = self._nonces.issue(realm)
        return [challenge(realm, nonce, algorithm, stale=stale) for algorithm in algorithms]

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
        algorithm = _ALGORITHMS.get(credentials.algorithm)
        if algorithm is None:
            return AuthOutcome(AuthStatus.FAILED, username, _naming("unsupported algorithm", credentials.algorithm))
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
            expected = _response(
                algorithm,
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
