"""The operator's story on a real cluster: runs when KUBECONFIG names one (`pytest -m e2e`), skipped otherwise.

The operator runs in this process (KopfRunner) against the cluster, with a real
etcd on this machine that it and a local `sipreg registrar` share: what is
checked is what the operator does with the Kubernetes API (CRDs accepted,
children created and garbage-collected, status written through the status
subresource, finalizers). The registrar pods the cluster starts are not
waited for: they need the sipreg image and an etcd they can reach.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest
import yaml

from registrar.store import layout
from tests.etcd_server import EtcdServer
from tests.helpers import DOMAIN, MANIFESTS, ROOT, start_registrar, stop_registrar
from tests.integration.sipp import manifest_passwords
from tests.k8s.kube import SIPCONNECTIONS, SIPDOMAINS, Kube, wait_for
from tests.k8s.story import (
    DOMAIN_OBJECT, OPERATOR, apply_examples, condition, etcd_records, register, wait_for_children,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not os.environ.get("KUBECONFIG"), reason="needs a real Kubernetes cluster: set KUBECONFIG to one"
    ),
]
TIMEOUT = 120  # seconds: a real API server, a real garbage collector


@pytest.fixture
def kubeconfig() -> Path:
    """The real cluster's kubeconfig (this replaces the emulator's fixture of the same name)."""
    return Path(os.environ["KUBECONFIG"])


@pytest.fixture
def namespace(kubeconfig: Path) -> Iterator[tuple[Kube, str]]:
    api_client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    kube = Kube(api_client)
    extensions = kubernetes.client.ApiextensionsV1Api(api_client)
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        try:
            extensions.create_custom_resource_definition(crd)
        except kubernetes.client.exceptions.ApiException as error:
            if error.status != 409:
                raise
            crd["metadata"]["resourceVersion"] = extensions.read_custom_resource_definition(
                crd["metadata"]["name"]
            ).metadata.resource_version
            extensions.replace_custom_resource_definition(crd["metadata"]["name"], crd)
    name = f"sipreg-e2e-{uuid.uuid4().hex[:8]}"
    kube.create("v1/namespaces", {"metadata": {"name": name}}, namespace=None)
    try:
        yield kube, name
    finally:
        kube.delete("v1/namespaces", name, namespace=None)
        api_client.close()


def test_the_operator_story_on_a_real_cluster(
    namespace: tuple[Kube, str], operator_runner, etcd: EtcdServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kube, ns = namespace
    monkeypatch.setenv("SIPREG_ETCD", etcd.url)
    with operator_runner(module=OPERATOR):
        apply_examples(kube, ns)
        children = wait_for_children(kube, ns, timeout=TIMEOUT)
        wait_for(lambda: condition(kube.get(SIPCONNECTIONS, "alice", ns), "Ready").get("status") == "True",
                 timeout=TIMEOUT, message="alice Ready")
        assert layout.connection_key(DOMAIN, "alice") in etcd_records(etcd, layout.CONNECTIONS)

        registrar = start_registrar(tmp_path, "--store", etcd.url, "--domain", DOMAIN, manifests=None,
                                    command_name="registrar")
        try:
            run = register(registrar, tmp_path, "alice", manifest_passwords(MANIFESTS)["alice"])
            assert (run.successful, run.failed) == (1, 0), run.errors or run.messages
            wait_for(lambda: kube.get(SIPCONNECTIONS, "alice", ns).get("status", {}).get("registered"),
                     timeout=TIMEOUT, message="alice registered in her status")
        finally:
            stop_registrar(registrar)

        kube.delete(SIPCONNECTIONS, "alice", ns)
        kube.wait_gone(SIPCONNECTIONS, "alice", ns, timeout=TIMEOUT)
        assert layout.connection_key(DOMAIN, "alice") not in etcd_records(etcd, layout.CONNECTIONS)
        kube.delete(SIPDOMAINS, DOMAIN_OBJECT, ns)
        kube.wait_gone(SIPDOMAINS, DOMAIN_OBJECT, ns, timeout=TIMEOUT)
        for resource, name in children:
            wait_for(lambda: kube.find(resource, name, ns) is None, timeout=TIMEOUT, message=f"{resource} {name} gone")
