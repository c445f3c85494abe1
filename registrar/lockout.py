"""Password-guessing lockouts: which failed digest responses lock out whom, and until when (sans-IO).

Pure bookkeeping over a domain's `registrar.model.LockoutPolicy`: no sockets,
no logging, no clock but the `now` each call is given. Whoever verifies digest
responses asks `locked` before verifying one (a locked request is refused
unverified, the right password included), tells `failed` after one failed and
`proved` after one succeeded.

Keys are (domain, username as sent in the credentials, source address), the
username whether or not it exists: lockouts behave alike for every name, so
they tell nothing about which names exist. Two scopes:

- "source", the username from one address: locked after `failures_per_source`
  failures.
- "user", the username from every address: locked after `failures_per_user`
  failures, and then only for addresses that have not proved its password
  within `LockoutPolicy.proof_seconds`: a user's own phones keep working,
  whoever guesses elsewhere.

A failure counts for at least `window_seconds` and is forgotten within twice
that: counts are kept in window-long buckets, the current one and the one
before it (two numbers, not a time per failure). A guesser that paces itself
to stay below a threshold gets at most that threshold less one per two windows.

A lock lasts `lockout_seconds`. It is remembered for `remember_lock_seconds`
after it ends, and any failure in that time locks again, for twice as long as
the last lock, up to `max_lockout_seconds`: a guesser who waits a lock out
gets one more guess, not a fresh set. A success from an address forgets that
address's pair, and nothing else (a botnet's user lock stays).

An IPv4 address is one source; IPv6 addresses count by /64, the block one
host or one home is given, so an attacker with a /64 is one source too.

Memory is bounded in entries, whatever arrives. Each scope keeps its counts in
two least-recently-used tables: entries still counting, and entries with a
remembered lock. A flood of fresh usernames or addresses (one failure each)
pushes other counts out, never a lock; pushing out a lock costs the flood a
lock of its own per entry. Proofs are made by right passwords only, so no flood
makes them. Usernames longer than 64 characters are keyed by a hash of them.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Literal

from registrar.model import LockoutPolicy
from registrar.sip.source import source_address

Scope = Literal["source", "user"]

# Entries per table. One costs some 300 bytes (key, entry, LRU links), so the four
# count tables and the proofs hold at most ~90 MB, and that only under a flood that
# fills them all. 50,000 counting entries is how many other failures a flood must send
# to push one count out; 50,000 locks hold every lock of a large attack (each cost at
# least one failure, most several); 100,000 proofs hold every phone of a large cluster
# at two addresses each.
MAX_COUNTING = 50_000
MAX_LOCKED = 50_000
MAX_PROOFS = 100_000
# Longer usernames are keyed by their hash: no real one is this long, and an entry's
# size must not follow what the wire sends.
_LONGEST_KEYED_USERNAME = 64


@dataclass(frozen=True, slots=True)
class Lock:
    """A lockout in force: of the username from one address ("source") or from all unproven ones ("user")."""

    scope: Scope
    seconds: int  # how long this lock lasts, from when it started
    until: float  # when it ends
    failures: int  # failed responses that led to it: those counted when it first locked, and all since


class _Entry:
    """One key's failures and lock.

    `failures` fell since `since`, `earlier` in the bucket before; once locked, `failures`
    counts them all. Locked until `until`, for `seconds` (0: never locked).
    """

    __slots__ = ("failures", "earlier", "since", "until", "seconds")

    def __init__(self, now: float) -> None:
        self.failures = 0
        self.earlier = 0
        self.since = now
        self.until = 0.0
        self.seconds = 0


class _Counts:
    """One scope's failures, in two tables, least recently failed first: counting, and locked."""

    __slots__ = ("_counting", "_locked", "_max_counting", "_max_locked")

    def __init__(self, max_counting: int, max_locked: int) -> None:
        self._counting: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._locked: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._max_counting = max_counting
        self._max_locked = max_locked

    def __len__(self) -> int:
        return len(self._counting) + len(self._locked)

    def active(self, key: Hashable, now: float) -> _Entry | None:
        """The key's entry while it is locked, else None."""
        entry = self._locked.get(key)
        return entry if entry is not None and now < entry.until else None

    def fail(self, key: Hashable, threshold: int, policy: LockoutPolicy, now: float) -> _Entry | None:
        """Count a failure of `key`; its entry when this failure starts a lock."""
        locked = self._locked
        entry = locked.get(key)
        if entry is not None:
            if now < entry.until + policy.remember_lock_seconds:
                entry.failures += 1
                locked.move_to_end(key)
                if now < entry.until:
                    # Only a user lock sees failures while it lasts (from proven addresses): no longer for them.
                    return None
                entry.seconds = max(policy.lockout_seconds, min(2 * entry.seconds, policy.max_lockout_seconds))
                entry.until = now + entry.seconds
                return entry
            del locked[key]  # forgotten: counted afresh
        counting = self._counting
        entry = counting.get(key)
        if entry is None:
            entry = counting[key] = _Entry(now)
        else:
            counting.move_to_end(key)
            elapsed = now - entry.since
            if elapsed >= policy.window_seconds:
                # A new bucket. The last one's failures all fell within a window of its start:
                # kept while some of them may still be younger than a window.
                entry.earlier = entry.failures if elapsed < 2 * policy.window_seconds else 0
                entry.failures = 0
                entry.since = now
        entry.failures += 1
        if entry.earlier + entry.failures < threshold:
            if len(counting) > self._max_counting:
                counting.popitem(last=False)
            return None
        del counting[key]
        entry.failures += entry.earlier
        entry.earlier = 0
        entry.seconds = policy.lockout_seconds
        entry.until = now + entry.seconds
        locked[key] = entry
        if len(locked) > self._max_locked:
            locked.popitem(last=False)
        return entry

    def forget(self, key: Hashable) -> None:
        self._counting.pop(key, None)
        self._locked.pop(key, None)


class LockoutTable:
    """Failed digest responses per (domain, username, source address), and the lockouts they earn.

    `host` is the source's IP address as text; `policy` the domain's LockoutPolicy.
    """

    __slots__ = ("_pairs", "_users", "_proofs", "_max_proofs")

    def __init__(
        self, *, max_counting: int = MAX_COUNTING, max_locked: int = MAX_LOCKED, max_proofs: int = MAX_PROOFS
    ) -> None:
        self._pairs = _Counts(max_counting, max_locked)  # (domain, user key, address)
        self._users = _Counts(max_counting, max_locked)  # (domain, user key)
        # (domain, user key, address) -> when it last proved the password; least recently first.
        self._proofs: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        self._max_proofs = max_proofs

    def __len__(self) -> int:
        """Entries held, in all tables."""
        return len(self._pairs) + len(self._users) + len(self._proofs)

    def locked(self, domain: str, username: str, host: str, now: float) -> Lock | None:
        """The lock that refuses this username from this address now, if any."""
        user, address = _user_key(username), source_address(host)
        entry = self._pairs.active((domain, user, address), now)
        if entry is not None:
            return _lock("source", entry)
        entry = self._users.active((domain, user), now)
        if entry is not None and not self._proven((domain, user, address), now):
            return _lock("user", entry)
        return None

    def failed(self, domain: str, username: str, host: str, policy: LockoutPolicy, now: float) -> list[Lock]:
        """Count a failed response; the locks it starts (none, one, or both scopes')."""
        user, address = _user_key(username), source_address(host)
        started = []
        entry = self._pairs.fail((domain, user, address), policy.failures_per_source, policy, now)
        if entry is not None:
            started.append(_lock("source", entry))
        entry = self._users.fail((domain, user), policy.failures_per_user, policy, now)
        if entry is not None:
            started.append(_lock("user", entry))
        return started

    def proved(self, domain: str, username: str, host: str, now: float) -> None:
        """A right response: the address's failures are forgotten, and it is spared the user lock."""
        key = (domain, _user_key(username), source_address(host))
        self._pairs.forget(key)
        proofs = self._proofs
        proofs[key] = now
        proofs.move_to_end(key)
        if len(proofs) > self._max_proofs:
            proofs.popitem(last=False)

    def _proven(self, key: tuple[str, str, str], now: float) -> bool:
        proven_at = self._proofs.get(key)
        return proven_at is not None and now - proven_at < LockoutPolicy.proof_seconds



def _user_key(username: str) -> str:
    if len(username) <= _LONGEST_KEYED_USERNAME:
        return username
    return "#" + hashlib.blake2b(username.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()


def _lock(scope: Scope, entry: _Entry) -> Lock:
    return Lock(scope, entry.seconds, entry.until, entry.failures)
