"""The operator's logic: SipDomains and SipConnections in, Kubernetes objects, etcd records and status out.

The kopf handlers only hand objects to a Reconciler; everything they cause
happens here, in plain async methods over two I/O ports: KubernetesApi (run in
a thread: the official client is synchronous) and the etcd store the
registrars share (an EtcdStore without a node of its own, whose watch keeps
every binding and failure in memory; made here, over the session the
reconciler is given, because it tells the reconciler of each failure).

Order does not matter. `kubectl apply -f manifests/` may create a
SipConnection before its SipDomain or Secret: the connection then shows
Ready=False (DomainNotFound, SecretNotFound) and is published the moment the
missing object appears, because domain and Secret changes re-reconcile the
connections that name them.

Status: bindings and failures change in etcd, not in Kubernetes, so no kopf
handler sees them. The store's watch marks the owning connection dirty; one
reporter task turns dirty connections into status patches, a few at a time,
and only when status.needs_patch says the change is worth one. At 10,000
connections that is one watch, about 2 KB of memory per connection, and API
writes proportional to real changes (registrations that start or end, new
failures) plus one per registration lifetime, never one per refresh.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from registrar.manifests import SpecError, certificate_secrets, connection_from_spec, domain_from_spec
from registrar.model import Connection
from registrar.store import layout
from registrar.store.etcd import EtcdStore
from registrar.store.etcd_session import EtcdSession
from registrar.times import rfc3339
from sip_operator import status as status_rules
from sip_operator.children import (
    PodSettings, api_token_secret, certificate_problem, desired_children, etcd_client_secret, nonce_secret,
)
from sip_operator.kubernetes_api import GROUP, VERSION, KubernetesApi
from sip_operator.metrics import OperatorMetrics

log = logging.getLogger("sipreg.operator")

# A SipDomain's Ready reason while a certificate Secret it names is missing or incomplete.
TLS_CERTIFICATE_MISSING = "TLSCertificateMissing"

PATCHES_IN_FLIGHT = 8  # status patches at once: the API server's fair share, not a flood
DOMAIN_STATUS_INTERVAL = 10.0  # seconds; binding counts move with every REGISTER
EXPIRY_CHECK_INTERVAL = 30.0  # seconds; how stale a shown expiresAt may get (status.needs_patch)

KINDS = {"sipdomains": "SipDomain", "sipconnections": "SipConnection"}  # plural -> kind, for metrics

ObjectKey = tuple[str, str]  # (namespace, name)
Aor = tuple[str, str]  # (domain, username)
Adopt = Callable[[dict[str, Any], dict[str, Any]], None]  # (child, owner body): owner references


@dataclass
class DomainEntry:
    """What the operator knows of one SipDomain."""

    generation: int = 0
    fqdn: str | None = None  # spec.domain once valid
    registration_enabled: bool = False
    replicas: int = 0
    ready_replicas: int = 0
    problem: tuple[str, str] | None = None
    patched: dict[str, Any] | None = None  # the status as last written
    body: dict[str, Any] | None = None  # as last applied: applied again when a certificate Secret it names changes


@dataclass
class ConnectionEntry:
    """What the operator knows of one SipConnection."""

    spec: Any = None
    generation: int = 0
    uid: str = ""  # what its Events name it by
    published: Aor | None = None  # the etcd record this object owns
    problem: tuple[str, str] | None = None
    patched: dict[str, Any] | None = None


class Reconciler:
    def __init__(
        self,
        api: KubernetesApi,
        session: EtcdSession,
        settings: PodSettings,
        *,
        adopt: Adopt,
        new_secret: Callable[[], str],
        clock: Callable[[], float] = time.time,
        metrics: OperatorMetrics | None = None,
    ):
        self.api = api
        self.store = EtcdStore(session, on_failure=lambda domain, username: self._touch_aor((domain, username)))
        self.settings = settings
        self._adopt = adopt
        self._new_secret = new_secret
        self._clock = clock
        self.domains: dict[ObjectKey, DomainEntry] = {}
        self.connections: dict[ObjectKey, ConnectionEntry] = {}
        self._owners: dict[Aor, ObjectKey] = {}  # published AOR -> its SipConnection
        self._dirty: set[ObjectKey] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.metrics = metrics or OperatorMetrics()
        self.metrics.follow(self.states, self.store.binding_counts)
        self._events = status_rules.EventBudget()

    # -- life ------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.start()
        self._tasks = [
            asyncio.create_task(self._follow_bindings(), name="follow-bindings"),
            asyncio.create_task(self._report_forever(), name="report-status"),
            asyncio.create_task(self._tick_forever(), name="status-timer"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.store.close()
        self.api.close()

    # -- SipDomain -------------------------------------------------------------------------

    async def apply_domain(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        """Create or update a SipDomain's children and etcd record; a bad spec becomes its Ready condition."""
        entry = self.domains.setdefault((namespace, name), DomainEntry())
        entry.body = body
        entry.generation = body.get("metadata", {}).get("generation", 0)
        old_fqdn = entry.fqdn
        try:
            domain = domain_from_spec(body.get("spec"))
            children = desired_children(name, body.get("spec"), self.settings)
            holder = self._domain_holder(domain.name, besides=(namespace, name))
            if holder is not None:
                raise SpecError(
                    "spec.domain", f"{domain.name} is already served by SipDomain {holder[0]}/{holder[1]}", "Conflict"
                )
        except SpecError as error:
            entry.problem = (error.reason, str(error))
            entry.fqdn = None
            log.warning("SipDomain %s/%s: %s", namespace, name, error)
        else:
            entry.problem = None
            entry.fqdn = domain.name
            entry.registration_enabled = domain.registration.enabled
            entry.replicas = body["spec"].get("replicas", 1)
            # Made once, never rewritten (see their builders), and before the pods that mount them.
            secrets = [nonce_secret(name, self._new_secret()), api_token_secret(name, self._new_secret())]
            if self.settings.etcd_tls is not None:
                secrets.append(etcd_client_secret(name, self.settings.etcd_tls))
            for child in [*secrets, *children]:
                self._adopt(child, body)
            await asyncio.to_thread(self._apply_children, namespace, secrets, children)
            await self.store.session.write({layout.domain_key(domain.name): layout.encode_domain(domain)})
            # Applied all the same: the pods start the moment the Secret appears (cert-manager may be on it).
            missing = await asyncio.to_thread(certificate_problem, namespace, body.get("spec"), self.api.secret_data)
            if missing is not None:
                entry.problem = (TLS_CERTIFICATE_MISSING, missing)
                log.warning("SipDomain %s/%s: %s", namespace, name, missing)
        if old_fqdn and old_fqdn != entry.fqdn:
            await self._forget_domain(old_fqdn)
        for fqdn in {old_fqdn, entry.fqdn} - {None}:
            await self._reapply_connections(lambda spec, fqdn=fqdn: _spec_domain(spec) == fqdn)
        await self._report_domain((namespace, name), entry)

    def _apply_children(
        self, namespace: str, secrets: list[dict[str, Any]], children: list[dict[str, Any]]
    ) -> None:
        for secret in secrets:
            if self.api.create_if_missing(namespace, secret):
                log.info("Secret %s/%s created", namespace, secret["metadata"]["name"])
        for child in children:
            outcome = self.api.apply(namespace, child)
            if outcome != "unchanged":
                log.info("%s %s/%s %s", child["kind"], namespace, child["metadata"]["name"], outcome)

    async def delete_domain(self, namespace: str, name: str) -> None:
        """Forget a SipDomain; its children go with it (owner references), its connections turn DomainNotFound."""
        entry = self.domains.pop((namespace, name), None)
        if entry is None or entry.fqdn is None:
            return
        await self._forget_domain(entry.fqdn)
        await self._reapply_connections(lambda spec: _spec_domain(spec) == entry.fqdn)

    async def _forget_domain(self, fqdn: str) -> None:
        if self._domain_holder(fqdn, besides=None) is None:
            await self.store.session.write({}, [layout.domain_key(fqdn)])

    def _domain_holder(self, fqdn: str, besides: ObjectKey | None) -> ObjectKey | None:
        for key, entry in self.domains.items():
            if entry.fqdn == fqdn and key != besides:
                return key
        return None

    async def replicas_changed(self, namespace: str, name: str, ready: int) -> None:
        """The registrar Deployment of SipDomain `name` reports `ready` pods."""
        entry = self.domains.get((namespace, name))
        if entry is not None and entry.ready_replicas != ready:
            entry.ready_replicas = ready
            await self._report_domain((namespace, name), entry)

    # -- SipConnection ---------------------------------------------------------------------

    async def apply_connection(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        """Publish a SipConnection to etcd (HA1 digests, never the password), or say in its status why not."""
        entry = self.connections.setdefault((namespace, name), ConnectionEntry())
        entry.spec = body.get("spec")
        entry.generation = body.get("metadata", {}).get("generation", 0)
        entry.uid = body.get("metadata", {}).get("uid", "")
        if entry.patched is None and isinstance(body.get("status"), dict):
            entry.patched = body["status"]  # after a restart: no patch unless something changed
        await self._publish((namespace, name), entry)

    async def _publish(self, key: ObjectKey, entry: ConnectionEntry) -> None:
        namespace, name = key
        fqdns = {e.fqdn for e in self.domains.values() if e.fqdn is not None}
        try:
            connection = await asyncio.to_thread(
                connection_from_spec, name, namespace, entry.spec, fqdns, self.api.secret_data
            )
            aor = (connection.domain, connection.username)
            owner = self._owners.get(aor)
            if owner is not None and owner != key:
                raise SpecError(
                    "spec.username", f"{connection.aor} is already defined by SipConnection {owner[0]}/{owner[1]}",
                    "Conflict",
                )
        except SpecError as error:
            entry.problem = (error.reason, str(error))
            log.warning("SipConnection %s/%s: %s", namespace, name, error)
            # A connection that lost its Secret or domain must stop accepting its old password.
            await self._unpublish(key, entry, drop_bindings=False)
        else:
            entry.problem = None
            if entry.published not in (None, aor):
                await self._unpublish(key, entry, drop_bindings=True)
            holder = await self._write_connection(key, connection)
            if holder is None:
                entry.published = aor
                self._owners[aor] = key
            else:  # another SipConnection claimed the user first (another operator, in a handover)
                error = SpecError(
                    "spec.username", f"{connection.aor} is already defined by SipConnection {holder}", "Conflict"
                )
                entry.problem = (error.reason, str(error))
                log.warning("SipConnection %s/%s: %s", namespace, name, error)
        self._mark(key)

    async def _write_connection(self, key: ObjectKey, connection: Connection) -> str | None:
        """Write the connection's record under its claim on the user; None when written, else who holds the
        claim. A record etcd has already is not written again, but the claim is checked all the same."""
        records = layout.connection_records(connection)
        held = self.store.catalog.connections.get((connection.domain, connection.username))
        # One by address is written each time: its copy under ip-connections/ may be missing (an older
        # operator wrote none), and such connections are few.
        unchanged = held is not None and connection.authentication != "ip" and layout.connection_records(held) == records
        stale = [k for k in layout.connection_keys(connection.domain, connection.username) if k not in records]
        holder = await self.store.session.write_claimed(
            layout.claim_key(connection.domain, connection.username), layout.claimant(*key),
            {} if unchanged else records, [] if unchanged else stale,
        )
        return None if holder is None else holder.decode(errors="replace")

    async def _unpublish(self, key: ObjectKey, entry: ConnectionEntry, drop_bindings: bool) -> None:
        if entry.published is None:
            return
        domain, username = entry.published
        keys = layout.connection_keys(domain, username)
        if drop_bindings:
            keys += [layout.bindings_key(f"{username}@{domain}"), layout.failure_key(domain, username)]
        await self.store.session.release_claim(layout.claim_key(domain, username), layout.claimant(*key), keys)
        self._owners.pop(entry.published, None)
        entry.published = None

    async def delete_connection(self, namespace: str, name: str) -> None:
        """Remove a SipConnection from etcd with its bindings and failure record."""
        entry = self.connections.pop((namespace, name), None)
        self._dirty.discard((namespace, name))
        self._events.forget((namespace, name))
        if entry is not None:
            await self._unpublish((namespace, name), entry, drop_bindings=True)

    async def secret_changed(self, namespace: str, name: str) -> None:
        """A Secret changed or went away: re-publish the connections whose password it holds, and check
        again the SipDomains whose certificate it is."""
        await self._reapply_connections(
            lambda spec: _secret_ref(spec) == name, namespace=namespace
        )
        for (domain_namespace, domain_name), entry in list(self.domains.items()):
            if domain_namespace == namespace and entry.body is not None and _names_certificate(entry.body, name):
                await self.apply_domain(domain_namespace, domain_name, entry.body)

    def uses_secret(self, namespace: str, name: str) -> bool:
        """Whether a Secret holds a connection's password or a domain's certificate (its changes matter)."""
        return any(
            key[0] == namespace and _secret_ref(entry.spec) == name for key, entry in self.connections.items()
        ) or any(
            key[0] == namespace and entry.body is not None and _names_certificate(entry.body, name)
            for key, entry in self.domains.items()
        )

    async def _reapply_connections(self, selects: Callable[[Any], bool], namespace: str | None = None) -> None:
        for key, entry in list(self.connections.items()):
            if (namespace is None or key[0] == namespace) and selects(entry.spec):
                await self._publish(key, entry)

    # -- status ----------------------------------------------------------------------------

    def _touch_aor(self, aor: Aor) -> None:
        key = self._owners.get(aor)
        if key is not None:
            self._mark(key)

    def _mark(self, key: ObjectKey) -> None:
        self._dirty.add(key)
        self._wake.set()

    async def _follow_bindings(self) -> None:
        async for event in self.store.watch():
            user, _, domain = event.aor.rpartition("@")
            self._touch_aor((domain, user))

    async def _tick_forever(self) -> None:
        """Now and then: domain counts, and contacts whose shown expiry has passed."""
        last_expiry_check = self._clock()
        while True:
            await asyncio.sleep(DOMAIN_STATUS_INTERVAL)
            for key, entry in list(self.domains.items()):
                await self._report_domain(key, entry)
            if self._clock() - last_expiry_check >= EXPIRY_CHECK_INTERVAL:
                last_expiry_check = self._clock()
                for key, entry in self.connections.items():
                    if entry.patched and entry.patched.get("contacts"):
                        self._mark(key)

    async def _report_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty:
                batch = [self._dirty.pop() for _ in range(min(PATCHES_IN_FLIGHT, len(self._dirty)))]
                results = await asyncio.gather(*(self._report_connection(key) for key in batch), return_exceptions=True)
                for key, result in zip(batch, results):
                    if isinstance(result, Exception):
                        log.warning("SipConnection %s/%s: status not patched: %s", *key, result)
                        self._dirty.add(key)  # try again on the next wake-up
                if any(isinstance(result, Exception) for result in results):
                    await asyncio.sleep(1.0)

    async def connection_status(self, key: ObjectKey) -> dict[str, Any] | None:
        """The status a SipConnection should show now (None: the operator does not know it)."""
        entry = self.connections.get(key)
        if entry is None:
            return None
        bindings, failure, enabled = [], None, True
        if entry.published is not None:
            domain, username = entry.published
            bindings = await self.store.lookup(f"{username}@{domain}")
            failure = await self.store.last_failure(domain, username)
            enabled = any(d.fqdn == domain and d.registration_enabled for d in self.domains.values())
        return status_rules.connection_status(
            bindings=bindings,
            failure=failure,
            generation=entry.generation,
            problem=entry.problem,
            registration_enabled=enabled,
            previous=entry.patched,
            now=self._clock(),
        )

    async def _report_connection(self, key: ObjectKey) -> None:
        entry = self.connections.get(key)
        new = await self.connection_status(key)
        if entry is None or new is None or not status_rules.needs_patch(entry.patched, new, self._clock()):
            return
        events = status_rules.connection_events(entry.patched, new, self._clock())
        await self._patch("sipconnections", key, entry.patched, new)
        entry.patched = new
        for event in events:
            await self._post_event(key, entry, event)

    async def _post_event(self, key: ObjectKey, entry: ConnectionEntry, event: status_rules.Event) -> None:
        now = self._clock()
        if not self._events.allow(key, now):
            self.metrics.event_dropped()
            return
        involved = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "SipConnection", "name": key[1], "uid": entry.uid}
        try:
            await asyncio.to_thread(
                self.api.create_event, key[0], involved, event.type, event.reason, event.message, rfc3339(now)
            )
        except Exception as error:  # an Event is worth a try, never a retry: the status has it
            log.warning("SipConnection %s/%s: Event %s not posted: %s", *key, event.reason, error)

    async def _report_domain(self, key: ObjectKey, entry: DomainEntry) -> None:
        fqdn = entry.fqdn
        owned = [e for e in self.connections.values() if fqdn and e.published and e.published[0] == fqdn]
        new = status_rules.domain_status(
            replicas=entry.replicas,
            ready_replicas=entry.ready_replicas,
            bindings=self.store.binding_counts().get(fqdn, 0) if fqdn else 0,
            connections=len(owned),
            registered_connections=sum(1 for e in owned if e.patched and e.patched.get("registered")),
            generation=entry.generation,
            problem=entry.problem,
            previous=entry.patched,
            now=self._clock(),
        )
        if new != entry.patched:
            try:
                await self._patch("sipdomains", key, entry.patched, new)
            except Exception as error:  # the API server away: next tick tries again
                log.warning("SipDomain %s/%s: status not patched: %s", *key, error)
                return
            entry.patched = new

    async def _patch(self, plural: str, key: ObjectKey, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
        # A merge patch keeps fields it does not name: name the ones to remove as null.
        patch = {field: None for field in (old or {}) if field not in new} | new
        try:
            await asyncio.to_thread(self.api.patch_status, plural, key[0], key[1], patch)
        except Exception:
            self.metrics.status_patched(KINDS[plural], ok=False)
            raise
        self.metrics.status_patched(KINDS[plural], ok=True)

    # -- metrics -----------------------------------------------------------------------------

    def states(self) -> tuple[dict[str, int], dict[str, int]]:
        """How many SipDomains and SipConnections are published to etcd, and how many have a problem."""
        domains = Counter("problem" if e.problem else "published" for e in self.domains.values() if e.problem or e.fqdn)
        connections = Counter(
            "problem" if e.problem else "published" for e in self.connections.values() if e.problem or e.published
        )
        return dict(domains), dict(connections)


def _spec_domain(spec: Any) -> str | None:
    domain = spec.get("domain") if isinstance(spec, dict) else None
    return domain.lower() if isinstance(domain, str) else None


def _names_certificate(body: dict[str, Any], secret: str) -> bool:
    return any(name == secret for _, name in certificate_secrets(body.get("spec")))


def _secret_ref(spec: Any) -> str | None:
    try:
        return spec["authentication"]["passwordSecretRef"]["name"]
    except (KeyError, TypeError):
        return None
