"""The SipDomain builders: spec in, Deployment/Services/PDB/NetworkPolicy/Secrets out, no cluster needed."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from registrar.cli import build_parser
from registrar.manifests import SpecError
from registrar.store.etcd_session import EtcdTls
from sip_operator.children import (
    PodSettings,
    api_token_secret,
    api_token_secret_name,
    deployment_name,
    desired_children,
    drifted,
    etcd_client_secret,
    labels,
    nonce_secret,
    nonce_secret_name,
)

SPEC = yaml.safe_load(
    """
domain: sip.example.test
registration: {enabled: true, minExpires: 60, defaultExpires: 600, maxExpires: 3600}
mode: proxy
transports: {udp: 5060, tcp: 5080, tls: {port: 5061, certificateSecret: sip-tls}}
replicas: 3
outbound: {gateway: "sip:gw.example.test:5060"}
"""
)
SETTINGS = PodSettings(image="registry.test/sipreg:1.2.3", etcd="etcd://etcd-0:2379,etcd-1:2379")
ETCD_TLS = EtcdTls(ca=b"-----CA-----\n", cert=b"-----CERT-----\n", key=b"-----KEY-----\n")


def children(spec=SPEC, settings=SETTINGS):
    return {(child["kind"], child["metadata"]["name"]): child for child in desired_children("sip-ex", spec, settings)}


def test_a_domain_owns_a_deployment_two_services_a_budget_and_a_network_policy():
    assert sorted(children()) == [
        ("Deployment", "sip-ex-registrar"),
        ("NetworkPolicy", "sip-ex-registrar"),
        ("PodDisruptionBudget", "sip-ex-registrar"),
        ("Service", "sip-ex-registrars"),
        ("Service", "sip-ex-sip"),
    ]


def test_the_deployment_runs_registrars_of_that_domain_on_etcd():
    deployment = children()[("Deployment", deployment_name("sip-ex"))]
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["selector"]["matchLabels"] == labels("sip-ex")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["image"] == "registry.test/sipreg:1.2.3"
    assert container["args"][:2] == ["registrar", "--domain=sip.example.test"]
    assert "--tls-cert=/etc/sipreg/tls/tls.crt" in container["args"]
    env = {item["name"]: item for item in container["env"]}
    assert env["SIPREG_ETCD"]["value"] == "etcd://etcd-0:2379,etcd-1:2379"
    assert env["SIPREG_NONCE_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == nonce_secret_name("sip-ex")
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    security = container["securityContext"]
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
    assert security["allowPrivilegeEscalation"] is False
    assert {"name": "tls", "secret": {"secretName": "sip-tls"}} in pod["volumes"]
    # The read-only root filesystem still needs a writable /tmp.
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_registrar_pods_serve_http_on_the_pod_ip_with_the_mounted_api_token():
    pod = children()[("Deployment", deployment_name("sip-ex"))]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # What kubelet runs: $(POD_IP) expanded from the container's env, which must define it.
    assert [e["name"] for e in container["env"]].count("POD_IP") == 1
    args = [arg.replace("$(POD_IP)", "10.1.2.3") for arg in container["args"]]
    parsed = build_parser().parse_args(args)
    # SIP on every address; HTTP on the pod's, and loopback for kubectl port-forward.
    assert (parsed.host, parsed.http_hosts) == ("0.0.0.0", ["10.1.2.3", "127.0.0.1"])
    # The token file is the api-token Secret's key, mounted read-only.
    volume = next(v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == api_token_secret_name("sip-ex"))
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    (key,) = api_token_secret("sip-ex", "t")["stringData"]
    assert parsed.api_token_file == f"{mount['mountPath']}/{key}"
    # The probes and Prometheus find HTTP on the named port the registrar listens on.
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports[container["readinessProbe"]["httpGet"]["port"]] == parsed.http_port
    assert ports[container["livenessProbe"]["httpGet"]["port"]] == parsed.http_port
    annotations = children()[("Deployment", deployment_name("sip-ex"))]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(parsed.http_port)


def network_policy_rules(built: dict) -> list[tuple[tuple[tuple[str, int], ...], list | None]]:
    """(ports as (protocol, port), `from` or None for everyone) of each ingress rule."""
    policy = built[("NetworkPolicy", "sip-ex-registrar")]
    assert policy["spec"]["podSelector"] == {"matchLabels": labels("sip-ex")}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    return [
        (tuple((port["protocol"], port["port"]) for port in rule["ports"]), rule.get("from"))
        for rule in policy["spec"]["ingress"]
    ]


def test_the_network_policy_opens_sip_to_everyone_and_http_to_monitoring_and_the_sipdomains_own_pods_only():
    built = children()
    (container,) = built[("Deployment", "sip-ex-registrar")]["spec"]["template"]["spec"]["containers"]
    container_ports = {(port["protocol"], port["containerPort"]) for port in container["ports"]}
    monitoring = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    # The SipDomain's registrar pods ask each other for a connection's trace (registrar.trace_gathering).
    own_pods = [{"podSelector": {"matchLabels": labels("sip-ex")}}]
    assert network_policy_rules(built) == [
        ((("UDP", 5060), ("TCP", 5060), ("TCP", 5061)), None),
        ((("TCP", 8080),), own_pods),
        ((("TCP", 8080),), monitoring),
    ]
    # Every port the container declares is in a rule.
    covered = {port for ports, _ in network_policy_rules(built) for port in ports}
    assert covered == container_ports
    # Without TLS in the spec, no TLS port; UDP and TCP stay (pods route to each other over both).
    udp_only = {**SPEC, "transports": {"udp": 5070}}
    assert network_policy_rules(children(udp_only))[0] == ((("UDP", 5060), ("TCP", 5060)), None)


def test_the_http_peers_are_a_setting_and_none_means_no_http_rule_at_all():
    prometheus = [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "prometheus"}}}]
    rules = network_policy_rules(children(settings=PodSettings(http_from=prometheus)))
    assert rules[2] == ((("TCP", 8080),), prometheus)
    # An ingress rule without `from` would admit everyone: no peers drops the rule.
    rules = network_policy_rules(children(settings=PodSettings(http_from=[])))
    assert rules == [
        ((("UDP", 5060), ("TCP", 5060), ("TCP", 5061)), None),
        ((("TCP", 8080),), [{"podSelector": {"matchLabels": labels("sip-ex")}}]),
    ]


def test_the_sip_service_maps_spec_ports_onto_the_fixed_container_ports():
    service = children()[("Service", "sip-ex-sip")]
    ports = {(p["protocol"], p["port"]): p["targetPort"] for p in service["spec"]["ports"]}
    assert ports == {("UDP", 5060): 5060, ("TCP", 5080): 5060, ("TCP", 5061): 5061}
    assert service["spec"]["selector"] == labels("sip-ex")
    assert service["spec"]["externalTrafficPolicy"] == "Local"  # source addresses reach the registrar
    assert service["spec"]["sessionAffinity"] == "ClientIP"


def test_without_transports_a_domain_gets_udp_and_tcp_5060_and_no_tls():
    spec = {key: value for key, value in SPEC.items() if key != "transports"}
    built = children(spec)
    ports = {(p["protocol"], p["port"]) for p in built[("Service", "sip-ex-sip")]["spec"]["ports"]}
    assert ports == {("UDP", 5060), ("TCP", 5060)}
    (container,) = built[("Deployment", "sip-ex-registrar")]["spec"]["template"]["spec"]["containers"]
    assert "--tls-port=0" in container["args"]
    assert not any(arg.startswith("--tls-cert") for arg in container["args"])


def test_websocket_transports_get_service_ports_listeners_their_certificate_and_the_network_policy():
    spec = {**SPEC, "transports": {**SPEC["transports"], "ws": 8080, "wss": {"port": 443, "certificateSecret": "web"}}}
    built = children(spec)
    ports = {(p["name"], p["port"]): p["targetPort"] for p in built[("Service", "sip-ex-sip")]["spec"]["ports"]}
    assert ports[("sip-ws", 8080)] == 5066 and ports[("sip-wss", 443)] == 7443
    pod = built[("Deployment", "sip-ex-registrar")]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    for arg in ("--ws-port=5066", "--wss-port=7443", "--public-port=ws=8080", "--public-port=wss=443",
                "--wss-cert=/etc/sipreg/wss-tls/tls.crt", "--wss-key=/etc/sipreg/wss-tls/tls.key"):
        assert arg in container["args"], container["args"]
    assert {"name": "wss-tls", "secret": {"secretName": "web"}} in pod["volumes"]
    assert {"name": "sip-wss", "containerPort": 7443, "protocol": "TCP"} in container["ports"]
    allowed = built[("NetworkPolicy", "sip-ex-registrar")]["spec"]["ingress"][0]["ports"]
    assert {"protocol": "TCP", "port": 5066} in allowed and {"protocol": "TCP", "port": 7443} in allowed
    # Without them (SPEC): neither listener, nor port.
    (plain,) = children()[("Deployment", "sip-ex-registrar")]["spec"]["template"]["spec"]["containers"]
    assert "--ws-port=0" in plain["args"] and "--wss-port=0" in plain["args"]
    assert not any(port["name"].startswith("sip-ws") for port in plain["ports"])


def test_a_cluster_ip_service_has_no_external_traffic_policy():
    service = children(settings=PodSettings(service_type="ClusterIP"))[("Service", "sip-ex-sip")]
    assert service["spec"]["type"] == "ClusterIP"
    assert "externalTrafficPolicy" not in service["spec"]


def test_the_headless_service_and_budget_select_the_same_pods():
    built = children()
    headless = built[("Service", "sip-ex-registrars")]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == labels("sip-ex")
    budget = built[("PodDisruptionBudget", "sip-ex-registrar")]
    assert budget["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": labels("sip-ex")}}


def test_a_bad_spec_raises_a_spec_error_naming_the_field():
    with pytest.raises(SpecError) as error:
        desired_children("sip-ex", {**SPEC, "replicas": 0}, SETTINGS)
    assert error.value.path == "spec.replicas"


def test_the_nonce_secret_holds_what_it_is_given():
    secret = nonce_secret("sip-ex", "s3cret")
    assert secret["metadata"]["name"] == "sip-ex-nonce"
    assert secret["stringData"] == {"nonce-secret": "s3cret"}


def test_the_api_token_secret_holds_what_it_is_given():
    secret = api_token_secret("sip-ex", "t0ken")
    assert secret["metadata"]["name"] == api_token_secret_name("sip-ex") == "sip-ex-api-token"
    assert secret["stringData"] == {"token": "t0ken"}


def test_pod_settings_from_the_environment():
    settings = PodSettings.from_environment(
        {
            "SIPREG_IMAGE": "img:2",
            "SIPREG_ETCD": "etcd://e:2379",
            "SIPREG_SERVICE_TYPE": "NodePort",
            "SIPREG_REGISTRAR_RESOURCES": '{"requests": {"cpu": "1"}}',
        }
    )
    assert (settings.image, settings.etcd, settings.service_type) == ("img:2", "etcd://e:2379", "NodePort")
    assert settings.resources == {"requests": {"cpu": "1"}}
    assert settings.security_context == PodSettings().security_context
    with pytest.raises(ValueError, match="SIPREG_SERVICE_TYPE"):
        PodSettings.from_environment({"SIPREG_SERVICE_TYPE": "Ingress"})
    with pytest.raises(ValueError, match="SIPREG_REGISTRAR_SECURITY_CONTEXT: expected a JSON object"):
        PodSettings.from_environment({"SIPREG_REGISTRAR_SECURITY_CONTEXT": "[]"})


def test_the_registrars_cache_from_the_environment_reaches_their_command_line():
    settings = PodSettings.from_environment({"SIPREG_REGISTRAR_CACHED_AORS": "200000"})
    registrar = desired_children("sip-ex", {"domain": "sip.example.test"}, settings)[0]
    (container,) = registrar["spec"]["template"]["spec"]["containers"]
    assert "--cached-aors=200000" in container["args"]
    for bad in ("lots", "10", "-5"):
        with pytest.raises(ValueError, match="SIPREG_REGISTRAR_CACHED_AORS: expected a number of at least 508"):
            PodSettings.from_environment({"SIPREG_REGISTRAR_CACHED_AORS": bad})


def test_the_http_peers_from_the_environment():
    peers = [{"namespaceSelector": {"matchLabels": {"team": "observability"}}}]
    settings = PodSettings.from_environment({"SIPREG_REGISTRAR_HTTP_FROM": json.dumps(peers)})
    assert settings.http_from == peers
    assert PodSettings.from_environment({}).http_from == PodSettings().http_from
    assert PodSettings.from_environment({"SIPREG_REGISTRAR_HTTP_FROM": "[]"}).http_from == []  # no pod at all
    for bad in ('{"namespaceSelector": {}}', "[1]", "[{}]"):
        with pytest.raises(ValueError, match="SIPREG_REGISTRAR_HTTP_FROM: expected a JSON list of NetworkPolicy peers"):
            PodSettings.from_environment({"SIPREG_REGISTRAR_HTTP_FROM": bad})
    with pytest.raises(ValueError, match="SIPREG_REGISTRAR_HTTP_FROM: not JSON"):
        PodSettings.from_environment({"SIPREG_REGISTRAR_HTTP_FROM": "[{"})


def tls_files(directory: Path, **contents: bytes) -> dict[str, str]:
    """PEM files as the operator's mounted Secret holds them, and the variables that name them."""
    variables = {"ca": "SIPREG_ETCD_CA", "cert": "SIPREG_ETCD_CERT", "key": "SIPREG_ETCD_KEY"}
    environ = {}
    for attribute, pem in contents.items():
        (directory / attribute).write_bytes(pem)
        environ[variables[attribute]] = str(directory / attribute)
    return environ


def test_the_operator_etcd_tls_files_are_read_into_the_settings_and_kept_out_of_repr(tmp_path):
    settings = PodSettings.from_environment(tls_files(tmp_path, ca=ETCD_TLS.ca, cert=ETCD_TLS.cert, key=ETCD_TLS.key))
    assert settings.etcd_tls == ETCD_TLS
    assert b"KEY" not in repr(settings).encode() and "etcd_tls" not in repr(settings)
    assert PodSettings.from_environment({}).etcd_tls is None
    with pytest.raises(ValueError, match="SIPREG_ETCD_KEY: cannot read"):
        PodSettings.from_environment({**tls_files(tmp_path, cert=b"c"), "SIPREG_ETCD_KEY": str(tmp_path / "absent")})


def test_registrar_pods_mount_a_copy_of_the_operator_etcd_certificate_named_by_its_contents():
    settings = PodSettings(etcd_tls=ETCD_TLS)
    secret = etcd_client_secret("sip-ex", ETCD_TLS)
    assert secret["metadata"]["name"].startswith("sip-ex-etcd-client-")
    assert secret["metadata"]["labels"] == labels("sip-ex") and secret["immutable"] is True
    assert {key: base64.b64decode(value) for key, value in secret["data"].items()} == {
        "ca.crt": ETCD_TLS.ca, "tls.crt": ETCD_TLS.cert, "tls.key": ETCD_TLS.key}

    pod = children(settings=settings)[("Deployment", "sip-ex-registrar")]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volume = next(v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == secret["metadata"]["name"])
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount == {"name": volume["name"], "mountPath": "/etc/sipreg/etcd-tls", "readOnly": True}
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert {key: value for key, value in env.items() if key.startswith("SIPREG_ETCD_")} == {
        "SIPREG_ETCD_CA": "/etc/sipreg/etcd-tls/ca.crt",
        "SIPREG_ETCD_CERT": "/etc/sipreg/etcd-tls/tls.crt",
        "SIPREG_ETCD_KEY": "/etc/sipreg/etcd-tls/tls.key",
    }

    # A renewed certificate is another Secret, so the pod template changes and the pods roll onto it;
    # another domain gets its own copy.
    renewed = EtcdTls(ca=ETCD_TLS.ca, cert=b"-----RENEWED-----\n", key=ETCD_TLS.key)
    assert etcd_client_secret("sip-ex", renewed)["metadata"]["name"] != secret["metadata"]["name"]
    assert etcd_client_secret("sip-other", ETCD_TLS)["metadata"]["name"].startswith("sip-other-etcd-client-")

    # Only the files the operator has: with no CA, etcd's certificate is checked against the system's roots.
    no_ca = EtcdTls(cert=ETCD_TLS.cert, key=ETCD_TLS.key)
    assert set(etcd_client_secret("sip-ex", no_ca)["data"]) == {"tls.crt", "tls.key"}
    (container,) = children(settings=PodSettings(etcd_tls=no_ca))[("Deployment", "sip-ex-registrar")]["spec"][
        "template"]["spec"]["containers"]
    assert {e["name"] for e in container["env"] if e["name"].startswith("SIPREG_ETCD_")} == {
        "SIPREG_ETCD_CERT", "SIPREG_ETCD_KEY"}

    # Plain text: nothing mounted, no TLS variable (the registrar would fail on a missing file).
    pod = children()[("Deployment", "sip-ex-registrar")]["spec"]["template"]["spec"]
    assert not [v for v in pod["volumes"] if v["name"] == "etcd-tls"]
    assert not [e for e in pod["containers"][0]["env"] if e["name"].startswith("SIPREG_ETCD_")]


def test_drift_is_what_the_desired_object_says_differently():
    desired = children()[("Deployment", "sip-ex-registrar")]
    actual = copy.deepcopy(desired)
    actual["status"] = {"readyReplicas": 3}  # the server adds things
    actual["spec"]["template"]["spec"]["dnsPolicy"] = "ClusterFirst"
    assert not drifted(desired, actual)
    actual["spec"]["replicas"] = 2
    assert drifted(desired, actual)
    actual = copy.deepcopy(desired)
    actual["spec"]["template"]["spec"]["containers"].append({"name": "sidecar"})
    assert drifted(desired, actual)


@pytest.mark.parametrize("service_type", ["LoadBalancer", "ClusterIP"])
@pytest.mark.parametrize("with_tls", [True, False])
def test_every_child_is_a_valid_kubernetes_object(service_type, with_tls):
    """What the operator sends passes Kubernetes' own schemas, strictly (no unknown or misspelt field)."""
    spec = SPEC if with_tls else {**SPEC, "transports": {"udp": 5060, "tcp": 5060}}
    settings = PodSettings(service_type=service_type, etcd_tls=ETCD_TLS if with_tls else None)
    built = [*desired_children("sip-ex", spec, settings), nonce_secret("sip-ex", "s"), api_token_secret("sip-ex", "t")]
    if with_tls:
        built.append(etcd_client_secret("sip-ex", ETCD_TLS))
    for child in built:
        child = {**child, "metadata": {**child["metadata"], "namespace": "voip"}}
        kubernetes_validate.validate(child, kubernetes_validate.latest_version(), strict=True)
