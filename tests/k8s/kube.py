"""The operator tests' helpers: our CRDs, a thin Kubernetes client (Kube), polling, kopf's test settings.

Also what `kopf run` in a test must undo, and `sipreg operator` run as a process (OperatorProcess).
The fixtures that use these (the emulated API, kubeconfig, `kube`, `operator_runner`,
`operator_process`) are in tests/k8s/conftest.py, whose docstring says what is emulated.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import kopf
import kubernetes
import yaml

from tests.helpers import ROOT, sample_value

T = TypeVar("T")

CRDS_DIR = ROOT / "crds"
GROUP, VERSION = "sipreg.io", "v1alpha1"
SIPDOMAINS = f"{GROUP}/{VERSION}/sipdomains"
SIPCONNECTIONS = f"{GROUP}/{VERSION}/sipconnections"


def minimal_crd(kind: str, plural: str, status_properties: Mapping[str, Any]) -> dict[str, Any]:
    """A namespaced sipreg.io/v1alpha1 CRD with a status subresource and a strict status schema."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        "status": {"type": "object", "properties": dict(status_properties)},
                    },
                }},
            }],
        },
    }


CONDITIONS = {"type": "array", "items": {"type": "object", "properties": {
    "type": {"type": "string"}, "status": {"type": "string"},
    "reason": {"type": "string"}, "message": {"type": "string"},
    "lastTransitionTime": {"type": "string"}, "observedGeneration": {"type": "integer"},
}}}
MINIMAL_CRDS = [
    minimal_crd("SipDomain", "sipdomains", {"conditions": CONDITIONS, "observedGeneration": {"type": "integer"}}),
    minimal_crd("SipConnection", "sipconnections", {
        "registered": {"type": "boolean"},
        "contacts": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
        "lastRegistered": {"type": "string"},
        "lastFailure": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        "conditions": CONDITIONS,
    }),
]


def load_crds(folder: Path = CRDS_DIR) -> list[dict[str, Any]]:
    """The CustomResourceDefinitions in `folder`'s YAML files (several documents per file allowed)."""
    crds = []
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        for document in yaml.safe_load_all(path.read_text()):
            if isinstance(document, dict) and document.get("kind") == "CustomResourceDefinition":
                crds.append(document)
    return crds


def write_kubeconfig(path: Path, server: str) -> Path:
    """A kubeconfig at `path` for `server` (a dummy token: the emulator takes any)."""
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kmock", "cluster": {"server": server}}],
        "users": [{"name": "kmock", "user": {"token": "kmock-test-token"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock", "namespace": "default"}}],
        "current-context": "kmock",
    }))
    return path


# The tests' own client introduces itself so: the emulator's request log tells its requests from
# the operator's (kopf's and the operator's `kubernetes` client), as tests/k8s/test_rbac.py must.
TEST_USER_AGENT = "sipreg-tests"


def wait_for(condition: Callable[[], T], *, timeout: float = 10, interval: float = 0.02,
             message: str = "the condition") -> T:
    """Poll `condition` until it returns a truthy value (returned) or the deadline passes (fails)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = condition()
        except AssertionError as e:  # conditions may assert, to say what is still wrong
            last_error, result = e, None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}") from last_error
        time.sleep(interval)


class Kube:
    """Thin access to the emulator through the official client: typed APIs and generic paths.

    A resource is written as kmock writes it: 'v1/configmaps', 'apps/v1/deployments',
    'sipreg.io/v1alpha1/sipdomains'.
    """

    def __init__(self, api_client: kubernetes.client.ApiClient, namespace: str = "default") -> None:
        self.api_client = api_client
        self.namespace = namespace
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.apps = kubernetes.client.AppsV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)

    @staticmethod
    def path(resource: str, namespace: str | None, name: str | None = None, subresource: str | None = None) -> str:
        *group_version, plural = resource.split("/")
        prefix = "/api/v1" if group_version == ["v1"] else "/apis/" + "/".join(group_version)
        parts = [prefix, *(["namespaces", namespace] if namespace else []), plural,
                 *([name] if name else []), *([subresource] if subresource else [])]
        return "/".join(parts)

    def request(self, method: str, path: str, body: Any = None, *, content_type: str = "application/json",
                query: Mapping[str, str] | None = None) -> Any:
        serialized = self.api_client.param_serialize(
            method=method, resource_path=path, query_params=list((query or {}).items()),
            header_params={"Content-Type": content_type, "Accept": "application/json"}, body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api_client.call_api(*serialized)
        response.read()
        if response.status >= 400:
            raise kubernetes.client.ApiException(http_resp=response)
        return json.loads(response.data) if response.data else None

    def create(self, resource: str, body: Mapping[str, Any], namespace: str | None = "") -> dict[str, Any]:
        namespace = self._namespace(body, namespace)
        return self.request("POST", self.path(resource, namespace), dict(body))

    def get(self, resource: str, name: str, namespace: str | None = "") -> dict[str, Any]:
        return self.request("GET", self.path(resource, self._namespace({}, namespace), name))

    def find(self, resource: str, name: str, namespace: str | None = "") -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return self.get(resource, name, namespace)
        except kubernetes.client.ApiException as e:
            if e.status == 404:
                return None
            raise

    def list(self, resource: str, namespace: str | None = "", label_selector: str | None = None) -> list[dict]:
        query = {"labelSelector": label_selector} if label_selector else None
        return self.request("GET", self.path(resource, self._namespace({}, namespace)), query=query)["items"]

    def patch(self, resource: str, name: str, patch: Any, namespace: str | None = "", *,
              subresource: str | None = None) -> dict[str, Any]:
        """A merge patch (a dict) or a JSON patch (a list of operations)."""
        content_type = "application/json-patch+json" if isinstance(patch, list) else "application/merge-patch+json"
        path = self.path(resource, self._namespace({}, namespace), name, subresource)
        return self.request("PATCH", path, patch, content_type=content_type)

    def delete(self, resource: str, name: str, namespace: str | None = "") -> dict[str, Any]:
        return self.request("DELETE", self.path(resource, self._namespace({}, namespace), name))

    def wait_gone(self, resource: str, name: str, namespace: str | None = "", timeout: float = 10) -> None:
        wait_for(lambda: self.find(resource, name, namespace) is None, timeout=timeout,
                 message=f"{resource} {name} to be gone")

    def _namespace(self, body: Mapping[str, Any], namespace: str | None) -> str | None:
        if namespace is None:  # cluster-scoped
            return None
        return namespace or body.get("metadata", {}).get("namespace") or self.namespace


def quick_settings() -> kopf.OperatorSettings:
    """kopf settings for a test against the emulator: retries and idle times in fractions of a second."""
    settings = kopf.OperatorSettings()
    settings.networking.error_backoffs = [0.1, 0.2, 0.5, 1]
    settings.queueing.error_delays = [0.1, 0.2, 0.5, 1]
    settings.queueing.idle_timeout = 0.5
    settings.queueing.exit_timeout = 0.5
    settings.persistence.consistency_timeout = 1.0
    settings.posting.default_backoffs = [0.1, 0.2, 0.5]
    return settings


@contextlib.contextmanager
def kopf_process_state() -> Iterator[None]:
    """Restore what `kopf run` changes process-wide: registry, loggers, sys.path, sys.modules."""
    registry = kopf.get_default_registry()
    root = logging.getLogger()
    root_handlers, root_level = list(root.handlers), root.level
    asyncio_logger = logging.getLogger("asyncio")
    asyncio_handlers, asyncio_propagate = list(asyncio_logger.handlers), asyncio_logger.propagate
    sys_path, modules = list(sys.path), set(sys.modules)
    # --verbose puts the root logger at DEBUG: keep the clients' request lines out of the logs.
    chatty = {name: logging.getLogger(name).level for name in ("urllib3", "aiohttp.access")}
    for name in chatty:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in chatty.items():
            logging.getLogger(name).setLevel(level)
        kopf.set_default_registry(registry)
        root.handlers[:], asyncio_logger.handlers[:] = root_handlers, asyncio_handlers
        root.setLevel(root_level)
        asyncio_logger.propagate = asyncio_propagate
        sys.path[:] = sys_path
        for name in set(sys.modules) - modules:
            if name.startswith("__kopf_script_"):
                del sys.modules[name]


@dataclass
class OperatorProcess:
    process: subprocess.Popen
    health_port: int
    metrics_port: int
    log_path: Path

    def get(self, port: int, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.read().decode()

    def metrics(self) -> str:
        return self.get(self.metrics_port, "/metrics")

    def metric(self, name: str, **labels: str) -> float | None:
        return sample_value(self.metrics(), name, **labels)

    def serving(self) -> bool:
        try:
            return bool(self.get(self.health_port, "/healthz") and self.metrics())
        except OSError:
            assert self.process.poll() is None, self.log_path.read_text()
            return False


def port_is_closed(port: int) -> bool:
    """Nothing listens on `port` of 127.0.0.1 (a stopped server closed its socket)."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def open_sockets() -> set[str]:
    """This process's open sockets, by their /proc/self/fd link (socket:[inode])."""
    sockets = set()
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            if (target := os.readlink(fd)).startswith("socket:"):
                sockets.add(target)
    return sockets
