"""EtcdStore against a real etcd: shared table, compare-and-swap ordering, leases, failures, nodes, outages."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import math
import time

import pytest

from registrar.model import Binding, Catalog, Connection, Domain
from registrar.store import RegistrationFailure, StoreUnavailable
from registrar.store import layout
from registrar.store.etcd import EtcdStore
from registrar.store.etcd_session import EtcdSession, parse_endpoints
from tests.etcd_server import EtcdServer, records
from tests.helpers import free_port

pytestmark = pytest.mark.integration

ALICE = "alice@sip.example.test"


def binding(contact: str, expires_in: float = 300, cseq: int = 1, call_id: str = "c1", aor: str = ALICE) -> Binding:
    now = time.time()
    return Binding(aor, contact, now + expires_in, call_id, cseq, registered_at=now)


def add(new: Binding):
    return lambda current: [b for b in current if b.contact != new.contact] + [new]


async def eventually(check, timeout: float = 5.0, interval: float = 0.02):
    """Wait until `check()` is true (replicas see each other's writes through the watch)."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)
    return result


async def started(etcd: EtcdServer, node: str = "", **kwargs) -> EtcdStore:
    store = EtcdStore(EtcdSession(parse_endpoints(etcd.url), timeout=1.0), node=node, node_address="127.0.0.1",
                      sip_port=5060, **kwargs)
    await store.start(wait=10)
    assert store.ready
    return store


async def raw(etcd: EtcdServer, prefix: str) -> dict[bytes, bytes]:
    return {key: kv.value for key, kv in (await records(etcd.url, prefix)).items()}


async def test_a_write_on_one_replica_is_read_from_memory_on_the_other(etcd):
    one, two = await started(etcd), await started(etcd)
    try:
        stored = await one.update(ALICE, add(binding("sip:alice@192.0.2.1")))
        assert [b.contact for b in stored] == ["sip:alice@192.0.2.1"]
        await eventually(lambda: two._table.current(ALICE, time.time()))
        assert [b.contact for b in await two.lookup(ALICE)] == ["sip:alice@192.0.2.1"]
        assert two.binding_counts() == {"sip.example.test": 1}
        # Removal on the other replica is seen by the first.
        assert await two.update(ALICE, lambda current: []) == []
        await eventually(lambda: not one._table.current(ALICE, time.time()))
        assert await raw(etcd, layout.BINDINGS) == {}
    finally:
        await one.close()
        await two.close()


async def test_concurrent_changes_on_two_replicas_are_all_applied_in_turn(etcd):
    """Compare-and-swap: every change sees the result of the ones before it, whichever replica made it."""
    one, two = await started(etcd), await started(etcd)
    try:
        def append(n: int):
            return lambda current: [*current, binding(f"sip:alice@192.0.2.{n}", cseq=n, call_id=f"c{n}")]

        await asyncio.gather(*(store.update(ALICE, append(n)) for n in range(1, 41) for store in [(one, two)[n % 2]]))
        expected = {f"sip:alice@192.0.2.{n}" for n in range(1, 41)}
        for store in (one, two):
            await eventually(lambda s=store: {b.contact for b in s._table.current(ALICE, time.time())} == expected)
        [value] = (await raw(etcd, layout.BINDINGS)).values()
        assert {b.contact for b in layout.decode_bindings(ALICE, value)} == expected
    finally:
        await one.close()
        await two.close()


async def test_a_refused_change_fails_alone_and_the_batch_goes_through(etcd):
    store = await started(etcd)
    try:
        def refuse(current):
            raise ValueError("refused")

        results = await asyncio.gather(
            store.update(ALICE, add(binding("sip:alice@192.0.2.1"))),
            store.update(ALICE, refuse),
            store.update("bob@sip.example.test", add(binding("sip:bob@192.0.2.2", aor="bob@sip.example.test"))),
            return_exceptions=True,
        )
        assert isinstance(results[1], ValueError)
        assert [b.contact for b in results[0]] == ["sip:alice@192.0.2.1"]
        assert [b.contact for b in results[2]] == ["sip:bob@192.0.2.2"]
        assert len(await raw(etcd, layout.BINDINGS)) == 2
    finally:
        await store.close()


async def test_a_burst_of_more_aors_than_a_transaction_holds_is_all_stored(etcd):
    """Full batches are within etcd's --max-txn-ops, nested compare-and-swaps counted (128 of them are not)."""
    store = await started(etcd)
    try:
        aors = [f"u{n}@sip.example.test" for n in range(400)]
        results = await asyncio.gather(
            *(store.update(aor, add(binding(f"sip:{aor}", aor=aor))) for aor in aors), return_exceptions=True
        )
        assert [r for r in results if isinstance(r, BaseException)] == []
        assert len(await raw(etcd, layout.BINDINGS)) == len(aors)
    finally:
        await store.close()


async def test_registers_arriving_within_the_write_interval_share_one_transaction(etcd):
    transactions: list[int] = []
    store = await started(etcd, on_write=lambda seconds, aors, conflicts: transactions.append(aors))
    try:
        first = asyncio.ensure_future(store.update(ALICE, add(binding("sip:alice@192.0.2.1"))))
        await asyncio.sleep(0)  # on an idle store it goes out at once
        aors = [f"u{n}@sip.example.test" for n in range(30)]
        await asyncio.gather(first, *(store.update(aor, add(binding(f"sip:{aor}", aor=aor))) for aor in aors))
        assert transactions == [1, 30]
    finally:
        await store.close()


async def test_a_register_waiting_for_its_batch_when_the_store_closes_is_answered_unavailable(etcd):
    store = await started(etcd)
    await store.update(ALICE, add(binding("sip:alice@192.0.2.1")))
    bob = "bob@sip.example.test"
    waiting = asyncio.ensure_future(store.update(bob, add(binding("sip:bob@192.0.2.2", aor=bob))))
    await asyncio.sleep(0)
    await store.close()
    with pytest.raises(StoreUnavailable):
        await waiting


async def test_a_write_acknowledged_after_a_newer_one_was_watched_does_not_turn_the_cache_back(etcd):
    """Our write at R, another replica's at R2 on top of it, both watched before etcd's answer to ours arrives:
    the cache keeps R2."""
    one, two = await started(etcd), await started(etcd)
    gate = asyncio.Event()
    txn = one.session.txn

    async def answered_late(request):
        response = await txn(request)
        await gate.wait()
        return response

    one.session.txn = answered_late
    try:
        first = asyncio.ensure_future(one.update(ALICE, add(binding("sip:alice@192.0.2.1"))))
        await eventually(lambda: two._table.current(ALICE, time.time()))  # etcd has ours; two has seen it
        await two.update(ALICE, add(binding("sip:alice@192.0.2.2", call_id="c2")))
        newer = {"sip:alice@192.0.2.1", "sip:alice@192.0.2.2"}
        await eventually(lambda: {b.contact for b in one._table.current(ALICE, time.time())} == newer)
        gate.set()
        await first
        assert {b.contact for b in await one.lookup(ALICE)} == newer
        await one.update(ALICE, add(binding("sip:alice@192.0.2.3", call_id="c3")))  # no compare lost on a stale revision
        assert {b.contact for b in await one.lookup(ALICE)} == newer | {"sip:alice@192.0.2.3"}
    finally:
        gate.set()
        await one.close()
        await two.close()


async def test_keys_carry_shared_leases_and_vanish_when_their_bindings_expire(etcd):
    store = await started(etcd)
    try:
        # Expiring within the same second, however long the writes take on a loaded machine (the
        # middle of a one-second slot, 2 s ahead): one lease for all.
        expires_at = math.floor(time.time()) + 2.5
        for n in range(5):
            aor = f"u{n}@sip.example.test"
            await store.update(aor, add(binding(f"sip:u{n}@192.0.2.1", aor=aor)._replace(expires_at=expires_at)))
        kvs = list((await records(etcd.url, layout.BINDINGS)).values())
        assert len(kvs) == 5
        assert len({kv.lease for kv in kvs}) == 1 and kvs[0].lease != 0
        await store.close()  # no registrar left to clean up: etcd's lease does it
        deadline = time.monotonic() + 8
        while await raw(etcd, layout.BINDINGS):
            assert time.monotonic() < deadline, "binding keys outlived their lease"
            await asyncio.sleep(0.2)
    finally:
        await store.close()


async def test_reads_never_return_an_expired_binding(etcd):
    store = await started(etcd)
    try:
        await store.update(ALICE, add(binding("sip:alice@192.0.2.1", expires_in=1)))
        await store.update(ALICE, add(binding("sip:alice@192.0.2.2", expires_in=300)))
        await asyncio.sleep(1.1)
        assert [b.contact for b in await store.lookup(ALICE)] == ["sip:alice@192.0.2.2"]
        assert [b.contact for b in await store.all_bindings()] == ["sip:alice@192.0.2.2"]
        # A replica that starts now reads the record, and drops what expired in it.
        late = await started(etcd)
        assert [b.contact for b in await late.lookup(ALICE)] == ["sip:alice@192.0.2.2"]
        await late.close()
    finally:
        await store.close()


async def test_failures_are_written_in_batches_not_per_attempt(etcd):
    store = await started(etcd)
    try:
        for n in range(200):
            await store.record_failure(RegistrationFailure("sip.example.test", "alice", time.time(), "wrong password",
                                                           f"udp:192.0.2.9:{5000 + n}"))
        key = layout.failure_key("sip.example.test", "alice")
        value = await eventually_async(lambda: raw(etcd, layout.FAILURES), timeout=5)
        failure = layout.decode_failure("sip.example.test", "alice", value[key])
        assert failure.reason == "wrong password" and failure.source == "udp:192.0.2.9:5199"
        assert (await records(etcd.url, layout.FAILURES))[key].version == 1  # 200 failures, one write
        other = await started(etcd)
        assert (await other.last_failure("sip.example.test", "alice")) == failure
        await other.close()
    finally:
        await store.close()


async def eventually_async(read, timeout: float):
    deadline = time.monotonic() + timeout
    while not (result := await read()):
        assert time.monotonic() < deadline, "nothing appeared in time"
        await asyncio.sleep(0.1)
    return result


async def test_nodes_register_under_a_lease_and_leave_on_close(etcd):
    store = await started(etcd, node="pod-a")
    try:
        record = layout.decode_node((await raw(etcd, layout.NODES))[layout.node_key("pod-a")])
        assert record["address"] == "127.0.0.1" and record["sipPort"] == 5060
        other = await started(etcd, node="pod-b")
        await eventually(lambda: set(other.nodes) == {"pod-a", "pod-b"})
        await other.close()
        assert set(await raw(etcd, layout.NODES)) == {layout.node_key("pod-a")}
        await eventually(lambda: set(store.nodes) == {"pod-a"})
    finally:
        await store.close()


async def test_published_catalog_reaches_every_replica_and_stale_entries_go(etcd):
    domain = Domain("sip.example.test")
    alice = Connection("sip.example.test", "alice", ha1={"MD5": "0" * 32}, name="alice")
    bob = Connection("sip.example.test", "bob", ha1={"MD5": "1" * 32}, name="bob")
    publisher = EtcdStore(EtcdSession(parse_endpoints(etcd.url)),
                          publish=Catalog({"sip.example.test": domain}, {("sip.example.test", "alice"): alice,
                                                                         ("sip.example.test", "bob"): bob}))
    # Until etcd's is read, the catalogue to publish is the one served.
    assert set(publisher.catalog.connections) == {("sip.example.test", "alice"), ("sip.example.test", "bob")}
    await publisher.start()
    seen: list[Catalog] = []
    reader = await started(etcd, on_catalog=seen.append)
    try:
        assert reader.catalog.domains == {"sip.example.test": domain}
        assert reader.catalog.connections[("sip.example.test", "alice")] == alice
        assert seen == [reader.catalog]  # told at the first read, too
        await publisher.close()
        again = EtcdStore(EtcdSession(parse_endpoints(etcd.url)),
                          publish=Catalog({"sip.example.test": domain}, {("sip.example.test", "alice"): alice}))
        await again.start()
        await again.close()
        await eventually(lambda: seen and ("sip.example.test", "bob") not in seen[-1].connections)
        assert set(reader.catalog.connections) == {("sip.example.test", "alice")}
    finally:
        await reader.close()


async def test_etcd_outage_answers_unavailable_then_heals_by_itself(etcd):
    store = await started(etcd)
    try:
        await store.update(ALICE, add(binding("sip:alice@192.0.2.1")))
        etcd.stop()
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(store.update(ALICE, add(binding("sip:alice@192.0.2.2"))), 5)
        await eventually(lambda: not store.ready)
        # Reads still come from memory while etcd is away.
        assert [b.contact for b in await store.lookup(ALICE)] == ["sip:alice@192.0.2.1"]
        etcd.start()
        await eventually(lambda: store.ready, timeout=15)
        stored = await store.update(ALICE, add(binding("sip:alice@192.0.2.2")))
        assert {b.contact for b in stored} == {"sip:alice@192.0.2.1", "sip:alice@192.0.2.2"}
    finally:
        await store.close()


async def test_changes_made_while_a_replica_was_cut_off_reach_it_when_it_reconnects(etcd):
    one, two = await started(etcd), await started(etcd)
    try:
        await two.session.disconnect()  # the watch breaks; two resumes from its last revision
        await one.update(ALICE, add(binding("sip:alice@192.0.2.7")))
        await eventually(lambda: two._table.current(ALICE, time.time()), timeout=10)
        assert two.ready
    finally:
        await one.close()
        await two.close()


def test_store_urls_are_checked() -> None:
    assert parse_endpoints("etcd://127.0.0.1:2379,[::1]:2380") == [("127.0.0.1", 2379), ("::1", 2380)]
    for bad in ("etcd://127.0.0.1", "redis://x:1", "etcd://h:99999"):
        with pytest.raises(ValueError, match="etcd://HOST:PORT|bad etcd endpoint"):
            parse_endpoints(bad)


async def test_endpoints_that_do_not_answer_are_skipped(etcd):
    dead = f"127.0.0.1:{free_port()}"
    store = EtcdStore(EtcdSession(parse_endpoints(f"etcd://{dead},{etcd.endpoint}"), timeout=1.0))
    try:
        await store.start(wait=10)
        assert store.ready and store.session.endpoint == etcd.endpoint
        assert [b.contact for b in await store.update(ALICE, add(binding("sip:alice@192.0.2.1")))] == [
            "sip:alice@192.0.2.1"
        ]
    finally:
        await store.close()


# -- a registrar's store: bindings read on demand -------------------------------------------------


async def test_a_replica_reading_on_demand_holds_none_of_the_others_writes_and_reads_them_when_asked(etcd):
    served = Catalog({"sip.example.test": Domain("sip.example.test")})
    writer = await started(etcd, cached_aors=1000, publish=served)
    reader = await started(etcd, cached_aors=1000)
    try:
        aors = [f"u{n}@sip.example.test" for n in range(300)]
        await asyncio.gather(*(writer.update(aor, add(binding(f"sip:{n}@192.0.2.1", aor=aor)))
                               for n, aor in enumerate(aors)))
        assert writer.cached == 300
        await asyncio.sleep(0.3)  # what a watch of the bindings would have brought by now
        assert reader.cached == 0
        assert [b.contact for b in await reader.lookup(aors[7])] == ["sip:7@192.0.2.1"]
        found = await reader.lookup_many(aors[:200])
        assert [b.contact for b in found[aors[150]]] == ["sip:150@192.0.2.1"]
        # A REGISTER for an AOR it never saw starts from etcd's record: nothing the writer stored is lost.
        stored = await reader.update(aors[250], add(binding("sip:second@192.0.2.2", aor=aors[250])))
        assert {b.contact for b in stored} == {"sip:250@192.0.2.1", "sip:second@192.0.2.2"}
        assert len(await reader.all_bindings("sip.example.test")) == 301
        await eventually(lambda: reader.aor_counts() == {"sip.example.test": 300})  # each served domain's
        assert reader.binding_counts() == {}  # only reading every record would tell
        with pytest.raises(TypeError):
            reader.watch()
    finally:
        await asyncio.gather(writer.close(), reader.close())


async def test_lookups_arriving_while_a_read_is_out_go_together_and_each_gets_its_own_aors_bindings(etcd):
    served = Catalog({"sip.example.test": Domain("sip.example.test")})
    writer = await started(etcd, cached_aors=1000, publish=served)
    reads = []
    reader = await started(etcd, cached_aors=1000, on_read=reads.append)
    batches = []
    read_batch = reader.session._read_batch

    async def counted(batch):
        batches.append(len(batch))
        await read_batch(batch)

    reader.session._read_batch = counted
    try:
        aors = [f"u{n}@sip.example.test" for n in range(40)]
        await asyncio.gather(*(writer.update(aor, add(binding(f"sip:{n}@192.0.2.1", aor=aor)))
                               for n, aor in enumerate(aors[:30])))  # the last 10 have none
        asked = aors + aors[1:5]  # an AOR looked up twice while its read waits is read once
        found = await asyncio.gather(*(reader.lookup(aor) for aor in asked))
        for aor, bindings in zip(asked, found):
            n = int(aor[1:].split("@")[0])
            assert [b.contact for b in bindings] == ([f"sip:{n}@192.0.2.1"] if n < 30 else [])
        # The first goes out alone, at once; the others, asked for while it is out, as one transaction.
        assert batches == [1, 39]
        assert len(reads) == len(asked)  # the read histogram counts each lookup
    finally:
        await asyncio.gather(writer.close(), reader.close())


async def test_a_lookup_given_up_leaves_the_read_it_shares_to_the_others_asking(etcd):
    writer = await started(etcd, cached_aors=1000)
    reader = await started(etcd, cached_aors=1000)
    try:
        await writer.update(ALICE, add(binding("sip:alice@192.0.2.1")))
        out = asyncio.create_task(reader.lookup("bob@sip.example.test"))
        await asyncio.sleep(0)  # bob's read is out: alice's two lookups wait for the next batch, and share its key
        given_up, kept = asyncio.create_task(reader.lookup(ALICE)), asyncio.create_task(reader.lookup(ALICE))
        await asyncio.sleep(0)
        given_up.cancel()
        assert [b.contact for b in await kept] == ["sip:alice@192.0.2.1"]
        assert await out == []
        with pytest.raises(asyncio.CancelledError):
            await given_up
    finally:
        await asyncio.gather(writer.close(), reader.close())


async def test_reads_asked_while_etcd_is_away_each_fail_unavailable(etcd):
    store = await started(etcd, cached_aors=1000)
    try:
        etcd.stop()
        aors = [f"u{n}@sip.example.test" for n in range(1000)]  # several batches' worth, failed in turn
        found = await asyncio.gather(*(store.session.read([layout.bindings_key(aor)])[0] for aor in aors),
                                     return_exceptions=True)
        assert all(isinstance(answer, StoreUnavailable) for answer in found), found[:3]
    finally:
        etcd.start()
        await store.close()


async def test_a_cached_record_another_replica_changed_since_costs_a_lost_compare_never_a_binding(etcd):
    lost = []
    one = await started(etcd, cached_aors=1000, on_write=lambda seconds, aors, conflicts: lost.append(conflicts))
    two = await started(etcd, cached_aors=1000)
    try:
        await one.update(ALICE, add(binding("sip:alice@192.0.2.1")))  # one caches alice's record
        await two.update(ALICE, add(binding("sip:alice@192.0.2.2")))  # ...which two then changes
        stored = await one.update(ALICE, add(binding("sip:alice@192.0.2.3")))
        assert {b.contact for b in stored} == {"sip:alice@192.0.2.1", "sip:alice@192.0.2.2", "sip:alice@192.0.2.3"}
        assert sum(lost) == 1
        # Removed elsewhere: the cached record is gone from etcd, and the compare says so too.
        await two.update(ALICE, lambda current: [])
        stored = await one.update(ALICE, add(binding("sip:alice@192.0.2.4")))
        assert [b.contact for b in stored] == ["sip:alice@192.0.2.4"]
        assert sum(lost) == 2
    finally:
        await asyncio.gather(one.close(), two.close())


async def test_the_cache_lets_go_of_the_least_recently_used_aors_beyond_its_bound(etcd):
    from registrar.store.etcd import MIN_CACHED_AORS

    store = await started(etcd, cached_aors=10)  # below the least: raised to it
    try:
        aors = [f"u{n}@sip.example.test" for n in range(MIN_CACHED_AORS + 100)]
        for start in range(0, len(aors), 100):
            await asyncio.gather(*(store.update(aor, add(binding(f"sip:{aor}", aor=aor)))
                                   for aor in aors[start : start + 100]))
        assert store.cached == MIN_CACHED_AORS
        # The first ones went; writing one again reads it first and keeps what it had.
        stored = await store.update(aors[0], add(binding("sip:again@192.0.2.9", aor=aors[0])))
        assert {b.contact for b in stored} == {f"sip:{aors[0]}", "sip:again@192.0.2.9"}
        assert store.cached == MIN_CACHED_AORS
    finally:
        await store.close()


async def test_a_replica_follows_only_the_connections_of_the_domains_it_serves(etcd):
    ours, theirs = Domain("sip.example.test"), Domain("other.example.test")
    networks = (ipaddress.ip_network("192.0.2.0/24"),)
    alice = Connection("sip.example.test", "alice", "ip", {}, networks, name="alice")
    zed = Connection("other.example.test", "zed", "ip", {}, networks, name="zed")
    publisher = EtcdStore(EtcdSession(parse_endpoints(etcd.url)), publish=Catalog(
        {ours.name: ours, theirs.name: theirs},
        {("sip.example.test", "alice"): alice, ("other.example.test", "zed"): zed}))
    await publisher.start()
    reader = await started(etcd, cached_aors=1000, served_domains=frozenset({"sip.example.test"}))
    try:
        assert set(reader.catalog.connections.held) == {("sip.example.test", "alice")}  # those by address
        assert set(reader.catalog.domains) == {"sip.example.test", "other.example.test"}
    finally:
        await asyncio.gather(publisher.close(), reader.close())


async def test_reading_on_demand_while_etcd_is_away_answers_from_the_cache_or_unavailable(etcd):
    store = await started(etcd, cached_aors=1000)
    try:
        await store.update(ALICE, add(binding("sip:alice@192.0.2.1")))
        etcd.stop()
        await eventually(lambda: not store.ready, timeout=5)
        # What this replica wrote last is the best answer there is; what it never held, it cannot say.
        assert [b.contact for b in await store.lookup(ALICE)] == ["sip:alice@192.0.2.1"]
        with pytest.raises(StoreUnavailable):
            await store.lookup("bob@sip.example.test")
        with pytest.raises(StoreUnavailable):
            await store.lookup_many([ALICE])
        etcd.start()
        await eventually(lambda: store.ready, timeout=15)
        assert [b.contact for b in await store.lookup(ALICE)] == ["sip:alice@192.0.2.1"]
    finally:
        await store.close()


async def test_a_replica_holds_connections_by_address_reads_the_others_and_hears_of_their_changes(etcd):
    from registrar.model import NotHeld

    domain = Domain("sip.example.test")
    alice = Connection("sip.example.test", "alice", ha1={"MD5": "0" * 32}, name="alice")
    pbx = Connection("sip.example.test", "pbx", "ip", {}, (ipaddress.ip_network("192.0.2.0/24"),), name="pbx")

    def catalog(*connections: Connection) -> Catalog:
        return Catalog({domain.name: domain}, {(c.domain, c.username): c for c in connections})

    publisher = EtcdStore(EtcdSession(parse_endpoints(etcd.url)), publish=catalog(alice, pbx))
    await publisher.start()
    await publisher.close()
    reader = await started(etcd, cached_aors=1000, served_domains=frozenset({"sip.example.test"}))
    try:
        connections = reader.catalog.connections
        assert connections.get(("sip.example.test", "pbx")) == pbx  # held whole
        assert reader.catalog.ip_authenticated_domains == {"sip.example.test"}
        with pytest.raises(NotHeld):
            connections.get(("sip.example.test", "alice"))
        writer = await started(etcd, cached_aors=1000)
        await writer.update(ALICE, add(binding("sip:alice@192.0.2.1")))
        await writer.close()
        await asyncio.gather(*(reader.read_connection(("sip.example.test", user)) for user in ("alice", "bob")))
        assert connections.get(("sip.example.test", "alice")) == alice
        assert connections.get(("sip.example.test", "bob")) is None  # known absent
        # Read with its connection, in the same transaction: alice's REGISTER writes it next. Not bob's.
        assert reader.cached == 1
        await eventually(lambda: reader.connection_counts() == {"sip.example.test": 2})
        # The password changes, bob is created, pbx turns to credentials: the watch brings each.
        new_alice = dataclasses.replace(alice, ha1={"MD5": "1" * 32})
        bob = Connection("sip.example.test", "bob", ha1={"MD5": "2" * 32}, name="bob")
        pbx_by_password = dataclasses.replace(pbx, authentication="credentials", ha1={"MD5": "3" * 32},
                                              allowed_networks=())
        again = EtcdStore(EtcdSession(parse_endpoints(etcd.url)), publish=catalog(new_alice, bob, pbx_by_password))
        await again.start()
        await again.close()
        await eventually(lambda: reader.catalog.connections.get(("sip.example.test", "alice")) == new_alice)
        await eventually(lambda: reader.catalog.connections.get(("sip.example.test", "bob")) == bob)
        await eventually(lambda: reader.catalog.ip_authenticated_domains == frozenset())
        with pytest.raises(NotHeld):  # no longer held whole: read as the others
            reader.catalog.connections.get(("sip.example.test", "pbx"))
    finally:
        await reader.close()
