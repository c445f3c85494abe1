"""Smoke tests of the harness: a real kopf operator (harness_operator.py) against the emulator."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tests.k8s.conftest import SIPDOMAINS, Kube, wait_for

pytestmark = pytest.mark.k8s

HARNESS_OPERATOR = Path(__file__).with_name("harness_operator.py")
NAMESPACE = "voip"
NAME = "sip-example-test"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def condition(domain: dict, type_: str) -> dict | None:
    return next((c for c in domain.get("status", {}).get("conditions", []) if c["type"] == type_), None)


def test_sipdomain_children_status_update_and_deletion(kube: Kube, operator_runner) -> None:
    kube.create("v1/namespaces", {"metadata": {"name": NAMESPACE}}, namespace=None)
    with operator_runner(HARNESS_OPERATOR) as runner:
        kube.create(SIPDOMAINS, {"apiVersion": "sipreg.io/v1alpha1", "kind": "SipDomain",
                                 "metadata": {"name": NAME, "namespace": NAMESPACE},
                                 "spec": {"domain": "sip.example.test", "replicas": 2}})

        # Children, owned by the SipDomain (kopf.adopt).
        config = wait_for(lambda: kube.find("v1/configmaps", f"{NAME}-config", NAMESPACE), message="the ConfigMap")
        deployment = wait_for(lambda: kube.find("apps/v1/deployments", f"{NAME}-registrar", NAMESPACE),
                              message="the Deployment")
        domain = kube.get(SIPDOMAINS, NAME, NAMESPACE)
        owner = {"apiVersion": "sipreg.io/v1alpha1", "kind": "SipDomain", "name": NAME,
                 "uid": domain["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
        assert config["metadata"]["ownerReferences"] == [owner]
        assert deployment["metadata"]["ownerReferences"] == [owner]
        assert config["data"] == {"domain": "sip.example.test"} and deployment["spec"]["replicas"] == 2

        # Status: both writers land through the status subresource; kopf keeps its own state in
        # annotations (nothing of kopf's in status, which the strict schema would prune anyway).
        def observed(generation: int) -> dict | None:
            domain = kube.get(SIPDOMAINS, NAME, NAMESPACE)
            return domain if domain.get("status", {}).get("observedGeneration") == generation else None

        domain = wait_for(lambda: observed(1), message="status.observedGeneration 1 from kopf's patch")
        assert condition(domain, "Ready") == {"type": "Ready", "status": "False", "reason": "Deploying",
                                              "message": "written by the kubernetes client"}
        assert set(domain["status"]) == {"conditions", "observedGeneration"}
        assert "sipreg.io/last-handled-configuration" in domain["metadata"]["annotations"]
        assert domain["metadata"]["finalizers"] == ["kopf.zalando.org/KopfFinalizerMarker"]
        # kopf.info() posts a Kubernetes Event (generateName'd) about the object.
        wait_for(lambda: any(event["reason"] == "ChildrenCreated"
                             and event["involvedObject"]["uid"] == domain["metadata"]["uid"]
                             for event in kube.list("v1/events", NAMESPACE)), message="the Event")

        # An update of the spec reaches the update handler.
        kube.patch(SIPDOMAINS, NAME, {"spec": {"domain": "sip2.example.test", "replicas": 3}}, NAMESPACE)
        wait_for(lambda: kube.get("v1/configmaps", f"{NAME}-config", NAMESPACE)["data"]["domain"] == "sip2.example.test",
                 message="the ConfigMap to follow the spec")
        assert kube.get("apps/v1/deployments", f"{NAME}-registrar", NAMESPACE)["spec"]["replicas"] == 3
        wait_for(lambda: observed(2), message="status.observedGeneration 2")

        # Deletion: the handler runs behind kopf's finalizer, then the object and its children go.
        assert kube.find("v1/configmaps", f"{NAME}-record", NAMESPACE) is not None
        kube.delete(SIPDOMAINS, NAME, NAMESPACE)
        kube.wait_gone(SIPDOMAINS, NAME, NAMESPACE)
        assert kube.find("v1/configmaps", f"{NAME}-record", NAMESPACE) is None  # the deletion handler
        assert kube.find("v1/configmaps", f"{NAME}-config", NAMESPACE) is None  # garbage-collected
        assert kube.find("apps/v1/deployments", f"{NAME}-registrar", NAMESPACE) is None
    for handler in ("create_children", "update_children/spec", "delete_record"):
        assert f"Handler '{handler}' succeeded." in runner.output
    assert "inconsistencies" not in runner.output  # every status write was kept


def test_secret_events_and_index(kube: Kube, operator_runner) -> None:
    def seen(name: str) -> str | None:
        config = kube.find("v1/configmaps", "harness-secrets", "default")
        return (config or {}).get("data", {}).get(f"{NAMESPACE}.{name}")

    kube.create("v1/secrets", {"metadata": {"name": "early", "namespace": NAMESPACE}, "data": {"password": b64("x")}})
    with operator_runner(HARNESS_OPERATOR):
        wait_for(lambda: seen("early") == "None:password", message="the initial listing (event type None)")
        kube.create("v1/secrets", {"metadata": {"name": "alice-sip", "namespace": NAMESPACE},
                                   "data": {"password": b64("secret")}})
        wait_for(lambda: seen("alice-sip") == "ADDED:password", message="the new Secret")
        kube.patch("v1/secrets", "alice-sip", {"data": {"ha1": b64("digest")}}, NAMESPACE)
        wait_for(lambda: seen("alice-sip") == "MODIFIED:ha1,password", message="the changed Secret")
        kube.delete("v1/secrets", "alice-sip", NAMESPACE)
        wait_for(lambda: (seen("alice-sip") or "").startswith("DELETED:"), message="the deleted Secret")


@pytest.mark.parametrize("load", ["path", "module"])
def test_startup_task_runs_until_cleanup(kube: Kube, operator_runner, load: str) -> None:
    def heartbeat() -> dict:
        return (kube.find("v1/configmaps", "harness-heartbeat", "default") or {}).get("data", {})

    target = {"path": HARNESS_OPERATOR} if load == "path" else {"module": "tests.k8s.harness_operator"}
    with operator_runner(**target):
        wait_for(lambda: int(heartbeat().get("beats", 0)) >= 3, message="three heartbeats")
        assert heartbeat()["state"] == "running"
    assert heartbeat()["state"] == "stopped"  # the cleanup handler cancelled the task and said so
