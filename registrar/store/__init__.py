"""The location service (RFC 3261 10.2): where bindings live, behind one small async interface.

`LocationStore` is what the registrar, the HTTP API and the operator use.
Implementations: `memory.MemoryStore` (the embedded default of `sipreg serve`)
and `etcd.EtcdStore`, which several registrars share. Every change to an AOR
goes through `update`, which hands the AOR's current bindings to a pure
function and stores what it returns atomically, so RFC 3261 ordering rules
(Call-ID/CSeq) hold even when two registrars see the same AOR.

Two smaller ports say what else a store brings with it. `CatalogSource`: where
the served catalogue comes from (the manifests, fixed, beside the memory store;
etcd, kept current by the etcd store's watch). `NodeRegistry`: the live
registrar replicas (none to know of beside the memory store; etcd's nodes/).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from registrar.model import Binding, Catalog, ConnectionKey

BindingChange = Callable[[Sequence[Binding]], Sequence[Binding]]


class StoreUnavailable(Exception):
    """The store cannot take or serve writes right now (answer 503 + Retry-After)."""


@dataclass(frozen=True, slots=True)
class BindingEvent:
    """The bindings of `aor` after a change (empty: none left); what watchers receive."""

    aor: str
    bindings: tuple[Binding, ...]


# What a connection's last failure was (RegistrationFailure.kind).
REGISTER_FAILED = "register"  # a REGISTER was refused (wrong password, address not allowed...)
CONTACT_UNREACHABLE = "unreachable"  # a contact stopped answering keepalive pings and was removed


@dataclass(frozen=True, slots=True)
class RegistrationFailure:
    """The last failure of a connection, for its status (time, reason, source, what failed)."""

    domain: str
    username: str
    time: float
    reason: str
    source: str
    kind: str = REGISTER_FAILED
    # The replica that refused it, and the request refused (method, Request-URI, CSeq, Call-ID): where its
    # trace is ("" where no request failed: a contact that stopped answering).
    node: str = ""
    request: str = ""


class LocationStore(abc.ABC):
    """Bindings keyed by AOR ("user@domain"); reads never return an expired binding."""

    @abc.abstractmethod
    async def lookup(self, aor: str) -> list[Binding]:
        """The AOR's current bindings."""

    async def lookup_many(self, aors: Iterable[str]) -> dict[str, list[Binding]]:
        """Each AOR's current bindings (a store that reads them from afar reads them together)."""
        return {aor: await self.lookup(aor) for aor in aors}

    @abc.abstractmethod
    async def update(self, aor: str, change: BindingChange) -> list[Binding]:
        """Atomically replace the AOR's current bindings with `change(current)`.

        `change` is pure and may raise to abort (nothing is stored then); it may
        be called more than once when a concurrent writer wins a race. Returns
        the bindings stored. Raises StoreUnavailable when the write cannot be
        made durable.
        """

    @abc.abstractmethod
    async def all_bindings(self, domain: str | None = None) -> list[Binding]:
        """Every current binding (of one domain), for bulk reads and the API."""

    @abc.abstractmethod
    def binding_counts(self) -> dict[str, int]:
        """Current bindings per domain, from memory (cheap: metrics call it on every scrape)."""

    @abc.abstractmethod
    def aor_counts(self) -> dict[str, int]:
        """AORs with at least one binding (registered connections) per domain; as cheap as binding_counts."""

    @abc.abstractmethod
    def watch(self) -> AsyncIterator[BindingEvent]:
        """Every change from now on, including expiries, until the store closes."""

    @abc.abstractmethod
    async def record_failure(self, failure: RegistrationFailure) -> None:
        """Remember a connection's last registration failure (callers throttle)."""

    @abc.abstractmethod
    async def last_failure(self, domain: str, username: str) -> RegistrationFailure | None:
        """The last failure recorded for a connection."""

    @property
    def ready(self) -> bool:
        """False while the store cannot serve (readiness probe)."""
        return True

    async def start(self) -> None:
        """Begin background work (expiry sweeps, watches); called once before use."""

    async def close(self) -> None:
        """Stop background work and release resources."""


class CatalogSource(abc.ABC):
    """Where the served catalogue (domains and connections) comes from.

    A source whose catalogue changes tells each new one to the `on_catalog`
    callable it was made with; `catalog` is the latest.
    """

    @property
    @abc.abstractmethod
    def catalog(self) -> Catalog:
        """The catalogue as of now."""

    async def read_connection(self, key: ConnectionKey) -> None:
        """Read the connection `key` into the catalogue's connections, for a NotHeld they raised (one that
        holds every connection raises none). Raises StoreUnavailable when it cannot."""

    def connection_counts(self) -> dict[str, int]:
        """Connections per domain (metrics call it on every scrape)."""
        return self.catalog.connections_per_domain()


class NodeRegistry(abc.ABC):
    """The live registrars that share a store (etcd lists this one among them)."""

    @property
    @abc.abstractmethod
    def nodes(self) -> Mapping[str, dict[str, Any]]:
        """Node name -> its record; `address` and `sipPort` reach its SIP listener, `address` and `httpPort`
        (when it serves HTTP) its API (layout.encode_node)."""


def domain_of(aor: str) -> str:
    return aor.rpartition("@")[2]
