"""Which of several operator replicas runs: the one holding a coordination.k8s.io/v1 Lease; the others wait.

The decision is a pure function of the Lease and the clock (`next_step`); the I/O is a small loop
over the Kubernetes API (`Leadership`). A candidate creates the Lease, or takes it once its holder
has not renewed it for its leaseDurationSeconds; the holder renews it five times per Lease. Every
write replaces the Lease at the resourceVersion read, so of two candidates only one wins; the
other reads the winner's Lease next time. A leader that cannot renew before its own Lease would
expire stops leading (`lost`), before any candidate may take over: two never lead at once, as long
as their clocks run at the same rate (what Kubernetes' own leader election assumes too).
A leader that stops cleanly releases the Lease, so a candidate takes over at its next try.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable
from typing import Any

from kubernetes.client.exceptions import ApiException

from registrar.times import unix_seconds

log = logging.getLogger("sipreg.operator")

LEASE_NAME = "sipreg-operator"
LEASE_SECONDS = 15  # a leader that stopped renewing is replaced this long after its last renewal
# How often the leader renews, and a candidate looks again, as a share of the Lease: five renewals
# per Lease, so that one or two lost to a slow API server do not lose it.
RENEWALS_PER_LEASE = 5

CREATE, TAKE, RENEW, WAIT = "create", "take", "renew", "wait"


def next_step(lease: dict[str, Any] | None, me: str, now: float) -> str:
    """What a candidate (or the leader) `me` does about `lease` (None: there is none) at `now`."""
    if lease is None:
        return CREATE
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity")
    if holder == me:
        return RENEW
    renewed = spec.get("renewTime") or spec.get("acquireTime")
    if not holder or renewed is None:
        return TAKE  # released
    if unix_seconds(renewed) + int(spec.get("leaseDurationSeconds") or LEASE_SECONDS) < now:
        return TAKE  # its holder stopped renewing
    return WAIT


def lease_spec(me: str, now: float, lease_seconds: int, previous: dict[str, Any] | None, renewing: bool) -> dict:
    """The Lease's spec with `me` holding it from `now`: acquired now, or renewed (keeping its acquireTime)."""
    previous = previous or {}
    transitions = int(previous.get("leaseTransitions") or 0)
    return {
        "holderIdentity": me,
        "leaseDurationSeconds": lease_seconds,
        "acquireTime": previous.get("acquireTime") if renewing else _micro(now),
        "renewTime": _micro(now),
        "leaseTransitions": transitions if renewing else transitions + 1,
    }


def _micro(now: float) -> str:
    # Lease times are MicroTime: RFC 3339 with microseconds.
    return datetime.datetime.fromtimestamp(now, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Leadership:
    """Leader election among the operator replicas through the Lease `name` in `namespace`.

    `api` reads and writes Leases (KubernetesApi: read_lease, create_lease, replace_lease); it is
    called in a thread, as it blocks."""

    def __init__(self, api: Any, namespace: str, me: str, *, name: str = LEASE_NAME,
                 lease_seconds: int = LEASE_SECONDS, clock: Callable[[], float] = time.time):
        self.api = api
        self.namespace = namespace
        self.me = me
        self.name = name
        self.lease_seconds = lease_seconds
        self.renew_seconds = lease_seconds / RENEWALS_PER_LEASE
        self._clock = clock
        self._renewed = 0.0  # when our last write of the Lease succeeded (our clock)

    async def acquire(self) -> None:
        """Return once we lead; until then, look again every renew_seconds."""
        waiting_for = None
        while True:
            try:
                holder = await self._try()
            except Exception as error:  # the API server away: a candidate just looks again later
                log.warning("sipreg operator: could not read the Lease yet: %s", error)
                await asyncio.sleep(self.renew_seconds)
                continue
            if holder == self.me:
                break
            if holder is not None and holder != waiting_for:
                log.info("sipreg operator: standing by, %s leads (Lease %s/%s)", holder, self.namespace, self.name)
                waiting_for = holder
            await asyncio.sleep(self.renew_seconds)
        log.info("sipreg operator: leading as %s (Lease %s/%s)", self.me, self.namespace, self.name)

    async def keep(self) -> None:
        """Renew every renew_seconds; return (we no longer lead) once a renewal cannot be made before
        our Lease would expire, or another holds it."""
        while True:
            await asyncio.sleep(self.renew_seconds)
            try:
                holder = await self._try()
                if holder == self.me:
                    continue
                log.error("sipreg operator: lost the Lease to %s", holder or "another candidate")
                return
            except Exception as error:  # the API server away: keep trying while the Lease lasts
                # Stop a renewal period early: a candidate may take over once it has expired.
                if self._clock() - self._renewed > self.lease_seconds - self.renew_seconds:
                    log.error("sipreg operator: could not renew the Lease in time (%s)", error)
                    return
                log.warning("sipreg operator: Lease not renewed yet: %s", error)

    async def release(self) -> None:
        """Hand the Lease back (a clean stop), so that a candidate leads at its next look."""
        try:
            lease = await asyncio.to_thread(self.api.read_lease, self.namespace, self.name)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.me:
                return
            lease["spec"] = {**lease["spec"], "holderIdentity": None, "renewTime": None}
            await asyncio.to_thread(self.api.replace_lease, self.namespace, self.name, lease)
            log.info("sipreg operator: released the Lease")
        except Exception as error:  # it expires by itself anyway
            log.warning("sipreg operator: Lease not released: %s", error)

    async def _try(self) -> str | None:
        """One look at the Lease, and the write it calls for: who leads after it (`me`, or the holder
        read; None when another candidate wrote first: the next look says who)."""
        now = self._clock()
        lease = await asyncio.to_thread(self.api.read_lease, self.namespace, self.name)
        step = next_step(lease, self.me, now)
        if step == WAIT:
            return (lease or {}).get("spec", {}).get("holderIdentity")
        spec = lease_spec(self.me, now, self.lease_seconds, (lease or {}).get("spec"), renewing=step == RENEW)
        try:
            if step == CREATE:
                body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec}
                await asyncio.to_thread(self.api.create_lease, self.namespace, body)
            else:
                assert lease is not None
                await asyncio.to_thread(self.api.replace_lease, self.namespace, self.name, {**lease, "spec": spec})
        except ApiException as error:
            if error.status == 409:  # another candidate wrote first: it leads
                return None
            raise
        self._renewed = now
        return self.me
