"""Digest nonces: stateless HMAC nonces, and per-process tables of their counts and failures.

- Nonce format: base64url (no padding, 44 characters, a valid token) of
  8 bytes issue time (whole seconds, big endian) + 9 random bytes +
  the first 16 bytes of HMAC-SHA256(secret, time + random + realm). Nothing is
  stored per nonce; any replica with the same secret checks it; a nonce is
  bound to its realm. Expired with a valid MAC -> STALE; issued more than
  ``max_clock_skew`` seconds in the future, or a bad MAC -> INVALID.
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
- Failures per nonce: a nonce that has met a limit of wrong responses (or
  replays) is spent, and the caller's fresh challenge is the way on. The
  counts sit in their own bounded table, not NonceCounts: a guesser's nonces
  must not push out (and so make stale) the nonces phones reuse, and
  forgetting a count is harmless, as a fresh nonce is one request away anyway.
  Also per process.
"""

from __future__ import annotations

import binascii
import enum
import hashlib
import hmac
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from registrar.sip.digest.algorithms import utf8

__all__ = ["NonceAuthority", "NonceCountStatus", "NonceCounts", "NonceFailures", "NonceStatus"]


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
        inner.update(signed + utf8(realm))
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
