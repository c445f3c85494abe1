"""The operator's story, shared by the operator and RBAC tests: the example manifests applied, and what must follow.

The real kopf operator (sip_operator.handlers) against the emulated API, a real
etcd, a real `sipreg registrar` process and real sipp REGISTERs. The example
manifests are applied in file order, which puts the SipConnections before their
SipDomains: the operator must cope with any order.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from pathlib import Path

import yaml

from registrar.store import layout
from tests.etcd_server import EtcdServer, records
from tests.helpers import DOMAIN, MANIFESTS, start_registrar, stop_registrar
from tests.integration.sip_client import UserAgent, status_of
from tests.integration.sipp import manifest_passwords, run_sipp, users_csv
from tests.k8s.kube import SIPCONNECTIONS, SIPDOMAINS, Kube, wait_for

OPERATOR = "sip_operator.handlers"
NAMESPACE = "voip"
DOMAIN_OBJECT = "sip-example-test"
CONTACT_PORT = "5099"
RESOURCES = {
    "Namespace": "v1/namespaces",
    "Secret": "v1/secrets",
    "SipDomain": SIPDOMAINS,
    "SipConnection": SIPCONNECTIONS,
}


def example_objects() -> list[dict]:
    return [doc for path in sorted(MANIFESTS.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def apply_examples(kube: Kube, namespace: str = NAMESPACE) -> None:
    """kubectl apply -f manifests/, into `namespace` (the examples' Namespace object only when it is theirs)."""
    for obj in example_objects():
        if obj["kind"] == "Namespace":
            if obj["metadata"]["name"] == namespace:
                kube.create(RESOURCES["Namespace"], obj, namespace=None)
            continue
        obj["metadata"]["namespace"] = namespace
        kube.create(RESOURCES[obj["kind"]], obj, namespace=namespace)


def etcd_records(etcd: EtcdServer, prefix: str) -> dict[bytes, bytes]:
    return {key: kv.value for key, kv in asyncio.run(records(etcd.url, prefix)).items()}


def wait_for_children(kube: Kube, namespace: str, timeout: float = 10) -> list[tuple[str, str]]:
    """Wait until the example SipDomain owns its children; they are returned as (resource, name)."""
    owner = wait_for(lambda: kube.find(SIPDOMAINS, DOMAIN_OBJECT, namespace), timeout=timeout, message="the SipDomain")
    children = [
        ("apps/v1/deployments", f"{DOMAIN_OBJECT}-registrar"),
        ("v1/services", f"{DOMAIN_OBJECT}-sip"),
        ("policy/v1/poddisruptionbudgets", f"{DOMAIN_OBJECT}-registrar"),
        ("networking.k8s.io/v1/networkpolicies", f"{DOMAIN_OBJECT}-registrar"),
        ("v1/secrets", f"{DOMAIN_OBJECT}-nonce"),
        ("v1/secrets", f"{DOMAIN_OBJECT}-api-token"),
    ]
    for resource, name in children:
        child = wait_for(lambda: kube.find(resource, name, namespace), timeout=timeout, message=f"{resource} {name}")
        assert [ref["uid"] for ref in child["metadata"]["ownerReferences"]] == [owner["metadata"]["uid"]]
    return children


def api_token(kube: Kube, namespace: str = NAMESPACE) -> str:
    """The bindings API token the operator made for the example SipDomain's pods."""
    secret = kube.get("v1/secrets", f"{DOMAIN_OBJECT}-api-token", namespace)
    return base64.b64decode(secret["data"]["token"]).decode()


def condition(obj: dict, type_: str) -> dict:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), {})


def connection(kube: Kube, name: str) -> dict:
    return kube.get(SIPCONNECTIONS, name, NAMESPACE)


def register(registrar, tmp_path: Path, user: str, password: str, scenario: str = "register_auth.xml"):
    csv = users_csv(tmp_path / f"{user}.csv", [(user, password)], DOMAIN)
    return run_sipp(
        scenario, f"{registrar.host}:{registrar.sip_port}", workdir=tmp_path, injection=csv,
        keys={"contact_port": CONTACT_PORT, "expires": "300"},
    )


def events_of(kube: Kube, name: str, reason: str) -> list[dict]:
    """The Events about SipConnection `name` with `reason`, as `kubectl describe` lists them."""
    return [
        event for event in kube.list("v1/events", NAMESPACE)
        if event["involvedObject"].get("name") == name and event["involvedObject"].get("kind") == "SipConnection"
        and event["reason"] == reason
    ]


def domain_status(kube: Kube) -> dict:
    return kube.get(SIPDOMAINS, DOMAIN_OBJECT, NAMESPACE).get("status", {})


def sip_domain_story(kube: Kube, operator_runner, etcd: EtcdServer, tmp_path: Path) -> None:
    """The example manifests applied, and everything the operator must do with them, checked step by step."""
    with operator_runner(module=OPERATOR) as runner:
        apply_examples(kube)

        # The SipDomain's children, owned by it.
        children = wait_for_children(kube, NAMESPACE)
        assert kube.find("v1/services", f"{DOMAIN_OBJECT}-registrars", NAMESPACE)["spec"]["clusterIP"] == "None"
        deployment = kube.get("apps/v1/deployments", f"{DOMAIN_OBJECT}-registrar", NAMESPACE)
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["image"] == "registry.test/sipreg:test"
        assert f"--domain={DOMAIN}" in container["args"]
        assert deployment["spec"]["replicas"] == 2
        # HTTP only from the monitoring namespace and the SipDomain's own pods (trace gathering); SIP from anyone.
        policy = kube.get("networking.k8s.io/v1/networkpolicies", f"{DOMAIN_OBJECT}-registrar", NAMESPACE)
        assert policy["spec"]["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
        (sip, own_pods, http) = policy["spec"]["ingress"]
        assert own_pods["from"] == [{"podSelector": {"matchLabels": deployment["spec"]["selector"]["matchLabels"]}}]
        assert own_pods["ports"] == [{"protocol": "TCP", "port": 8080}]
        assert "from" not in sip  # everyone
        sip_ports = {(port["protocol"], port["port"]) for port in sip["ports"]}
        assert sip_ports == {("UDP", 5060), ("TCP", 5060), ("TCP", 5061), ("TCP", 5066), ("TCP", 7443)}  # ws, wss
        service = kube.get("v1/services", f"{DOMAIN_OBJECT}-sip", NAMESPACE)
        assert {(port["name"], port["port"]) for port in service["spec"]["ports"]} >= {("sip-ws", 5066), ("sip-wss", 7443)}
        assert http["ports"] == [{"protocol": "TCP", "port": 8080}]
        assert http["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
        token = api_token(kube)

        # A spec change reaches the children; the Deployment's readiness reaches the SipDomain's status.
        kube.patch(SIPDOMAINS, DOMAIN_OBJECT, {"spec": {"replicas": 3}}, NAMESPACE)
        wait_for(lambda: kube.get("apps/v1/deployments", f"{DOMAIN_OBJECT}-registrar", NAMESPACE)["spec"]["replicas"]
                 == 3, message="the Deployment scaled to 3")
        # No controllers in the emulator: play the Deployment controller's part.
        kube.patch("apps/v1/deployments", f"{DOMAIN_OBJECT}-registrar", {"status": {"readyReplicas": 2}}, NAMESPACE,
                   subresource="status")
        status = wait_for(lambda: (s := domain_status(kube)).get("readyReplicas") == 2 and s,
                          message="readyReplicas in the SipDomain's status")
        assert api_token(kube) == token, "a reconcile must keep the token clients hold"
        generation = kube.get(SIPDOMAINS, DOMAIN_OBJECT, NAMESPACE)["metadata"]["generation"]
        assert status["replicas"] == 3 and status["observedGeneration"] == generation
        assert condition({"status": status}, "Ready")["message"] == "2 of 3 registrar pods ready"

        # Domains and connections in etcd: HA1 digests, never a password; the IP-authenticated PBX by address.
        wait_for(lambda: len(etcd_records(etcd, layout.CONNECTIONS)) == 5, message="5 connections in etcd")
        assert set(etcd_records(etcd, layout.DOMAINS)) == {layout.domain_key(DOMAIN), layout.domain_key("siphv.example.test")}
        alice = json.loads(etcd_records(etcd, layout.CONNECTIONS)[layout.connection_key(DOMAIN, "alice")])
        passwords = manifest_passwords(MANIFESTS)
        assert alice["ha1"]["MD5"] == hashlib.md5(f"alice:{DOMAIN}:{passwords['alice']}".encode()).hexdigest()
        pbx = json.loads(etcd_records(etcd, layout.CONNECTIONS)[layout.connection_key(DOMAIN, "pbx-office")])
        assert (pbx["authentication"], pbx["allowedAddresses"], pbx["ha1"]) == ("ip", ["127.0.0.2/32", "192.0.2.0/24"], {})
        everything = b"".join(etcd_records(etcd, layout.PREFIX).values())
        assert not any(password.encode() in everything for password in passwords.values())
        wait_for(lambda: condition(connection(kube, "alice"), "Ready").get("status") == "True", message="alice Ready")

        # A registrar pod's process serves what the operator published; sipp registers alice.
        registrar = start_registrar(
            tmp_path, "--store", etcd.url, "--domain", DOMAIN, manifests=None, command_name="registrar", api_token=token
        )
        try:
            run = register(registrar, tmp_path, "alice", passwords["alice"])
            assert (run.successful, run.failed) == (1, 0), run.errors or run.messages
            # The pods of one SipDomain serve that domain only, though etcd holds both.
            trunk1 = UserAgent(registrar.host, registrar.sip_port, "trunk1", passwords["trunk1"], "siphv.example.test")
            assert status_of(trunk1.register("sip:trunk1@127.0.0.1:5098")) == 404
            status = wait_for(
                lambda: (s := connection(kube, "alice").get("status", {})).get("registered") and s,
                message="alice registered in her status",
            )
            (contact,) = status["contacts"]
            assert contact["uri"].lower() == f"sip:alice@127.0.0.1:{CONTACT_PORT};transport=udp"
            assert re.fullmatch(r"udp:127\.0\.0\.1:\d+", contact["source"]) and contact["userAgent"] == "sipp"
            assert contact["transport"] == "udp" and contact["expires"] > 200
            assert condition({"status": status}, "Registered")["status"] == "True"
            assert status["observedGeneration"] == 1
            wait_for(lambda: domain_status(kube).get("bindings") == 1 and domain_status(kube)["registeredConnections"] == 1,
                     message="the SipDomain's binding count")
            # kubectl describe sipconnection alice: an Event says she registered, and from where.
            (registered,) = wait_for(lambda: events_of(kube, "alice", "Registered"), message="alice's Registered Event")
            assert registered["type"] == "Normal" and registered["involvedObject"]["kind"] == "SipConnection"
            assert registered["involvedObject"]["uid"] == connection(kube, "alice")["metadata"]["uid"]
            assert registered["message"] == f"registered {contact['uri']} from {contact['source']}"

            # A wrong password shows as bob's last failure.
            run = register(registrar, tmp_path, "bob", "not-bobs-password", "register_wrong_password.xml")
            assert (run.successful, run.failed) == (1, 0), run.errors or run.messages
            failure = wait_for(
                lambda: connection(kube, "bob").get("status", {}).get("lastFailure"), message="bob's last failure"
            )
            assert failure["reason"] == "wrong password" and failure["source"].startswith("udp:127.0.0.1:")
            assert condition(connection(kube, "bob"), "Registered")["reason"] == "RegistrationFailed"
            (failed,) = wait_for(lambda: events_of(kube, "bob", "RegistrationFailed"), message="bob's Warning Event")
            assert failed["type"] == "Warning"
            assert failed["message"] == f"wrong password (from {failure['source']})"

            # A new password in the Secret is published: the old one stops working, the new one works.
            kube.patch("v1/secrets", "bob-sip", {"data": {"password": base64.b64encode(b"bob-new-5").decode()}}, NAMESPACE)
            # Tried only once etcd has it: every try before would be a failure, and five lock bob out
            # from this address for a minute (the default lockout).
            new_ha1 = hashlib.md5(f"bob:{DOMAIN}:bob-new-5".encode()).hexdigest()
            wait_for(lambda: json.loads(etcd_records(etcd, layout.CONNECTIONS)[layout.connection_key(DOMAIN, "bob")])
                     ["ha1"]["MD5"] == new_ha1, timeout=20, message="bob's new HA1 in etcd")
            wait_for(lambda: register(registrar, tmp_path, "bob", "bob-new-5").successful == 1, timeout=20,
                     interval=0.2, message="bob's new password accepted")

            # Deleting alice removes her from etcd with her bindings.
            kube.delete(SIPCONNECTIONS, "alice", NAMESPACE)
            kube.wait_gone(SIPCONNECTIONS, "alice", NAMESPACE)
            assert layout.connection_key(DOMAIN, "alice") not in etcd_records(etcd, layout.CONNECTIONS)
            assert layout.bindings_key(f"alice@{DOMAIN}") not in etcd_records(etcd, layout.BINDINGS)
            wait_for(lambda: registrar.bindings(f"alice@{DOMAIN}") == [], message="alice's binding gone")
        finally:
            stop_registrar(registrar)
        assert "Traceback" not in registrar.log(), registrar.log()

        # The SipDomain's status counts its connections.
        wait_for(lambda: kube.get(SIPDOMAINS, DOMAIN_OBJECT, NAMESPACE).get("status", {}).get("connections") == 3,
                 timeout=20, message="the SipDomain's connection count")

        # Deleting the SipDomain: its children go (owner references), and its record leaves etcd.
        kube.delete(SIPDOMAINS, DOMAIN_OBJECT, NAMESPACE)
        kube.wait_gone(SIPDOMAINS, DOMAIN_OBJECT, NAMESPACE)
        assert layout.domain_key(DOMAIN) not in etcd_records(etcd, layout.DOMAINS)
        for resource, name in children:
            wait_for(lambda: kube.find(resource, name, NAMESPACE) is None, message=f"{resource} {name} gone")
        # Its connections now say their domain is missing, in words.
        ready = wait_for(lambda: (c := condition(connection(kube, "bob"), "Ready")).get("status") == "False" and c,
                         message="bob not ready")
        assert ready["reason"] == "DomainNotFound" and DOMAIN in ready["message"]
    assert "Traceback" not in runner.output, runner.output
