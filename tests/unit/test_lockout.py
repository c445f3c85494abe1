"""Unit tests for registrar.lockout: the lockout table on a fake clock (plain numbers passed as `now`)."""

from __future__ import annotations

import pytest

from registrar.lockout import Lock, LockoutTable
from registrar.sip.source import source_address
from registrar.model import LockoutPolicy

DOMAIN = "sip.example.test"
POLICY = LockoutPolicy(
    failures_per_source=5, failures_per_user=30, window_seconds=600, lockout_seconds=60, max_lockout_seconds=3600
)
START = 1_700_000_000.0
ATTACKER = "203.0.113.66"
PHONE = "192.0.2.10"


def fail(table: LockoutTable, host: str = ATTACKER, times: int = 1, *, user: str = "alice", now: float = START,
         policy: LockoutPolicy = POLICY) -> list[Lock]:
    started = []
    for _ in range(times):
        started += table.failed(DOMAIN, user, host, policy, now)
    return started


def test_a_pair_is_locked_at_its_fifth_failure_for_lockout_seconds():
    table = LockoutTable()
    assert fail(table, times=4) == []
    assert table.locked(DOMAIN, "alice", ATTACKER, START) is None
    assert fail(table) == [Lock("source", 60, START + 60, 5)]
    assert table.locked(DOMAIN, "alice", ATTACKER, START + 59.9) == Lock("source", 60, START + 60, 5)
    assert table.locked(DOMAIN, "alice", ATTACKER, START + 60) is None
    # Only that pair: the user from elsewhere, and others from there, are not locked.
    assert table.locked(DOMAIN, "alice", PHONE, START) is None
    assert table.locked(DOMAIN, "bob", ATTACKER, START) is None
    assert table.locked("other.example.test", "alice", ATTACKER, START) is None


def test_a_failure_counts_for_at_least_a_window_and_is_forgotten_within_two():
    table = LockoutTable()
    fail(table, times=4, now=START)
    assert fail(table, now=START + 1199)[0].failures == 5  # the first four are still counted
    table = LockoutTable()
    fail(table, times=4, now=START)
    assert fail(table, now=START + 1200) == []  # two windows on: forgotten
    assert fail(table, times=3, now=START + 1201) == []
    assert table.locked(DOMAIN, "alice", ATTACKER, START + 1201) is None
    assert fail(table, now=START + 1202) == [Lock("source", 60, START + 1262, 5)]


def test_a_paced_guesser_gets_at_most_the_threshold_less_one_per_two_windows():
    table = LockoutTable()
    for window in range(20):  # two a window, four per two: never locked
        assert fail(table, times=2, now=START + 600 * window) == []
    table = LockoutTable()
    assert fail(table, times=3, now=START) == []
    assert fail(table, times=3, now=START + 600)[0].failures == 5  # three a window: locked in the second


def test_each_failure_after_a_lock_doubles_it_up_to_the_maximum():
    table = LockoutTable()
    now = START
    fail(table, times=5, now=now)
    seconds = 60
    for expected in (120, 240, 480, 960, 1920, 3600, 3600):
        now += seconds  # the lock has ended; the guesser tries again, once
        assert table.locked(DOMAIN, "alice", ATTACKER, now) is None
        [lock] = fail(table, now=now)
        assert (lock.scope, lock.seconds, lock.until) == ("source", expected, now + expected)
        assert table.locked(DOMAIN, "alice", ATTACKER, now + expected - 1) == lock
        seconds = expected
    assert lock.failures == 12


def test_a_lock_is_forgotten_a_day_after_it_ended():
    table = LockoutTable()
    fail(table, times=5)
    [again] = fail(table, now=START + 60 + LockoutPolicy.remember_lock_seconds - 1)
    assert again.seconds == 120
    later = again.until + LockoutPolicy.remember_lock_seconds
    assert fail(table, times=4, now=later) == []  # a fresh count, not another doubling
    assert fail(table, now=later)[0].seconds == 60


def test_a_success_forgets_the_pairs_failures_and_lock_history():
    table = LockoutTable()
    fail(table, PHONE, times=5)  # a phone with an old password, locked
    table.proved(DOMAIN, "alice", PHONE, START + 60)  # its user typed the new one in
    assert fail(table, PHONE, times=4, now=START + 61) == []
    assert fail(table, PHONE, now=START + 61)[0].seconds == 60


def test_the_user_is_locked_across_addresses_but_not_for_addresses_that_proved_the_password():
    table = LockoutTable()
    table.proved(DOMAIN, "alice", PHONE, START - 3600)
    botnet = [f"198.51.100.{n}" for n in range(10)]
    for host in botnet[:9]:
        assert fail(table, host, times=3) == []  # below the pair threshold everywhere
    assert fail(table, botnet[9], times=2) == []
    assert fail(table, botnet[9]) == [Lock("user", 60, START + 60, 30)]
    assert table.locked(DOMAIN, "alice", "203.0.113.200", START).scope == "user"  # a new address: locked
    assert table.locked(DOMAIN, "alice", botnet[0], START).scope == "user"
    assert table.locked(DOMAIN, "alice", PHONE, START) is None  # the phone: spared
    assert table.locked(DOMAIN, "alice", PHONE, START + 60) is None
    assert table.locked(DOMAIN, "alice", "203.0.113.200", START + 60) is None  # the lock has ended


def test_a_proof_older_than_a_day_no_longer_spares():
    table = LockoutTable()
    table.proved(DOMAIN, "alice", PHONE, START - LockoutPolicy.proof_seconds)
    fail(table, times=30, user="alice", host=ATTACKER)
    assert [lock.scope for lock in fail(table, "198.51.100.1", user="alice")] == []  # already locked
    assert table.locked(DOMAIN, "alice", PHONE, START).scope == "user"


def test_a_proven_address_failing_during_a_user_lock_neither_extends_it_nor_is_refused_by_it():
    table = LockoutTable()
    table.proved(DOMAIN, "alice", PHONE, START)
    fail(table, "198.51.100.1", times=4)
    fail(table, "198.51.100.2", times=4)
    fail(table, "198.51.100.3", times=4)
    [user_lock] = [lock for lock in fail(table, "198.51.100.4", times=18) if lock.scope == "user"]
    assert fail(table, PHONE, times=4) == []
    assert table.locked(DOMAIN, "alice", PHONE, START) is None
    assert table.locked(DOMAIN, "alice", "198.51.100.9", START) == Lock("user", 60, user_lock.until, 34)


def test_one_failure_can_start_both_locks():
    table = LockoutTable()
    policy = LockoutPolicy(failures_per_source=3, failures_per_user=3)
    assert [lock.scope for lock in fail(table, times=3, policy=policy)] == ["source", "user"]


def test_unknown_and_known_usernames_are_counted_alike():
    # The table knows no catalogue: any name is a key like any other.
    table = LockoutTable()
    assert fail(table, times=5, user="alice") == fail(table, times=5, user="no-such-user")


def test_ipv6_addresses_count_by_their_64_and_mapped_ipv4_as_ipv4():
    table = LockoutTable()
    for n in range(5):
        fail(table, f"2001:db8:1:2::{n + 1}")
    assert table.locked(DOMAIN, "alice", "2001:db8:1:2:ffff::9", START).scope == "source"
    assert table.locked(DOMAIN, "alice", "2001:db8:1:3::1", START) is None
    assert source_address("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_address("192.0.2.7") == "192.0.2.7"
    assert source_address("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"


def test_long_usernames_are_keyed_by_their_hash():
    table = LockoutTable()
    long_name = "x" * 100_000
    fail(table, user=long_name, times=5)
    assert table.locked(DOMAIN, long_name, ATTACKER, START).scope == "source"
    assert table.locked(DOMAIN, long_name + "y", ATTACKER, START) is None


@pytest.mark.parametrize("varying", ["user", "host"])
def test_memory_is_bounded_whatever_a_flood_sends(varying):
    table = LockoutTable(max_counting=100, max_locked=50, max_proofs=20)
    for n in range(10_000):
        user, host = ("u%d" % n, ATTACKER) if varying == "user" else ("alice", f"10.{n >> 8 & 255}.{n & 255}.1")
        fail(table, host, times=5, user=user)
        table.proved(DOMAIN, user, host, START)
    assert len(table) <= 2 * (100 + 50) + 20


def test_a_flood_of_single_failures_pushes_out_counts_but_not_locks():
    table = LockoutTable(max_counting=100, max_locked=100)
    fail(table, times=5)  # alice from the attacker: locked
    for n in range(1000):
        fail(table, ATTACKER, user=f"junk{n}")
    assert table.locked(DOMAIN, "alice", ATTACKER, START + 1).scope == "source"
    # Pushing a lock out takes locks: here a hundred more.
    for n in range(100):
        fail(table, ATTACKER, times=5, user=f"locked{n}")
    assert table.locked(DOMAIN, "alice", ATTACKER, START + 1) is None
