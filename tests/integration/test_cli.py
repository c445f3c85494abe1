"""`sipreg serve` as a user runs it: start-up errors, listener lines, health endpoints, clean stop."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import MANIFESTS, ROOT, RunningRegistrar, start_registrar

pytestmark = pytest.mark.integration


def serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "registrar.cli", "serve", *args], cwd=ROOT, capture_output=True, text=True, timeout=30
    )


def test_a_malformed_manifest_stops_start_up_naming_file_object_and_field(tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, manifests)
    domain = manifests / "sip-example-test.yaml"
    domain.write_text(domain.read_text().replace("minExpires: 60", "minExpires: sixty"))
    result = serve("--manifests", str(manifests), "--sip-port", "0", "--tls-port", "0", "--http-port", "0")
    assert result.returncode == 2
    assert f"{domain}: SipDomain voip/sip-example-test: spec.registration.minExpires:" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_manifest_directory_is_named(tmp_path: Path) -> None:
    result = serve("--manifests", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert f"{tmp_path / 'nowhere'}: no such file or directory" in result.stderr


def test_a_port_in_use_is_a_clear_error(registrar: RunningRegistrar, tmp_path: Path) -> None:
    result = serve("--sip-port", str(registrar.sip_port), "--tls-port", "0", "--http-port", "0")
    assert result.returncode == 1
    assert result.stderr.startswith("sipreg serve: ") and "Traceback" not in result.stderr


def test_listeners_are_logged_health_answers_and_sigint_stops_cleanly(tmp_path: Path) -> None:
    running = start_registrar(tmp_path)
    try:
        log = running.log()
        for transport, port in (("udp", running.sip_port), ("tcp", running.sip_port), ("tls", running.tls_port),
                                ("http", running.http_port)):
            assert f"sipreg: listening on {transport} 127.0.0.1:{port}" in log
        assert running.api("/healthz") == {"status": "ok"}
        assert running.api("/readyz") == {"ready": True}
        assert "# TYPE sipreg_bindings gauge" in running.metrics()
        with pytest.raises(urllib.error.HTTPError) as caught:
            running.api("/api/v1/bindings/not-an-aor")
        assert caught.value.code == 400
    finally:
        running.process.send_signal(signal.SIGINT)
        assert running.process.wait(timeout=10) == 0
    assert "sipreg: stopping" in running.log()
    assert "Traceback" not in running.log()
