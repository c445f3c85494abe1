"""Operator tests: the real kopf operator (kopf.testing.KopfRunner) against kmock's Kubernetes emulator.

This file holds the fixtures; what they and the tests use (Kube, wait_for, our CRDs,
quick_settings(), OperatorProcess) is in tests/k8s/kube.py, which test modules import.

Fixtures
--------
- `kubernetes_api`: an `EmulatorThread` (tests/k8s/emulator.py) serving kmock's
  KubernetesEmulator (mended: see below) on http://127.0.0.1:<free port> from
  its own thread and event loop, with kmock's bundled built-in resources
  (`load_bundled()`: v1 Namespace/Secret/ConfigMap/Service/Event, apps/v1
  Deployment, policy/v1 PodDisruptionBudget, ...) and our CRDs, created
  through the API (POST .../customresourcedefinitions registers the resource,
  as in a cluster). The CRDs are `crds/*.yaml` when that folder holds any,
  else MINIMAL_CRDS of tests/k8s/kube.py (fixture `sipreg_crds`; a test
  module may override it). Why a thread: KopfRunner.__exit__ joins kopf's
  thread and the sync `kubernetes` client blocks, so an emulator on the
  test's own event loop would stop answering exactly then.
  `kubernetes_api.call(fn)` runs fn(emulator) on that loop, for kmock's own
  assertions (`emulator.objects`, `emulator.requests`). The port is closed
  when the fixture ends (asserted).
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
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kopf
import kubernetes
import pytest
from kopf._core.intents.registries import SmartOperatorRegistry  # not exported by kopf 1.45
from kopf.testing import KopfRunner

from tests.etcd_server import EtcdServer
from tests.helpers import ROOT, free_port
from tests.k8s.emulator import EmulatorThread
from tests.k8s.kube import (
    CRDS_DIR,
    MINIMAL_CRDS,
    TEST_USER_AGENT,
    Kube,
    OperatorProcess,
    kopf_process_state,
    load_crds,
    open_sockets,
    port_is_closed,
    quick_settings,
    wait_for,
    write_kubeconfig,
)


@pytest.fixture
def sipreg_crds() -> list[dict[str, Any]]:
    """The CRDs the emulator serves: crds/*.yaml when there are any, else MINIMAL_CRDS."""
    crds = load_crds() if CRDS_DIR.is_dir() else []
    return crds or copy.deepcopy(MINIMAL_CRDS)


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
    assert port_is_closed(api.port), "the emulator still listens after stopping"


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


@pytest.fixture
def kube(kubeconfig: Path) -> Iterator[Kube]:
    api_client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    api_client.user_agent = TEST_USER_AGENT
    try:
        yield Kube(api_client)
    finally:
        api_client.close()


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
        with kopf_process_state():
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


@pytest.fixture(autouse=True)
def _nothing_left_behind() -> Iterator[None]:
    """Every operator test leaves no thread (kopf's, its executor's, the emulator's) and no socket open."""
    threads, sockets = set(threading.enumerate()), open_sockets()
    yield

    def leftovers() -> list[object]:
        return ([thread for thread in threading.enumerate() if thread not in threads and thread.is_alive()]
                + sorted(open_sockets() - sockets))

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
