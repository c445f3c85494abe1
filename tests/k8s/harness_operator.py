"""A tiny kopf operator that exists only to prove the test harness (tests/k8s/test_harness.py).

It is not sipreg's operator. It uses kopf and the `kubernetes` client the way the real one
will: credentials from in-cluster config or KUBECONFIG, children adopted with kopf.adopt,
status written through the status subresource, progress kept in annotations.
Run by file path (`kopf run -A --standalone tests/k8s/harness_operator.py`); never import it
from a test, or its handlers land in whatever registry is the default at that moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any

import kopf
import kubernetes
from kubernetes.client import ApiClient, ApiException, AppsV1Api, CoreV1Api, CustomObjectsApi

GROUP, VERSION = "sipreg.io", "v1alpha1"
HEARTBEAT = "harness-heartbeat"  # ConfigMap in `default`: the background task's beats and state
SECRETS_SEEN = "harness-secrets"  # ConfigMap in `default`: what the Secret event handler saw


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Progress and the diff-base go to annotations: status stays what the CRD's schema allows.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="sipreg.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="sipreg.io", key="last-handled-configuration")
    kubernetes.config.load_config()  # in-cluster when in a pod, else KUBECONFIG / ~/.kube/config


def write_config_map(name: str, data: dict[str, str], namespace: str = "default") -> None:
    """Merge `data` into a ConfigMap, creating it when missing."""
    with ApiClient() as client:
        core = CoreV1Api(client)
        try:
            core.patch_namespaced_config_map(name, namespace, {"data": data})
        except ApiException as e:
            if e.status != 404:
                raise
            try:
                core.create_namespaced_config_map(namespace, {"metadata": {"name": name}, "data": data})
            except ApiException as conflict:  # created meanwhile by a concurrent handler
                if conflict.status != 409:
                    raise
                core.patch_namespaced_config_map(name, namespace, {"data": data})


async def heartbeat() -> None:
    # The state is written once: a beat still in its thread when the task is cancelled may land
    # after the cleanup's "stopped", and must not overwrite it.
    await asyncio.to_thread(write_config_map, HEARTBEAT, {"state": "running"})
    for beat in itertools.count(1):
        await asyncio.sleep(0.05)
        await asyncio.to_thread(write_config_map, HEARTBEAT, {"beats": str(beat)})


@kopf.on.startup()
async def start_heartbeat(memo: kopf.Memo, **_: Any) -> None:
    memo.heartbeat = asyncio.create_task(heartbeat(), name="harness-heartbeat")


@kopf.on.cleanup()
async def stop_heartbeat(memo: kopf.Memo, **_: Any) -> None:
    memo.heartbeat.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await memo.heartbeat
    await asyncio.to_thread(write_config_map, HEARTBEAT, {"state": "stopped"})


@kopf.on.create(GROUP, VERSION, "sipdomains")
def create_children(body: kopf.Body, spec: kopf.Spec, name: str, namespace: str, patch: kopf.Patch,
                    **_: Any) -> None:
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{name}-config"},
                  "data": {"domain": spec["domain"]}}
    labels = {"app.kubernetes.io/instance": name}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": f"{name}-registrar"},
        "spec": {"replicas": spec.get("replicas", 1), "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": "registrar", "image": "sipreg:test"}]}}},
    }
    kopf.adopt([config_map, deployment], owner=body)
    # Not owned: only the deletion handler removes it (as the real operator cleans etcd).
    record = {"metadata": {"name": f"{name}-record"}, "data": {"domain": spec["domain"]}}
    with ApiClient() as client:
        CoreV1Api(client).create_namespaced_config_map(namespace, config_map)
        AppsV1Api(client).create_namespaced_deployment(namespace, deployment)
        CoreV1Api(client).create_namespaced_config_map(namespace, record)
        # Status through the client: PATCH .../sipdomains/NAME/status (merge patch).
        CustomObjectsApi(client).patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, "sipdomains", name,
            {"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "Deploying",
                                        "message": "written by the kubernetes client"}]}},
        )
    # Status through kopf: it sends the status part of `patch` to the status subresource.
    patch.status["observedGeneration"] = body.metadata.get("generation")
    # A Kubernetes Event about the object (kopf 1.45 posts only explicit ones, not its log lines).
    kopf.info(body, reason="ChildrenCreated", message=f"created {name}-config and {name}-registrar")


@kopf.on.update(GROUP, VERSION, "sipdomains", field="spec")
def update_children(body: kopf.Body, name: str, namespace: str, new: dict[str, Any], patch: kopf.Patch,
                    **_: Any) -> None:
    with ApiClient() as client:
        CoreV1Api(client).patch_namespaced_config_map(f"{name}-config", namespace, {"data": {"domain": new["domain"]}})
        AppsV1Api(client).patch_namespaced_deployment(
            f"{name}-registrar", namespace, {"spec": {"replicas": new.get("replicas", 1)}})
    patch.status["observedGeneration"] = body.metadata.get("generation")


@kopf.on.delete(GROUP, VERSION, "sipdomains")
def delete_record(name: str, namespace: str, **_: Any) -> None:
    with ApiClient() as client:
        try:
            CoreV1Api(client).delete_namespaced_config_map(f"{name}-record", namespace)
        except ApiException as e:
            if e.status != 404:
                raise


@kopf.index("v1", "secrets")
def secret_keys(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], list[str]]:
    return {(namespace, name): sorted((body.get("data") or {}).keys())}


@kopf.on.event("v1", "secrets")
def secret_seen(event: kopf.RawEvent, namespace: str, name: str, secret_keys: kopf.Index, **_: Any) -> None:
    keys = [key for keys in secret_keys.get((namespace, name), []) for key in keys]
    write_config_map(SECRETS_SEEN, {f"{namespace}.{name}": f"{event['type']}:{','.join(keys)}"})
