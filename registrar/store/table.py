"""An in-memory table of bindings by AOR with expiry and change events: the memory store, and the etcd store's cache.

Bindings are kept as plain tuples, not Binding objects: CPython stops tracking
an exact tuple of strings and numbers in its cyclic garbage collector, so the
table adds nothing to a full collection's pause however large it grows (as
objects, 20k bindings made 80 ms pauses, straight into p99). They become
Binding again on the way out.

Expiry uses a timer wheel of one-second slots holding each AOR once, at its
earliest expiry; a sweep visits only the slots that came due, so its cost
follows the expiries, not the table's size (a full scan of 100k bindings
would stall the event loop for tens of milliseconds every second).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from operator import attrgetter

from registrar.model import Binding
from registrar.store import BindingEvent, LocationStore, domain_of


_expires_at = attrgetter("expires_at")


class BindingTable:
    def __init__(self, now: float):
        self._bindings: dict[str, tuple[tuple, ...]] = {}  # AOR -> its bindings as plain tuples
        self._counts: Counter[str] = Counter()  # domain -> bindings
        self._aor_counts: Counter[str] = Counter()  # domain -> AORs with bindings
        self._watchers: set[asyncio.Queue[BindingEvent | None]] = set()
        self._wheel: dict[int, list[str]] = {}  # slot (whole second) -> AORs due then
        self._slot_of: dict[str, int] = {}  # AOR -> the one slot it is due in
        self._swept_until = int(now)

    def stored(self, aor: str) -> tuple[Binding, ...]:
        """The AOR's bindings, expired ones included until a sweep drops them."""
        return tuple(map(Binding._make, self._bindings.get(aor, ())))

    def current(self, aor: str, now: float) -> list[Binding]:
        return [b for b in self.stored(aor) if b.expires_at > now]

    def all_current(self, now: float, domain: str | None = None) -> list[Binding]:
        return [
            b
            for aor in list(self._bindings)
            if domain is None or domain_of(aor) == domain
            for b in self.stored(aor)
            if b.expires_at > now
        ]

    def aors(self) -> Iterable[str]:
        return self._bindings.keys()

    def counts(self) -> dict[str, int]:
        return {domain: count for domain, count in self._counts.items() if count}

    def aor_counts(self) -> dict[str, int]:
        return {domain: count for domain, count in self._aor_counts.items() if count}

    def replace(self, aor: str, new: tuple[Binding, ...]) -> None:
        """Make `new` the AOR's bindings, and tell watchers when that changes anything."""
        old = self._bindings.get(aor, ())
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
        self._count(aor, len(old), len(new))
        if self._watchers and (old or new):
            event = BindingEvent(aor, new)
            for queue in self._watchers:
                queue.put_nowait(event)

    def forget(self, aor: str) -> None:
        """Drop the AOR without telling watchers: a cache letting go of what lives on elsewhere."""
        old = self._bindings.pop(aor, ())
        self._slot_of.pop(aor, None)  # its wheel entry is passed over when its slot comes due
        self._count(aor, len(old), 0)

    def _count(self, aor: str, old: int, new: int) -> None:
        if new != old:
            domain = domain_of(aor)
            self._counts[domain] += new - old
            if not old or not new:  # the AOR's first binding came, or its last one went
                self._aor_counts[domain] += 1 if new else -1

    def sweep(self, now: float) -> None:
        """Drop expired bindings (reads already hide them; this frees memory and tells watchers)."""
        for slot in range(self._swept_until + 1, int(now) + 1):
            for aor in self._wheel.pop(slot, ()):
                if self._slot_of.get(aor) != slot:
                    continue  # rescheduled earlier since, or gone
                del self._slot_of[aor]
                bindings = self.stored(aor)
                self.replace(aor, tuple(b for b in bindings if b.expires_at > now))
        self._swept_until = max(self._swept_until, int(now))

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

    def end_watches(self) -> None:
        for queue in self._watchers:
            queue.put_nowait(None)


class TableStore(LocationStore):
    """A store whose reads are answered from a local BindingTable (both stores are)."""

    _table: BindingTable
    _clock: Callable[[], float]

    async def lookup(self, aor: str) -> list[Binding]:
        return self._table.current(aor, self._clock())

    async def all_bindings(self, domain: str | None = None) -> list[Binding]:
        return self._table.all_current(self._clock(), domain)

    def binding_counts(self) -> dict[str, int]:
        return self._table.counts()

    def aor_counts(self) -> dict[str, int]:
        return self._table.aor_counts()

    def watch(self) -> AsyncIterator[BindingEvent]:
        return self._table.watch()
