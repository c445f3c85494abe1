"""The Kubernetes API calls the operator makes itself (kopf makes the watching ones): one place, so RBAC can be read off it.

The chart's ClusterRole (charts/sipreg/templates/rbac.yaml) grants these and kopf's; tests/k8s/test_rbac.py
checks it against the requests the operator really makes.

Calls, by resource:
- Deployments, Services, PodDisruptionBudgets, NetworkPolicies: get, create, patch (a SipDomain's children);
- Secrets: get (passwords, read to compute HA1 digests), create (the nonce and API token Secrets, the etcd
  client copies);
- sipconnections/status, sipdomains/status: patch.

The official client is synchronous; callers run these in a thread
(asyncio.to_thread). Objects travel as plain dicts (the JSON of the API), so
what the builders make is what is sent and what is read compares with it.
Patches are JSON merge patches: the one patch type every resource, custom
ones included, accepts.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from registrar.manifests import secret_data
from sip_operator.children import drifted

log = logging.getLogger("sipreg.operator")

GROUP = "sipreg.io"
VERSION = "v1alpha1"
MERGE_PATCH = "application/merge-patch+json"

# kind -> (client API class, method suffix): read_<suffix>, create_<suffix>, patch_<suffix>.
_APIS = {
    "Deployment": ("AppsV1Api", "namespaced_deployment"),
    "Service": ("CoreV1Api", "namespaced_service"),
    "PodDisruptionBudget": ("PolicyV1Api", "namespaced_pod_disruption_budget"),
    "NetworkPolicy": ("NetworkingV1Api", "namespaced_network_policy"),
    "Secret": ("CoreV1Api", "namespaced_secret"),
    "Lease": ("CoordinationV1Api", "namespaced_lease"),
}


def load_configuration() -> kubernetes.client.ApiClient:
    """In a pod, the service account; elsewhere $KUBECONFIG or ~/.kube/config (as kopf does)."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    return kubernetes.client.ApiClient()


class KubernetesApi:
    def __init__(self, client: kubernetes.client.ApiClient):
        self.client = client

    def close(self) -> None:
        """Close the client's pooled connections: pending work of a stopped operator may keep this object
        alive, and with it sockets to an API server that is gone."""
        self.client.close()

    def _api(self, kind: str) -> tuple[Any, str]:
        class_name, suffix = _APIS[kind]
        return getattr(kubernetes.client, class_name)(self.client), suffix

    def read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        api, suffix = self._api(kind)
        try:
            response = getattr(api, f"read_{suffix}")(name, namespace, _preload_content=False)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return json.loads(response.data)

    def apply(self, namespace: str, desired: dict[str, Any]) -> str:
        """Create `desired`, or patch it where the cluster's copy drifted; says which ("created", ...)."""
        kind, name = desired["kind"], desired["metadata"]["name"]
        api, suffix = self._api(kind)
        actual = self.read(kind, namespace, name)
        if actual is None:
            getattr(api, f"create_{suffix}")(namespace, desired, _preload_content=False)
            return "created"
        if not drifted(desired, actual):
            return "unchanged"
        getattr(api, f"patch_{suffix}")(name, namespace, desired, _content_type=MERGE_PATCH, _preload_content=False)
        return "updated"

    def create_if_missing(self, namespace: str, desired: dict[str, Any]) -> bool:
        """Create `desired` unless an object of its name exists (True when it did); never rewrites one (the
        nonce and API token Secrets, the etcd client copies)."""
        kind, name = desired["kind"], desired["metadata"]["name"]
        if self.read(kind, namespace, name) is not None:
            return False
        api, suffix = self._api(kind)
        try:
            getattr(api, f"create_{suffix}")(namespace, desired, _preload_content=False)
        except ApiException as error:
            if error.status == 409:  # made meanwhile: keep the one there
                return False
            raise
        return True

    def secret_data(self, namespace: str, name: str) -> dict[str, bytes] | None:
        """A Secret's values, decoded; None when there is no such Secret."""
        secret = self.read("Secret", namespace, name)
        if secret is None:
            return None
        return secret_data(secret)  # the manifest loader's decoding: data (base64), then stringData

    # -- the Lease of leader election (sip_operator.leadership) -------------------------------

    def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.read("Lease", namespace, name)

    def create_lease(self, namespace: str, body: dict[str, Any]) -> None:
        """Create the Lease; ApiException 409 when another candidate created it first."""
        api, suffix = self._api("Lease")
        getattr(api, f"create_{suffix}")(namespace, body, _preload_content=False)

    def replace_lease(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        """Replace the Lease at body's resourceVersion; ApiException 409 when it changed since it was read."""
        api, suffix = self._api("Lease")
        getattr(api, f"replace_{suffix}")(name, namespace, body, _preload_content=False)

    def create_event(self, namespace: str, involved: dict[str, Any], type_: str, reason: str, message: str,
                     time: str) -> None:
        """A core/v1 Event about `involved` (its apiVersion, kind, name, uid), as `kubectl describe` lists it."""
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{involved['name']}.", "namespace": namespace},
            "involvedObject": {**involved, "namespace": namespace},
            "type": type_,
            "reason": reason,
            "message": message,
            "firstTimestamp": time,
            "lastTimestamp": time,
            "count": 1,
            "source": {"component": "sipreg-operator"},
            "reportingComponent": "sipreg-operator",
        }
        kubernetes.client.CoreV1Api(self.client).create_namespaced_event(namespace, body, _preload_content=False)

    def patch_status(self, plural: str, namespace: str, name: str, status: dict[str, Any]) -> bool:
        """Merge `status` into the object's status; False when the object is gone."""
        api = kubernetes.client.CustomObjectsApi(self.client)
        try:
            api.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, plural, name, {"status": status},
                _content_type=MERGE_PATCH, _preload_content=False,
            )
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True
