"""A SipDomain's desired Kubernetes objects, built by pure functions from its spec and the operator's settings.

One SipDomain runs as:
- a Deployment of registrar pods (`sipreg registrar --domain D`), which read
  their domain and connections from etcd and need no Kubernetes API access;
- a Service for SIP: UDP and TCP on the spec's ports (5060), TLS (5061) when
  configured, all to the pods' fixed container ports, so a spec port change
  never restarts a pod;
- a headless Service naming every pod, for pod-to-pod routing of requests to
  the pod that holds a UA's flow;
- a PodDisruptionBudget (at most one pod down at a time on a drain);
- a NetworkPolicy: the SIP ports open to everyone, the HTTP port (health,
  metrics, bindings API) only to the monitoring namespace (PodSettings.http_from);
- a Secret with the digest nonce secret the replicas share (stateless nonces
  verify on any replica only if they all hold the same secret). It is created
  once and never rewritten: a new secret would answer every outstanding
  challenge with stale=true;
- with TLS to etcd, a copy of the operator's etcd client certificate (a pod
  mounts only its own namespace's Secrets), named by its contents: a new
  certificate is a new Secret, and the Deployment mounting it rolls its pods.
- a Secret with the bearer token of the pods' bindings API, mounted as a file;
  created once too, so the token a client holds keeps working.

The handlers adopt each object (owner references), so deleting the SipDomain
deletes them all through Kubernetes' garbage collector.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from registrar import hep
from registrar.manifests import certificate_secrets, domain_spec
from registrar.sip.source import TRANSPORTS
from registrar.store.etcd import DEFAULT_CACHED_AORS, MIN_CACHED_AORS
from registrar.store.etcd_session import EtcdTls

# The registrar container listens on fixed ports; the Service maps the spec's ports onto them.
SIP_PORT = 5060
TLS_PORT = 5061
WS_PORT = 5066
WSS_PORT = 7443
CONTAINER_PORTS = {"udp": SIP_PORT, "tcp": SIP_PORT, "tls": TLS_PORT, "ws": WS_PORT, "wss": WSS_PORT}
HTTP_PORT = 8080
# A registrar pod's way out (RegistrarServer.drain): on SIGTERM it turns not ready and serves on for
# DRAIN_SECONDS while kube-proxies and load balancers take it out of the Service (a few seconds), then
# refuses new work and answers what is in flight (IN_FLIGHT_SECONDS at most: a proxied INVITE may be
# ringing); the grace period covers both, with room to close, before the kubelet's SIGKILL.
DRAIN_SECONDS = 10
IN_FLIGHT_SECONDS = 30
TERMINATION_GRACE_SECONDS = DRAIN_SECONDS + IN_FLIGHT_SECONDS + 5
TLS_MOUNT = "/etc/sipreg/tls"
WSS_MOUNT = "/etc/sipreg/wss-tls"
# Where registrar pods find the etcd client certificate, and each EtcdTls file's key in the Secret
# (a cert-manager Secret's layout, which is what the operator reads its own from).
ETCD_TLS_MOUNT = "/etc/sipreg/etcd-tls"
ETCD_TLS_KEYS = {"ca": "ca.crt", "cert": "tls.crt", "key": "tls.key"}
NONCE_KEY = "nonce-secret"
# Where registrar pods find the bindings API's bearer token (the api-token Secret's one key).
API_TOKEN_MOUNT = "/etc/sipreg/api-token"
API_TOKEN_KEY = "token"
# Without a `transports` section a domain gets what every SIP device expects.
DEFAULT_TRANSPORTS: dict[str, Any] = {"udp": 5060, "tcp": 5060, "tls": None}


@dataclass(frozen=True)
class PodSettings:
    """How registrar pods run, the same for every SipDomain: the operator's own configuration (Helm values)."""

    image: str = "ghcr.io/sipreg/sipreg:0.1.0"
    etcd: str = "etcd://etcd:2379"
    image_pull_policy: str = "IfNotPresent"
    # LoadBalancer with externalTrafficPolicy Local: the registrar must see each
    # UA's real source address (NAT handling, IP allow-lists); kube-proxy's SNAT
    # would hide it.
    service_type: str = "LoadBalancer"
    resources: dict[str, Any] = field(
        default_factory=lambda: {
            "requests": {"cpu": "250m", "memory": "128Mi"},
            "limits": {"memory": "512Mi"},
        }
    )
    # Non-root, read-only root filesystem, nothing to escalate: the registrar needs none of it.
    security_context: dict[str, Any] = field(
        default_factory=lambda: {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }
    )
    # Ready means etcd answers and the listeners are up: /readyz says so. Port "http" is HTTP_PORT.
    readiness_probe: dict[str, Any] = field(
        default_factory=lambda: {
            "httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5, "failureThreshold": 2,
        }
    )
    liveness_probe: dict[str, Any] = field(
        default_factory=lambda: {
            "httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10, "failureThreshold": 3,
        }
    )
    # The operator's own TLS to etcd (SIPREG_ETCD_CA/_CERT/_KEY): every registrar pod gets a copy
    # (etcd_client_secret). None: plain text. Out of repr: it holds a private key.
    etcd_tls: EtcdTls | None = field(default=None, repr=False)
    # The AORs whose connection and bindings a registrar keeps in memory (--cached-aors): the phones a
    # pod serves, for every refresh to find them (docs/SCALING.md); about 4 KiB each at most.
    cached_aors: int = DEFAULT_CACHED_AORS
    # A HEP3 collector (Homer) every registrar copies its SIP messages to, as HOST:PORT, and the capture
    # agent id they send (--hep, --hep-id); None: none.
    hep: str | None = None
    hep_id: int = 1
    # Who may reach the pods' HTTP port, as NetworkPolicy `from` peers: Prometheus, in the namespace
    # kube-prometheus-stack and most guides call monitoring. Kubelet probes come from the node, which a
    # NetworkPolicy always lets through. Empty: no pod at all.
    http_from: list[dict[str, Any]] = field(
        default_factory=lambda: [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ]
    )

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> PodSettings:
        """Settings from the operator's environment (the Helm chart sets these); unset keeps the default.

        SIPREG_ETCD, SIPREG_IMAGE, SIPREG_IMAGE_PULL_POLICY, SIPREG_SERVICE_TYPE, the files
        SIPREG_ETCD_CA/_CERT/_KEY name (read now), and SIPREG_REGISTRAR_RESOURCES / _SECURITY_CONTEXT /
        _READINESS_PROBE / _LIVENESS_PROBE as JSON objects, and
        SIPREG_REGISTRAR_HTTP_FROM as a JSON list of objects, SIPREG_REGISTRAR_CACHED_AORS as a number,
        SIPREG_REGISTRAR_HEP as HOST:PORT and SIPREG_REGISTRAR_HEP_ID as a number.
        Raises ValueError naming the variable that does not parse, or whose file cannot be read.
        """
        values: dict[str, Any] = {"etcd_tls": EtcdTls.from_environment(environ)}
        for variable, attribute in (
            ("SIPREG_ETCD", "etcd"),
            ("SIPREG_IMAGE", "image"),
            ("SIPREG_IMAGE_PULL_POLICY", "image_pull_policy"),
            ("SIPREG_SERVICE_TYPE", "service_type"),
        ):
            if environ.get(variable):
                values[attribute] = environ[variable]
        for variable, attribute in (
            ("SIPREG_REGISTRAR_RESOURCES", "resources"),
            ("SIPREG_REGISTRAR_SECURITY_CONTEXT", "security_context"),
            ("SIPREG_REGISTRAR_READINESS_PROBE", "readiness_probe"),
            ("SIPREG_REGISTRAR_LIVENESS_PROBE", "liveness_probe"),
        ):
            if environ.get(variable):
                try:
                    values[attribute] = json.loads(environ[variable])
                except ValueError as error:
                    raise ValueError(f"{variable}: not JSON: {error}") from None
                if not isinstance(values[attribute], dict):
                    raise ValueError(f"{variable}: expected a JSON object")
        if environ.get("SIPREG_REGISTRAR_HTTP_FROM"):
            try:
                peers = json.loads(environ["SIPREG_REGISTRAR_HTTP_FROM"])
            except ValueError as error:
                raise ValueError(f"SIPREG_REGISTRAR_HTTP_FROM: not JSON: {error}") from None
            if not isinstance(peers, list) or not all(isinstance(peer, dict) and peer for peer in peers):
                raise ValueError("SIPREG_REGISTRAR_HTTP_FROM: expected a JSON list of NetworkPolicy peers (objects)")
            values["http_from"] = peers
        if environ.get("SIPREG_REGISTRAR_CACHED_AORS"):
            text = environ["SIPREG_REGISTRAR_CACHED_AORS"]
            if not text.isdigit() or int(text) < MIN_CACHED_AORS:
                raise ValueError(f"SIPREG_REGISTRAR_CACHED_AORS: expected a number of at least {MIN_CACHED_AORS}, "
                                 f"got {text!r}")
            values["cached_aors"] = int(text)
        if environ.get("SIPREG_REGISTRAR_HEP"):
            text = environ["SIPREG_REGISTRAR_HEP"].strip()
            try:
                hep.collector_address(text)
            except ValueError as error:
                raise ValueError(f"SIPREG_REGISTRAR_HEP: {error}") from None
            values["hep"] = text
        if environ.get("SIPREG_REGISTRAR_HEP_ID"):
            try:
                values["hep_id"] = hep.capture_id(environ["SIPREG_REGISTRAR_HEP_ID"])
            except ValueError as error:
                raise ValueError(f"SIPREG_REGISTRAR_HEP_ID: {error}") from None
        if values.get("service_type", "LoadBalancer") not in ("ClusterIP", "NodePort", "LoadBalancer"):
            raise ValueError(
                f"SIPREG_SERVICE_TYPE: expected ClusterIP, NodePort or LoadBalancer, got {values['service_type']!r}"
            )
        return cls(**values)


def labels(domain_object: str) -> dict[str, str]:
    """The labels that select one SipDomain's registrar pods (and mark everything the operator made)."""
    return {
        "app.kubernetes.io/name": "sipreg-registrar",
        "app.kubernetes.io/instance": domain_object,
        "app.kubernetes.io/managed-by": "sipreg-operator",
    }


def deployment_name(domain_object: str) -> str:
    return f"{domain_object}-registrar"


def nonce_secret_name(domain_object: str) -> str:
    return f"{domain_object}-nonce"


def _etcd_tls_files(tls: EtcdTls) -> list[tuple[str, bytes, str]]:
    """(Secret key, PEM, variable) of each file the operator has: without a CA, the system's roots verify etcd."""
    return [(ETCD_TLS_KEYS[attribute], pem, variable) for variable, attribute in EtcdTls.ENVIRONMENT
            if (pem := getattr(tls, attribute))]


def etcd_client_secret_name(domain_object: str, tls: EtcdTls) -> str:
    digest = hashlib.sha256()
    for key, pem, _ in _etcd_tls_files(tls):
        digest.update(f"{key}:{len(pem)}:".encode() + pem)
    return f"{domain_object}-etcd-client-{digest.hexdigest()[:10]}"
def api_token_secret_name(domain_object: str) -> str:
    return f"{domain_object}-api-token"


def transports_of(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec's transports with the default filled in (`spec` as registrar.manifests.domain_spec returns it)."""
    return spec["transports"] or DEFAULT_TRANSPORTS


# What cert-manager (and `kubectl create secret tls`) put in a kubernetes.io/tls Secret, which the pods mount.
CERTIFICATE_KEYS = ("tls.crt", "tls.key")


def certificate_problem(
    namespace: str, raw_spec: Any, secret_data: Callable[[str, str], dict[str, bytes] | None]
) -> str | None:
    """Why the pods of a SipDomain with this spec would wait for a certificate (the kubelet does not start
    a pod whose Secret volume is missing), in words; None when every certificate it names is there."""
    for field_name, secret in certificate_secrets(raw_spec):
        data = secret_data(namespace, secret)
        if data is None:
            return f"{field_name}: Secret {namespace}/{secret} not found; the registrar pods wait for it"
        missing = [key for key in CERTIFICATE_KEYS if not data.get(key)]
        if missing:
            return (
                f"{field_name}: Secret {namespace}/{secret} has no {' or '.join(missing)} "
                "(a kubernetes.io/tls Secret, as cert-manager makes, has both)"
            )
    return None


def desired_children(name: str, raw_spec: Any, settings: PodSettings) -> list[dict[str, Any]]:
    """Every object the SipDomain `name` should own, except the Secrets made once (nonce_secret, api_token_secret).

    Raises registrar.manifests.SpecError for a spec the registrar could not serve.
    """
    spec = domain_spec(raw_spec)
    return [
        deployment(name, spec, settings),
        sip_service(name, spec, settings),
        headless_service(name),
        disruption_budget(name),
        network_policy(name, spec, settings),
    ]


def _public_ports(transports: dict[str, Any]) -> dict[str, int]:
    """The port UAs reach each configured transport at (tls and wss carry theirs beside a certificate)."""
    ports = {}
    for transport in TRANSPORTS:
        value = transports.get(transport)
        if value:
            ports[transport] = value["port"] if isinstance(value, dict) else value
    return ports


def deployment(name: str, spec: dict[str, Any], settings: PodSettings) -> dict[str, Any]:
    transports = transports_of(spec)
    tls, ws, wss = transports["tls"], transports.get("ws"), transports.get("wss")
    args = [
        "registrar",
        f"--domain={spec['domain']}",
        f"--sip-port={SIP_PORT}",
        f"--tls-port={TLS_PORT if tls else 0}",
        f"--ws-port={WS_PORT if ws else 0}",
        f"--wss-port={WSS_PORT if wss else 0}",
        f"--http-port={HTTP_PORT}",
        # The pod's own address (kubelet expands $(POD_IP) from the env below): kubelet probes and
        # Prometheus reach it there, and the NetworkPolicy decides who else may. And loopback, which
        # only the pod itself reaches, and `kubectl port-forward` (it dials localhost in the pod).
        "--http-host=$(POD_IP)",
        "--http-host=127.0.0.1",
        f"--api-token-file={API_TOKEN_MOUNT}/{API_TOKEN_KEY}",
        f"--drain-seconds={DRAIN_SECONDS}",
        f"--in-flight-seconds={IN_FLIGHT_SECONDS}",
        f"--cached-aors={settings.cached_aors}",
        *([f"--hep={settings.hep}", f"--hep-id={settings.hep_id}"] if settings.hep else []),
        # Proxied calls name the Service as UAs reach it: the domain (which resolves to the
        # Service's address, as for REGISTER) and the spec's ports, not the pod's.
        f"--public-host={spec['domain']}",
        *(f"--public-port={transport}={port}" for transport, port in _public_ports(transports).items()),
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "tmp", "emptyDir": {}},
        {"name": "api-token", "secret": {"secretName": api_token_secret_name(name)}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "api-token", "mountPath": API_TOKEN_MOUNT, "readOnly": True},
    ]
    if tls:
        args += [f"--tls-cert={TLS_MOUNT}/tls.crt", f"--tls-key={TLS_MOUNT}/tls.key"]
        volumes.append({"name": "tls", "secret": {"secretName": tls["certificateSecret"]}})
        mounts.append({"name": "tls", "mountPath": TLS_MOUNT, "readOnly": True})
    if wss:
        # Its own Secret: browsers check the certificate against the page's wss:// URL, phones against the domain.
        args += [f"--wss-cert={WSS_MOUNT}/tls.crt", f"--wss-key={WSS_MOUNT}/tls.key"]
        volumes.append({"name": "wss-tls", "secret": {"secretName": wss["certificateSecret"]}})
        mounts.append({"name": "wss-tls", "mountPath": WSS_MOUNT, "readOnly": True})
    env: list[dict[str, Any]] = [
        {"name": "SIPREG_ETCD", "value": settings.etcd},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {
            "name": "SIPREG_NONCE_SECRET",
            "valueFrom": {"secretKeyRef": {"name": nonce_secret_name(name), "key": NONCE_KEY}},
        },
    ]
    if settings.etcd_tls:
        volumes.append({"name": "etcd-tls", "secret": {"secretName": etcd_client_secret_name(name, settings.etcd_tls)}})
        mounts.append({"name": "etcd-tls", "mountPath": ETCD_TLS_MOUNT, "readOnly": True})
        env += [{"name": variable, "value": f"{ETCD_TLS_MOUNT}/{key}"} for key, _, variable in
                _etcd_tls_files(settings.etcd_tls)]
    ports = [*_sip_container_ports(transports), {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}]
    pod_labels = labels(name)
    container = {
        "name": "registrar",
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": args,
        "env": env,
        "ports": ports,
        "readinessProbe": copy.deepcopy(settings.readiness_probe),
        "livenessProbe": copy.deepcopy(settings.liveness_probe),
        "resources": copy.deepcopy(settings.resources),
        "securityContext": copy.deepcopy(settings.security_context),
        "volumeMounts": mounts,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": deployment_name(name), "labels": pod_labels},
        "spec": {
            "replicas": spec["replicas"],
            "selector": {"matchLabels": pod_labels},
            # One new pod before an old one goes: capacity never dips during a rollout.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(HTTP_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "automountServiceAccountToken": False,  # registrars never call the Kubernetes API
                    "enableServiceLinks": False,
                    # No preStop hook: the registrar drains on SIGTERM itself (not ready first, then
                    # serving on while the endpoints move). TCP/TLS flows close at the end; phones with
                    # an outbound flow register again at once, others within their refresh time.
                    "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
                    "affinity": {
                        "podAntiAffinity": {
                            "preferredDuringSchedulingIgnoredDuringExecution": [
                                {
                                    "weight": 100,
                                    "podAffinityTerm": {
                                        "labelSelector": {"matchLabels": pod_labels},
                                        "topologyKey": "kubernetes.io/hostname",
                                    },
                                }
                            ]
                        }
                    },
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def _sip_container_ports(transports: dict[str, Any]) -> list[dict[str, Any]]:
    """The ports a registrar container takes SIP on: UDP and TCP always (pods route to each other over
    both, whatever the spec offers UAs), TLS, WS and WSS when the spec configures them."""
    configured = {"udp", "tcp", *_public_ports(transports)}
    return [
        {"name": f"sip-{transport}", "containerPort": CONTAINER_PORTS[transport], "protocol": _protocol(transport)}
        for transport in TRANSPORTS if transport in configured
    ]


def _protocol(transport: str) -> str:
    return "UDP" if transport == "udp" else "TCP"


def sip_service(name: str, spec: dict[str, Any], settings: PodSettings) -> dict[str, Any]:
    ports = [
        {"name": f"sip-{transport}", "port": port, "targetPort": CONTAINER_PORTS[transport],
         "protocol": _protocol(transport)}
        for transport, port in _public_ports(transports_of(spec)).items()
    ]
    service_spec: dict[str, Any] = {
        "type": settings.service_type,
        "selector": labels(name),
        "ports": ports,
        # A UA keeps talking to one pod: digest nonce counts are counted per pod.
        "sessionAffinity": "ClientIP",
    }
    if settings.service_type in ("LoadBalancer", "NodePort"):
        service_spec["externalTrafficPolicy"] = "Local"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"{name}-sip", "labels": labels(name)},
        "spec": service_spec,
    }


def headless_service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"{name}-registrars", "labels": labels(name)},
        "spec": {
            "clusterIP": "None",
            "selector": labels(name),
            "ports": [
                {"name": "sip-udp", "port": SIP_PORT, "targetPort": SIP_PORT, "protocol": "UDP"},
                {"name": "sip-tcp", "port": SIP_PORT, "targetPort": SIP_PORT, "protocol": "TCP"},
            ],
        },
    }


def disruption_budget(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": f"{name}-registrar", "labels": labels(name)},
        # maxUnavailable, not minAvailable: a one-replica domain can still be drained.
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels(name)}},
    }


def network_policy(name: str, spec: dict[str, Any], settings: PodSettings) -> dict[str, Any]:
    """Who may reach the registrar pods: anyone on the SIP ports, `settings.http_from` and the SipDomain's
    other registrar pods (which gather a connection's trace from each other) on the HTTP port.

    Ports are the pods' own (a NetworkPolicy sees traffic after the Service
    mapped spec ports onto them). Ingress only: registrars dial etcd, each
    other and UAs' flows freely.
    """
    sip_ports = [
        {"protocol": port["protocol"], "port": port["containerPort"]}
        for port in _sip_container_ports(transports_of(spec))
    ]
    http_port = [{"protocol": "TCP", "port": HTTP_PORT}]
    ingress: list[dict[str, Any]] = [
        {"ports": sip_ports}, {"from": [{"podSelector": {"matchLabels": labels(name)}}], "ports": http_port},
    ]
    # A rule without `from` admits every source: no peers allowed means no rule, not one with none.
    if settings.http_from:
        ingress.append({"from": copy.deepcopy(settings.http_from), "ports": http_port})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": f"{name}-registrar", "labels": labels(name)},
        "spec": {
            "podSelector": {"matchLabels": labels(name)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def nonce_secret(name: str, secret: str) -> dict[str, Any]:
    """The Secret holding the replicas' shared nonce secret; `secret` is random, made by the caller once."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": nonce_secret_name(name), "labels": labels(name)},
        "type": "Opaque",
        "stringData": {NONCE_KEY: secret},
    }


def etcd_client_secret(name: str, tls: EtcdTls) -> dict[str, Any]:
    """The copy of the operator's etcd TLS files that SipDomain `name`'s registrar pods mount.

    Immutable: its name says its contents, so it is created once (a new certificate gets a new one)
    and nothing may change it under the pods. Copies of an older certificate stay until the SipDomain
    goes: the operator deletes nothing.
    """
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": etcd_client_secret_name(name, tls), "labels": labels(name)},
        "type": "Opaque",
        "immutable": True,
        "data": {key: base64.b64encode(pem).decode("ascii") for key, pem, _ in _etcd_tls_files(tls)},
    }


def api_token_secret(name: str, token: str) -> dict[str, Any]:
    """The Secret holding the bindings API's bearer token, mounted into every registrar pod; `token` is random,
    made by the caller once (read it with kubectl get secret NAME-api-token)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": api_token_secret_name(name), "labels": labels(name)},
        "type": "Opaque",
        "stringData": {API_TOKEN_KEY: token},
    }


def drifted(desired: Any, actual: Any) -> bool:
    """True when `actual` lacks or differs in anything `desired` says (fields the server added don't count).

    Lists compare element by element and must have the same length: an extra
    port or container in the cluster is drift too.
    """
    if isinstance(desired, dict):
        if not isinstance(actual, dict):
            return True
        return any(drifted(value, actual.get(key)) for key, value in desired.items())
    if isinstance(desired, list):
        if not isinstance(actual, list) or len(desired) != len(actual):
            return True
        return any(drifted(d, a) for d, a in zip(desired, actual))
    return desired != actual
