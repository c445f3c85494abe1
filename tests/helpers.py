"""What the tests share: test doubles, loopback ports, a real `sipreg serve` (no test module imports another)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from registrar import sip

# The domain of the tests' catalogues (manifests/ serves it too).
DOMAIN = "sip.example.test"


class FakeClock:
    """A clock that stands still until told: a mutable float, callable like time.time."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def authorization(
    username: str,
    password: str,
    nonce: str,
    nc: int,
    *,
    realm: str = DOMAIN,
    uri: str = f"sip:{DOMAIN}",
    cnonce: str = "0a4f113b",
    method: str = "REGISTER",
) -> str:
    """An Authorization value per RFC 2617 3.2.2 (MD5, qop=auth), computed with hashlib."""
    md5 = lambda text: hashlib.md5(text.encode()).hexdigest()  # noqa: E731
    ha1 = md5(f"{username}:{realm}:{password}")
    ha2 = md5(f"{method}:{uri}")
    nc_text = f"{nc:08x}"
    response = md5(f"{ha1}:{nonce}:{nc_text}:{cnonce}:auth:{ha2}")
    return (
        f'Digest username="{username}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
        f'response="{response}", algorithm=MD5, cnonce="{cnonce}", qop=auth, nc={nc_text}'
    )


ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"

# A test that swaps a function of the SIP core to watch it being called: compiled code calls its
# module's functions directly, so the swap would not be seen (the pure-Python pass runs these).
# (`make test` runs the unit tests and a few integration tests a second time on the compiled form.)
pure_python_only = pytest.mark.skipif(
    sip.COMPILED, reason="patches a function the compiled SIP core calls directly; the pure-Python pass runs it"
)
# The bindings API's bearer token of the registrars tests start (it is off without one).
API_TOKEN = "test-token-0123456789abcdef"


def manifests_with_security(directory: Path, security: dict) -> Path:
    """manifests/ copied to `directory`, sip.example.test's SipDomain with `security` as its spec.security."""
    return manifests_with_domain_spec(directory, security=security)


def manifests_with_domain_spec(directory: Path, **sections: dict) -> Path:
    """manifests/ copied to `directory`, sip.example.test's SipDomain with `sections` in its spec (security=...)."""
    import yaml

    directory.mkdir(parents=True, exist_ok=True)
    for source in sorted(MANIFESTS.glob("*.yaml")):
        documents = list(yaml.safe_load_all(source.read_text()))
        for document in documents:
            if document and document.get("kind") == "SipDomain" and document["spec"]["domain"] == "sip.example.test":
                document["spec"].update(sections)
        (directory / source.name).write_text(yaml.safe_dump_all(documents))
    return directory


def one_domain_manifests(path: Path, security: str, user: str, password: str) -> Path:
    """`path` (a YAML file) made a catalogue of sip.example.test alone, with `user` and `password`, and
    `security` as its spec.security (YAML flow style): for tests that need no other domain's or
    connection's settings (manifests/ trusts loopback through its `ip` connection)."""
    path.write_text(f"""
apiVersion: sipreg.io/v1alpha1
kind: SipDomain
metadata: {{name: sip-example-test, namespace: voip}}
spec:
  domain: sip.example.test
  registration: {{enabled: true}}
  security: {security}
---
apiVersion: v1
kind: Secret
metadata: {{name: {user}-sip, namespace: voip}}
stringData: {{password: {password}}}
---
apiVersion: sipreg.io/v1alpha1
kind: SipConnection
metadata: {{name: {user}, namespace: voip}}
spec:
  domain: sip.example.test
  username: {user}
  authentication: {{type: credentials, passwordSecretRef: {{name: {user}-sip}}}}
""")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on `host` (SIP uses both on one port)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


@dataclass
class RunningRegistrar:
    process: subprocess.Popen
    host: str  # SIP's
    sip_port: int
    tls_port: int
    http_port: int
    log_path: Path
    http_host: str = "127.0.0.1"
    api_token: str | None = None
    ws_port: int = 0
    wss_port: int = 0

    def http_request(self, path: str, token: str | None = None) -> urllib.request.Request:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return urllib.request.Request(f"http://{self.http_host}:{self.http_port}{path}", headers=headers)

    def api(self, path: str) -> dict:
        """GET `path` as JSON, with the registrar's bearer token."""
        with urllib.request.urlopen(self.http_request(path, self.api_token), timeout=5) as response:
            return json.load(response)

    def bindings(self, aor: str | None = None) -> list[dict]:
        return self.api(f"/api/v1/bindings/{aor}" if aor else "/api/v1/bindings")["bindings"]

    def metrics(self) -> str:
        with urllib.request.urlopen(self.http_request("/metrics"), timeout=5) as response:
            return response.read().decode()

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample of /metrics now (None when there is no such series)."""
        return sample_value(self.metrics(), name, **labels)

    def log(self) -> str:
        return self.log_path.read_text()


def sample_value(exposition: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name{labels}` (exactly those labels) in a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


def start_registrar(
    tmp_path: Path, *extra: str, manifests: Path | None = MANIFESTS, wrapper: list[str] | None = None,
    ready_timeout: float = 20, command_name: str = "serve", host: str = "127.0.0.1", http_host: str | None = None,
    api_token: str | None = API_TOKEN,
) -> RunningRegistrar:
    """Start `sipreg serve` (or `sipreg registrar`, as pods do); `wrapper` prefixes the command (taskset).

    SIP listens on `host`, HTTP on `http_host` (None: the default, loopback); the bindings API
    takes `api_token` from a file (None: the API is off).
    """
    # Five ports, each free when asked for but none held: the kernel may hand one out twice, so ask again.
    while True:
        sip_port, tls_port, ws_port, wss_port = (free_port(host) for _ in range(4))
        http_port = free_port(http_host or "127.0.0.1")
        if len({sip_port, tls_port, ws_port, wss_port, http_port}) == 5:
            break
    log_path = tmp_path / f"sipreg-{sip_port}.log"
    token_options = []
    if api_token is not None:
        token_file = tmp_path / f"api-token-{sip_port}"
        token_file.write_text(api_token + "\n")
        token_options = ["--api-token-file", str(token_file)]
    command = [
        # -P: the registrar is imported from sys.path, not from the working directory (ROOT), so that
        # PYTHONPATH can name the compiled build (`make test`'s second pass, `make bench`).
        *(wrapper or []), sys.executable, "-P", "-m", "registrar.cli", command_name,
        *(["--manifests", str(manifests)] if manifests else []), "--host", host,
        *(["--http-host", http_host] if http_host else []),
        "--sip-port", str(sip_port), "--tls-port", str(tls_port), "--http-port", str(http_port),
        "--ws-port", str(ws_port), "--wss-port", str(wss_port),
        *token_options, *extra,
    ]
    log_file = open(log_path, "w")
    process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT)
    log_file.close()
    registrar = RunningRegistrar(
        process, host, sip_port, tls_port, http_port, log_path, http_host or "127.0.0.1", api_token,
        ws_port, wss_port,
    )
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sipreg {command_name} exited with {process.returncode}:\n{registrar.log()}")
        try:
            if registrar.api("/readyz")["ready"]:
                check_sip_core(registrar)
                return registrar
        except OSError:
            pass  # not listening yet
        time.sleep(0.05)
    stop_registrar(registrar)
    raise RuntimeError(f"sipreg {command_name} did not become ready:\n{registrar.log()}")


def check_sip_core(registrar: RunningRegistrar) -> None:
    """Raise unless `registrar` runs the form of the SIP core this process imports (PYTHONPATH reaches it)."""
    form = "compiled" if sip.COMPILED else "python"
    if sample_value(registrar.metrics(), "sipreg_build_info", sip_core=form) != 1:
        stop_registrar(registrar)
        raise RuntimeError(f"sipreg does not run the {form} SIP core that the tests import")


def stop_registrar(registrar: RunningRegistrar) -> None:
    if registrar.process.poll() is None:
        registrar.process.send_signal(signal.SIGTERM)
        try:
            registrar.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            registrar.process.kill()
            registrar.process.wait()


@contextlib.contextmanager
def serving(tmp_path: Path, *extra: str, **kwargs) -> Iterator[RunningRegistrar]:
    """start_registrar(tmp_path, *extra, **kwargs) for the block; stopped after, and no traceback in its log."""
    running = start_registrar(tmp_path, *extra, **kwargs)
    try:
        yield running
    finally:
        stop_registrar(running)
        assert "Traceback" not in running.log(), running.log()
