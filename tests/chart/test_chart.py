"""The Helm chart (charts/sipreg), linted and rendered by a real helm; every object checked against Kubernetes' schemas.

Scenarios: the default values (the bundled etcd over TLS, its certificates made by Helm), the same
where the cluster serves cert-manager (which then makes them), the bundled etcd with certificates of
your own, the bundled etcd in plain text, and ci/external-etcd-values.yaml (an existing etcd over
TLS, a namespaced watch, the example SipDomain); each also with the Prometheus Operator's API present
(`--api-versions`), which is what renders the monitors.

Built-in kinds are validated by kubernetes-validate, strictly, for the newest Kubernetes it knows.
ServiceMonitor and PodMonitor (the Prometheus Operator's) and Certificate and Issuer (cert-manager's)
are CRDs it does not know: they are validated against CRD_SCHEMAS below, our own subset of those
CRDs' schemas (only the fields the chart uses, unknown fields refused), and their metadata as a
ConfigMap's. The example SipDomain is
checked against our own CRD (schema and CEL rules) with tests/unit/test_crds.py's imitation of the
API server. The operator's environment is read back with the operator's own PodSettings and turned
into a registrar Deployment with its own builder, so a value is followed to the pod that uses it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from registrar.cli import build_parser
from registrar.store.etcd_session import EtcdTls
from sip_operator.children import PodSettings, desired_children, labels
from tests.chart.helm import CERT_MANAGER_API, CHART, EXTERNAL_ETCD_VALUES, NAMESPACE, ROOT, helm, one, render
from tests.crd_schema import rejections

NEWEST_KUBERNETES = kubernetes_validate.latest_version()
DEFAULT_VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
EXTERNAL_VALUES = yaml.safe_load(EXTERNAL_ETCD_VALUES.read_text())
OWN_CERTIFICATES = ("etcd.tls.clientSecret=my-etcd-client", "etcd.tls.serverSecret=my-etcd-server")
SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "cert-manager": {"cert_manager": True},
    "own-certificates": {"sets": OWN_CERTIFICATES},
    "plain": {"sets": ("etcd.tls.enabled=false",)},
    "external-etcd": {"values": (EXTERNAL_ETCD_VALUES,)},
}
# The Secret the operator mounts, and the bundled etcd's own, in each scenario (None: plain text / no bundled etcd).
CLIENT_SECRETS = {"default": "sipreg-etcd-client", "cert-manager": "sipreg-etcd-client",
                  "own-certificates": "my-etcd-client", "plain": None, "external-etcd": "sipreg-etcd-client"}
SERVER_SECRETS = {"default": "sipreg-etcd-server", "cert-manager": "sipreg-etcd-server",
                  "own-certificates": "my-etcd-server", "plain": None}

# Our subset of the Prometheus Operator's ServiceMonitor/PodMonitor CRD schemas (monitoring.coreos.com/v1):
# the fields the chart writes, with their types; anything else is refused, so a misspelt field fails.
DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
LABEL_SELECTOR = {"type": "object", "additionalProperties": False, "minProperties": 1,
                  "properties": {"matchLabels": {**STRING_MAP, "minProperties": 1}}}
NAMESPACE_SELECTOR = {"type": "object", "additionalProperties": False, "minProperties": 1, "properties": {
    "any": {"type": "boolean"}, "matchNames": {"type": "array", "minItems": 1, "items": {"type": "string"}}}}
ENDPOINT = {"type": "object", "additionalProperties": False, "required": ["port"], "properties": {
    "port": {"type": "string"}, "path": {"type": "string", "pattern": "^/"}, "interval": DURATION}}


def monitor_schema(kind: str, endpoints: str) -> dict[str, Any]:
    return {
        "type": "object", "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": kind},
            "metadata": {"type": "object"},  # checked as a ConfigMap's metadata
            "spec": {"type": "object", "additionalProperties": False, "required": ["selector", endpoints],
                     "properties": {"selector": LABEL_SELECTOR, "namespaceSelector": NAMESPACE_SELECTOR,
                                    endpoints: {"type": "array", "minItems": 1, "items": ENDPOINT}}},
        },
    }


# cert-manager.io/v1 Issuer and Certificate: the fields the chart writes (cert-manager's enums for the usages).
ISSUER_REF = {"type": "object", "additionalProperties": False, "required": ["name", "kind", "group"], "properties": {
    "name": {"type": "string"}, "kind": {"enum": ["Issuer", "ClusterIssuer"]}, "group": {"const": "cert-manager.io"}}}
USAGES = ["signing", "digital signature", "content commitment", "key encipherment", "key agreement",
          "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any", "server auth",
          "client auth", "code signing", "email protection", "s/mime", "ipsec end system", "ipsec tunnel",
          "ipsec user", "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc"]
CERTIFICATE_SPEC = {"type": "object", "additionalProperties": False, "required": ["secretName", "issuerRef"], "properties": {
    "isCA": {"type": "boolean"}, "commonName": {"type": "string", "maxLength": 64},
    "secretName": {"type": "string"}, "duration": {"type": "string", "pattern": r"^[0-9]+h$"},
    "dnsNames": {"type": "array", "items": {"type": "string"}}, "ipAddresses": {"type": "array", "items": {"type": "string"}},
    "usages": {"type": "array", "items": {"enum": USAGES}},
    "privateKey": {"type": "object", "additionalProperties": False, "properties": {
        "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]}, "size": {"type": "integer"}}},
    "issuerRef": ISSUER_REF}}
ISSUER_SPEC = {"type": "object", "additionalProperties": False, "minProperties": 1, "maxProperties": 1, "properties": {
    "selfSigned": {"type": "object", "additionalProperties": False},
    "ca": {"type": "object", "additionalProperties": False, "required": ["secretName"],
           "properties": {"secretName": {"type": "string"}}}}}


def custom_schema(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
            "properties": {"apiVersion": {"const": api_version}, "kind": {"const": kind},
                           "metadata": {"type": "object"},  # checked as a ConfigMap's metadata
                           "spec": spec}}


CRD_SCHEMAS = {"ServiceMonitor": monitor_schema("ServiceMonitor", "endpoints"),
               "PodMonitor": monitor_schema("PodMonitor", "podMetricsEndpoints"),
               "Certificate": custom_schema(CERT_MANAGER_API, "Certificate", CERTIFICATE_SPEC),
               "Issuer": custom_schema(CERT_MANAGER_API, "Issuer", ISSUER_SPEC)}


def rendered(scenario: str, monitors: bool = False) -> list[dict[str, Any]]:
    return render(monitors=monitors, **SCENARIOS[scenario])


def etcd_command(objects: list[dict[str, Any]]) -> dict[str, str]:
    """The bundled etcd's flags (all in its `command`), as flag -> value ("" for a bare flag)."""
    (container,) = one(objects, "StatefulSet", "sipreg-etcd")["spec"]["template"]["spec"]["containers"]
    assert container["command"][0] == "etcd" and "args" not in container
    return dict(arg.split("=", 1) if "=" in arg else (arg, "") for arg in container["command"][1:])


def settings_from(env: dict[str, str], tmp_path: Path) -> PodSettings:
    """The operator's PodSettings from its rendered environment; the TLS files it names, which the pod
    has from its Secret, are made here (the variables are read with their own paths mapped under tmp_path)."""
    files = {}
    for variable, _ in EtcdTls.ENVIRONMENT:
        if variable in env:
            path = tmp_path / env[variable].lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f"PEM of {env[variable]}".encode())
            files[variable] = str(path)
    return PodSettings.from_environment({**env, **files})


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = one(objects, "Deployment", "sipreg-operator")["spec"]["template"]["spec"]["containers"]
    return container


def selects(selector: dict[str, str], target_labels: dict[str, str]) -> bool:
    return bool(selector) and all(target_labels.get(key) == value for key, value in selector.items())


# --- lint and validity --------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_lint_strict_passes(scenario: str) -> None:
    args: list[str | Path] = ["lint", "--strict", CHART, "--namespace", NAMESPACE]
    for path in SCENARIOS[scenario].get("values", ()):
        args += ["--values", path]
    # helm lint takes no --api-versions: cert-manager is asked for by name instead.
    sets = SCENARIOS[scenario].get("sets", ()) + (("etcd.tls.certificates=cert-manager",)
                                                   if SCENARIOS[scenario].get("cert_manager") else ())
    for item in sets:
        args += ["--set", item]
    assert "0 chart(s) failed" in helm(*args)


# ConfigMap: the Grafana dashboards, in every rendering. NetworkPolicy: the operator's, and etcd's with etcd.
# Role and RoleBinding: the operator's Lease, for leader election.
BUNDLED_KINDS = ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment", "NetworkPolicy", "NetworkPolicy",
                 "PodDisruptionBudget", "Role", "RoleBinding", "Service", "Service", "Service", "ServiceAccount",
                 "StatefulSet"]
EXPECTED_KINDS = {
    "default": BUNDLED_KINDS + ["Secret"] * 3,  # the CA, etcd's certificate, sipreg's client certificate
    "cert-manager": BUNDLED_KINDS + ["Certificate"] * 3 + ["Issuer"] * 2,
    "own-certificates": BUNDLED_KINDS,
    "plain": BUNDLED_KINDS,
    "external-etcd": ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment", "NetworkPolicy", "Role",
                      "RoleBinding", "Service", "ServiceAccount", "SipDomain"],
}


@pytest.mark.parametrize("monitors", [False, True], ids=["no-prometheus-operator", "prometheus-operator"])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_rendered_object_is_valid(scenario: str, monitors: bool) -> None:
    objects = rendered(scenario, monitors)
    expected = EXPECTED_KINDS[scenario] + (["PodMonitor", "ServiceMonitor"] if monitors else [])
    assert sorted(obj["kind"] for obj in objects) == sorted(expected)
    for obj in objects:
        kind = obj["kind"]
        if kind in CRD_SCHEMAS:
            jsonschema.validate(obj, CRD_SCHEMAS[kind])
            kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]},
                                         NEWEST_KUBERNETES, strict=True)
        elif kind == "SipDomain":
            assert rejections(obj) == []
        else:
            kubernetes_validate.validate(obj, NEWEST_KUBERNETES, strict=True)
        if kind != "ClusterRole" and kind != "ClusterRoleBinding":
            assert obj["metadata"].get("namespace") in (NAMESPACE, "voip"), f"{kind} without its namespace"


def test_the_chart_crds_are_the_repository_crds_byte_for_byte() -> None:
    """`make chart-crds` copies them; helm installs crds/ before the templates (and never upgrades them)."""
    ours = {path.name: path.read_bytes() for path in (ROOT / "crds").glob("*.yaml")}
    chart = {path.name: path.read_bytes() for path in (CHART / "crds").iterdir()}
    assert ours and chart == ours


def test_helm_refuses_contradictory_values() -> None:
    with pytest.raises(AssertionError, match="etcd.tls.clientSecret: name the Secret"):
        render(sets=("etcd.endpoints=etcd://etcd.storage.svc:2379",))  # TLS is on by default
    with pytest.raises(AssertionError, match="name both Secrets"):
        render(sets=("etcd.tls.clientSecret=c",))
    with pytest.raises(AssertionError, match="name both Secrets"):
        render(sets=("etcd.tls.serverSecret=s",))
    with pytest.raises(AssertionError, match='etcd.tls.certificates: "vault" is none of auto, cert-manager, helm'):
        render(sets=("etcd.tls.certificates=vault",))
    with pytest.raises(AssertionError, match="is not etcd://HOST:PORT"):
        render(sets=("etcd.endpoints=http://etcd:2379", "etcd.tls.enabled=false"))
    with pytest.raises(AssertionError, match="etcd.bundled.replicas: 2 members"):
        render(sets=("etcd.bundled.replicas=2",))


# --- the operator -------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_two_operators_elect_a_leader_with_probes_on_their_health_port(scenario: str) -> None:
    objects = rendered(scenario)
    deployment = one(objects, "Deployment", "sipreg-operator")
    assert deployment["spec"]["replicas"] == 2 and deployment["spec"]["strategy"] == {"type": "RollingUpdate"}
    pod = deployment["spec"]["template"]["spec"]
    env = {item["name"]: item.get("valueFrom") for item in operator_container(objects)["env"]}
    # Who holds the Lease and where it is: the pod's name, and the release's namespace (the Role's).
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert one(objects, "Role")["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    assert pod["serviceAccountName"] == one(objects, "ServiceAccount")["metadata"]["name"]
    container = operator_container(objects)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz"
        assert ports[container[probe]["httpGet"]["port"]] == 8080
    assert (ports["metrics"], ports["health"]) == (9090, 8080)

    # The arguments are ones `sipreg operator` takes.
    args = container["args"]
    parsed = build_parser().parse_args(args)
    assert parsed.command == "operator" and parsed.health_port == 8080 and parsed.metrics_port == 9090
    watched = EXTERNAL_VALUES["operator"]["watchNamespaces"] if scenario == "external-etcd" else None
    assert parsed.namespaces == watched

    # Non-root, read-only root filesystem, nothing to escalate; /tmp writable.
    security = {**pod["securityContext"], **container["securityContext"]}
    assert security["runAsNonRoot"] and security["runAsUser"] == 10001
    assert security["readOnlyRootFilesystem"] and security["allowPrivilegeEscalation"] is False
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_operator_environment_carries_the_values_to_the_registrar_pods(scenario: str, tmp_path: Path) -> None:
    """Rendered env -> the operator's PodSettings -> the registrar Deployment its builder makes."""
    values = EXTERNAL_VALUES if scenario == "external-etcd" else DEFAULT_VALUES
    registrar_values = {**DEFAULT_VALUES["registrar"], **values.get("registrar", {})}
    image = {**DEFAULT_VALUES["image"], **values.get("image", {})}
    objects = rendered(scenario)
    container = operator_container(objects)
    env = env_of(container)
    settings = settings_from(env, tmp_path)
    assert settings.image == container["image"] == f"{image['repository']}:{image['tag'] or '0.1.0'}"
    assert settings.image_pull_policy == image["pullPolicy"]
    assert settings.service_type == registrar_values["serviceType"]
    assert settings.resources == registrar_values["resources"]
    assert settings.security_context == registrar_values["securityContext"]
    assert settings.http_from == registrar_values["httpFrom"]
    assert settings.cached_aors == registrar_values["cachedAors"]
    if scenario == "external-etcd":
        assert settings.etcd == EXTERNAL_VALUES["etcd"]["endpoints"]
    else:
        assert settings.etcd == ",".join(f"{'etcd://' if i == 0 else ''}sipreg-etcd-{i}.sipreg-etcd-headless.{NAMESPACE}.svc:2379"
                                         for i in range(3))

    registrar = desired_children("sip-ex", {"domain": "sip.example.test"}, settings)[0]
    (pod_container,) = registrar["spec"]["template"]["spec"]["containers"]
    assert pod_container["securityContext"] == registrar_values["securityContext"]
    assert pod_container["resources"] == registrar_values["resources"]
    assert pod_container["readinessProbe"] == registrar_values["readinessProbe"] == settings.readiness_probe
    assert pod_container["livenessProbe"] == registrar_values["livenessProbe"] == settings.liveness_probe
    assert settings.readiness_probe["httpGet"]["path"] == "/readyz"
    assert pod_container["image"] == container["image"]
    assert settings.hep is None and not any(arg.startswith("--hep") for arg in pod_container["args"])

    client_secret = CLIENT_SECRETS[scenario]
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    tls_variables = ("SIPREG_ETCD_CA", "SIPREG_ETCD_CERT", "SIPREG_ETCD_KEY")
    if client_secret:
        # The operator reads its client certificate from the Secret; the registrar pods get the same
        # files (a copy the operator makes), at the same place, under the same variables.
        assert settings.etcd_tls is not None and settings.etcd_tls.key is not None
        assert mounts["/etc/sipreg/etcd-tls"]["readOnly"] is True
        secret_volumes = {v["name"]: v["secret"]["secretName"] for v in one(objects, "Deployment",
                          "sipreg-operator")["spec"]["template"]["spec"]["volumes"] if "secret" in v}
        assert secret_volumes[mounts["/etc/sipreg/etcd-tls"]["name"]] == client_secret
        pod_env = env_of(pod_container)
        assert {key: env[key] for key in tls_variables} == {key: pod_env[key] for key in tls_variables}
    else:
        assert settings.etcd_tls is None
        assert "/etc/sipreg/etcd-tls" not in mounts and not any(key in env for key in tls_variables)


# --- the bundled etcd ---------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["default", "plain"])
def test_the_bundled_etcd_is_three_members_with_volumes_spread_and_a_quorum_budget(scenario: str) -> None:
    objects = rendered(scenario)
    statefulset = one(objects, "StatefulSet", "sipreg-etcd")
    spec, pod = statefulset["spec"], statefulset["spec"]["template"]["spec"]
    assert spec["replicas"] == 3 and spec["podManagementPolicy"] == "Parallel"
    pod_labels = spec["template"]["metadata"]["labels"]
    assert selects(spec["selector"]["matchLabels"], pod_labels)
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "8Gi" and "storageClassName" not in claim["spec"]
    (container,) = pod["containers"]
    assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]}[claim["metadata"]["name"]] == "/var/lib/etcd"
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert selects(term["podAffinityTerm"]["labelSelector"]["matchLabels"], pod_labels)
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"

    # Members find each other by name through the headless Service, which the StatefulSet names.
    headless = one(objects, "Service", spec["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    assert selects(headless["spec"]["selector"], pod_labels)
    assert selects(one(objects, "Service", "sipreg-etcd")["spec"]["selector"], pod_labels)
    args = etcd_command(objects)
    scheme = "http" if scenario == "plain" else "https"
    assert args["--initial-cluster"] == ",".join(
        f"sipreg-etcd-{i}={scheme}://sipreg-etcd-{i}.{spec['serviceName']}.{NAMESPACE}.svc:2380" for i in range(3))
    assert args["--listen-client-urls"] == f"{scheme}://0.0.0.0:2379"
    assert args["--name"] == "$(POD_NAME)" and "POD_NAME" in {e["name"] for e in container["env"]}
    assert args["--data-dir"].startswith("/var/lib/etcd/")
    # Probes on the plain-HTTP metrics listener: they need no client certificate even with TLS on.
    assert args["--listen-metrics-urls"] == "http://0.0.0.0:2381"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports[container["livenessProbe"]["httpGet"]["port"]] == ports[container["readinessProbe"]["httpGet"]["port"]] == 2381
    if scenario == "plain":
        assert not {"--client-cert-auth", "--cert-file", "--peer-cert-file"} & set(args) and "volumes" not in pod

    budget = one(objects, "PodDisruptionBudget", "sipreg-etcd")
    assert budget["spec"]["minAvailable"] == 2 and selects(budget["spec"]["selector"]["matchLabels"], pod_labels)


@pytest.mark.parametrize("scenario", ["default", "cert-manager", "own-certificates"])
def test_the_bundled_etcd_requires_client_certificates_from_clients_and_peers(scenario: str) -> None:
    objects = rendered(scenario)
    args = etcd_command(objects)
    tls = "/etc/etcd/tls"
    assert {flag: args.get(flag) for flag in (
        "--cert-file", "--key-file", "--trusted-ca-file", "--client-cert-auth",
        "--peer-cert-file", "--peer-key-file", "--peer-trusted-ca-file", "--peer-client-cert-auth")} == {
        "--cert-file": f"{tls}/tls.crt", "--key-file": f"{tls}/tls.key", "--trusted-ca-file": f"{tls}/ca.crt",
        "--client-cert-auth": "true",
        "--peer-cert-file": f"{tls}/tls.crt", "--peer-key-file": f"{tls}/tls.key",
        "--peer-trusted-ca-file": f"{tls}/ca.crt", "--peer-client-cert-auth": "true"}
    assert not {"--auto-tls", "--peer-auto-tls"} & set(args)  # self-made certificates nobody checks
    for flag in ("--listen-client-urls", "--advertise-client-urls", "--listen-peer-urls", "--initial-advertise-peer-urls"):
        assert args[flag].startswith("https://"), flag
    pod = one(objects, "StatefulSet", "sipreg-etcd")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == tls]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == SERVER_SECRETS[scenario]


def test_hard_anti_affinity_and_a_storage_class_from_values() -> None:
    objects = render(sets=("etcd.bundled.antiAffinity=hard", "etcd.bundled.persistence.storageClass=fast-ssd",
                           "etcd.bundled.replicas=5"))
    spec = one(objects, "StatefulSet")["spec"]
    (term,) = spec["template"]["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert selects(term["labelSelector"]["matchLabels"], spec["template"]["metadata"]["labels"])
    assert spec["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "fast-ssd"
    assert one(objects, "PodDisruptionBudget")["spec"]["minAvailable"] == 3


# --- monitoring ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["default", "external-etcd"])
def test_the_monitors_scrape_the_operator_service_and_every_registrar_pod(scenario: str, tmp_path: Path) -> None:
    objects = rendered(scenario, monitors=True)
    service_monitor, service = one(objects, "ServiceMonitor"), one(objects, "Service", "sipreg-operator-metrics")
    assert selects(service_monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert service_monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = service_monitor["spec"]["endpoints"]
    (service_port,) = [port for port in service["spec"]["ports"] if port["name"] == endpoint["port"]]
    operator = one(objects, "Deployment", "sipreg-operator")
    assert selects(service["spec"]["selector"], operator["spec"]["template"]["metadata"]["labels"])
    ports = {port["name"]: port["containerPort"] for port in operator_container(objects)["ports"]}
    assert service_port["port"] == ports[service_port["targetPort"]] == 9090 and endpoint["path"] == "/metrics"

    # The PodMonitor selects what the operator's builder makes, on the port serving /metrics.
    pod_monitor = one(objects, "PodMonitor")
    settings = settings_from(env_of(operator_container(objects)), tmp_path)
    registrar = desired_children("sip-ex", {"domain": "sip.example.test"}, settings)[0]
    template = registrar["spec"]["template"]
    assert selects(pod_monitor["spec"]["selector"]["matchLabels"], template["metadata"]["labels"])
    assert template["metadata"]["labels"] == labels("sip-ex")
    (endpoint,) = pod_monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in {port["name"] for port in template["spec"]["containers"][0]["ports"]}
    assert endpoint["path"] == template["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    expected = {"matchNames": ["voip"]} if scenario == "external-etcd" else {"any": True}
    assert pod_monitor["spec"]["namespaceSelector"] == expected


def test_no_monitors_without_the_prometheus_operator_or_when_turned_off() -> None:
    kinds = {obj["kind"] for obj in render()}
    assert not kinds & {"ServiceMonitor", "PodMonitor"}
    kinds = {obj["kind"] for obj in render(monitors=True, sets=("metrics.serviceMonitor.enabled=false",
                                                                "metrics.podMonitor.enabled=false"))}
    assert not kinds & {"ServiceMonitor", "PodMonitor"}


def test_the_chart_dashboards_become_one_configmap_for_the_grafana_sidecar(tmp_path: Path) -> None:
    """Every dashboards/*.json, byte for byte, in a ConfigMap labelled for Grafana's sidecar."""
    chart = tmp_path / "sipreg"
    shutil.copytree(CHART, chart)
    dashboards = chart / "dashboards"
    dashboards.mkdir(exist_ok=True)
    (dashboards / "extra.json").write_text(json.dumps({"title": "extra", "panels": []}, indent=2) + "\n")
    (dashboards / "notes.txt").write_text("not a dashboard")
    configmap = one(render(chart=chart), "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["data"] == {path.name: path.read_text() for path in dashboards.glob("*.json")}
    kubernetes_validate.validate(configmap, NEWEST_KUBERNETES, strict=True)


def test_the_shipped_dashboards_are_in_the_default_rendering() -> None:
    """The repository's dashboards/*.json are in the ConfigMap."""
    shipped = {path.name: path.read_text() for path in (CHART / "dashboards").glob("*.json")}
    assert "sipreg.json" in shipped
    configmaps = [obj for obj in render() if obj["kind"] == "ConfigMap"]
    assert [configmap["data"] for configmap in configmaps] == [shipped]
    for text in shipped.values():
        assert isinstance(json.loads(text).get("panels"), list)  # a Grafana dashboard, not any JSON


# --- NOTES.txt ----------------------------------------------------------------------------------


def rendered_notes(tmp_path: Path, *values: Path) -> str:
    """NOTES.txt as helm renders it after an install. `helm install --dry-run` needs a cluster and `helm
    template` leaves NOTES.txt out, so a copy of the chart renders the same text through `tpl` into a ConfigMap."""
    chart = tmp_path / "sipreg"
    if not chart.exists():
        shutil.copytree(CHART, chart)
        shutil.copy(CHART / "templates" / "NOTES.txt", chart / "notes.txt")
        (chart / "templates" / "zz-notes.yaml").write_text(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\ndata:\n  notes: |\n"
            '{{- tpl (.Files.Get "notes.txt") . | nindent 4 }}\n'
        )
    return one(render(tuple(values), chart=chart), "ConfigMap", "notes")["data"]["notes"]


def test_notes_tell_what_to_apply_next(tmp_path: Path) -> None:
    notes = rendered_notes(tmp_path)
    assert "rollout status deployment/sipreg-operator" in notes and "rollout status statefulset/sipreg-etcd" in notes
    assert "kind: SipDomain" in notes and "kind: SipConnection" in notes and "create secret generic" in notes
    assert "get sipdomains,sipconnections" in notes
    assert "No ServiceMonitor/PodMonitor was created" in notes
    external = rendered_notes(tmp_path, EXTERNAL_ETCD_VALUES)
    assert "statefulset/" not in external and EXTERNAL_VALUES["etcd"]["endpoints"] in external
    assert 'The operator presents the one in Secret "sipreg-etcd-client" and copies it' in external
    assert "made by Helm at install" in notes and "WARNING" not in notes
    assert "WARNING: etcd.tls.enabled is false" in rendered_notes(tmp_path, *plain_values(tmp_path))
    # The example SipDomain is there: the user adds connections to it, and is not told to apply it again.
    assert "beside the example SipDomain voip/sip-example-test (sip.example.test),\n   which is there already" in external
    assert "kind: SipConnection" in external and "kind: SipDomain" not in external


def plain_values(tmp_path: Path) -> tuple[Path]:
    path = tmp_path / "plain.yaml"
    path.write_text("etcd: {tls: {enabled: false}}\n")
    return (path,)


def test_a_hep_collector_in_the_values_reaches_every_registrar_pod(tmp_path: Path) -> None:
    objects = render(sets=("registrar.hep.address=homer.monitoring.svc:9060", "registrar.hep.id=2001"))
    settings = settings_from(env_of(operator_container(objects)), tmp_path)
    assert (settings.hep, settings.hep_id) == ("homer.monitoring.svc:9060", 2001)
    registrar = desired_children("sip-ex", {"domain": "sip.example.test"}, settings)[0]
    (pod_container,) = registrar["spec"]["template"]["spec"]["containers"]
    arguments = build_parser().parse_args(pod_container["args"])
    assert (arguments.hep, arguments.hep_id) == (("homer.monitoring.svc", 9060), 2001)


def test_a_hep_collector_that_is_not_host_and_port_stops_the_operator_naming_the_variable() -> None:
    with pytest.raises(ValueError, match="SIPREG_REGISTRAR_HEP: not HOST:PORT"):
        PodSettings.from_environment({"SIPREG_REGISTRAR_HEP": "homer.monitoring.svc"})
    with pytest.raises(ValueError, match="SIPREG_REGISTRAR_HEP_ID: not a capture id"):
        PodSettings.from_environment({"SIPREG_REGISTRAR_HEP": "homer:9060", "SIPREG_REGISTRAR_HEP_ID": "-1"})
