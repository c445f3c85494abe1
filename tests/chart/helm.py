"""A real helm for the chart tests: found on PATH or in .tools/bin (`make helm` puts it there), and run.

No helm fails the test rather than skipping it: `make test` (and so CI) installs one, and a skip
would hide that the chart went unrendered.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import ROOT

CHART = ROOT / "charts" / "sipreg"
EXTERNAL_ETCD_VALUES = CHART / "ci" / "external-etcd-values.yaml"
INSTALL_HINT = "helm not found on PATH nor in .tools/bin: `make helm` (part of `make test`) installs it"
RELEASE, NAMESPACE = "sipreg", "sipreg-system"
MONITOR_APIS = ("monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PodMonitor")
CERT_MANAGER_API = "cert-manager.io/v1"


def helm_binary() -> str:
    found = shutil.which("helm")
    if found:
        return found
    local = ROOT / ".tools" / "bin" / "helm"
    if local.is_file():
        return str(local)
    pytest.fail(INSTALL_HINT, pytrace=False)


def helm(*args: str | Path) -> str:
    """helm's output; a failure raises AssertionError with helm's own message."""
    result = subprocess.run([helm_binary(), *map(str, args)], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise AssertionError(f"helm {' '.join(map(str, args))} failed ({result.returncode}):\n{result.stderr}{result.stdout}")
    return result.stdout


def template_args(values: tuple[str | Path, ...] = (), monitors: bool = False, sets: tuple[str, ...] = (),
                  chart: Path = CHART, cert_manager: bool = False) -> list[str | Path]:
    """`helm template` arguments; `monitors` and `cert_manager` make the cluster serve those APIs."""
    args: list[str | Path] = ["template", RELEASE, chart, "--namespace", NAMESPACE]
    for path in values:
        args += ["--values", path]
    for item in sets:
        args += ["--set", item]
    for api in (*(MONITOR_APIS if monitors else ()), *((CERT_MANAGER_API,) if cert_manager else ())):
        args += ["--api-versions", api]
    return args


@functools.cache
def render_text(values: tuple[str, ...] = (), monitors: bool = False, sets: tuple[str, ...] = (),
                chart: str = str(CHART), cert_manager: bool = False) -> str:
    """`helm template`'s output (helm runs once per arguments: the chart's generated certificates differ
    from one run to the next, so every test sees the same ones for the same arguments)."""
    return helm(*template_args(values, monitors, sets, Path(chart), cert_manager))


def render(values: tuple[str | Path, ...] = (), monitors: bool = False, sets: tuple[str, ...] = (),
           chart: Path = CHART, cert_manager: bool = False) -> list[dict[str, Any]]:
    """`helm template` of the chart, as objects (a fresh copy each call)."""
    text = render_text(tuple(map(str, values)), monitors, sets, str(chart), cert_manager)
    return [document for document in yaml.safe_load_all(text) if document]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one rendered object of `kind` (and `name`)."""
    found = [obj for obj in objects if obj["kind"] == kind and (name is None or obj["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, rendered: {[(o['kind'], o['metadata']['name']) for o in objects]}"
    return found[0]
