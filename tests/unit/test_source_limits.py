"""SourceLimiter: per-address budgets, bans that grow, trusted networks, refunds, bounded memory."""

from __future__ import annotations

import ipaddress

from registrar.model import SecurityPolicy, SourceLimits
from registrar.source_limits import Ban, SourceLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(limits: SourceLimits, clock: Clock, **kwargs) -> SourceLimiter:  # type: ignore[no-untyped-def]
    policy = SecurityPolicy(sources=limits, trusted_networks=(ipaddress.ip_network("192.0.2.0/24"),))
    return SourceLimiter(lambda: policy, clock=clock, **kwargs)


def admitted(sources: SourceLimiter, host: str, count: int) -> int:
    return sum(sources.admit(host) for _ in range(count))


def test_a_burst_is_admitted_then_the_rate_and_one_source_does_not_spend_anothers_budget() -> None:
    clock = Clock()
    sources = limiter(SourceLimits(requests_per_second=10, burst=20, ban_after=1000), clock)
    assert admitted(sources, "198.51.100.1", 25) == 20
    assert admitted(sources, "198.51.100.2", 20) == 20
    clock.now += 1.0
    assert admitted(sources, "198.51.100.1", 25) == 10
    assert sources.refused["rate"] == 20


def test_a_flood_is_banned_and_the_ban_doubles_when_it_comes_back() -> None:
    clock = Clock()
    bans: list[Ban] = []
    sources = limiter(SourceLimits(requests_per_second=10, burst=20, ban_after=50, ban_seconds=60,
                                   max_ban_seconds=100), clock, on_ban=bans.append)
    assert admitted(sources, "198.51.100.1", 1000) == 20
    assert bans == [Ban("198.51.100.1", 60, 1)]
    assert sources.banned("198.51.100.1")
    clock.now += 59
    assert admitted(sources, "198.51.100.1", 5) == 0
    assert sources.refused["banned"] > 900
    clock.now += 2
    assert not sources.banned("198.51.100.1")
    assert admitted(sources, "198.51.100.1", 1000) == 20  # a full bucket after the ban, then banned again
    assert bans[-1] == Ban("198.51.100.1", 100, 2)  # 120 s, capped at the maximum


def test_a_source_slightly_over_its_rate_is_slowed_not_banned() -> None:
    clock = Clock()
    sources = limiter(SourceLimits(requests_per_second=10, burst=10, ban_after=50), clock)
    for _ in range(600):  # 12/s for a minute against 10/s
        sources.admit("198.51.100.1")
        clock.now += 1 / 12
    assert not sources.banned("198.51.100.1")
    assert sources.bans == 0


def registered_phones(sources: SourceLimiter, phones: int, *, refund: bool) -> int:
    """Phones behind one address re-registering together: all challenges first, then the authenticated legs."""
    challenged = sum(sources.admit("198.51.100.1") for _ in range(phones))
    registered = 0
    for _ in range(challenged):
        if sources.admit("198.51.100.1"):
            registered += 1
            if refund:
                sources.authenticated("198.51.100.1")
    return registered


def test_proved_credentials_give_the_token_back() -> None:
    # The defaults (burst 400) with the clock standing still: the budget pays for the 300 challenges only.
    assert registered_phones(limiter(SourceLimits(), Clock()), 300, refund=True) == 300
    assert registered_phones(limiter(SourceLimits(), Clock()), 300, refund=False) == 100


def test_an_address_is_known_once_trusted_or_authenticated() -> None:
    sources = limiter(SourceLimits(), Clock())
    for host in ("192.0.2.7", "198.51.100.1", "198.51.100.2"):
        sources.admit(host)
    sources.authenticated("198.51.100.1")
    assert sources.known("192.0.2.7") and sources.known("198.51.100.1")
    assert not sources.known("198.51.100.2") and not sources.known("203.0.113.9")


def test_trusted_networks_are_never_counted_and_a_new_policy_is_taken_at_once() -> None:
    clock = Clock()
    policy = SecurityPolicy(sources=SourceLimits(requests_per_second=1, burst=1, ban_after=1))
    current = [policy]
    sources = SourceLimiter(lambda: current[0], clock=clock)
    assert admitted(sources, "192.0.2.7", 10) == 1
    assert sources.banned("192.0.2.7")
    current[0] = SecurityPolicy(sources=policy.sources, trusted_networks=(ipaddress.ip_network("192.0.2.0/24"),))
    assert admitted(sources, "192.0.2.7", 1000) == 1000
    assert not sources.banned("192.0.2.7")


def test_memory_is_bounded_whatever_the_number_of_addresses() -> None:
    clock = Clock()
    sources = limiter(SourceLimits(), clock, max_sources=100)
    for n in range(10_000):
        sources.admit(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}")
    assert len(sources) == 100


def test_an_ipv6_host_cycling_through_its_64_gets_one_budget_and_one_ban() -> None:
    clock = Clock()
    bans: list[Ban] = []
    sources = limiter(SourceLimits(requests_per_second=1, burst=10, ban_after=10), clock, on_ban=bans.append)
    assert sum(sources.admit(f"2001:db8:1:2::{n:x}") for n in range(1, 100)) == 10
    assert bans == [Ban("2001:db8:1:2::/64", 60, 1)] and sources.banned("2001:db8:1:2::ffff")
    assert sources.admit("2001:db8:1:3::1")  # the next /64 is another source
