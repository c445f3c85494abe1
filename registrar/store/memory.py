"""The in-memory location service: one process, nothing shared, nothing persisted.

This is `sipreg serve`'s embedded default. Updates are atomic because `change`
runs without awaiting in between read and write, on the event loop's thread.
The table itself (tuples, timer-wheel expiry, watchers) is `BindingTable`.
Beside it, what a registrar that shares nothing has for the other ports: the
manifests' catalogue, fixed (`FixedCatalog`), and no other replica (`NoReplicas`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from registrar.model import Binding, Catalog
from registrar.store import BindingChange, CatalogSource, NodeRegistry, RegistrationFailure
from registrar.store.table import BindingTable, TableStore

SWEEP_INTERVAL = 1.0


class MemoryStore(TableStore):
    def __init__(self, clock: Callable[[], float] = time.time, sweep_interval: float = SWEEP_INTERVAL):
        self._clock = clock
        self._sweep_interval = sweep_interval
        self._table = BindingTable(clock())
        self._failures: dict[tuple[str, str], RegistrationFailure] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def update(self, aor: str, change: BindingChange) -> list[Binding]:
        new = tuple(change(self._table.current(aor, self._clock())))
        self._table.replace(aor, new)
        return list(new)

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
        self._table.end_watches()

    def sweep(self) -> None:
        """Drop expired bindings now (the background task does this every second)."""
        self._table.sweep(self._clock())

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            self.sweep()


class FixedCatalog(CatalogSource):
    """A catalogue that never changes: the manifests `sipreg serve --manifests` read at start."""

    def __init__(self, catalog: Catalog):
        self._catalog = catalog

    @property
    def catalog(self) -> Catalog:
        return self._catalog


class NoReplicas(NodeRegistry):
    """The node registry of a registrar that shares its store with no one."""

    @property
    def nodes(self) -> Mapping[str, dict[str, Any]]:
        return {}
