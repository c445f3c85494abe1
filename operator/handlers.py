"""The kopf handlers of `sipreg operator`: each hands the object to the Reconciler, which does the work.

Run it with `sipreg operator` (or `kopf run -A -m sip_operator.handlers`).
Configuration comes from the environment (see PodSettings.from_environment);
SIPREG_ETCD names the etcd the registrars share, SIPREG_ETCD_CA/_CERT/_KEY
the files for TLS to it, which the registrar pods get a copy of.

kopf keeps its own bookkeeping (handler progress, the last handled spec) in
annotations under sipreg.io, not in status: the CRDs' status schemas are
strict, and the status is the user's, not kopf's.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from registrar.store.etcd_session import EtcdSession, EtcdUnavailable, parse_endpoints
from sip_operator import metrics
from sip_operator.children import PodSettings, labels
from sip_operator.kubernetes_api import GROUP, VERSION, KubernetesApi, load_configuration
from sip_operator.leadership import LEASE_SECONDS, Leadership
from sip_operator.reconciler import Reconciler

DOMAINS = (GROUP, VERSION, "sipdomains")
CONNECTIONS = (GROUP, VERSION, "sipconnections")
MANAGED = {"app.kubernetes.io/managed-by": labels("")["app.kubernetes.io/managed-by"]}
RETRY_DELAY = 5  # seconds before kopf retries a handler that met an unreachable etcd or API server
# The port of /metrics (`sipreg operator --metrics-port` sets it; kopf loads this module
# itself, so the command line cannot hand it over otherwise). Unset or 0: no metrics server.
METRICS_PORT_VARIABLE = "SIPREG_METRICS_PORT"
# Likewise the liveness port, which a replica that stands by serves itself (kopf's is not up yet).
HEALTH_PORT_VARIABLE = "SIPREG_HEALTH_PORT"
# Where the Lease of leader election lives (the chart: the operator's namespace) and how long it lasts.
LEASE_NAMESPACE_VARIABLE = "POD_NAMESPACE"
LEASE_SECONDS_VARIABLE = "SIPREG_LEASE_SECONDS"


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.level = logging.WARNING
    pods = PodSettings.from_environment(os.environ)
    api = KubernetesApi(load_configuration())
    # kopf watches nothing until the start-up handlers return: a replica that does not lead waits here,
    # answering the liveness probe meanwhile, and reconciles nothing.
    memo.leadership = Leadership(
        api, os.environ.get(LEASE_NAMESPACE_VARIABLE) or "default",
        os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}",
        lease_seconds=int(os.environ.get(LEASE_SECONDS_VARIABLE) or LEASE_SECONDS),
    )
    health_port = int(os.environ.get(HEALTH_PORT_VARIABLE) or 0)
    standby = await metrics.serve_standby(health_port) if health_port else None
    try:
        await memo.leadership.acquire()
    finally:
        if standby is not None:
            await standby.cleanup()  # kopf's liveness endpoint takes the port over
    memo.leading = asyncio.create_task(_lead(memo.leadership), name="leadership")
    memo.metrics = metrics.OperatorMetrics()
    memo.reconciler = Reconciler(
        api,
        EtcdSession(parse_endpoints(pods.etcd), tls=pods.etcd_tls),
        pods,
        adopt=lambda child, owner: kopf.adopt(child, owner=owner),
        new_secret=lambda: secrets.token_urlsafe(32),
        metrics=memo.metrics,
    )
    await memo.reconciler.start()
    port = int(os.environ.get(METRICS_PORT_VARIABLE) or 0)
    memo.metrics_server = await metrics.serve(memo.metrics.registry, port) if port else None
    logger.info(
        "sipreg operator: etcd %s, registrar image %s, metrics %s",
        pods.etcd, pods.image, f"on port {port}" if port else "not served",
    )


async def _lead(leadership: Leadership) -> None:
    """Renew the Lease while kopf runs; once it is lost, stop: another replica leads now."""
    await leadership.keep()
    os.kill(os.getpid(), signal.SIGTERM)  # kopf's own shutdown; the Deployment starts us again, standing by


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    server = getattr(memo, "metrics_server", None)  # None as well when start-up failed before it
    if server is not None:
        await server.cleanup()
    reconciler = getattr(memo, "reconciler", None)
    if reconciler is not None:
        await reconciler.stop()
    leading = getattr(memo, "leading", None)
    if leading is not None:
        leading.cancel()
        await memo.leadership.release()  # after the last write: a successor starts at its next look


def _counted(kind: str) -> Callable[[Callable[..., Awaitable[None]]], Callable[..., Awaitable[None]]]:
    """Count each run of a handler (sipreg_operator_reconciles_total and friends) under `kind`."""

    def decorate(handler: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        @functools.wraps(handler)
        async def counted(**kwargs: Any) -> None:
            started = time.monotonic()
            try:
                await handler(**kwargs)
            except Exception as error:  # kopf retries it; cancellation (the operator stops) is no result
                kwargs["memo"].metrics.reconciled(kind, time.monotonic() - started, error)
                raise
            kwargs["memo"].metrics.reconciled(kind, time.monotonic() - started)

        return counted

    return decorate


def _retrying(error: Exception) -> kopf.TemporaryError:
    return kopf.TemporaryError(f"will retry: {error}", delay=RETRY_DELAY)


@kopf.on.resume(*DOMAINS)
@kopf.on.create(*DOMAINS)
@kopf.on.update(*DOMAINS)
@_counted("SipDomain")
async def domain_changed(namespace: str, name: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    try:
        await memo.reconciler.apply_domain(namespace, name, _plain(body))
    except (EtcdUnavailable, ApiException) as error:
        raise _retrying(error) from error


@kopf.on.delete(*DOMAINS)
@_counted("SipDomain")
async def domain_deleted(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    try:
        await memo.reconciler.delete_domain(namespace, name)
    except EtcdUnavailable as error:
        raise _retrying(error) from error


@kopf.on.resume(*CONNECTIONS)
@kopf.on.create(*CONNECTIONS)
@kopf.on.update(*CONNECTIONS)
@_counted("SipConnection")
async def connection_changed(namespace: str, name: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    try:
        await memo.reconciler.apply_connection(namespace, name, _plain(body))
    except (EtcdUnavailable, ApiException) as error:
        raise _retrying(error) from error


@kopf.on.delete(*CONNECTIONS)
@_counted("SipConnection")
async def connection_deleted(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    try:
        await memo.reconciler.delete_connection(namespace, name)
    except EtcdUnavailable as error:
        raise _retrying(error) from error


def _used_secret(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> bool:
    """A connection's password or a domain's certificate: the Secrets whose changes matter."""
    return memo.reconciler.uses_secret(namespace, name)


@kopf.on.event("v1", "secrets", when=_used_secret)
@_counted("Secret")
async def secret_changed(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    # Any event (a new password, a deleted Secret, a certificate made): its users read it again.
    await memo.reconciler.secret_changed(namespace, name)


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
@_counted("Deployment")
async def registrars_changed(namespace: str, meta: kopf.Meta, status: kopf.Status, memo: kopf.Memo, **_: Any) -> None:
    domain_object = meta.get("labels", {}).get("app.kubernetes.io/instance")
    if domain_object:
        await memo.reconciler.replicas_changed(namespace, domain_object, status.get("readyReplicas") or 0)


def _plain(body: kopf.Body) -> dict[str, Any]:
    """The object as plain dicts, as the builders and the manifest parsers take it."""
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": dict(body.metadata),
        "spec": dict(body.spec),
        "status": dict(body.status),
    }
