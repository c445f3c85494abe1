"""checkov, a CIS-benchmark scanner, on the rendered chart: the security checks pass, and the few left failing say why.

`make checkov` (part of `make test`) installs checkov (pinned, Makefile CHECKOV_VERSION) in its own
venv under .tools; no checkov fails the test rather than skipping it, as for helm. Each scenario is
rendered by the real helm, written to a file and scanned (`--framework kubernetes`, `--skip-download`:
nothing leaves the machine). Every failed check must be in LEFT_FAILING, with the reason it stays, and
the checks this chart's etcd TLS and NetworkPolicies are for must have run and passed on their
objects. ci/hardened-values.yaml shows that what LEFT_FAILING leaves to the user passes once set,
all but the operator's service-account token, which it needs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.chart.helm import CHART, EXTERNAL_ETCD_VALUES, NAMESPACE, ROOT, render_text

HARDENED_VALUES = CHART / "ci" / "hardened-values.yaml"
INSTALL_HINT = "checkov not found in .tools/checkov nor on PATH: `make checkov` (part of `make test`) installs it"

# check_id -> why the default rendering fails it on purpose.
LEFT_FAILING = {
    "CKV_K8S_11":
        "CPU limits: a CFS quota stalls a busy process for the rest of each 100 ms period, which lands on SIP "
        "retransmission timers and etcd heartbeats; requests reserve the CPU instead. Set operator.resources, "
        "etcd.bundled.resources and registrar.resources limits to have them (ci/hardened-values.yaml does).",
    "CKV_K8S_43":
        "Image digest: the chart's defaults name release tags, whose digests a chart cannot know before the "
        "images are built. Pin them with image.tag / etcd.bundled.image.tag = TAG@sha256:DIGEST.",
    "CKV_K8S_15":
        "Pull policy Always: with a release tag or a digest, IfNotPresent runs the same bytes without making "
        "every pod start depend on the registry. Set image.pullPolicy / etcd.bundled.image.pullPolicy to Always "
        "on nodes shared with tenants who must not use your cached private image.",
    "CKV_K8S_38":
        "Service-account token: the operator calls the Kubernetes API (RBAC in templates/rbac.yaml), so its "
        "pod needs one; etcd and the registrar pods mount none (automountServiceAccountToken: false).",
}
# The checks this chart's security work is for: (check_id, resource prefix) that must have passed.
ETCD = f"StatefulSet.{NAMESPACE}.sipreg-etcd"
REQUIRED_PASSES = {
    ("CKV_K8S_116", ETCD): "etcd --cert-file and --key-file (TLS for clients)",
    ("CKV_K8S_117", ETCD): "etcd --client-cert-auth=true (clients need a certificate from its CA)",
    ("CKV_K8S_119", ETCD): "etcd --peer-cert-file and --peer-key-file (TLS between members)",
    ("CKV_K8S_118", ETCD): "etcd without --auto-tls (self-made certificates nobody checks)",
    ("CKV2_K8S_6", f"Pod.{NAMESPACE}.sipreg-etcd."): "a NetworkPolicy selects the etcd pods",
    ("CKV2_K8S_6", f"Pod.{NAMESPACE}.sipreg-operator."): "a NetworkPolicy selects the operator pod",
}
SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "cert-manager": {"cert_manager": True},
    "external-etcd": {"values": (str(EXTERNAL_ETCD_VALUES),)},
    "hardened": {"values": (str(HARDENED_VALUES),)},
}


def checkov_binary() -> str:
    local = ROOT / ".tools" / "checkov" / "bin" / "checkov"
    if local.is_file():
        return str(local)
    found = shutil.which("checkov")
    if found:
        return found
    pytest.fail(INSTALL_HINT, pytrace=False)


def scan(manifest: Path) -> dict[str, Any]:
    """checkov's JSON report on one file of Kubernetes objects."""
    result = subprocess.run(
        [checkov_binary(), "--file", str(manifest), "--framework", "kubernetes", "--output", "json",
         "--skip-download", "--compact"],
        capture_output=True, text=True, timeout=300, cwd=manifest.parent,
    )
    assert result.returncode in (0, 1), f"checkov failed ({result.returncode}):\n{result.stderr[-3000:]}"
    report = json.loads(result.stdout)
    (report,) = report if isinstance(report, list) else [report]
    assert report["check_type"] == "kubernetes" and report["summary"]["parsing_errors"] == 0, report["summary"]
    return report


def outcomes(report: dict[str, Any], key: str) -> set[tuple[str, str]]:
    return {(check["check_id"], check["resource"]) for check in report["results"][key]}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_checkov_passes_the_security_checks_and_fails_only_those_left_on_purpose(scenario: str, tmp_path: Path) -> None:
    manifest = tmp_path / f"{scenario}.yaml"
    manifest.write_text(render_text(**SCENARIOS[scenario]))
    report = scan(manifest)
    passed, failed = outcomes(report, "passed_checks"), outcomes(report, "failed_checks")
    assert len(passed) > 90, report["summary"]  # checkov really ran its checks on our objects

    unexplained = {(check, resource) for check, resource in failed if check not in LEFT_FAILING}
    assert not unexplained, f"checkov checks failing without a reason in LEFT_FAILING: {sorted(unexplained)}"
    if scenario == "default":  # each reason is for a real failure: one that passed would be stale
        assert {check for check, _ in failed} == set(LEFT_FAILING)
    if scenario == "hardened":
        assert failed == {("CKV_K8S_38", f"Deployment.{NAMESPACE}.sipreg-operator")}

    required = {(check, prefix) for check, prefix in REQUIRED_PASSES
                if scenario != "external-etcd" or "sipreg-etcd" not in prefix}  # no bundled etcd there
    for check, prefix in required:
        assert any(c == check and r.startswith(prefix) for c, r in passed), (
            f"{check} ({REQUIRED_PASSES[check, prefix]}) did not pass on {prefix}: "
            f"{sorted(r for c, r in failed if c == check)}")

