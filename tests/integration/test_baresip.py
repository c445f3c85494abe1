"""A real baresip registers to a real `sipreg serve` over UDP, TCP and TLS, and unregisters on quit."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from tests.integration.baresip import BARESIP, Baresip

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.access(BARESIP, os.X_OK), reason=f"{BARESIP} not installed (Debian package baresip-core)"),
]

DOMAIN = "sip.example.test"
ALICE = f"alice@{DOMAIN}"
ALICE_PASSWORD = "alice-secret-1"  # manifests/connections.yaml, Secret alice-sip


def proxy_port(registrar, transport: str) -> int:
    return registrar.tls_port if transport == "tls" else registrar.sip_port


def alice_via(registrar, tmp_path: Path, transport: str, password: str = ALICE_PASSWORD) -> Baresip:
    return Baresip(
        tmp_path / f"baresip-{transport}",
        user="alice", password=password, domain=DOMAIN,
        proxy_host=registrar.host, proxy_port=proxy_port(registrar, transport), transport=transport,
    )


def registrations(registrar, status: int) -> float:
    """sipreg_registrations_total{domain="sip.example.test",status=...}; 0 before the first such answer."""
    pattern = rf'^sipreg_registrations_total\{{(?=[^}}]*domain="{re.escape(DOMAIN)}")(?=[^}}]*status="{status}")[^}}]*\}} (\S+)$'
    match = re.search(pattern, registrar.metrics(), re.M)
    return float(match.group(1)) if match else 0.0


def wait_until(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_baresip_registers_and_unregisters(registrar, tmp_path: Path, transport: str) -> None:
    ua = alice_via(registrar, tmp_path, transport)
    with ua:
        registered = ua.wait_registered(timeout=15)
        assert registered.group("transport") == transport.upper(), registered.group(0)

        bindings = registrar.bindings(ALICE)
        assert len(bindings) == 1, (bindings, ua.log())
        binding = bindings[0]
        assert binding["aor"] == ALICE
        assert binding["transport"] == transport, binding
        assert "baresip" in binding["userAgent"], binding
        assert re.fullmatch(r"sip:alice[^@]*@127\.0\.0\.1:\d+(;.*)?", binding["contact"]), binding
        if transport != "udp":
            assert f";transport={transport}" in binding["contact"].lower(), binding
        assert binding["source"].startswith(f"{transport}:127.0.0.1:"), binding
        assert 0 < binding["expires"] <= 600, binding
        assert f"Call-ID: {binding['callId']}" in ua.log(), binding
        if transport in ("tcp", "tls"):
            assert binding["flow"], binding

        returncode = ua.stop()

    log = ua.log()
    assert returncode == 0, log
    # baresip 1.0.0 unregisters on SIGTERM: REGISTER with expires=0, challenged, retried, 200 OK.
    after_quit = log.partition("terminated by signal")[2]
    assert re.search(r"^Contact: <sip:alice[^>]*>;expires=0$", after_quit, re.M), log
    assert "SIP/2.0 200 OK" in after_quit, log
    assert registrar.bindings(ALICE) == [], log


def test_baresip_with_wrong_password_is_challenged_until_locked_out_and_gets_no_binding(
    registrar, tmp_path: Path
) -> None:
    challenged_before = registrations(registrar, 401)
    refused_before = registrations(registrar, 403)
    accepted_before = registrations(registrar, 200)

    with alice_via(registrar, tmp_path, "udp", password="not-alices-password") as ua:
        failed = ua.wait_registration_failed(timeout=15)
        assert failed.group("status") == "403", failed.group(0)
        assert "Too Many Failed Authentications" in failed.group(0)
        assert registrar.bindings(ALICE) == [], ua.log()
        log = ua.log()

    # The first REGISTER is challenged, and each retry with the wrong digest is answered 401 again
    # until the fifth failure from this address (the default lockout) is answered 403.
    assert registrations(registrar, 401) == challenged_before + 5, log
    assert registrations(registrar, 403) == refused_before + 1, log
    assert registrations(registrar, 200) == accepted_before, log
    assert re.search(r"^Authorization: Digest username=\"alice\"", log, re.M), log
    assert not re.search(r"^SIP/2.0 200 OK", log, re.M), log
    assert registrar.bindings(ALICE) == []
