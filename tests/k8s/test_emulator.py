"""What the emulated API does, as the operator tests rely on it (see the conftest docstring)."""

from __future__ import annotations

import threading

import kubernetes
import pytest

from tests.k8s.kube import SIPDOMAINS, Kube, minimal_crd, wait_for

pytestmark = pytest.mark.k8s


def sipdomain(name: str = "sip-example-test", **spec: object) -> dict:
    return {"apiVersion": "sipreg.io/v1alpha1", "kind": "SipDomain",
            "metadata": {"name": name}, "spec": {"domain": "sip.example.test", **spec}}


def test_create_fills_server_metadata(kube: Kube) -> None:
    created = kube.create(SIPDOMAINS, {**sipdomain(), "status": {"observedGeneration": 7}})
    meta = created["metadata"]
    assert meta["namespace"] == "default"
    assert meta["uid"] and meta["creationTimestamp"] and meta["generation"] == 1
    assert int(meta["resourceVersion"]) > 0
    assert "status" not in created  # ignored on create: status is a subresource
    generated = [kube.create("v1/configmaps", {"metadata": {"generateName": "cm-"}}) for _ in range(2)]
    names = {cm["metadata"]["name"] for cm in generated}
    assert len(names) == 2 and all(name.startswith("cm-") for name in names)
    with pytest.raises(kubernetes.client.ApiException) as raised:
        kube.create(SIPDOMAINS, sipdomain())
    assert raised.value.status == 409


def test_status_subresource_semantics(kube: Kube) -> None:
    kube.create(SIPDOMAINS, sipdomain())
    via_status = kube.patch(SIPDOMAINS, "sip-example-test", {"spec": {"replicas": 9}, "status": {"observedGeneration": 1}},
                            subresource="status")
    assert via_status["status"] == {"observedGeneration": 1} and "replicas" not in via_status["spec"]
    via_main = kube.patch(SIPDOMAINS, "sip-example-test", {"spec": {"replicas": 2}, "status": {"observedGeneration": 5}})
    assert via_main["status"] == {"observedGeneration": 1} and via_main["spec"]["replicas"] == 2
    assert via_main["metadata"]["generation"] == 2  # spec changed; the status patch did not bump it
    # The official client's status call (merge patch on .../status) and a PUT of the status.
    client_patched = kube.custom.patch_namespaced_custom_object_status(
        "sipreg.io", "v1alpha1", "default", "sipdomains", "sip-example-test", {"status": {"observedGeneration": 2}})
    assert client_patched["status"] == {"observedGeneration": 2}
    body = kube.get(SIPDOMAINS, "sip-example-test")
    body["status"] = {"observedGeneration": 3}
    replaced = kube.custom.replace_namespaced_custom_object_status(
        "sipreg.io", "v1alpha1", "default", "sipdomains", "sip-example-test", body)
    assert replaced["status"] == {"observedGeneration": 3}
    with pytest.raises(kubernetes.client.ApiException) as raised:  # no status subresource on ConfigMaps
        kube.create("v1/configmaps", {"metadata": {"name": "cm"}})
        kube.patch("v1/configmaps", "cm", {"data": {}}, subresource="status")
    assert raised.value.status == 404


def test_schema_prunes_unknown_status_fields(kube: Kube) -> None:
    kube.create(SIPDOMAINS, sipdomain())
    patched = kube.patch(SIPDOMAINS, "sip-example-test", {"status": {"kopf": {"progress": {}}, "observedGeneration": 1}},
                         subresource="status")
    assert patched["status"] == {"observedGeneration": 1}


def test_versions_conflicts_and_noop_writes(kube: Kube) -> None:
    created = kube.create("v1/configmaps", {"metadata": {"name": "cm"}, "data": {"a": "1"}})
    version = created["metadata"]["resourceVersion"]
    unchanged = kube.patch("v1/configmaps", "cm", {"data": {"a": "1"}})
    assert unchanged["metadata"]["resourceVersion"] == version
    with pytest.raises(kubernetes.client.ApiException) as raised:  # kopf's finalizer patches rely on 422
        kube.patch("v1/configmaps", "cm", [{"op": "test", "path": "/metadata/resourceVersion", "value": "0"},
                                           {"op": "add", "path": "/data/b", "value": "2"}])
    assert raised.value.status == 422
    stale = kube.core.read_namespaced_config_map("cm", "default")
    kube.core.patch_namespaced_config_map("cm", "default", {"data": {"a": "2"}})  # strategic merge patch
    stale.data = {"a": "3"}
    with pytest.raises(kubernetes.client.ApiException) as raised:
        kube.core.replace_namespaced_config_map("cm", "default", stale)
    assert raised.value.status == 409
    assert kube.core.read_namespaced_config_map("cm", "default").data == {"a": "2"}


def test_finalizers_and_garbage_collection(kube: Kube, kubernetes_api) -> None:
    owner = kube.create(SIPDOMAINS, {**sipdomain(), "metadata": {"name": "sip-example-test", "finalizers": ["x/y"]}})
    reference = {"apiVersion": "sipreg.io/v1alpha1", "kind": "SipDomain", "name": "sip-example-test",
                 "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
    kube.create("v1/configmaps", {"metadata": {"name": "child", "ownerReferences": [reference]}})
    kube.create("apps/v1/deployments", {"metadata": {"name": "child", "ownerReferences": [reference],
                                                     "finalizers": ["x/z"]}, "spec": {}})
    kube.delete(SIPDOMAINS, "sip-example-test")
    deleting = kube.get(SIPDOMAINS, "sip-example-test")
    assert deleting["metadata"]["deletionTimestamp"]
    assert kube.find("v1/configmaps", "child") is not None  # the owner still exists
    with pytest.raises(kubernetes.client.ApiException) as raised:
        kube.patch(SIPDOMAINS, "sip-example-test", {"metadata": {"finalizers": ["x/y", "x/new"]}})
    assert raised.value.status == 422
    kube.patch(SIPDOMAINS, "sip-example-test", {"metadata": {"finalizers": None}})
    assert kube.find(SIPDOMAINS, "sip-example-test") is None
    assert kube.find("v1/configmaps", "child") is None  # collected
    assert kube.get("apps/v1/deployments", "child")["metadata"]["deletionTimestamp"]  # its finalizer holds it
    kube.patch("apps/v1/deployments", "child", {"metadata": {"finalizers": []}})
    assert kube.find("apps/v1/deployments", "child") is None
    # kmock's own view of the objects, read on the emulator's thread: every version is kept.
    history = kubernetes_api.call(
        lambda emulator: list(emulator.objects[SIPDOMAINS, "default", "sip-example-test"].history))
    assert history[-1] is None  # deleted
    assert [version["metadata"]["resourceVersion"] for version in history[:-1]] == sorted(
        (version["metadata"]["resourceVersion"] for version in history[:-1]), key=int)
    assert history[-2]["metadata"]["deletionTimestamp"] and "finalizers" not in history[-2]["metadata"]


def test_selectors(kube: Kube) -> None:
    for name, labels in [("a", {"app": "sipreg", "tier": "edge"}), ("b", {"app": "sipreg"}), ("c", {})]:
        kube.create("v1/configmaps", {"metadata": {"name": name, "labels": labels}})
    names = lambda items: sorted(item["metadata"]["name"] for item in items)  # noqa: E731
    assert names(kube.list("v1/configmaps", label_selector="app=sipreg")) == ["a", "b"]
    assert names(kube.list("v1/configmaps", label_selector="app=sipreg,!tier")) == ["b"]
    assert names(kube.list("v1/configmaps", label_selector="tier in (edge, core)")) == ["a"]
    typed = kube.core.list_namespaced_config_map("default", field_selector="metadata.name!=a").items
    assert sorted(item.metadata.name for item in typed) == ["b", "c"]


def test_watch_streams_state_then_changes(kube: Kube) -> None:
    kube.create("v1/secrets", {"metadata": {"name": "before"}})
    seen: list[tuple[str, str]] = []
    watch = kubernetes.watch.Watch()

    def consume() -> None:
        for event in watch.stream(kube.core.list_namespaced_secret, "default", _request_timeout=10):
            seen.append((event["type"], event["object"].metadata.name))
            if event["type"] == "DELETED":
                watch.stop()

    consumer = threading.Thread(target=consume)
    consumer.start()
    wait_for(lambda: ("ADDED", "before") in seen, message="the existing secret")
    kube.create("v1/secrets", {"metadata": {"name": "after"}})
    kube.patch("v1/secrets", "after", {"data": {"k": "dg=="}})
    kube.delete("v1/secrets", "after")
    consumer.join(10)
    assert seen == [("ADDED", "before"), ("ADDED", "after"), ("MODIFIED", "after"), ("DELETED", "after")]


@pytest.fixture
def sipreg_crds() -> list[dict]:
    """This module checks the emulator with the minimal CRDs, whatever crds/ holds."""
    return [minimal_crd("SipDomain", "sipdomains", {"observedGeneration": {"type": "integer"}})]
