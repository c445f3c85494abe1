"""`sipreg serve` as a user runs it: start-up errors, listener lines, health endpoints, the HTTP side, clean stop."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from registrar.cli import build_parser
from tests.helpers import API_TOKEN, MANIFESTS, ROOT, RunningRegistrar, serving, start_registrar

pytestmark = pytest.mark.integration


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "registrar.cli", "serve", *args], cwd=ROOT, capture_output=True, text=True, timeout=30,
        env={**os.environ, **(env or {})},
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
    # The last line says it (log lines of the start may come before).
    assert result.stderr.splitlines()[-1] == "sipreg serve: [Errno 98] Address already in use"
    assert "Traceback" not in result.stderr


def test_listeners_are_logged_health_answers_and_sigint_stops_cleanly(tmp_path: Path) -> None:
    running = start_registrar(tmp_path)
    try:
        log = running.log()
        for transport, port in (("udp", running.sip_port), ("tcp", running.sip_port), ("tls", running.tls_port),
                                ("ws", running.ws_port), ("wss", running.wss_port), ("http", running.http_port)):
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


def test_http_listens_on_loopback_whatever_the_sip_address_and_without_a_token_has_no_bindings_api(
    tmp_path: Path,
) -> None:
    with serving(tmp_path, host="127.0.0.2", api_token=None) as running:
        log = running.log()
        assert f"sipreg: listening on udp 127.0.0.2:{running.sip_port}" in log
        assert f"sipreg: listening on http 127.0.0.1:{running.http_port} (bindings API off: no token)" in log
        assert running.api("/healthz") == {"status": "ok"}  # on 127.0.0.1
        # Whoever reaches the SIP address finds no HTTP there.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.2", running.http_port), timeout=3).close()
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(running.http_request("/api/v1/bindings", API_TOKEN), timeout=5)
        assert caught.value.code == 404
    # A pod's registrar listens for SIP everywhere, and for HTTP on loopback unless told its pod IP.
    pod = build_parser().parse_args(["registrar"])
    assert (pod.host, pod.http_hosts) == ("0.0.0.0", None)  # None: DEFAULT_HTTP_HOSTS, loopback


def test_http_listens_where_told(tmp_path: Path) -> None:
    with serving(tmp_path, "--http-host", "127.0.0.4", http_host="127.0.0.3") as running:
        for host in ("127.0.0.3", "127.0.0.4"):
            listening = f"sipreg: listening on http {host}:{running.http_port} (bindings API on, bearer token)"
            assert listening in running.log()
            with urllib.request.urlopen(f"http://{host}:{running.http_port}/readyz", timeout=5) as response:
                assert response.status == 200
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", running.http_port), timeout=3).close()


def test_the_bindings_api_answers_the_token_of_the_file_only(registrar: RunningRegistrar) -> None:
    for token in (None, "not-the-token-0123456789"):
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(registrar.http_request("/api/v1/bindings", token), timeout=5)
        assert caught.value.code == 401 and caught.value.headers["WWW-Authenticate"].startswith("Bearer ")
        assert caught.value.headers["Server"] == "sipreg"
    with urllib.request.urlopen(registrar.http_request("/api/v1/bindings", API_TOKEN), timeout=5) as response:
        assert response.status == 200 and response.headers["Server"] == "sipreg"
    assert registrar.bindings() == []


def test_a_bad_api_token_stops_start_up_naming_where_it_came_from(tmp_path: Path) -> None:
    missing = tmp_path / "no-token"
    result = serve("--api-token-file", str(missing))
    assert result.returncode == 2
    assert result.stderr.strip() == f"sipreg serve: --api-token-file {missing}: No such file or directory"
    short = tmp_path / "short-token"
    short.write_text("secret\n")
    result = serve("--api-token-file", str(short))
    assert result.returncode == 2
    assert f"--api-token-file {short}: the token has 6 characters; use at least 16" in result.stderr
    result = serve(env={"SIPREG_API_TOKEN": "has spaces in it, 0123456789"})
    assert result.returncode == 2 and "$SIPREG_API_TOKEN: the token may hold only letters" in result.stderr
    result = serve("--api-token-file", str(short), env={"SIPREG_API_TOKEN": API_TOKEN})
    assert result.returncode == 2 and "--api-token-file and $SIPREG_API_TOKEN both give a token" in result.stderr
