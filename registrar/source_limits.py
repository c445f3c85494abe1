"""Per-source request budgets and bans, counted before a message is parsed (Kamailio's pike + htable).

Sans-IO: the clock comes in, the verdict goes out. Each source address has a
token bucket of `burst` requests refilled at `requests_per_second`. A request
finding the bucket empty is refused (dropped unanswered: an answer would make us
a reflector) and adds to the source's debt, which drains at the same rate; when
the debt passes `ban_after` the address is banned and its packets are dropped
unread, for a time that doubles with each ban within a day.

A request that proves its credentials gives its token back (`authenticated`): an office
of phones behind one NAT address pays for its unauthenticated first legs (the
401 challenges), not for its users' authenticated traffic. Trusted networks
(an edge proxy, a load balancer, a carrier) and the other replicas are never counted.

A source is an address as `sip.source.source_address` counts it (an IPv6 host by its
/64, as lockouts and connection limits count it): a host owns its whole /64, so
cycling through it buys no fresh budget.

Memory is bounded: at most `max_sources` addresses are remembered, the earliest
remembered forgotten first, a ban counting as remembering anew (a flood from
spoofed addresses costs forgotten budgets, not RAM).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from registrar.model import SecurityPolicy, in_networks
from registrar.sip.source import source_address

# Some 200 bytes each: 65,536 addresses are ~13 MB.
MAX_SOURCES = 65_536
# Bans of one address within this long of its last one count as repeats (the next one doubles).
BAN_MEMORY = 86_400.0


class _Source:
    """What is known of one address."""

    __slots__ = ("trusted", "authenticated", "tokens", "at", "debt", "banned_until", "bans", "last_ban", "policy")

    def __init__(self, trusted: bool, tokens: float, now: float, policy: SecurityPolicy):
        self.trusted = trusted
        self.authenticated = False  # some request from here proved its credentials
        self.tokens = tokens
        self.at = now
        self.debt = 0.0
        self.banned_until = 0.0
        self.bans = 0
        self.last_ban = float("-inf")
        self.policy = policy  # the policy `trusted` was decided under


@dataclass(frozen=True, slots=True)
class Ban:
    """A source banned just now: for the log line and the metrics."""

    host: str
    seconds: int
    repeat: int  # 1 for the first ban within BAN_MEMORY, 2 for the second...


class SourceLimiter:
    def __init__(
        self,
        policy: Callable[[], SecurityPolicy],
        *,
        peers: Callable[[], Collection[str]] = frozenset,
        clock: Callable[[], float] = time.monotonic,
        max_sources: int = MAX_SOURCES,
        on_ban: Callable[[Ban], None] = lambda ban: None,
    ):
        self._policy = policy
        # Other replicas of ours, asked only when a source runs out of budget.
        self._peers = peers
        self._clock = clock
        self._max_sources = max_sources
        self._on_ban = on_ban
        self._sources: dict[str, _Source] = {}
        # Requests refused, by why: "rate" (over its budget), "banned" (dropped unread).
        self.refused = {"rate": 0, "banned": 0}
        self.bans = 0

    def __len__(self) -> int:
        return len(self._sources)

    def admit(self, host: str) -> bool:
        """Whether a request from `host` may be read now; counts it."""
        now = self._clock()
        key = source_address(host)
        source = self._sources.get(key)
        policy = self._policy()
        if source is None or source.policy is not policy:
            source = self._remember(key, host, now, policy, source)
        if source.trusted:
            return True
        if source.banned_until > now:
            self.refused["banned"] += 1
            return False
        limits = policy.sources
        elapsed = now - source.at
        source.at = now
        tokens = source.tokens + elapsed * limits.requests_per_second
        if tokens >= 1.0:
            source.tokens = (tokens if tokens < limits.burst else limits.burst) - 1.0
            return True
        if host in self._peers():
            source.trusted = True
            return True
        source.tokens = tokens
        debt = source.debt - elapsed * limits.requests_per_second
        source.debt = (debt if debt > 0.0 else 0.0) + 1.0
        self.refused["rate"] += 1
        if source.debt > limits.ban_after:
            self._ban(key, source, now)
        return False

    def authenticated(self, host: str) -> None:
        """A request from `host` proved its credentials: it did not count, and the address is known."""
        source = self._sources.get(source_address(host))
        if source is not None and not source.trusted:
            source.authenticated = True
            burst = source.policy.sources.burst
            source.tokens = source.tokens + 1.0 if source.tokens + 1.0 < burst else float(burst)

    def known(self, host: str) -> bool:
        """Trusted, or some request from it proved its credentials: not a stranger."""
        source = self._sources.get(source_address(host))
        return source is not None and (source.trusted or source.authenticated)

    def banned(self, host: str) -> bool:
        source = self._sources.get(source_address(host))
        return source is not None and not source.trusted and source.banned_until > self._clock()

    def _remember(self, key: str, host: str, now: float, policy: SecurityPolicy, known: _Source | None) -> _Source:
        """A new address's state, or a known one's re-decided under a changed policy (bans kept)."""
        trusted = in_networks(host, policy.trusted_networks)
        if known is not None:
            known.trusted = trusted
            known.policy = policy
            return known
        sources = self._sources
        if len(sources) >= self._max_sources:
            del sources[next(iter(sources))]
        source = sources[key] = _Source(trusted, float(policy.sources.burst), now, policy)
        return source

    def _ban(self, key: str, source: _Source, now: float) -> None:
        limits = source.policy.sources
        source.bans = source.bans + 1 if now - source.last_ban < BAN_MEMORY else 1
        seconds = min(limits.ban_seconds * 2 ** (source.bans - 1), limits.max_ban_seconds)
        source.banned_until = now + seconds
        source.last_ban = now
        # Served afresh when the ban ends.
        source.debt = 0.0
        source.tokens = float(limits.burst)
        # Touched last: the last to be forgotten when the table is full.
        del self._sources[key]
        self._sources[key] = source
        self.bans += 1
        self._on_ban(Ban(key, seconds, source.bans))
