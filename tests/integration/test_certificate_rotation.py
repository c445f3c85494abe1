"""A renewed TLS certificate is served without a restart, and without dropping a connection.

The files are laid out as the kubelet mounts a Secret (tls.crt and tls.key are links into a
`..data` directory link) and renewed as it renews one (a new directory, then `..data` swapped in
one rename): a client connected before keeps its connection and is served on it; a new one is
shown the new certificate. A pair that does not load (a key that is not the certificate's) is
refused whole and the renewed certificate stays in service.
"""

from __future__ import annotations

import os
import socket
import ssl
import time
import uuid
from pathlib import Path

import pytest
from cryptography import x509

from tests.helpers import DOMAIN, RunningRegistrar, serving
from tests.integration.sip_client import read_response, status_of
from tests.pki import CertFiles, CertificateAuthority

pytestmark = pytest.mark.integration


def mount(directory: Path, certificate: CertFiles, generation: int) -> None:
    """Put `certificate` in `directory` the kubelet's way: a fresh data directory, swapped in by one rename."""
    data = directory / f"..{generation}"
    data.mkdir()
    (data / "tls.crt").write_bytes(certificate.cert.read_bytes())
    (data / "tls.key").write_bytes(certificate.key.read_bytes())
    (directory / "..data_tmp").symlink_to(data.name)
    os.replace(directory / "..data_tmp", directory / "..data")
    for name in ("tls.crt", "tls.key"):
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(f"..data/{name}")


def serial_shown(registrar: RunningRegistrar, context: ssl.SSLContext) -> tuple[ssl.SSLSocket, int]:
    connection = context.wrap_socket(
        socket.create_connection((registrar.host, registrar.tls_port), timeout=5), server_hostname=DOMAIN
    )
    return connection, x509.load_der_x509_certificate(connection.getpeercert(binary_form=True)).serial_number


def serial_of(certificate: CertFiles) -> int:
    return x509.load_pem_x509_certificate(certificate.cert.read_bytes()).serial_number


def challenged(connection: ssl.SSLSocket) -> bool:
    """A REGISTER on the connection gets its 401: the connection is alive and served."""
    port = connection.getsockname()[1]
    connection.sendall(
        (
            f"REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:{port};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:alice@{DOMAIN}>;tag=1\r\nTo: <sip:alice@{DOMAIN}>\r\n"
            f"Call-ID: {uuid.uuid4().hex}\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@127.0.0.1:{port};transport=tls>\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
    )
    return status_of(read_response(connection)) == 401


def wait_for_log(registrar: RunningRegistrar, text: str, count: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while registrar.log().count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} not logged {count} times:\n{registrar.log()}"
        time.sleep(0.05)


def test_a_renewed_certificate_is_served_to_new_connections_and_open_ones_keep_theirs(tmp_path: Path) -> None:
    pki = CertificateAuthority(tmp_path / "pki")
    first, renewed = (pki.issue(name, server_names=[DOMAIN, "127.0.0.1"]) for name in ("first", "renewed"))
    mounted = tmp_path / "sip-tls"
    mounted.mkdir()
    mount(mounted, first, 1)
    context = ssl.create_default_context(cafile=str(first.ca))
    with serving(tmp_path, "--tls-cert", str(mounted / "tls.crt"), "--tls-key", str(mounted / "tls.key"),
                 "--certificate-check-seconds", "0.2") as registrar:
        early, shown = serial_shown(registrar, context)
        with early:
            assert shown == serial_of(first)

            mount(mounted, renewed, 2)
            wait_for_log(registrar, "reloaded the TLS certificate", 1)
            late, shown = serial_shown(registrar, context)
            with late:
                assert shown == serial_of(renewed)
                assert challenged(late)
            assert challenged(early)  # the connection made before the renewal, on its old certificate

            # A certificate with another's key: refused whole, the renewed one stays in service.
            broken = tmp_path / "broken"
            broken.mkdir()
            (broken / "tls.crt").write_bytes(first.cert.read_bytes())
            (broken / "tls.key").write_bytes(renewed.key.read_bytes())
            mount(mounted, CertFiles(first.ca, broken / "tls.crt", broken / "tls.key"), 3)
            wait_for_log(registrar, "not reloaded", 1)
            later, shown = serial_shown(registrar, context)
            with later:
                assert shown == serial_of(renewed)
                assert challenged(later)
            assert challenged(early)
            assert registrar.log().count("not reloaded") == 1  # said once, not at every check
