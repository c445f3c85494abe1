"""Unit tests for registrar.store.memory.MemoryStore: expiry on read, sweeps, counts, atomic updates."""

from __future__ import annotations

import asyncio

import pytest

from registrar.model import Binding
from registrar.store import BindingEvent, RegistrationFailure
from registrar.store.memory import MemoryStore
from tests.helpers import FakeClock

START = 1_700_000_000.0
ALICE = "alice@sip.example.test"
BOB = "bob@sip.example.test"
CAROL = "carol@other.example.test"


def binding(aor: str = ALICE, contact: str = "sip:alice@192.0.2.10:5060", expires_in: float = 60, **kwargs) -> Binding:
    defaults = {
        "call_id": "call-1", "cseq": 1, "source_host": "192.0.2.10", "source_port": 5060, "registered_at": START,
    }
    defaults.update(kwargs)
    return Binding(aor=aor, contact=contact, expires_at=START + expires_in, **defaults)


def put(*bindings: Binding):
    """A change that adds `bindings` to the current ones."""
    return lambda current: [*current, *bindings]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def store(clock) -> MemoryStore:
    return MemoryStore(clock=clock)


async def next_event(watcher, timeout: float = 1.0) -> BindingEvent:
    return await asyncio.wait_for(watcher.__anext__(), timeout)


async def subscribed(store: MemoryStore):
    """A watcher that is already listening (its first step has run)."""
    watcher = store.watch()
    pending = asyncio.ensure_future(watcher.__anext__())
    await asyncio.sleep(0)
    return watcher, pending


async def test_update_stores_and_lookup_returns(store):
    stored = await store.update(ALICE, put(binding()))
    assert stored == [binding()]
    assert await store.lookup(ALICE) == [binding()]
    assert await store.lookup(BOB) == []


async def test_lookup_hides_expired_bindings(store, clock):
    short = binding(contact="sip:alice@192.0.2.10:5060", expires_in=30)
    long = binding(contact="sip:alice@192.0.2.10:5070", expires_in=90)
    await store.update(ALICE, put(short, long))
    clock.advance(30)  # expires_at == now: expired
    assert await store.lookup(ALICE) == [long]
    assert await store.all_bindings() == [long]
    clock.advance(60)
    assert await store.lookup(ALICE) == []
    assert await store.all_bindings() == []


async def test_update_hands_change_only_current_bindings(store, clock):
    await store.update(ALICE, put(binding(expires_in=10), binding(contact="sip:alice@h2", expires_in=100)))
    clock.advance(20)
    seen = []

    def change(current):
        seen.extend(current)
        return current

    assert await store.update(ALICE, change) == [binding(contact="sip:alice@h2", expires_in=100)]
    assert seen == [binding(contact="sip:alice@h2", expires_in=100)]
    assert store.binding_counts() == {"sip.example.test": 1}


async def test_update_to_nothing_removes_the_aor(store):
    await store.update(ALICE, put(binding()))
    assert await store.update(ALICE, lambda current: []) == []
    assert await store.lookup(ALICE) == []
    assert store.binding_counts() == {}


async def test_update_is_atomic_when_change_raises(store):
    original = binding()
    await store.update(ALICE, put(original))

    class Abort(Exception):
        pass

    def change(current):
        current.clear()  # even mutating what it was given must not leak into the store
        raise Abort

    with pytest.raises(Abort):
        await store.update(ALICE, change)
    assert await store.lookup(ALICE) == [original]
    assert store.binding_counts() == {"sip.example.test": 1}

    with pytest.raises(Abort):
        await store.update(BOB, change)
    assert await store.lookup(BOB) == []
    assert store.binding_counts() == {"sip.example.test": 1}


async def test_binding_counts_per_domain(store):
    await store.update(ALICE, put(binding(), binding(contact="sip:alice@h2")))
    await store.update(BOB, put(binding(aor=BOB, contact="sip:bob@h")))
    await store.update(CAROL, put(binding(aor=CAROL, contact="sip:carol@h")))
    assert store.binding_counts() == {"sip.example.test": 3, "other.example.test": 1}
    await store.update(ALICE, lambda current: current[:1])
    assert store.binding_counts() == {"sip.example.test": 2, "other.example.test": 1}
    await store.update(CAROL, lambda current: [])
    assert store.binding_counts() == {"sip.example.test": 2}


async def test_aor_counts_are_the_aors_with_a_binding_per_domain(store, clock):
    await store.update(ALICE, put(binding(), binding(contact="sip:alice@h2", expires_in=30)))
    await store.update(BOB, put(binding(aor=BOB, contact="sip:bob@h", expires_in=30)))
    await store.update(CAROL, put(binding(aor=CAROL, contact="sip:carol@h")))
    assert store.aor_counts() == {"sip.example.test": 2, "other.example.test": 1}
    await store.update(ALICE, lambda current: current[:1])  # one of two bindings gone: still registered
    assert store.aor_counts() == {"sip.example.test": 2, "other.example.test": 1}
    await store.update(CAROL, lambda current: [])
    assert store.aor_counts() == {"sip.example.test": 2}
    clock.advance(31)
    store.sweep()  # bob's only binding expires; alice keeps hers
    assert store.aor_counts() == {"sip.example.test": 1}
    assert store.binding_counts() == {"sip.example.test": 1}


async def test_all_bindings_filters_by_domain(store):
    await store.update(ALICE, put(binding()))
    await store.update(CAROL, put(binding(aor=CAROL, contact="sip:carol@h")))
    assert {b.aor for b in await store.all_bindings()} == {ALICE, CAROL}
    assert [b.aor for b in await store.all_bindings("other.example.test")] == [CAROL]
    assert await store.all_bindings("unknown.example.test") == []


async def test_sweep_removes_expired_bindings_and_tells_watchers(store, clock):
    keep = binding(contact="sip:alice@h2", expires_in=300)
    await store.update(ALICE, put(binding(expires_in=30), keep))
    await store.update(BOB, put(binding(aor=BOB, contact="sip:bob@h", expires_in=30)))
    assert store.binding_counts() == {"sip.example.test": 3}

    watcher, pending = await subscribed(store)
    clock.advance(31)
    store.sweep()
    events = [await asyncio.wait_for(pending, 1), await next_event(watcher)]
    assert sorted(events, key=lambda e: e.aor) == [BindingEvent(ALICE, (keep,)), BindingEvent(BOB, ())]
    assert store.binding_counts() == {"sip.example.test": 1}
    assert await store.all_bindings() == [keep]

    # Nothing expired: a sweep changes nothing and says nothing.
    store.sweep()
    follow_up = asyncio.ensure_future(next_event(watcher, timeout=0.05))
    with pytest.raises(asyncio.TimeoutError):
        await follow_up
    await store.close()


async def test_watch_reports_updates_and_ends_on_close(store):
    watcher, pending = await subscribed(store)
    first = binding()
    await store.update(ALICE, put(first))
    assert await asyncio.wait_for(pending, 1) == BindingEvent(ALICE, (first,))
    await store.update(ALICE, lambda current: [])
    assert await next_event(watcher) == BindingEvent(ALICE, ())
    await store.close()
    with pytest.raises(StopAsyncIteration):
        await next_event(watcher)


async def test_watch_sees_changes_made_right_after_it_is_called(store):
    watcher = store.watch()
    await store.update(ALICE, put(binding()))
    assert await next_event(watcher, timeout=0.2) == BindingEvent(ALICE, (binding(),))


async def test_background_sweeper_expires_bindings(clock):
    store = MemoryStore(clock=clock, sweep_interval=0.01)
    await store.update(ALICE, put(binding(expires_in=30)))
    watcher, pending = await subscribed(store)
    await store.start()
    try:
        clock.advance(31)
        assert await asyncio.wait_for(pending, 1) == BindingEvent(ALICE, ())
        assert store.binding_counts() == {}
    finally:
        await store.close()


async def test_last_failure_keeps_the_latest_per_connection(store):
    assert await store.last_failure("sip.example.test", "alice") is None
    first = RegistrationFailure("sip.example.test", "alice", START, "wrong password", "udp:192.0.2.10:5060")
    later = RegistrationFailure("sip.example.test", "alice", START + 10, "unknown user", "udp:203.0.113.5:4000")
    bob = RegistrationFailure("sip.example.test", "bob", START + 5, "wrong password", "tcp:192.0.2.20:5060")
    await store.record_failure(first)
    await store.record_failure(bob)
    assert await store.last_failure("sip.example.test", "alice") == first
    await store.record_failure(later)
    assert await store.last_failure("sip.example.test", "alice") == later
    assert await store.last_failure("sip.example.test", "bob") == bob
    assert await store.last_failure("other.example.test", "alice") is None


def test_store_is_ready_by_default(store):
    assert store.ready is True


# --- the expiry wheel --------------------------------------------------------------------------


def replace_with(*bindings: Binding):
    return lambda current: list(bindings)


async def test_a_refreshed_binding_survives_its_old_expiry_and_goes_at_its_new_one(store, clock) -> None:
    await store.update(ALICE, put(binding(expires_in=60)))
    clock.advance(50)
    await store.update(ALICE, replace_with(binding(expires_in=50 + 60, cseq=2)))
    clock.advance(20)  # past the first expiry
    store.sweep()
    assert store.binding_counts() == {"sip.example.test": 1}
    clock.advance(41)  # past the refreshed one
    store.sweep()
    assert store.binding_counts() == {}
    assert await store.all_bindings() == []


async def test_a_new_earlier_expiry_moves_the_aor_to_an_earlier_slot(store, clock) -> None:
    await store.update(ALICE, put(binding(expires_in=600)))
    await store.update(ALICE, put(binding(contact="sip:alice@192.0.2.11", expires_in=30)))
    clock.advance(31)
    store.sweep()
    assert [b.contact for b in store._table.stored(ALICE)] == ["sip:alice@192.0.2.10:5060"]
    clock.advance(600)
    store.sweep()
    assert ALICE not in store._table._bindings


async def test_a_sweep_visits_only_the_aors_that_came_due(store, clock) -> None:
    for i in range(100):
        await store.update(f"u{i}@sip.example.test", put(binding(aor=f"u{i}@sip.example.test", expires_in=10 + i)))
    clock.advance(20.5)
    store.sweep()
    assert store.binding_counts() == {"sip.example.test": 90}
    assert sum(len(aors) for aors in store._table._wheel.values()) == 90


async def test_the_stored_table_is_invisible_to_the_cyclic_garbage_collector(store) -> None:
    import gc

    for i in range(10):
        await store.update(f"u{i}@sip.example.test", put(binding(aor=f"u{i}@sip.example.test")))
    gc.collect()  # untracks each binding's tuple...
    gc.collect()  # ...and then the AOR's tuple of them
    assert not any(gc.is_tracked(bindings) for bindings in store._table._bindings.values())
    assert [b.aor for b in await store.lookup("u3@sip.example.test")] == ["u3@sip.example.test"]
