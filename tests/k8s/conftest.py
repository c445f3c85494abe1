"""Operator tests: the real kopf operator (kopf.testing.KopfRunner) against kmock's Kubernetes emulator.

Fixtures
--------
- `kubernetes_api`: an `EmulatorThread` (tests/k8s/emulator.py) serving kmock's
  KubernetesEmulator (mended: see below) on http://127.0.0.1:<free port> from
  its own thread and event loop, with kmock's bundled built-in resources
  (`load_bundled()`: v1 Namespace/Secret/ConfigMap/Service/Event, apps/v1
  Deployment, policy/v1 PodDisruptionBudget, ...) and our CRDs, created
  through the API (POST .../customresourcedefinitions registers the resource,
  as in a cluster). The CRDs are `crds/*.yaml` when that folder holds any,
  else MINIMAL_CRDS below (fixture `sipreg_crds`; a test module may override
  it). Why a thread: KopfRunner.__exit__ joins kopf's thread and the sync
  `kubernetes` client blocks, so an emulator on the test's own event loop
  would stop answering exactly then. `kubernetes_api.call(fn)` runs
  fn(emulator) on that loop, for kmock's own assertions (`emulator.objects`,
  `emulator.requests`). The port is closed when the fixture ends (asserted).
- `kubeconfig`: a kubeconfig file for the emulator (server http://127.0.0.1:
  PORT, a dummy token), exported as KUBECONFIG; KUBERNETES_SERVICE_HOST/PORT
  are removed so that in-cluster config cannot win. kopf needs no
  `@kopf.on.login` handler: its default registry (SmartOperatorRegistry)
  carries `login_via_client` whenever the `kubernetes` package is installed,
  and that calls load_incluster_config(), then load_kube_config(). Trap: the
  `kubernetes` package reads $KUBECONFIG once, at import, into
  KUBE_CONFIG_DEFAULT_LOCATION (the default file of load_kube_config() and
  what load_config() checks first), so the fixture also points that constant
  (both copies) at the file. The process-wide default
  `kubernetes.client.Configuration` that load_kube_config() sets is restored.
- `kube`: `Kube`, thin helpers (create/get/find/list/patch/delete/wait_gone on
  any resource by 'v1/configmaps'-style names, typed `core`/`apps`/`custom`
  APIs) over a `kubernetes` ApiClient built from that kubeconfig, with the
  User-Agent `sipreg-tests` (TEST_USER_AGENT), so that the request log
  tells the test's requests from the operator's.
  `wait_for(condition)` polls with a deadline (tests never sleep blindly).
- `operator_runner`: `with operator_runner(path) as runner:` (or
  `module='pkg.mod'`) runs `kopf run -A --standalone --verbose <path>` in
  KopfRunner with a fresh SmartOperatorRegistry and `quick_settings()`; on
  exit it asserts exit_code == 0, no exception and no ERROR line in kopf's
  log (`errors_allowed=True` lifts the last), with kopf's output as the
  failure message. It undoes what a kopf run leaves behind in the process:
  the default registry, root/asyncio logger handlers and levels, sys.path,
  the pseudo-module of a path, and the thread pool of sync handlers (kopf
  never shuts down settings.execution.executor).
- autouse `_nothing_left_behind`: every test here ends with no new thread and
  no new socket.

kopf: what a quick, clean test run needs
----------------------------------------
- `-A` (without it kopf assumes cluster-wide with a warning) and
  `--standalone` (no peering: without it kopf looks for kopf.dev
  KopfPeering resources, finds none and falls back to standalone with a
  warning). `--verbose` gives kopf's DEBUG log in failure messages.
- A registry made by kopf's default factory (SmartOperatorRegistry, not
  exported: kopf._core.intents.registries); a plain kopf.OperatorRegistry()
  has no login handlers and kopf fails with "Ran out of valid credentials".
- Load the operator by path, or `-m module`: operator_runner drops the module
  from sys.modules first, as an imported module would not register its
  handlers again in the new registry.
- `quick_settings()`: API-error backoffs, error delays, worker idle/exit
  times and the consistency timeout cut to fractions of a second. The watch
  timeouts need nothing: kopf cancels its streams on exit.
- The operator keeps kopf's progress and diff-base in annotations
  (`kopf.AnnotationsProgressStorage(prefix='sipreg.io')`,
  `kopf.AnnotationsDiffBaseStorage(prefix='sipreg.io', ...)`, set in an
  `@kopf.on.startup` handler): the default SmartProgressStorage also writes
  `status.kopf`, which a strict status schema prunes (the emulator prunes as
  the apiserver does), and a handler's return value goes to
  `status.<handler-id>`: return None. Status can be written both ways: kopf's
  `patch.status[...]` (kopf sends it to .../status itself, because discovery
  lists sipdomains/status) and CustomObjectsApi.patch_namespaced_custom_object_status.
- kopf 1.45 posts Kubernetes Events only for explicit kopf.event()/info()/
  warn()/exception() calls, not for its log lines (settings.posting.loggers).

What kmock 0.8 does not do, and ClusterEmulator (tests/k8s/emulator.py) does
----------------------------------------------------------------------------
kmock stores objects and streams watch events, nothing more. It fills in no
uid/resourceVersion/generation/creationTimestamp, nor metadata.namespace from
the URL; it has no status subresource (PATCH .../status and PATCH on the
object both merge everything; kmock issue #30); a failed JSON-patch `test` is
500, where kopf's finalizer patches need 422; PUT is 404; generateName is
ignored (the second generated object is a 409); label/field selectors are
ignored; nothing is garbage-collected by ownerReferences; a watch streams the
full state as ADDED whatever its resourceVersion, and subscribes only after
that snapshot (a write in between is lost). That last one stalls kopf: it
patches the finalizer in from the list, then gets the stale ADDED from the
watch, its second patch gets 422, and it waits for an event that never comes.
And /api/v1/namespaces (list or create Namespaces) is a 500: kmock's URL
parser takes `namespaces/X` for a namespace prefix (patched in emulator.py).
ClusterEmulator replaces the write path and list/watch:
- create: uid, creationTimestamp, generation 1, resourceVersion (one global
  counter), metadata.namespace from the URL, generateName, apiVersion/kind;
  409 AlreadyExists; status dropped for resources with a status subresource;
  unknown resources 404.
- status subresource (CRDs that declare it; built-ins as kmock's bundle says):
  PATCH/PUT .../status changes only status, PATCH/PUT on the object never
  changes status; without the subresource .../status is 404.
- PATCH: merge patch; JSON patch (a failed `test` is 422); strategic merge
  patch applied as a plain merge patch (lists replaced whole: no merge keys,
  no $patch directives; the official client sends this for built-ins);
  server-side apply is 415. A metadata.resourceVersion in a merge patch is a
  precondition (409). PUT replaces; resourceVersion required (422), checked (409).
- generation +1 when anything but metadata/status changes; resourceVersion +1
  on every real change; a no-op write changes nothing and sends no event.
- server-owned metadata (uid, name, namespace, creationTimestamp, generation,
  resourceVersion, deletionTimestamp) is kept whatever a write says; empty
  finalizers/labels/annotations/ownerReferences are dropped.
- delete: with finalizers it sets deletionTimestamp (MODIFIED); the write
  that removes the last finalizer deletes (DELETED); no new finalizers on a
  deleting object (422); DeleteOptions preconditions (uid/resourceVersion).
- garbage collection after every write: an object whose ownerReferences all
  name uids that no longer exist is deleted (its own finalizers honoured).
  propagationPolicy (Orphan/Foreground) and blockOwnerDeletion are ignored.
- CRD schemas: structural pruning (unknown fields dropped unless
  x-kubernetes-preserve-unknown-fields/additionalProperties) and `default`s.
- list/watch: labelSelector and fieldSelector (=, ==, !=, key, !key,
  in/notin; fields by dotted path); a list carries the current
  resourceVersion; a watch with resourceVersion=N replays the events after
  N (all events are kept in memory), without one (or "0") it sends the
  matching objects as ADDED; then live events, with no gap or duplicate.
- Secrets: stringData folded into data (base64) on every write, as the apiserver does.

Still not emulated: validation against schemas (types, enums, required,
patterns: a wrong value is stored), admission webhooks, RBAC and
authentication (any token passes), namespace existence (objects may live in
a namespace never created) and namespace deletion cascades, controllers (a
Deployment gets no ReplicaSets/Pods/status, a Service no endpoints),
timeoutSeconds/bookmarks/sendInitialEvents/410 Gone on watches,
deletecollection, scale and other subresources, CRD version conversion.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import kopf
import kubernetes
import pytest
import yaml
from kopf._core.intents.registries import SmartOperatorRegistry  # not exported by kopf 1.45
from kopf.testing import KopfRunner

from tests.etcd_server import EtcdServer
from tests.helpers import free_port, sample_value
from tests.k8s.emulator import EmulatorThread

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
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


@pytest.fixture
def sipreg_crds() -> list[dict[str, Any]]:
    """The CRDs the emulator serves: crds/*.yaml when there are any, else MINIMAL_CRDS."""
    crds = load_crds() if CRDS_DIR.is_dir() else []
    return crds or copy.deepcopy(MINIMAL_CRDS)


def _port_is_closed(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def kubernetes_api(sipreg_crds: list[dict[str, Any]]) -> Iterator[EmulatorThread]:
    """The emulated Kubernetes API with built-ins and our CRDs, stopped (port closed) after the test."""
    api = EmulatorThread().start()
    try:
        for crd in sipreg_crds:
            request = urllib.request.Request(
                f"{api.url}/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                data=json.dumps(crd).encode(), method="POST", headers={"Content-Type": "application/json"},
            )
            urllib.request.urlopen(request, timeout=5).close()
        yield api
    finally:
        api.stop()
    assert _port_is_closed(api.port), "the emulator still listens after stopping"


def write_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kmock", "cluster": {"server": server}}],
        "users": [{"name": "kmock", "user": {"token": "kmock-test-token"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock", "namespace": "default"}}],
        "current-context": "kmock",
    }))
    return path


@pytest.fixture
def kubeconfig(kubernetes_api: EmulatorThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """KUBECONFIG -> the emulator, for kopf and for the `kubernetes` client alike."""
    path = write_kubeconfig(tmp_path / "kubeconfig", kubernetes_api.url)
    monkeypatch.setenv("KUBECONFIG", str(path))
    # The client reads $KUBECONFIG once, when kubernetes.config is imported (long before this
    # fixture), into KUBE_CONFIG_DEFAULT_LOCATION: the default of load_kube_config(), which kopf's
    # login calls, and what load_config() checks. Point both copies of it at this file.
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    monkeypatch.setattr(kubernetes.config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    default_configuration = kubernetes.client.Configuration._default  # set by load_kube_config()
    try:
        yield path
    finally:
        kubernetes.client.Configuration._default = default_configuration


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


# The tests' own client introduces itself so: the emulator's request log tells its requests from
# the operator's (kopf's and the operator's `kubernetes` client), as tests/k8s/test_rbac.py must.
TEST_USER_AGENT = "sipreg-tests"


@pytest.fixture
def kube(kubeconfig: Path) -> Iterator[Kube]:
    api_client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    api_client.user_agent = TEST_USER_AGENT
    try:
        yield Kube(api_client)
    finally:
        api_client.close()


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
def _kopf_process_state() -> Iterator[None]:
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


@pytest.fixture
def operator_runner(kubeconfig: Path) -> Callable[..., contextlib.AbstractContextManager[KopfRunner]]:
    """`with operator_runner('path/to/handlers.py') as runner:` -- kopf runs until the block ends.

    `module=` runs an importable module instead (`-m`); `settings=` replaces quick_settings();
    `args=` adds CLI arguments. On exit: exit code 0, no exception and no ERROR in kopf's log
    (unless `errors_allowed`), or the test fails with kopf's output.
    """

    @contextlib.contextmanager
    def run(path: str | Path | None = None, *, module: str | None = None, args: tuple[str, ...] = (),
            settings: kopf.OperatorSettings | None = None, timeout: float = 30,
            errors_allowed: bool = False) -> Iterator[KopfRunner]:
        if (path is None) == (module is None):
            raise TypeError("give either a path or a module")
        target = ["-m", module] if module else [str(path)]
        if module:  # an imported module would not register its handlers in the new registry
            for name in [name for name in sys.modules if name == module or name.startswith(module + ".")]:
                del sys.modules[name]
        with _kopf_process_state():
            settings = settings or quick_settings()
            runner = KopfRunner(
                ["run", "-A", "--standalone", "--verbose", *args, *target],
                registry=SmartOperatorRegistry(), settings=settings, timeout=timeout,
            )
            try:
                with runner:
                    yield runner
            finally:
                # kopf never shuts down the executor of its sync handlers: its threads would outlive the run.
                settings.execution.executor.shutdown(wait=True, cancel_futures=True)
        assert runner.exception is None, runner.output
        assert runner.exit_code == 0, runner.output
        if not errors_allowed:
            errors = [line for line in runner.output.splitlines() if "[ERROR" in line]
            assert not errors, runner.output

    return run


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


@pytest.fixture
def operator_process(kubeconfig: Path, etcd: Any, tmp_path: Path) -> Iterator[OperatorProcess]:
    """`sipreg operator` as a pod runs it: a process configured by flags and KUBECONFIG (the emulator).

    Yielded once /healthz and /metrics answer. At the end SIGTERM must stop it with 0 and no traceback.
    """
    health_port, metrics_port = free_port(), free_port()
    log_path = tmp_path / "operator.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "registrar.cli", "operator", "--etcd", etcd.url,
             "--health-port", str(health_port), "--metrics-port", str(metrics_port)],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        )
    running = OperatorProcess(process, health_port, metrics_port, log_path)
    try:
        wait_for(running.serving, timeout=30, message="the operator's /healthz and /metrics")
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
    output = log_path.read_text()
    assert code == 0, output
    assert "Traceback" not in output, output


def _open_sockets() -> set[str]:
    sockets = set()
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            if (target := os.readlink(fd)).startswith("socket:"):
                sockets.add(target)
    return sockets


@pytest.fixture(autouse=True)
def _nothing_left_behind() -> Iterator[None]:
    """Every operator test leaves no thread (kopf's, its executor's, the emulator's) and no socket open."""
    threads, sockets = set(threading.enumerate()), _open_sockets()
    yield

    def leftovers() -> list[object]:
        return ([thread for thread in threading.enumerate() if thread not in threads and thread.is_alive()]
                + sorted(_open_sockets() - sockets))

    deadline = time.monotonic() + 5  # what was told to stop gets a moment to end
    while leftovers() and time.monotonic() < deadline:
        gc.collect()  # an unreferenced client's socket closes when it is collected
        time.sleep(0.05)
    assert not leftovers(), f"left behind: {leftovers()}"


@pytest.fixture
def operator_environment(etcd: EtcdServer, monkeypatch: pytest.MonkeyPatch) -> EtcdServer:
    """The operator's settings for the tests: a real etcd, an image name, domain counts refreshed fast."""
    monkeypatch.setenv("SIPREG_ETCD", etcd.url)
    monkeypatch.setenv("SIPREG_IMAGE", "registry.test/sipreg:test")
    # Domain counts are refreshed every 10 s in a cluster; a test need not wait that long.
    monkeypatch.setattr("sip_operator.reconciler.DOMAIN_STATUS_INTERVAL", 0.2)
    return etcd
