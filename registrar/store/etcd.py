"""The etcd location service: registrar replicas share one binding table, and a restart loses nothing.

Two ways to hold things (`cached_aors`). The operator's store mirrors everything:
one watch stream follows every domain, connection, binding, failure and node, as every
connection's status comes from them. A registrar's store reads on demand what it
serves, so its memory and CPU follow its traffic, not the subscribers in etcd:
- it follows (reads, then watches) the domains, the nodes (the store is the
  NodeRegistry) and its domains' connections by address (layout.served);
- the other connections it reads when a request names one, keeping at most
  `cached_aors` (a ConnectionCache: the Catalog it serves, the store being its
  CatalogSource), and watches its domains' connections to hear of changes to those;
- bindings: a lookup (an INVITE's) reads the AOR's key from the member in use, and a
  REGISTER's write starts from the cache of the AORs this replica read or wrote lately,
  at most `cached_aors` of them (least recently used go first), reading the AOR first
  when it is not there. It never sees the other replicas' writes: a cached record
  another replica has since changed costs one lost compare-and-swap, which brings the
  current record back (below).
The watch resumes from its last revision after a broken stream or an etcd restart, and
reads everything anew (forgetting what it read on demand) when that revision was
compacted away.

Writes are compare-and-swap transactions on an AOR's key (see layout.py), made
from the cache's revision of that key. REGISTERs that arrive while writes are in
flight, or less than WRITE_INTERVAL after the last one started, wait and go out
together as one transaction with a nested transaction per AOR, so at load one
REGISTER costs a fraction of a transaction; several changes to one AOR in a batch
are applied in order and written once. When another replica
changed the AOR first, etcd answers with the key's current value (the nested
transaction's failure branch reads it), and the change is run again on that.
A 200 OK waits for etcd's acknowledgement; a failed write raises StoreUnavailable, and
so does one etcd has not acknowledged within REQUEST_TIMEOUT of the REGISTER asking
for it (the write may still land: the phone's next REGISTER finds it).

Available means a watch that is up to date on a member whose cluster has a quorum: it
is connected to only after a linearizable read, and must answer one every
QUORUM_CHECK_INTERVAL, or the store disconnects and connects again. A member cut off from
its quorum still answers status requests and keeps watches open, so without that check
a registrar on it would look ready while no write can succeed. Unavailable, the store
refuses writes at once (503 without waiting) and the registrar reports not ready.

Expiry: each AOR key carries a lease that ends just after its latest binding
expires, and AORs expiring within the same LEASE_GRANULARITY seconds share one
lease, so etcd removes bindings when every registrar is down, with a few leases
rather than one per binding.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from operator import attrgetter
from typing import Any

from aetcd import rpc

from registrar.model import Binding, Catalog, Connection, ConnectionCache, ConnectionKey, Domain
from registrar.store import (
    BindingChange, BindingEvent, CatalogSource, NodeRegistry, RegistrationFailure, StoreUnavailable,
)
from registrar.store import layout
from registrar.store.etcd_session import (
    MAX_TXN_OPS, REQUEST_TIMEOUT, EtcdSession, EtcdUnavailable, WatchCompacted, compare_and_swap, delete_op, put_op,
)
from registrar.store.table import BindingTable, TableStore

log = logging.getLogger("sipreg.store")

LEASE_GRANULARITY = 10.0  # seconds of expiry that one binding lease covers
MAX_WRITES_IN_FLIGHT = 2  # transactions; REGISTERs arriving meanwhile form the next batch
# Seconds from one write transaction's start to the next's, unless a full batch waits. Each
# transaction costs etcd about 0.5 ms of CPU and the registrar about 0.25 ms (gRPC's threads,
# wakeups and syscalls) whatever it carries, so under load fewer, bigger ones leave the cores
# to SIP (at 2,500 REGISTER/s, 10 ms took a fifth off the CPU both spend per REGISTER against
# 5 ms; 20 ms saved etcd a little more and cost the registrar more). A REGISTER waits at most
# this much longer, and one on an idle store not at all.
WRITE_INTERVAL = 0.010
# AORs per transaction: etcd checks a nested transaction against what the outer one leaves
# of MAX_TXN_OPS, and each compare-and-swap is one operation deep, so 128 would be refused.
MAX_BATCH = MAX_TXN_OPS - 1
# The least a store reading on demand caches: the AORs of the transactions in flight and of the
# next, so that reading a batch's unknown AORs never lets go of the others.
MIN_CACHED_AORS = (MAX_WRITES_IN_FLIGHT + 2) * MAX_BATCH
# A registrar's cache by default: about 50 MiB, every AOR of a mid-sized deployment, or the last
# minutes' of a large one.
DEFAULT_CACHED_AORS = 50_000
MAX_ATTEMPTS = 5  # compare-and-swap rounds lost to other replicas before giving up with 503
FAILURE_FLUSH_INTERVAL = 1.0  # seconds; failure records go out at most this often, MAX_TXN_OPS at a time
NODE_TTL = 10  # seconds a dead registrar stays listed under nodes/
SWEEP_INTERVAL = 1.0
# How often a store reading on demand counts each served domain's registered AORs and connections:
# every CENSUS_INTERVAL seconds, and a second later per CENSUS_KEYS_PER_SECOND keys counted, as a
# count walks etcd's index of the keys (a million AORs and as many connections: every 42 s).
CENSUS_INTERVAL = 2.0
CENSUS_KEYS_PER_SECOND = 50_000
# How often, and how patiently, the member in use is asked for a linearizable read: a quorum lost
# is noticed within the sum, and a quorum back within the interval.
QUORUM_CHECK_INTERVAL = 0.5
QUORUM_CHECK_TIMEOUT = 1.0
RECONNECT_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0)

_PUT = rpc.Event.PUT
_expires_at = attrgetter("expires_at")

PendingChange = tuple[BindingChange, "asyncio.Future[list[Binding]]", int]  # change, its answer, attempts so far


class EtcdStore(TableStore, CatalogSource, NodeRegistry):
    """Bindings, catalogue and nodes shared through etcd.

    `node` (with its address and SIP port) is listed under nodes/ while the
    store runs; none: the store is not a registrar's (the operator's).
    `cached_aors`: read connections and bindings on demand, keeping at most this
    many AORs' of each (a registrar's); None: mirror every connection, binding and
    failure (the operator's). `served_domains`: reading on demand, follow only
    these domains' connections (a SipDomain's pods); None: every domain's.
    `publish`: a catalogue to make etcd's once connected (`sipreg serve
    --manifests`), and the one `catalog` holds until etcd's is read.
    Told, through the callables given: `on_catalog` each catalogue read from
    etcd (the registrar serves it); `on_failure` the (domain, username) of each
    failure record that changed (the operator's status); `on_write` the
    seconds, AORs written and compares lost of each write transaction, and
    `on_read` the seconds of each read of bindings (metrics).
    """

    def __init__(
        self,
        session: EtcdSession,
        *,
        node: str = "",
        node_address: str = "",
        sip_port: int = 0,
        http_port: int | None = None,
        clock: Callable[[], float] = time.time,
        cached_aors: int | None = None,
        served_domains: frozenset[str] | None = None,
        lease_granularity: float = LEASE_GRANULARITY,
        publish: Catalog | None = None,
        on_catalog: Callable[[Catalog], None] = lambda catalog: None,
        on_failure: Callable[[str, str], None] = lambda domain, username: None,
        on_write: Callable[[float, int, int], None] = lambda seconds, aors, conflicts: None,
        on_read: Callable[[float], None] = lambda seconds: None,
    ):
        self.session = session
        self.node = node
        self._node_record = (
            layout.encode_node(node, node_address, sip_port, clock(), http_port, served_domains) if node else None
        )
        self._clock = clock
        self._table = BindingTable(clock())
        self._cached_aors = None if cached_aors is None else max(cached_aors, MIN_CACHED_AORS)
        self._served_domains = served_domains
        self._followed = layout.EVERYTHING if cached_aors is None else layout.served(served_domains)
        # Reading on demand: the AORs in the cache (known: held, or known absent), least recently used first.
        self._recent: dict[str, None] = {}
        self._census: dict[str, int] = {}  # reading on demand: domain -> AORs with a bindings key in etcd
        self._revisions: dict[str, int] = {}  # AOR -> mod revision of its key, as last seen
        self._tombstones: dict[str, int] = {}  # AOR -> revision it was deleted at (older news is stale)
        self._watched_revision = 0  # every change up to this revision is in the cache
        self._domains: dict[str, Domain] = {}
        # Reading on demand, the connections are a cache whose ip ones (`held`) are followed whole; else a mirror.
        self._connection_cache = None if cached_aors is None else ConnectionCache(self._cached_aors)  # type: ignore[arg-type]
        self._connections: dict[ConnectionKey, Connection] = (
            {} if self._connection_cache is None else self._connection_cache.held
        )
        self._connection_census: dict[str, int] = {}  # reading on demand: domain -> connections in etcd
        self._failures: dict[tuple[str, str], RegistrationFailure] = {}
        self._unwritten_failures: dict[tuple[str, str], RegistrationFailure] = {}
        self._nodes: dict[str, dict[str, Any]] = {}
        self._leases = _LeasePool(session, lease_granularity, clock)
        self._pending: dict[str, list[PendingChange]] = {}
        self._writing: set[str] = set()  # AORs in a transaction now
        # Key -> record, of the bindings records in a transaction now. The watch mostly
        # brings a write back before etcd's answer to it: an event with these bytes
        # needs nothing done, as the answer puts the record in the cache (_hold).
        self._echoes: dict[bytes, bytes] = {}
        self._writes_in_flight = 0
        self._last_write = -WRITE_INTERVAL  # loop time the last write transaction started
        self._write_due: asyncio.TimerHandle | None = None
        self._ready = False  # the watch is up to date, on a member that proved a quorum
        self._node_registering = asyncio.Lock()
        self._synced = asyncio.Event()
        self._to_publish = publish
        self._catalog_due: asyncio.TimerHandle | None = None
        self._tasks: list[asyncio.Task] = []
        self._on_catalog = on_catalog
        self._on_failure = on_failure
        self._on_write = on_write
        self._on_read = on_read
        self._catalog = publish if publish is not None else Catalog()

    # -- LocationStore ---------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready

    # -- CatalogSource, NodeRegistry -------------------------------------------------------

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    @property
    def nodes(self) -> Mapping[str, dict[str, Any]]:
        return self._nodes

    @property
    def cached(self) -> int:
        """Reading on demand: the AORs whose record the cache holds (at most cached_aors)."""
        return len(self._recent)

    async def lookup(self, aor: str) -> list[Binding]:
        if self._cached_aors is None:
            return self._table.current(aor, self._clock())
        try:
            if not self._ready:
                raise StoreUnavailable("etcd is unreachable, or has no quorum")
            await self._read([aor])
        except StoreUnavailable:
            # With etcd away, what this replica last read or wrote is the best answer there is: a call
            # to a phone registered here still reaches it.
            if aor not in self._recent:
                raise StoreUnavailable("etcd is unreachable, or has no quorum") from None
        return self._table.current(aor, self._clock())

    async def read_connection(self, key: ConnectionKey) -> None:
        cache = self._connection_cache
        if cache is None:
            return
        if not self._ready:
            raise StoreUnavailable("etcd is unreachable, or has no quorum")
        aor = f"{key[1]}@{key[0]}"
        cache.reading(key)
        try:
            sent = time.monotonic()
            # With its AOR's bindings, in the same read: a REGISTER with credentials writes them next.
            connection_read, bindings_read = self.session.read([layout.connection_key(*key), layout.bindings_key(aor)])
            (kv, revision), (bindings, _) = await connection_read, await bindings_read
            self._on_read(time.monotonic() - sent)
        except BaseException:
            cache.read_failed(key)
            raise
        connection = None
        if kv is not None:
            revision = kv.mod_revision
            try:
                connection = layout.decode_connection(kv.value)
            except layout.BadRecord as error:
                log.warning("sipreg: ignoring the connection %s@%s: %s", key[1], key[0], error)
        cache.read(key, revision, connection)
        # Kept only for a connection that exists (names made up take no room), where this replica holds
        # nothing as new.
        if connection is not None and aor not in self._recent:
            self._hold_read(aor, bindings, revision)

    def connection_counts(self) -> dict[str, int]:
        if self._connection_cache is None:
            return super().connection_counts()
        return dict(self._connection_census)

    async def lookup_many(self, aors: Iterable[str]) -> dict[str, list[Binding]]:
        if self._cached_aors is None:
            return await super().lookup_many(aors)
        if not self._ready:
            raise StoreUnavailable("etcd is unreachable, or has no quorum")
        aors, found = list(aors), {}
        for start in range(0, len(aors), MAX_TXN_OPS):
            chunk = aors[start : start + MAX_TXN_OPS]
            await self._read(chunk)
            now = self._clock()  # taken before the next read: the cache may let go of these for those
            found.update((aor, self._table.current(aor, now)) for aor in chunk)
        return found

    async def all_bindings(self, domain: str | None = None) -> list[Binding]:
        if self._cached_aors is None:
            return self._table.all_current(self._clock(), domain)
        prefix = layout.bindings_domain_prefix(domain) if domain else layout.BINDINGS.encode()
        kvs, _ = await self.session.read_prefix(prefix)
        now = self._clock()
        return [b for kv in kvs for b in self._decode_bindings(layout.aor_of(kv.key), kv.value, now)]

    def binding_counts(self) -> dict[str, int]:
        # Reading on demand, only every record read would tell: the operator's SipDomain status says it.
        return self._table.counts() if self._cached_aors is None else {}

    def aor_counts(self) -> dict[str, int]:
        return self._table.aor_counts() if self._cached_aors is None else dict(self._census)

    def watch(self) -> AsyncIterator[BindingEvent]:
        if self._cached_aors is not None:
            raise TypeError("a store reading bindings on demand sees only its own changes: watch a mirror")
        return self._table.watch()

    async def update(self, aor: str, change: BindingChange) -> list[Binding]:
        if not self._ready:
            raise StoreUnavailable("etcd is unreachable, or has no quorum")
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[list[Binding]] = loop.create_future()
        # However the write fares (queued behind others, a lease to grant, a compare lost, a slow
        # etcd), the REGISTER has its answer by then; the batch passes over an answer given.
        deadline = loop.call_later(REQUEST_TIMEOUT, _give_up, answer)
        answer.add_done_callback(lambda _: deadline.cancel())
        self._pending.setdefault(aor, []).append((change, answer, 0))
        self._start_writes()
        return await answer

    async def record_failure(self, failure: RegistrationFailure) -> None:
        # Written by the flusher, a batch a second at most: a flood of bad REGISTERs
        # (callers already throttle per connection) never becomes an etcd write flood.
        key = (failure.domain, failure.username)
        if self._cached_aors is None:
            self._failures[key] = failure  # a registrar's store reads none back, so need keep none
        self._unwritten_failures[key] = failure

    async def last_failure(self, domain: str, username: str) -> RegistrationFailure | None:
        return self._failures.get((domain, username))

    async def start(self, wait: float = 10.0) -> None:
        """Connect, publish, read everything, and follow; waits up to `wait` s for the first sync.

        When etcd is not there yet the registrar still starts: it answers 503 and
        reports not ready until the first sync succeeds.
        """
        for name, work in (
            ("etcd-follow", self._follow()),
            ("etcd-quorum", self._check_quorum_forever()),
            ("etcd-sweep", self._sweep_forever()),
            ("etcd-failures", self._flush_failures_forever()),
            *([("etcd-census", self._count_forever())] if self._cached_aors is not None else []),
        ):
            self._tasks.append(asyncio.create_task(work, name=name))
        try:
            await asyncio.wait_for(self._synced.wait(), wait)
        except asyncio.TimeoutError:
            log.warning("sipreg: etcd not reachable yet; answering 503 until it is")

    async def close(self) -> None:
        self._ready = False
        if self._write_due is not None:
            self._write_due.cancel()
            self._write_due = None
        self._fail_pending(StoreUnavailable("the registrar is stopping"))  # none waits for a batch that never leaves
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._node_lease is not None:
            try:
                await self.session.revoke(self._node_lease)  # leave nodes/ now, not NODE_TTL later
            except EtcdUnavailable:
                pass
        await self.session.close()
        self._table.end_watches()

    # -- following etcd --------------------------------------------------------------------

    _node_lease: int | None = None

    async def _follow(self) -> None:
        failures = 0
        resync = True
        while True:
            try:
                await self.session.connect()
                if self._to_publish is not None:
                    await self._publish(self._to_publish)
                    self._to_publish = None
                if resync:
                    await self._resync()
                    resync = False
                await self._register_node()
                followed = self._followed
                watch = self.session.watch(followed.held + followed.watched, self._watched_revision + 1)
                async for response in watch:
                    if not self._ready:
                        self._ready, failures = True, 0
                        self._synced.set()
                        log.info("sipreg: following etcd from revision %d", self._watched_revision)
                    self._apply(response)
            except WatchCompacted as compacted:
                log.warning("sipreg: etcd compacted past revision %d; reading everything anew", compacted.args[0])
                resync = True
            except Exception as error:  # etcd gone, or a bug: either way, never stop following
                if not isinstance(error, (EtcdUnavailable, rpc.AioRpcError)):
                    log.exception("sipreg: following etcd failed")
                if self._ready:
                    log.warning("sipreg: lost etcd (%s); answering 503 until it is back", error)
                self._ready = False
                self._fail_pending(error)
                await self.session.disconnect()
                await asyncio.sleep(RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)])
                failures += 1

    async def _check_quorum_forever(self) -> None:
        """While following, ask the member in use for a linearizable read; one it cannot serve ends the
        following (a member without a quorum keeps the watch open): _follow then connects again, to a
        member that serves one (its connect checks). And, with a quorum, make sure this node is listed
        (its lease may have expired in an outage)."""
        while True:
            await asyncio.sleep(QUORUM_CHECK_INTERVAL)
            if not self._ready:
                continue  # _follow is (re)connecting
            try:
                await self.session.quorum(QUORUM_CHECK_TIMEOUT)
            except Exception as error:  # etcd's answer, or a bug: either way no proof of a quorum
                if not isinstance(error, (EtcdUnavailable, rpc.AioRpcError)):
                    log.exception("sipreg: checking etcd's quorum failed")
                log.warning("sipreg: etcd has no quorum (%s); answering 503 until it has", error)
                self._ready = False
                self._fail_pending(error)
                await self.session.disconnect()  # the watch ends with it, and _follow reconnects
                continue
            if self._node_record is not None and self._node_lease is None:
                try:
                    await self._register_node()
                except (EtcdUnavailable, rpc.AioRpcError) as error:
                    log.warning("sipreg: could not register this node in etcd yet: %s", error)

    async def _resync(self) -> None:
        kvs, revision = await self.session.read_ranges(self._followed.held)
        now = self._clock()
        if self._connection_cache is not None:
            # What changed while the watch was away is unknown: a compare's base needs no news, but a
            # connection read needs to be read again.
            self._forget(list(self._recent))
            self._connection_cache.forget_read()
        seen: set[str] = set()
        self._domains.clear()
        self._connections.clear()
        self._revisions.clear()
        self._tombstones.clear()
        self._nodes.clear()
        for kv in kvs:
            if kv.key.startswith(_BINDINGS):
                aor = layout.aor_of(kv.key)
                seen.add(aor)
                self._revisions[aor] = kv.mod_revision
                self._table.replace(aor, self._decode_bindings(aor, kv.value, now))
            else:
                self._apply_other(kv.key, kv.value, kv.mod_revision, True)
        for aor in [aor for aor in self._table.aors() if aor not in seen]:
            self._table.replace(aor, ())
        self._watched_revision = revision
        self._hand_over_catalog()
        log.info("sipreg: read %d records from etcd at revision %d", len(kvs), revision)

    def _apply(self, response: rpc.WatchResponse) -> None:
        now = self._clock()
        echoes = self._echoes
        for event in response.events:
            kv = event.kv
            key = kv.key
            if key.startswith(_BINDINGS):
                if echoes and echoes.get(key) == kv.value:
                    continue  # our own write, back before etcd's answer to it
                aor = layout.aor_of(key)
                # Our own writes are in the cache already; older news than we hold is stale.
                if kv.mod_revision <= max(self._revisions.get(aor, 0), self._tombstones.get(aor, 0)):
                    continue
                if event.type == _PUT:
                    self._revisions[aor] = kv.mod_revision
                    self._tombstones.pop(aor, None)
                    self._table.replace(aor, self._decode_bindings(aor, kv.value, now))
                else:
                    self._revisions.pop(aor, None)
                    self._tombstones[aor] = kv.mod_revision
                    self._table.replace(aor, ())
            else:
                self._apply_other(key, kv.value, kv.mod_revision, event.type == _PUT)
        self._watched_revision = max(self._watched_revision, response.header.revision)

    def _apply_other(self, key: bytes, value: bytes, revision: int, present: bool) -> None:
        """A domain, connection, failure or node record changed (or went away) at `revision`."""
        try:
            if key.startswith(_DOMAINS):
                name = key[len(_DOMAINS) :].decode()
                _keep(self._domains, name, layout.decode_domain(value) if present else None)
                self._catalog_changed()
            elif key.startswith(_CONNECTIONS):
                ident = layout.split_key(layout.CONNECTIONS, key)
                cache = self._connection_cache
                if cache is None:
                    _keep(self._connections, ident, layout.decode_connection(value) if present else None)
                    self._catalog_changed()
                elif cache.wants(ident):  # of those it did not read, a registrar decodes nothing
                    cache.changed(ident, revision, layout.decode_connection(value) if present else None)
            elif key.startswith(_IP_CONNECTIONS):
                if self._connection_cache is not None:  # a mirror holds them as connections already
                    ident = layout.split_key(layout.IP_CONNECTIONS, key)
                    _keep(self._connections, ident, layout.decode_connection(value) if present else None)
                    self._catalog_changed()
            elif key.startswith(_FAILURES):
                ident = layout.split_key(layout.FAILURES, key)
                _keep(self._failures, ident, layout.decode_failure(*ident, value) if present else None)
                self._on_failure(*ident)
            elif key.startswith(_NODES):
                node = key[len(_NODES) :].decode()
                _keep(self._nodes, node, layout.decode_node(value) if present else None)
        except layout.BadRecord as error:
            log.warning("sipreg: ignoring %s: %s", key.decode(errors="replace"), error)

    def _decode_bindings(self, aor: str, value: bytes, now: float) -> tuple[Binding, ...]:
        try:
            return layout.decode_bindings(aor, value, now)
        except layout.BadRecord as error:
            log.warning("sipreg: ignoring the bindings of %s: %s", aor, error)
            return ()

    def _catalog_changed(self) -> None:
        # A burst of connection changes (an operator publishing 10k) builds one Catalog.
        if self._catalog_due is None:
            self._catalog_due = asyncio.get_running_loop().call_later(0.05, self._hand_over_catalog)

    def _hand_over_catalog(self) -> None:
        if self._catalog_due is not None:
            self._catalog_due.cancel()
            self._catalog_due = None
        connections = self._connection_cache if self._connection_cache is not None else dict(self._connections)
        self._catalog = Catalog(domains=dict(self._domains), connections=connections)
        self._on_catalog(self._catalog)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = self._clock()
            self._table.sweep(now)
            self._leases.forget_before(now)
            # Once the watch has passed a deletion, no older news of that AOR can come.
            watched = self._watched_revision
            self._tombstones = {aor: rev for aor, rev in self._tombstones.items() if rev > watched}

    # -- writing bindings ------------------------------------------------------------------

    def _start_writes(self) -> None:
        if self._write_due is not None:
            if len(self._pending) < MAX_BATCH:
                return  # the next batch leaves when its timer fires
            self._write_due.cancel()  # a full one leaves now
            self._write_due = None
        loop = asyncio.get_running_loop()
        while self._pending and self._writes_in_flight < MAX_WRITES_IN_FLIGHT:
            wait = self._last_write + WRITE_INTERVAL - loop.time()
            # uvloop's clock and timers count whole milliseconds: a shorter wait would spin.
            if wait >= 0.001 and len(self._pending) < MAX_BATCH:
                self._write_due = loop.call_later(wait, self._write_when_due)
                return
            batch: list[tuple[str, list[PendingChange]]] = []
            for aor in list(self._pending):
                if aor not in self._writing:
                    batch.append((aor, self._pending.pop(aor)))
                    if len(batch) == MAX_BATCH:
                        break
            if not batch:
                return  # everything waiting is for AORs being written now
            self._last_write = loop.time()
            self._writing.update(aor for aor, _ in batch)
            self._writes_in_flight += 1
            task = loop.create_task(self._write(batch))
            task.add_done_callback(lambda _, aors=[aor for aor, _ in batch]: self._written(aors))

    def _write_when_due(self) -> None:
        self._write_due = None
        self._start_writes()

    def _written(self, aors: list[str]) -> None:
        self._writing.difference_update(aors)
        self._writes_in_flight -= 1
        self._start_writes()

    async def _write(self, batch: list[tuple[str, list[PendingChange]]]) -> None:
        try:
            await self._write_batch(batch)
        except BaseException as error:
            # Whatever went wrong, no REGISTER may wait forever for its answer.
            if not isinstance(error, (StoreUnavailable, asyncio.CancelledError)):
                log.exception("sipreg: writing bindings to etcd failed")
            for _, changes in batch:
                for _, answer, _ in changes:
                    if not answer.done():
                        answer.set_exception(StoreUnavailable(f"etcd did not take the write: {error!r}"))
            if isinstance(error, asyncio.CancelledError):
                raise

    async def _write_batch(self, batch: list[tuple[str, list[PendingChange]]]) -> None:
        if self._cached_aors is not None:
            recent, unknown = self._recent, []
            for aor, _ in batch:
                if aor in recent:
                    recent[aor] = recent.pop(aor)  # the most recently used now: reading the others keeps it
                else:
                    unknown.append(aor)
            if unknown:
                await self._read(unknown)
        now = self._clock()
        # (AOR, revision compared, bindings to store, their last expiry, [(change, answer, attempts, its result)])
        plans = []
        for aor, changes in batch:
            bindings = current = tuple(self._table.current(aor, now))
            done = []
            for change, answer, attempts in changes:
                if answer.done():
                    continue  # the REGISTER gave up waiting
                try:
                    bindings = tuple(change(bindings))
                except Exception as error:  # the registrar's refusal (e.g. 400 Invalid CSeq), for that REGISTER alone
                    answer.set_exception(error)
                    continue
                done.append((change, answer, attempts, bindings))
            if done and bindings == current:
                # Nothing to write (a query, a refused change): the cache's view is the answer.
                for _, answer, _, stored in done:
                    answer.set_result(list(stored))
            elif done:
                last = max(map(_expires_at, bindings)) if bindings else 0.0
                plans.append((aor, self._revisions.get(aor, 0), bindings, last, done))
        if not plans:
            return
        echoes = []  # keys of the records in self._echoes for this transaction
        try:
            leases = await self._leases.leases_for([plan[3] for plan in plans if plan[2]])
            swaps = []
            for aor, revision, bindings, last, _ in plans:
                key = layout.bindings_key(aor)
                if bindings:
                    record = self._echoes[key] = layout.encode_bindings(bindings)
                    echoes.append(key)
                    swaps.append(compare_and_swap(key, revision, record, leases[last]))
                else:
                    swaps.append(compare_and_swap(key, revision, b""))
            sent = time.monotonic()
            response = await self.session.txn(swaps)
            took = time.monotonic() - sent
        except (StoreUnavailable, rpc.AioRpcError) as error:
            if isinstance(error, rpc.AioRpcError) and error.code() == rpc.StatusCode.NOT_FOUND:
                self._leases.forget_all()  # etcd lost our leases (a new cluster?): grant anew next time
            for *_, done in plans:
                for _, answer, _, _ in done:
                    if not answer.done():
                        answer.set_exception(StoreUnavailable(f"etcd did not take the write: {error}"))
            return
        finally:
            # From here the answer says what etcd holds (and no watch event is handled
            # before it is put in the cache, below, as nothing awaits in between).
            for key in echoes:
                del self._echoes[key]
        revision = response.header.revision
        lost = 0
        for (aor, _, bindings, _, done), result in zip(plans, response.responses):
            swap = result.response_txn
            if swap.succeeded:
                self._hold(aor, revision, bindings)
                for _, answer, _, stored in done:
                    if not answer.done():
                        answer.set_result(list(stored))
            else:
                # Another replica wrote first: take its value, and run the changes again on it.
                kvs = swap.responses[0].response_range.kvs
                if kvs:
                    self._hold(aor, kvs[0].mod_revision, self._decode_bindings(aor, kvs[0].value, now))
                else:
                    self._hold(aor, revision, ())
                self._retry(aor, done)
                lost += 1
        self._on_write(took, len(plans), lost)

    async def _read(self, aors: list[str]) -> None:
        """Put the AORs' records, as etcd holds them now, into the cache (a lookup's; a batch's AORs it did
        not hold)."""
        sent = time.monotonic()
        # Awaited in turn, not gathered: they are answered together, and a gather costs a turn of the loop.
        found = [await answer for answer in self.session.read([layout.bindings_key(aor) for aor in aors])]
        self._on_read(time.monotonic() - sent)
        for aor, (kv, revision) in zip(aors, found):
            self._hold_read(aor, kv, revision)

    def _hold_read(self, aor: str, kv: rpc.KeyValue | None, revision: int) -> None:
        if kv is None:
            self._hold(aor, revision, ())  # absent as of the read's revision
        else:
            self._hold(aor, kv.mod_revision, self._decode_bindings(aor, kv.value, self._clock()))

    def _hold(self, aor: str, revision: int, bindings: tuple[Binding, ...]) -> None:
        """Put what etcd holds for `aor` at `revision` into the cache, unless the cache holds newer news."""
        if self._cached_aors is not None:
            recent = self._recent
            recent.pop(aor, None)
            recent[aor] = None
            if len(recent) > self._cached_aors:
                self._forget(list(itertools.islice(recent, len(recent) - self._cached_aors)))
        if revision < max(self._revisions.get(aor, 0), self._tombstones.get(aor, 0)):
            return  # another replica wrote on top of it, and the watch or a read has put that in the cache already
        if bindings:
            self._revisions[aor] = revision
            self._tombstones.pop(aor, None)
        else:
            self._revisions.pop(aor, None)
            self._tombstones[aor] = max(revision, self._tombstones.get(aor, 0))
        self._table.replace(aor, bindings)

    def _forget(self, aors: list[str]) -> None:
        """Let the cache go of `aors` (reading on demand: the least recently used, beyond cached_aors)."""
        for aor in aors:
            del self._recent[aor]
            self._revisions.pop(aor, None)
            self._tombstones.pop(aor, None)
            self._table.forget(aor)

    def _retry(self, aor: str, done: list) -> None:
        again: list[PendingChange] = []
        for change, answer, attempts, _ in done:
            if answer.done():
                continue
            if attempts + 1 >= MAX_ATTEMPTS:
                answer.set_exception(StoreUnavailable(f"{aor} is contended by other registrars"))
            else:
                again.append((change, answer, attempts + 1))
        if again:
            self._pending[aor] = again + self._pending.pop(aor, [])

    def _fail_pending(self, error: BaseException) -> None:
        pending, self._pending = self._pending, {}
        for changes in pending.values():
            for _, answer, _ in changes:
                if not answer.done():
                    answer.set_exception(StoreUnavailable(f"etcd is unreachable: {error}"))

    # -- failures, nodes, catalogue --------------------------------------------------------

    async def _flush_failures_forever(self) -> None:
        while True:
            await asyncio.sleep(FAILURE_FLUSH_INTERVAL)
            if not self._unwritten_failures or not self._ready:
                continue
            keys = list(self._unwritten_failures)[:MAX_TXN_OPS]
            batch = [self._unwritten_failures.pop(key) for key in keys]
            request = rpc.TxnRequest(
                success=[
                    put_op(layout.failure_key(f.domain, f.username), layout.encode_failure(f)) for f in batch
                ]
            )
            try:
                await self.session.txn(request)
            except (EtcdUnavailable, rpc.AioRpcError) as error:
                log.debug("sipreg: failure records not written yet: %s", error)
                for failure in batch:  # keep them, unless a newer failure replaced them meanwhile
                    self._unwritten_failures.setdefault((failure.domain, failure.username), failure)

    async def _count_forever(self) -> None:
        """Reading on demand: count each domain's AORs with bindings (aor_counts) and its connections
        (connection_counts) in etcd now and then.

        A key outlives its last binding by at most LEASE_GRANULARITY seconds, its lease's end."""
        await self._synced.wait()  # the first count as soon as the domains are known
        while True:
            if self._ready:
                try:
                    domains = sorted(self._served_domains if self._served_domains is not None else self._domains)
                    self._census = {
                        domain: await self.session.count_prefix(layout.bindings_domain_prefix(domain))
                        for domain in domains
                    }
                    self._connection_census = {
                        domain: await self.session.count_prefix(layout.connections_domain_prefix(domain))
                        for domain in domains
                    }
                except (EtcdUnavailable, rpc.AioRpcError) as error:
                    log.debug("sipreg: counting registered AORs and connections failed: %s", error)
            counted = sum(self._census.values()) + sum(self._connection_census.values())
            await asyncio.sleep(CENSUS_INTERVAL + counted / CENSUS_KEYS_PER_SECOND)

    async def _register_node(self) -> None:
        # _follow and the quorum check both call this: one at a time, or the node would get two leases.
        async with self._node_registering:
            if self._node_record is None or self._node_lease is not None:
                return
            lease = await self.session.grant(NODE_TTL)
            await self.session.txn(
                rpc.TxnRequest(success=[put_op(layout.node_key(self.node), self._node_record, lease)])
            )
            self._node_lease = lease
            self.session.keep_alive(lease, NODE_TTL, self._node_lease_lost)

    def _node_lease_lost(self) -> None:
        # etcd was away longer than NODE_TTL: the quorum check registers the node again, until it holds.
        log.warning("sipreg: this node's etcd lease expired; registering the node again")
        self._node_lease = None

    async def _publish(self, catalog: Catalog) -> None:
        """Write `catalog`'s domains and connections; delete those etcd holds beyond it."""
        wanted = {layout.domain_key(d.name): layout.encode_domain(d) for d in catalog.domains.values()}
        for connection in catalog.connections.values():
            wanted.update(layout.connection_records(connection))
        held = {}
        for prefix in (layout.DOMAINS, layout.CONNECTIONS, layout.IP_CONNECTIONS):
            kvs, _ = await self.session.read_prefix(prefix.encode())
            held.update((kv.key, kv.value) for kv in kvs)
        ops = [put_op(key, value) for key, value in wanted.items() if held.get(key) != value]
        ops += [delete_op(key) for key in held if key not in wanted]
        for start in range(0, len(ops), MAX_TXN_OPS):
            await self.session.txn(rpc.TxnRequest(success=ops[start : start + MAX_TXN_OPS]))
        log.info(
            "sipreg: published %d domains and %d connections to etcd (%d changes)",
            len(catalog.domains),
            len(catalog.connections),
            len(ops),
        )


class _LeasePool:
    """Leases shared by the binding keys that expire within the same `granularity` seconds."""

    def __init__(self, session: EtcdSession, granularity: float, clock: Callable[[], float]):
        self._session = session
        self._granularity = granularity
        self._clock = clock
        self._leases: dict[float, asyncio.Future[int]] = {}  # end of the slot -> lease ending just after

    async def leases_for(self, expiries: Sequence[float]) -> dict[float, int]:
        """A lease for each expiry (keyed by it) that outlives it by less than the granularity."""
        now = self._clock()
        slots = {expires_at: self._slot(expires_at, now) for expires_at in expiries}
        for slot in set(slots.values()):
            if slot not in self._leases:
                self._leases[slot] = asyncio.ensure_future(self._grant(slot))
        try:
            granted = {slot: await self._leases[slot] for slot in set(slots.values())}
        except BaseException:
            for slot in set(slots.values()):
                lease = self._leases.get(slot)
                if lease is not None and lease.done() and lease.exception() is not None:
                    del self._leases[slot]  # ask again next time
            raise
        return {expires_at: granted[slot] for expires_at, slot in slots.items()}

    def _slot(self, expires_at: float, now: float) -> float:
        # Short registrations get one-second slots: a key outlives its last binding by
        # at most a tenth of its life, and never by more than the granularity.
        width = self._granularity if expires_at - now >= 10 * self._granularity else 1.0
        return math.ceil(expires_at / width) * width

    async def _grant(self, slot: float) -> int:
        return await self._session.grant(max(2, math.ceil(slot - self._clock()) + 1))

    def forget_before(self, now: float) -> None:
        for slot in [slot for slot in self._leases if slot < now]:
            del self._leases[slot]

    def forget_all(self) -> None:
        self._leases.clear()


_BINDINGS = layout.BINDINGS.encode()
_DOMAINS = layout.DOMAINS.encode()
_CONNECTIONS = layout.CONNECTIONS.encode()
_IP_CONNECTIONS = layout.IP_CONNECTIONS.encode()
_FAILURES = layout.FAILURES.encode()
_NODES = layout.NODES.encode()


def _give_up(answer: asyncio.Future[list[Binding]]) -> None:
    if not answer.done():
        answer.set_exception(StoreUnavailable(f"etcd did not answer within {REQUEST_TIMEOUT:g} s"))


def _keep(records: dict, ident: object, record: object) -> None:
    """Remember `record` under `ident`, or forget `ident` when the record is gone (None)."""
    if record is None:
        records.pop(ident, None)
    else:
        records[ident] = record

