"""Unit tests for ConnectionCache: what a registrar reading connections on demand can say, and when it must read."""

from __future__ import annotations

import ipaddress

import pytest

from registrar.model import Catalog, Connection, ConnectionCache, Domain, NotHeld

DOMAIN = "sip.example.test"
ALICE = (DOMAIN, "alice")


def connection(username: str, ha1: str = "a" * 32) -> Connection:
    return Connection(DOMAIN, username, ha1={"MD5": ha1}, name=username)


def test_one_never_read_must_be_read_one_read_absent_is_known_absent() -> None:
    cache = ConnectionCache(10)
    with pytest.raises(NotHeld) as unknown:
        cache.get(ALICE)
    assert unknown.value.key == ALICE
    cache.reading(ALICE)
    cache.read(ALICE, 5, None)
    assert cache.get(ALICE) is None and ALICE not in cache
    cache.read((DOMAIN, "bob"), 6, connection("bob"))
    assert cache[(DOMAIN, "bob")] == connection("bob")
    assert list(cache) == [(DOMAIN, "bob")]


def test_a_change_the_watch_brings_while_a_read_is_on_its_way_wins_over_the_older_read() -> None:
    cache = ConnectionCache(10)
    assert not cache.wants(ALICE)  # never read: the watch's news of it is not decoded
    cache.reading(ALICE)
    assert cache.wants(ALICE)
    cache.changed(ALICE, 9, connection("alice", "b" * 32))  # the password changed at revision 9...
    cache.read(ALICE, 7, connection("alice"))  # ...and the read, answered at 7, comes after
    assert cache.get(ALICE) == connection("alice", "b" * 32)
    cache.changed(ALICE, 12, None)  # deleted
    assert cache.get(ALICE) is None


def test_it_lets_go_of_the_least_recently_read_beyond_its_size_and_never_of_those_by_address() -> None:
    cache = ConnectionCache(3)
    pbx = Connection(DOMAIN, "pbx", "ip", {}, (ipaddress.ip_network("192.0.2.0/24"),), name="pbx")
    cache.held[(DOMAIN, "pbx")] = pbx
    for n in range(5):
        cache.read((DOMAIN, f"u{n}"), n, connection(f"u{n}"))
    with pytest.raises(NotHeld):
        cache.get((DOMAIN, "u1"))
    assert cache.get((DOMAIN, "u4")) == connection("u4")
    assert cache.get((DOMAIN, "pbx")) == pbx
    assert len(cache) == 4


def test_a_catalogue_over_a_cache_keeps_it_whole_and_derives_from_those_by_address() -> None:
    cache = ConnectionCache(3)
    cache.held[(DOMAIN, "pbx")] = Connection(DOMAIN, "pbx", "ip", {}, (ipaddress.ip_network("192.0.2.0/24"),),
                                             name="pbx")
    catalog = Catalog({DOMAIN: Domain(DOMAIN)}, cache)
    assert catalog.ip_authenticated_domains == {DOMAIN}
    assert ipaddress.ip_network("192.0.2.0/24") in catalog.security.trusted_networks
    assert catalog.only(frozenset({DOMAIN})).connections is cache
