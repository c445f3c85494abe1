"""The chart's etcd certificates and NetworkPolicies, as a real helm renders them.

Certificates: the ones Helm generates are read back with `cryptography` (names, usages, who signed
them) and then used: a real etcd serves with the chart's server certificate and requires client
certificates, and the chart's client certificate reads and writes through it. `lookup` finds nothing
under `helm template`, so the upgrade path (keep what an earlier install made) is rendered from a
copy of the chart whose "sipreg.existingSecret" answers from values instead of the cluster. The
cert-manager objects are followed from Issuer to Secret to the pod that mounts it.

NetworkPolicies: who may reach which port is worked out from the rendered policies by `admits`
below (Kubernetes' rules: a pod selected by a policy takes only what one of its rules allows), for
pods labelled as the chart and the operator's builder label them.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from registrar.store.etcd_session import EtcdSession, EtcdTls, parse_endpoints
from sip_operator.children import labels
from tests.chart.helm import CHART, NAMESPACE, one, render
from tests.etcd_server import ETCD, INSTALL_HINT, EtcdServer, EtcdServerTls
from tests.pki import CertFiles

HEADLESS = f"sipreg-etcd-headless.{NAMESPACE}.svc"
SERVER_NAMES = [f"*.{HEADLESS}", f"*.{HEADLESS}.cluster.local", f"sipreg-etcd.{NAMESPACE}.svc",
                f"sipreg-etcd.{NAMESPACE}.svc.cluster.local", "localhost"]
MADE_SECRETS = ("sipreg-etcd-ca", "sipreg-etcd-server", "sipreg-etcd-client")


def secret_files(secret: dict[str, Any]) -> dict[str, bytes]:
    return {key: base64.b64decode(value) for key, value in secret["data"].items()}


def made_secrets(objects: list[dict[str, Any]]) -> dict[str, dict[str, bytes]]:
    return {name: secret_files(one(objects, "Secret", name)) for name in MADE_SECRETS}


def certificate(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def usages(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


# --- certificates Helm makes ---------------------------------------------------------------------


def test_helm_makes_a_ca_that_signs_etcd_and_sipreg_certificates() -> None:
    objects = render()
    secrets = made_secrets(objects)
    for name in MADE_SECRETS:
        assert one(objects, "Secret", name)["type"] == "kubernetes.io/tls"
        assert set(secrets[name]) == {"ca.crt", "tls.crt", "tls.key"}
    ca = certificate(secrets["sipreg-etcd-ca"]["tls.crt"])
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert secrets["sipreg-etcd-server"]["ca.crt"] == secrets["sipreg-etcd-client"]["ca.crt"] == ca.public_bytes(Encoding.PEM)

    server = certificate(secrets["sipreg-etcd-server"]["tls.crt"])
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(names.get_values_for_type(x509.DNSName)) == sorted(SERVER_NAMES)
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    # Both usages: a member dials its peers with the same certificate.
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= usages(server)

    client = certificate(secrets["sipreg-etcd-client"]["tls.crt"])
    client.verify_directly_issued_by(ca)
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "sipreg"
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usages(client)
    # Ten years (values etcd.tls.validityDays): nothing here renews them.
    assert (client.not_valid_after_utc - client.not_valid_before_utc).days >= 3649


def test_a_real_etcd_serves_with_the_chart_certificates_and_takes_the_chart_client(tmp_path: Path) -> None:
    if ETCD is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    files = {}
    for name, pems in made_secrets(render()).items():
        folder = tmp_path / name
        folder.mkdir()
        for key, pem in pems.items():
            (folder / key).write_bytes(pem)
        files[name] = CertFiles(folder / "ca.crt", folder / "tls.crt", folder / "tls.key")
    # etcd as the StatefulSet runs it (--client-cert-auth, the server Secret's files), on 127.0.0.1,
    # which the certificate names for etcdctl in a member's pod.
    tls = EtcdServerTls(server=files["sipreg-etcd-server"], probe_client=files["sipreg-etcd-client"])
    client = files["sipreg-etcd-client"]
    environment = {"SIPREG_ETCD_CA": str(client.ca), "SIPREG_ETCD_CERT": str(client.cert),
                   "SIPREG_ETCD_KEY": str(client.key)}

    async def write_and_read(url: str) -> dict[bytes, bytes]:
        session = EtcdSession(parse_endpoints(url), timeout=5.0, tls=EtcdTls.from_environment(environment))
        try:
            await session.write({b"/sipreg/chart-test": b"ok"})
            kvs, _ = await session.read_prefix(b"/sipreg/")
            return {kv.key: kv.value for kv in kvs}
        finally:
            await session.close()

    with EtcdServer(tmp_path, tls=tls) as etcd:
        assert asyncio.run(write_and_read(etcd.url)) == {b"/sipreg/chart-test": b"ok"}


def existing_secrets_chart(tmp_path: Path) -> Path:
    """A copy of the chart whose "sipreg.existingSecret" answers from .Values.existingSecrets (name -> object),
    as `lookup` answers from the cluster on a real install or upgrade."""
    chart = tmp_path / "sipreg"
    shutil.copytree(CHART, chart)
    helpers = chart / "templates" / "_helpers.tpl"
    text = helpers.read_text()
    real = '{{- toYaml (lookup "v1" "Secret" .root.Release.Namespace .name) }}'
    assert text.count(real) == 1
    helpers.write_text(text.replace(real, '{{- toYaml (get (.root.Values.existingSecrets | default dict) .name) }}'))
    return chart


def render_with_existing(chart: Path, tmp_path: Path, existing: dict[str, Any]) -> dict[str, dict[str, bytes]]:
    values = tmp_path / f"existing-{len(list(tmp_path.glob('existing-*')))}.yaml"
    values.write_text(yaml.safe_dump({"existingSecrets": existing}))
    return made_secrets(render((values,), chart=chart))


def test_an_upgrade_keeps_the_ca_and_certificates_an_earlier_install_made(tmp_path: Path) -> None:
    chart = existing_secrets_chart(tmp_path)
    installed = [obj for obj in render(chart=chart) if obj["kind"] == "Secret"]
    by_name = {obj["metadata"]["name"]: obj for obj in installed}
    first = made_secrets(installed)

    # Everything there: the upgrade renders the very same Secrets, so running pods keep what they trust.
    assert render_with_existing(chart, tmp_path, by_name) == first

    # The client Secret gone: a new client certificate, from the same CA; the rest unchanged.
    again = render_with_existing(chart, tmp_path, {name: by_name[name] for name in MADE_SECRETS[:2]})
    assert again["sipreg-etcd-ca"] == first["sipreg-etcd-ca"] and again["sipreg-etcd-server"] == first["sipreg-etcd-server"]
    assert again["sipreg-etcd-client"]["tls.crt"] != first["sipreg-etcd-client"]["tls.crt"]
    certificate(again["sipreg-etcd-client"]["tls.crt"]).verify_directly_issued_by(
        certificate(first["sipreg-etcd-ca"]["tls.crt"]))

    # The CA gone: a new CA, and certificates it signed (old ones from the lost CA are not kept).
    fresh = render_with_existing(chart, tmp_path, {name: by_name[name] for name in MADE_SECRETS[1:]})
    assert fresh["sipreg-etcd-ca"]["tls.crt"] != first["sipreg-etcd-ca"]["tls.crt"]
    for name in MADE_SECRETS[1:]:
        assert fresh[name]["ca.crt"] == fresh["sipreg-etcd-ca"]["tls.crt"]
        certificate(fresh[name]["tls.crt"]).verify_directly_issued_by(certificate(fresh["sipreg-etcd-ca"]["tls.crt"]))


# --- certificates cert-manager makes ------------------------------------------------------------


def test_with_cert_manager_a_self_signed_ca_issues_etcd_and_sipreg_certificates() -> None:
    objects = render(cert_manager=True)
    assert not [obj for obj in objects if obj["kind"] == "Secret"]  # cert-manager writes them
    issuers = {obj["metadata"]["name"]: obj["spec"] for obj in objects if obj["kind"] == "Issuer"}
    certificates = {obj["metadata"]["name"]: obj["spec"] for obj in objects if obj["kind"] == "Certificate"}
    assert issuers == {"sipreg-etcd-selfsigned": {"selfSigned": {}}, "sipreg-etcd-ca": {"ca": {"secretName": "sipreg-etcd-ca"}}}
    ca = certificates["sipreg-etcd-ca"]
    assert ca["isCA"] is True and ca["issuerRef"]["name"] == "sipreg-etcd-selfsigned"
    assert ca["secretName"] == issuers["sipreg-etcd-ca"]["ca"]["secretName"]
    server, client = certificates["sipreg-etcd-server"], certificates["sipreg-etcd-client"]
    for cert in (server, client):
        assert cert["issuerRef"] == {"group": "cert-manager.io", "kind": "Issuer", "name": "sipreg-etcd-ca"}
        assert cert["duration"] == f"{3650 * 24}h"
    # The same names as Helm's certificate; the Secrets are the ones the pods mount.
    assert sorted(server["dnsNames"]) == sorted(SERVER_NAMES) and server["ipAddresses"] == ["127.0.0.1"]
    assert {"server auth", "client auth"} <= set(server["usages"]) and "client auth" in client["usages"]
    assert server["secretName"] == "sipreg-etcd-server" and client["secretName"] == "sipreg-etcd-client"
    etcd_volumes = one(objects, "StatefulSet")["spec"]["template"]["spec"]["volumes"]
    operator_volumes = one(objects, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "tls", "secret": {"secretName": server["secretName"]}} in etcd_volumes
    assert {"name": "etcd-tls", "secret": {"secretName": client["secretName"]}} in operator_volumes


def test_asking_for_helm_certificates_where_cert_manager_runs_and_bringing_your_own() -> None:
    kinds = {obj["kind"] for obj in render(cert_manager=True, sets=("etcd.tls.certificates=helm",))}
    assert "Secret" in kinds and not kinds & {"Certificate", "Issuer"}
    own = render(cert_manager=True, sets=("etcd.tls.clientSecret=mine-c", "etcd.tls.serverSecret=mine-s"))
    assert not {obj["kind"] for obj in own} & {"Secret", "Certificate", "Issuer"}


# --- NetworkPolicies ----------------------------------------------------------------------------


def matches(selector: dict[str, Any], target: dict[str, str]) -> bool:
    """A label selector (matchLabels, matchExpressions with In) against labels; {} matches everything."""
    if any(target.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", expression
        if target.get(expression["key"]) not in expression["values"]:
            return False
    return True


def admits(policies: list[dict[str, Any]], pod: tuple[str, dict[str, str]], port: str,
           source: tuple[str, dict[str, str]]) -> bool:
    """Whether a TCP connection from `source` (namespace, labels) to `pod`'s named `port` is let in."""
    namespace, pod_labels = pod
    governing = [p for p in policies if p["metadata"]["namespace"] == namespace
                 and matches(p["spec"]["podSelector"], pod_labels) and "Ingress" in p["spec"]["policyTypes"]]
    if not governing:
        return True  # no policy selects the pod: Kubernetes lets everything in
    source_namespace, source_labels = source
    namespace_labels = {"kubernetes.io/metadata.name": source_namespace}

    def peer_admits(peer: dict[str, Any]) -> bool:
        if "namespaceSelector" in peer:
            in_namespace = matches(peer["namespaceSelector"], namespace_labels)
        else:
            in_namespace = source_namespace == namespace
        return in_namespace and matches(peer.get("podSelector", {}), source_labels)

    for policy in governing:
        for rule in policy["spec"].get("ingress", []):
            port_ok = "ports" not in rule or any(p["port"] == port and p["protocol"] == "TCP" for p in rule["ports"])
            if port_ok and ("from" not in rule or any(peer_admits(peer) for peer in rule["from"])):
                return True
    return False


def pod_labels(objects: list[dict[str, Any]], kind: str) -> dict[str, str]:
    return one(objects, kind)["spec"]["template"]["metadata"]["labels"]


def container_ports(objects: list[dict[str, Any]], kind: str) -> set[str]:
    (container,) = one(objects, kind)["spec"]["template"]["spec"]["containers"]
    return {port["name"] for port in container["ports"]}


def test_etcd_takes_clients_from_the_operator_and_registrar_pods_only() -> None:
    objects = render()
    policies = [obj for obj in objects if obj["kind"] == "NetworkPolicy"]
    etcd = (NAMESPACE, pod_labels(objects, "StatefulSet"))
    operator = (NAMESPACE, pod_labels(objects, "Deployment"))
    registrar = ("voip", labels("sip-ex"))  # what the operator's builder puts on registrar pods
    stranger = (NAMESPACE, {"app": "debug"})
    prometheus = ("monitoring", {"app.kubernetes.io/name": "prometheus"})
    assert {"client", "peer", "metrics"} <= container_ports(objects, "StatefulSet")

    assert admits(policies, etcd, "client", operator) and admits(policies, etcd, "client", registrar)
    assert not admits(policies, etcd, "client", stranger)
    assert not admits(policies, etcd, "client", ("voip", {"app.kubernetes.io/name": "sipreg-registrar"}))
    assert not admits(policies, etcd, "client", prometheus)
    # Raft traffic: members only.
    assert admits(policies, etcd, "peer", etcd)
    assert not admits(policies, etcd, "peer", operator) and not admits(policies, etcd, "peer", registrar)
    # Metrics: the monitoring namespace only.
    assert admits(policies, etcd, "metrics", prometheus)
    assert not admits(policies, etcd, "metrics", stranger) and not admits(policies, etcd, "metrics", registrar)


def test_the_operator_takes_only_metrics_scrapes_from_the_monitoring_namespace() -> None:
    objects = render()
    policies = [obj for obj in objects if obj["kind"] == "NetworkPolicy"]
    operator = (NAMESPACE, pod_labels(objects, "Deployment"))
    prometheus = ("monitoring", {"app.kubernetes.io/name": "prometheus"})
    assert {"metrics", "health"} <= container_ports(objects, "Deployment")
    assert admits(policies, operator, "metrics", prometheus)
    assert not admits(policies, operator, "health", prometheus)
    assert not admits(policies, operator, "metrics", (NAMESPACE, {"app": "debug"}))
    assert not admits(policies, operator, "metrics", ("voip", labels("sip-ex")))

    # Without metrics, or with nobody allowed to scrape: nothing gets in (an empty `from` would admit all).
    for sets in (("metrics.enabled=false",), ("networkPolicy.metricsFrom=null",)):
        objects = render(sets=sets)
        policy = one(objects, "NetworkPolicy", "sipreg-operator")
        assert policy["spec"]["ingress"] == [] and policy["spec"]["policyTypes"] == ["Ingress"]
    etcd_policy = one(render(sets=("networkPolicy.metricsFrom=null",)), "NetworkPolicy", "sipreg-etcd")
    assert all(rule.get("from") for rule in etcd_policy["spec"]["ingress"])


def test_watched_namespaces_extra_clients_and_turning_policies_off(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({
        "operator": {"watchNamespaces": ["voip", "pbx"]},
        "networkPolicy": {"etcdClientsFrom": [{"podSelector": {"matchLabels": {"app": "etcd-backup"}}}],
                          "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "obs"}},
                                           "podSelector": {"matchLabels": {"app": "prometheus"}}}]},
    }))
    objects = render((values,))
    policies = [obj for obj in objects if obj["kind"] == "NetworkPolicy"]
    etcd = (NAMESPACE, pod_labels(objects, "StatefulSet"))
    assert admits(policies, etcd, "client", ("pbx", labels("d"))) and admits(policies, etcd, "client", ("voip", labels("d")))
    assert not admits(policies, etcd, "client", ("elsewhere", labels("d")))
    assert admits(policies, etcd, "client", (NAMESPACE, {"app": "etcd-backup"}))
    assert not admits(policies, etcd, "client", ("other", {"app": "etcd-backup"}))
    assert admits(policies, etcd, "metrics", ("obs", {"app": "prometheus"}))
    assert not admits(policies, etcd, "metrics", ("obs", {"app": "grafana"}))
    assert not admits(policies, etcd, "metrics", ("monitoring", {"app": "prometheus"}))

    assert not [obj for obj in render(sets=("networkPolicy.enabled=false",)) if obj["kind"] == "NetworkPolicy"]
