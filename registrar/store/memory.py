"""The in-memory location service: one process, nothing shared, nothing persisted.

Bindings are kept as plain tuples, not Binding objects: CPython stops tracking
an exact tuple of strings and numbers in its cyclic garbage collector, so the
table adds nothing to a full collection's pause however large it grows (as
objects, 20k bindings made 80 ms pauses, straight into p99). They become
Binding again on the way out.

This is `sipreg serve`'s embedded default. Updates are atomic because `change`
runs without awaiting in between read and write, on the event loop's thread.

Expiry uses a timer wheel of one-second slots holding each AOR once, at its
earliest expiry; a sweep visits only the slots that came due, so its cost
follows the expiries, not the table's size (a full scan of 100k bindings
would stall the event loop for tens of milliseconds every second).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from operator import attrgetter

from registrar.model import Binding
from registrar.store import (
    BindingChange,
    BindingEvent,
    LocationStore,
    RegistrationFailure,
    domain_of,
)

SWEEP_INTERVAL = 1.0
_expires_at = attrgetter("expires_at")


class MemoryStore(LocationStore):
    def __init__(self, clock: Callable[[], float] = time.time, sweep_interval: float = SWEEP_INTERVAL):
        self._clock = clock
        self._sweep_interval = sweep_interval
        self._bindings: dict[str, tuple[tuple, ...]] = {}  # AOR -> its bindings as plain tuples
        self._counts: Counter[str] = Counter()
        self._failures: dict[tuple[str, str], RegistrationFailure] = {}
        self._watchers: set[asyncio.Queue[BindingEvent | None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._wheel: dict[int, list[str]] = {}  # slot (whole second) -> AORs due then
        self._slot_of: dict[str, int] = {}  # AOR -> the one slot it is due in
        self._swept_until = int(clock())

    async def lookup(self, aor: str) -> list[Binding]:
        now = self._clock()
        return [b for b in self._stored(aor) if b.expires_at > now]

    async def update(self, aor: str, change: BindingChange) -> list[Binding]:
        now = self._clock()
        old = self._stored(aor)
        new = tuple(change([b for b in old if b.expires_at > now] if old else []))
        self._replace(aor, old, new)
        return list(new)

    async def all_bindings(self, domain: str | None = None) -> list[Binding]:
        now = self._clock()
        return [
            b
            for aor in list(self._bindings)
            if domain is None or domain_of(aor) == domain
            for b in self._stored(aor)
            if b.expires_at > now
        ]

    def _stored(self, aor: str) -> tuple[Binding, ...]:
        return tuple(map(Binding._make, self._bindings.get(aor, ())))

    def binding_counts(self) -> dict[str, int]:
        return {domain: count for domain, count in self._counts.items() if count}

    def watch(self) -> AsyncIterator[BindingEvent]:
        # Subscribe now, not at the first iteration, so no change made in between is missed.
        queue: asyncio.Queue[BindingEvent | None] = asyncio.Queue()
        self._watchers.add(queue)
        return self._drain(queue)

    async def _drain(self, queue: asyncio.Queue[BindingEvent | None]) -> AsyncIterator[BindingEvent]:
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._watchers.discard(queue)

    async def record_failure(self, failure: RegistrationFailure) -> None:
        self._failures[(failure.domain, failure.username)] = failure

    async def last_failure(self, domain: str, username: str) -> RegistrationFailure | None:
        return self._failures.get((domain, username))

    async def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="memory-store-sweeper")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for queue in self._watchers:
            queue.put_nowait(None)

    def sweep(self) -> None:
        """Drop expired bindings (reads already hide them; this frees memory and tells watchers)."""
        now = self._clock()
        for slot in range(self._swept_until + 1, int(now) + 1):
            for aor in self._wheel.pop(slot, ()):
                if self._slot_of.get(aor) != slot:
                    continue  # rescheduled earlier since, or gone
                del self._slot_of[aor]
                bindings = self._stored(aor)
                self._replace(aor, bindings, tuple(b for b in bindings if b.expires_at > now))
        self._swept_until = max(self._swept_until, int(now))

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            self.sweep()

    def _replace(self, aor: str, old: tuple[Binding, ...], new: tuple[Binding, ...]) -> None:
        if new:
            self._bindings[aor] = tuple(map(tuple, new))
            # The slot after the earliest expiry: when it comes due, that binding is expired.
            slot = int(min(map(_expires_at, new))) + 1
            if slot <= self._swept_until:
                slot = self._swept_until + 1
            scheduled = self._slot_of.get(aor)
            if scheduled is None or scheduled > slot:
                self._slot_of[aor] = slot
                self._wheel.setdefault(slot, []).append(aor)
        else:
            self._bindings.pop(aor, None)
            self._slot_of.pop(aor, None)
        if len(new) != len(old):
            self._counts[domain_of(aor)] += len(new) - len(old)
        if self._watchers and (old or new):
            event = BindingEvent(aor, new)
            for queue in self._watchers:
                queue.put_nowait(event)
