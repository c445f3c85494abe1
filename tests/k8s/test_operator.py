"""The operator against the emulated API: its story (tests/k8s/story.py), TLS to etcd, bad connections, its process."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from registrar.store import layout
from registrar.store.etcd_session import EtcdTls
from tests.etcd_server import ETCD, INSTALL_HINT, EtcdServer, EtcdServerTls, records
from sip_operator.leadership import LEASE_NAME
from tests.helpers import DOMAIN, ROOT, free_port, start_registrar, stop_registrar
from tests.k8s.kube import SIPCONNECTIONS, SIPDOMAINS, Kube, OperatorProcess, wait_for
from tests.k8s.story import (
    DOMAIN_OBJECT,
    NAMESPACE,
    OPERATOR,
    RESOURCES,
    condition,
    connection,
    etcd_records,
    sip_domain_story,
)
from tests.pki import CertificateAuthority

pytestmark = pytest.mark.k8s


def test_a_sip_domain_becomes_registrar_pods_and_connections_reach_etcd(
    kube: Kube, operator_runner, operator_environment: EtcdServer, tmp_path: Path
) -> None:
    sip_domain_story(kube, operator_runner, operator_environment, tmp_path)


def test_with_etcd_tls_each_domain_gets_a_copy_of_the_operator_client_certificate_its_pods_connect_with(
    kube: Kube, operator_runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pod mounts only its own namespace's Secrets: the operator copies its etcd client certificate into
    each SipDomain's namespace, and a registrar given the copy's files, as the pod is, reaches etcd."""
    if ETCD is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    pki = CertificateAuthority(tmp_path / "pki")
    server = EtcdServerTls(server=pki.issue("etcd", server_names=["127.0.0.1"], client=True),
                           probe_client=pki.issue("probe", client=True))
    operator_files = pki.issue("sipreg", client=True)
    with EtcdServer(tmp_path, tls=server) as etcd:
        monkeypatch.setenv("SIPREG_ETCD", etcd.url)
        operator_tls_files = {"SIPREG_ETCD_CA": str(operator_files.ca), "SIPREG_ETCD_CERT": str(operator_files.cert),
                                "SIPREG_ETCD_KEY": str(operator_files.key)}
        for variable, path in operator_tls_files.items():
            monkeypatch.setenv(variable, path)
        kube.create(RESOURCES["Namespace"], {"metadata": {"name": NAMESPACE}}, namespace=None)
        with operator_runner(module=OPERATOR) as runner:
            kube.create(SIPDOMAINS, {"apiVersion": "sipreg.io/v1alpha1", "kind": "SipDomain",
                                     "metadata": {"name": DOMAIN_OBJECT, "namespace": NAMESPACE},
                                     "spec": {"domain": DOMAIN, "registration": {"enabled": True}}}, NAMESPACE)
            deployment = wait_for(lambda: kube.find("apps/v1/deployments", f"{DOMAIN_OBJECT}-registrar", NAMESPACE),
                                  message="the registrar Deployment")
            pod = deployment["spec"]["template"]["spec"]
            (volume,) = [v for v in pod["volumes"] if v["name"] == "etcd-tls"]
            copy = kube.get("v1/secrets", volume["secret"]["secretName"], NAMESPACE)
            owner = kube.get(SIPDOMAINS, DOMAIN_OBJECT, NAMESPACE)
            assert [ref["uid"] for ref in copy["metadata"]["ownerReferences"]] == [owner["metadata"]["uid"]]
            assert copy["immutable"] is True
            files = {"ca.crt": operator_files.ca, "tls.crt": operator_files.cert, "tls.key": operator_files.key}
            assert {key: base64.b64decode(value) for key, value in copy["data"].items()} == {
                key: path.read_bytes() for key, path in files.items()}
            # The domain is published over TLS.
            wait_for(lambda: layout.domain_key(DOMAIN) in asyncio.run(
                records(etcd.url, layout.DOMAINS, tls=EtcdTls.from_environment(operator_tls_files))),
                message="the domain in etcd")

        # The pod's view: the copy's files where its mount puts them, the variables its container sets.
        (container,) = pod["containers"]
        mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "etcd-tls")
        mounted = tmp_path / "pod-etcd-tls"
        mounted.mkdir()
        for key, value in copy["data"].items():
            (mounted / key).write_bytes(base64.b64decode(value))
        for item in container["env"]:
            if item["name"].startswith("SIPREG_ETCD_"):
                monkeypatch.setenv(item["name"], item["value"].replace(mount, str(mounted)))
        registrar = start_registrar(tmp_path, "--store", etcd.url, "--domain", DOMAIN, manifests=None,
                                    command_name="registrar")
        try:
            assert registrar.api("/readyz")["ready"]
            assert f"connected to etcd at {etcd.endpoint} over TLS" in registrar.log()
        finally:
            stop_registrar(registrar)
    assert "Traceback" not in registrar.log(), registrar.log()
    assert "Traceback" not in runner.output, runner.output


def test_bad_connections_get_conditions_in_words_and_the_operator_keeps_going(
    kube: Kube, operator_runner, operator_environment: EtcdServer
) -> None:
    etcd = operator_environment
    kube.create(RESOURCES["Namespace"], {"metadata": {"name": NAMESPACE}}, namespace=None)

    def sip_connection(name: str, domain: str, secret: str, key: str = "password") -> dict:
        return {
            "apiVersion": "sipreg.io/v1alpha1", "kind": "SipConnection",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"domain": domain, "username": name,
                     "authentication": {"type": "credentials", "passwordSecretRef": {"name": secret, "key": key}}},
        }

    with operator_runner(module=OPERATOR) as runner:
        kube.create(SIPDOMAINS, {"apiVersion": "sipreg.io/v1alpha1", "kind": "SipDomain",
                                 "metadata": {"name": "d", "namespace": NAMESPACE},
                                 "spec": {"domain": DOMAIN, "registration": {"enabled": True}}}, NAMESPACE)
        kube.create(RESOURCES["Secret"], {"metadata": {"name": "has-other-key", "namespace": NAMESPACE},
                                          "data": {"secret": base64.b64encode(b"x").decode()}}, NAMESPACE)
        kube.create(SIPCONNECTIONS, sip_connection("nodomain", "nowhere.example.test", "has-other-key"), NAMESPACE)
        kube.create(SIPCONNECTIONS, sip_connection("nosecret", DOMAIN, "missing-sip"), NAMESPACE)
        kube.create(SIPCONNECTIONS, sip_connection("nokey", DOMAIN, "has-other-key"), NAMESPACE)

        def not_ready(name: str, reason: str) -> str:
            """The Ready condition's message once it is False for `reason` (the domain may come after)."""
            ready = wait_for(lambda: (c := condition(connection(kube, name), "Ready")).get("reason") == reason and c,
                             message=f"{name} not ready for {reason}")
            assert ready["status"] == "False"
            return ready["message"]

        assert "no SipDomain defines 'nowhere.example.test'" in not_ready("nodomain", "DomainNotFound")
        assert "Secret voip/missing-sip not found" in not_ready("nosecret", "SecretNotFound")
        assert "has no key 'password' (it has: 'secret')" in not_ready("nokey", "SecretKeyNotFound")
        assert etcd_records(etcd, layout.CONNECTIONS) == {}

        # A second SipDomain for a domain already served says so and makes no pods.
        kube.create(SIPDOMAINS, {"apiVersion": "sipreg.io/v1alpha1", "kind": "SipDomain",
                                 "metadata": {"name": "d2", "namespace": NAMESPACE},
                                 "spec": {"domain": DOMAIN}}, NAMESPACE)
        ready = wait_for(lambda: condition(kube.get(SIPDOMAINS, "d2", NAMESPACE), "Ready"), message="d2's condition")
        assert (ready["status"], ready["reason"]) == ("False", "Conflict")
        assert f"{DOMAIN} is already served by SipDomain voip/d" in ready["message"]
        assert kube.find("apps/v1/deployments", "d2-registrar", NAMESPACE) is None

        # The missing Secret appears: the connection is published without touching it.
        kube.create(RESOURCES["Secret"], {"metadata": {"name": "missing-sip", "namespace": NAMESPACE},
                                          "data": {"password": base64.b64encode(b"pw").decode()}}, NAMESPACE)
        wait_for(lambda: condition(connection(kube, "nosecret"), "Ready").get("status") == "True",
                 message="nosecret ready once its Secret exists")
        assert set(etcd_records(etcd, layout.CONNECTIONS)) == {layout.connection_key(DOMAIN, "nosecret")}

        # The Secret goes away again: the connection leaves etcd (its password no longer works).
        kube.delete(RESOURCES["Secret"], "missing-sip", NAMESPACE)
        wait_for(lambda: etcd_records(etcd, layout.CONNECTIONS) == {}, message="nosecret unpublished")
        assert "Secret voip/missing-sip not found" in not_ready("nosecret", "SecretNotFound")  # the status follows
    assert "Traceback" not in runner.output, runner.output


def test_sipreg_operator_runs_kopf_with_liveness_and_metrics_endpoints_and_stops_on_sigterm(
    kube: Kube, operator_process: OperatorProcess, etcd: EtcdServer
) -> None:
    """The command a pod runs: `sipreg operator`, as a process, configured by flags and KUBECONFIG."""
    kube.create(RESOURCES["Namespace"], {"metadata": {"name": NAMESPACE}}, namespace=None)
    kube.create(SIPDOMAINS, {"apiVersion": "sipreg.io/v1alpha1", "kind": "SipDomain",
                             "metadata": {"name": "d", "namespace": NAMESPACE}, "spec": {"domain": DOMAIN}},
                NAMESPACE)
    wait_for(lambda: kube.find("apps/v1/deployments", "d-registrar", NAMESPACE), timeout=20,
             message="the Deployment made by the operator process")
    wait_for(lambda: layout.domain_key(DOMAIN) in etcd_records(etcd, layout.DOMAINS), message="the domain in etcd")
    # Its metrics count the work done.
    wait_for(lambda: operator_process.metric("sipreg_operator_reconciles_total", kind="SipDomain", result="ok") >= 1,
             message="a SipDomain reconcile counted")
    assert operator_process.metric("sipreg_operator_domains", state="published") == 1
    assert operator_process.metric("sipreg_operator_reconcile_errors_total", kind="SipDomain", cause="etcd") == 0
    wait_for(lambda: operator_process.metric("sipreg_operator_status_patches_total", kind="SipDomain", result="ok"),
             message="the SipDomain's status patch counted")


def test_a_missing_certificate_secret_is_a_condition_and_its_arrival_clears_it(
    kube: Kube, operator_runner, operator_environment: EtcdServer
) -> None:
    """Pods mount the certificate Secret: without it the kubelet never starts them. The operator says so in the
    SipDomain's Ready condition (TLSCertificateMissing), still makes the Deployment (the pods start the moment
    cert-manager makes the Secret), and clears the condition when a complete kubernetes.io/tls Secret appears."""
    kube.create(RESOURCES["Namespace"], {"metadata": {"name": NAMESPACE}}, namespace=None)
    spec = {"domain": DOMAIN, "registration": {"enabled": True},
            "transports": {"udp": 5060, "tls": {"port": 5061, "certificateSecret": "sip-tls"}}}
    with operator_runner(module=OPERATOR) as runner:
        kube.create(SIPDOMAINS, {"apiVersion": "sipreg.io/v1alpha1", "kind": "SipDomain",
                                 "metadata": {"name": "d", "namespace": NAMESPACE}, "spec": spec}, NAMESPACE)

        def ready_reason() -> str | None:
            return condition(kube.get(SIPDOMAINS, "d", NAMESPACE), "Ready").get("reason")

        wait_for(lambda: ready_reason() == "TLSCertificateMissing", message="TLSCertificateMissing")
        ready = condition(kube.get(SIPDOMAINS, "d", NAMESPACE), "Ready")
        assert ready["status"] == "False"
        assert ready["message"] == (
            "spec.transports.tls.certificateSecret: Secret voip/sip-tls not found; the registrar pods wait for it"
        )
        assert kube.find("apps/v1/deployments", "d-registrar", NAMESPACE) is not None

        # Half a certificate (no key) is no better.
        kube.create(RESOURCES["Secret"], {"metadata": {"name": "sip-tls", "namespace": NAMESPACE},
                                          "type": "kubernetes.io/tls",
                                          "data": {"tls.crt": base64.b64encode(b"PEM").decode()}}, NAMESPACE)
        wait_for(lambda: "has no tls.key" in condition(kube.get(SIPDOMAINS, "d", NAMESPACE), "Ready")["message"],
                 message="the incomplete Secret named")
        kube.delete(RESOURCES["Secret"], "sip-tls", NAMESPACE)
        kube.create(RESOURCES["Secret"], {"metadata": {"name": "sip-tls", "namespace": NAMESPACE},
                                          "type": "kubernetes.io/tls",
                                          "data": {"tls.crt": base64.b64encode(b"PEM").decode(),
                                                   "tls.key": base64.b64encode(b"KEY").decode()}}, NAMESPACE)
        # No pods run in the emulator: Ready turns to what the Deployment says, no longer the certificate.
        wait_for(lambda: ready_reason() == "NoReadyReplicas", message="the condition cleared")
    assert "Traceback" not in runner.output, runner.output


def test_two_operators_one_leads_and_the_other_takes_over_within_the_lease_when_it_dies(
    kube: Kube, kubeconfig: Path, operator_environment: EtcdServer, tmp_path: Path
) -> None:
    """Two `sipreg operator` processes: one leads (holds the Lease), the other stands by answering its
    liveness probe and reconciling nothing. SIGKILL the leader, change something meanwhile: the other
    leads within the Lease's time and reconciles the change; stopped cleanly, it hands the Lease back."""
    lease_seconds = 3
    kube.create(RESOURCES["Namespace"], {"metadata": {"name": NAMESPACE}}, namespace=None)

    def operator(name: str) -> tuple[subprocess.Popen, Path, int]:
        health, log_path = free_port(), tmp_path / f"{name}.log"
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "registrar.cli", "operator", "--etcd", operator_environment.url,
                 "--health-port", str(health), "--metrics-port", str(free_port())],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                env={**os.environ, "KUBECONFIG": str(kubeconfig), "POD_NAME": name, "POD_NAMESPACE": NAMESPACE,
                     "SIPREG_LEASE_SECONDS": str(lease_seconds)},
            )
        return process, log_path, health

    def sip_domain(name: str) -> None:
        kube.create(SIPDOMAINS, {"apiVersion": "sipreg.io/v1alpha1", "kind": "SipDomain",
                                 "metadata": {"name": name, "namespace": NAMESPACE},
                                 "spec": {"domain": f"{name}.example.test"}}, NAMESPACE)

    a, a_log, _ = operator("operator-a")
    b = None
    try:
        wait_for(lambda: "leading as operator-a" in a_log.read_text(), timeout=30, message="operator-a leads")
        b, b_log, b_health = operator("operator-b")
        wait_for(lambda: "standing by, operator-a leads" in b_log.read_text(), timeout=30, message="b stands by")
        with urllib.request.urlopen(f"http://127.0.0.1:{b_health}/healthz", timeout=5) as answer:
            assert json.load(answer) == {"standby": True}  # the liveness probe of a replica standing by
        sip_domain("one")
        wait_for(lambda: kube.find("apps/v1/deployments", "one-registrar", NAMESPACE), message="one's Deployment")

        a.kill()
        a.wait()
        killed = time.monotonic()
        sip_domain("two")  # while nobody leads
        wait_for(lambda: "leading as operator-b" in b_log.read_text(), timeout=lease_seconds * 4,
                 message="operator-b leads")
        took_over = time.monotonic() - killed
        wait_for(lambda: kube.find("apps/v1/deployments", "two-registrar", NAMESPACE), timeout=20,
                 message="two's Deployment, made by operator-b")
        print(f"failover: operator-b led {took_over:.1f} s after operator-a died (Lease {lease_seconds} s)")
        assert took_over < lease_seconds * 2 + 2
        standing_by = b_log.read_text().split("leading as operator-b")[0]
        assert "Deployment voip/" not in standing_by and "Handler" not in standing_by  # no double reconcile
        lease = kube.get("coordination.k8s.io/v1/leases", LEASE_NAME, NAMESPACE)
        assert lease["spec"]["holderIdentity"] == "operator-b" and lease["spec"]["leaseTransitions"] == 2
    finally:
        for process in (a, b):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                assert process.wait(timeout=30) == 0
    assert "released the Lease" in b_log.read_text()
    assert kube.get("coordination.k8s.io/v1/leases", LEASE_NAME, NAMESPACE)["spec"].get("holderIdentity") is None
    for log_path in (a_log, b_log):
        assert "Traceback" not in log_path.read_text(), log_path.read_text()
