"""The chart's ClusterRole held to the operator's real API calls: every call it makes is allowed, every grant is used.

The operator's story (tests/k8s/story.py, as tests/k8s/test_operator.py runs it) and a restart that
repairs drifted children run the real operator against the emulated API. The emulator logs every
request; those of the operator (kopf's session, User-Agent kopf/..., and the operator's own
`kubernetes` client, OpenAPI-Generator/...; the test's client says sipreg-tests) become RBAC
terms: method and path give the verb (GET with watch=true: watch; GET on a collection: list; on
a name: get; POST: create; PATCH: patch; PUT: update; DELETE: delete), the API group, the resource
and subresource. Discovery (/api, /apis, /apis/GROUP/VERSION) needs no rule: Kubernetes' own
system:discovery role allows it to every authenticated user.

Least privilege: the ClusterRole may grant nothing the operator was not seen to use, except the
few grants in UNEXERCISED, each with the reason no test run exercises it. Watching named namespaces
(`operator.watchNamespaces`, `sipreg operator --namespace`) makes kopf list and watch Namespaces:
the chart grants that only then, and the second test runs the operator so.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.chart.helm import EXTERNAL_ETCD_VALUES, one, render
from tests.chart.helm import NAMESPACE as RELEASE_NAMESPACE
from tests.etcd_server import EtcdServer
from tests.helpers import ROOT, free_port
from tests.k8s.emulator import EmulatorThread
from tests.k8s.kube import TEST_USER_AGENT, Kube, wait_for
from tests.k8s.story import NAMESPACE, OPERATOR, sip_domain_story

pytestmark = pytest.mark.k8s

OPERATOR_AGENTS = ("kopf/", "OpenAPI-Generator/")
DISCOVERY = re.compile(r"^/api(/v1)?/?$|^/apis(/[^/]+(/[^/]+)?)?/?$")
Term = tuple[str, str, str]  # verb, group, resource[/subresource]
# (verb, API group, resource) the chart grants that no run here exercises, and why each stays: none now.
UNEXERCISED: dict[Term, str] = {}


def rbac_term(method: str, path: str, params: dict[str, str]) -> Term | None:
    """What RBAC checks for a request; None for a discovery request (no rule needed)."""
    if DISCOVERY.match(path):
        return None
    parts = path.strip("/").split("/")
    if parts[0] == "api":
        group, rest = "", parts[2:]
    elif parts[0] == "apis":
        group, rest = parts[1], parts[3:]
    else:
        raise AssertionError(f"not a Kubernetes API path: {path}")
    if rest[0] == "namespaces" and len(rest) > 2:  # namespaced: namespaces/NS/RESOURCE[/NAME[/SUB]]
        rest = rest[2:]
    resource, name, subresource = rest[0], (rest[1:2] or [None])[0], (rest[2:3] or [None])[0]
    method = method.upper()
    if method == "GET":
        verb = "watch" if params.get("watch") in ("true", "1") else ("get" if name else "list")
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}[method]
    return verb, group, f"{resource}/{subresource}" if subresource else resource


def test_request_terms() -> None:
    """The mapping above on the shapes the operator sends (it must be right for the check to mean anything)."""
    assert rbac_term("GET", "/apis/sipreg.io/v1alpha1/sipdomains", {"watch": "true"}) == ("watch", "sipreg.io", "sipdomains")
    assert rbac_term("GET", "/apis/sipreg.io/v1alpha1/sipdomains", {}) == ("list", "sipreg.io", "sipdomains")
    assert rbac_term("GET", "/api/v1/namespaces/voip/secrets/a", {}) == ("get", "", "secrets")
    assert rbac_term("PATCH", "/apis/sipreg.io/v1alpha1/namespaces/voip/sipconnections/a/status", {}) == \
        ("patch", "sipreg.io", "sipconnections/status")
    assert rbac_term("POST", "/apis/policy/v1/namespaces/voip/poddisruptionbudgets", {}) == \
        ("create", "policy", "poddisruptionbudgets")
    assert rbac_term("GET", "/api/v1/namespaces", {}) == ("list", "", "namespaces")
    assert rbac_term("GET", "/api/v1/namespaces/voip", {}) == ("get", "", "namespaces")
    assert rbac_term("DELETE", "/api/v1/namespaces/voip/secrets", {}) == ("deletecollection", "", "secrets")
    assert rbac_term("GET", "/api/v1/secrets", {"watch": "true"}) == ("watch", "", "secrets")
    for discovery in ("/api", "/api/v1", "/apis", "/apis/apps", "/apis/apps/v1", "/apis/sipreg.io/v1alpha1"):
        assert rbac_term("GET", discovery, {}) is None


def granted(role: dict[str, Any]) -> set[Term]:
    terms = set()
    for rule in role["rules"]:
        assert "nonResourceURLs" not in rule and "resourceNames" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb), f"a wildcard grant: {rule}"
                    terms.add((verb, group, resource))
    return terms


def operator_calls(api: EmulatorThread) -> dict[Term, list[str]]:
    """Every RBAC term the operator's requests needed, with example requests; asserts nobody else went unaccounted."""
    def read(emulator: Any) -> list[tuple[str, str, dict[str, str], str]]:
        return [(str(request.method.value if hasattr(request.method, "value") else request.method),
                 request.url.path, dict(request.params), request.headers.get("User-Agent", ""))
                for request in emulator]

    calls: dict[Term, list[str]] = defaultdict(list)
    agents = set()
    for method, path, params, agent in api.call(read):
        agents.add(agent.split("/")[0])
        if not agent.startswith(OPERATOR_AGENTS):
            # The test's client, and the fixture registering the CRDs (urllib): not the operator.
            assert agent == TEST_USER_AGENT or agent.startswith("Python-urllib/"), f"unknown client {agent!r}"
            continue
        term = rbac_term(method, path, params)
        if term is not None:
            calls[term].append(f"{method} {path}")
    assert {"kopf", "OpenAPI-Generator"} <= agents, f"the operator's two clients were not both seen: {agents}"
    return calls


def repair_drift(kube: Kube, operator_runner: Any) -> None:
    """A restarted operator puts drifted children back as the SipDomain says: the Service, budget and
    NetworkPolicy patches."""
    domain = "siphv-example-test"  # the story leaves this SipDomain and its children in place
    policies = "networking.k8s.io/v1/networkpolicies"
    kube.patch("v1/services", f"{domain}-sip", {"spec": {"sessionAffinity": "None"}}, NAMESPACE)
    kube.patch("policy/v1/poddisruptionbudgets", f"{domain}-registrar", {"spec": {"maxUnavailable": 2}}, NAMESPACE)
    opened = {"spec": {"ingress": [{}]}}  # someone opened every port to everyone
    kube.patch(policies, f"{domain}-registrar", opened, NAMESPACE)
    with operator_runner(module=OPERATOR):
        wait_for(lambda: kube.get("v1/services", f"{domain}-sip", NAMESPACE)["spec"]["sessionAffinity"] == "ClientIP"
                 and kube.get("policy/v1/poddisruptionbudgets", f"{domain}-registrar", NAMESPACE)["spec"][
                     "maxUnavailable"] == 1
                 and len(kube.get(policies, f"{domain}-registrar", NAMESPACE)["spec"]["ingress"]) == 3,
                 message="the drifted Service, budget and NetworkPolicy repaired")


def test_the_chart_cluster_role_allows_what_the_operator_does_and_nothing_more(
    kubernetes_api: EmulatorThread, kube: Kube, operator_runner: Any, operator_environment: EtcdServer,
    tmp_path: Path,
) -> None:
    sip_domain_story(kube, operator_runner, operator_environment, tmp_path)
    repair_drift(kube, operator_runner)
    calls = operator_calls(kubernetes_api)

    objects = render()
    role = one(objects, "ClusterRole")
    binding = one(objects, "ClusterRoleBinding")
    account = one(objects, "ServiceAccount")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    subjects = [{"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": RELEASE_NAMESPACE}]
    assert binding["subjects"] == subjects
    # The Lease of leader election, in the release's namespace only: a Role.
    leader, leader_binding = one(objects, "Role"), one(objects, "RoleBinding")
    assert leader["metadata"]["namespace"] == leader_binding["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert leader_binding["roleRef"]["name"] == leader["metadata"]["name"] and leader_binding["subjects"] == subjects
    assert granted(leader) == {(verb, "coordination.k8s.io", "leases") for verb in ("get", "create", "update")}
    grants = granted(role) | granted(leader)

    refused = {term: examples[:2] for term, examples in calls.items() if term not in grants}
    assert not refused, f"the operator made calls its ClusterRole does not allow: {refused}"
    unused = grants - set(calls) - set(UNEXERCISED)
    assert not unused, f"the ClusterRole grants what the operator never used: {sorted(unused)}"
    # The exceptions stay honest: each is granted, and none is in fact exercised (then it would not be one).
    assert set(UNEXERCISED) <= grants and not set(UNEXERCISED) & set(calls)
    assert not {term for term in calls if term[2] == "namespaces"}, "cluster-wide, kopf needs no Namespaces"
    # Not vacuous: the handlers' watches and the status writes were all seen.
    for term in [("watch", "sipreg.io", "sipdomains"), ("watch", "sipreg.io", "sipconnections"),
                 ("watch", "", "secrets"), ("watch", "apps", "deployments"),
                 ("patch", "sipreg.io", "sipconnections/status"), ("patch", "", "services"),
                 ("patch", "networking.k8s.io", "networkpolicies"), ("create", "", "events"),
                 ("create", "coordination.k8s.io", "leases"),
                 ("update", "coordination.k8s.io", "leases")]:
        assert term in calls, f"{term} not seen: {sorted(calls)}"


def test_watching_named_namespaces_needs_namespaces_and_the_chart_grants_them_only_then(
    kubernetes_api: EmulatorThread, kube: Kube, kubeconfig: Path, etcd: EtcdServer, tmp_path: Path,
) -> None:
    """`sipreg operator --namespace voip` (what the chart runs with watchNamespaces: [voip]), as a process."""
    kube.create("v1/namespaces", {"metadata": {"name": NAMESPACE}}, namespace=None)
    port = free_port()
    log_path = tmp_path / "operator.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "registrar.cli", "operator", "--etcd", etcd.url, "--health-port", str(port),
             "--namespace", NAMESPACE],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        )
    try:
        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                    return response.status == 200
            except OSError:
                assert process.poll() is None, log_path.read_text()
                return False

        wait_for(healthy, timeout=30, message="the operator's /healthz")
        kube.create("sipreg.io/v1alpha1/sipdomains", {
            "apiVersion": "sipreg.io/v1alpha1", "kind": "SipDomain", "metadata": {"name": "d", "namespace": NAMESPACE},
            "spec": {"domain": "sip.example.test"}}, NAMESPACE)
        wait_for(lambda: kube.find("apps/v1/deployments", "d-registrar", NAMESPACE), timeout=20,
                 message="the Deployment made by the operator process")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0, log_path.read_text()
    calls = operator_calls(kubernetes_api)

    namespaces = {("list", "", "namespaces"), ("watch", "", "namespaces")}
    assert namespaces <= set(calls), sorted(calls)
    objects = render((EXTERNAL_ETCD_VALUES,))  # these values watch [voip]
    grants = granted(one(objects, "ClusterRole")) | granted(one(objects, "Role"))
    refused = {term: examples[:2] for term, examples in calls.items() if term not in grants}
    assert not refused, f"the operator made calls its ClusterRole does not allow: {refused}"
    # Cluster-wide (the default values), kopf never touches Namespaces, and the chart does not grant them.
    assert not namespaces & granted(one(render(), "ClusterRole"))
