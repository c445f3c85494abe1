"""The self-signed certificate `sipreg serve` makes without --tls-cert: a TLS server's, not an authority's."""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from registrar.tls import self_signed_context, self_signed_pem


def test_the_self_signed_certificate_is_no_ca_and_serves_tls_only() -> None:
    cert_pem, _ = self_signed_pem(["sip.example.test", "localhost", "127.0.0.1"])
    certificate = x509.load_pem_x509_certificate(cert_pem)
    constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca is False
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    assert not (usage.value.key_cert_sign or usage.value.crl_sign or usage.value.key_encipherment)
    extended = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(extended) == [ExtendedKeyUsageOID.SERVER_AUTH]
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["sip.example.test", "localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]


def test_a_client_that_pins_the_certificate_completes_a_handshake(tmp_path: Path) -> None:
    """CA:FALSE must not cost the one way to trust it: putting the certificate itself in the client's trust store."""
    cert_pem, key_pem = self_signed_pem(["sip.example.test"])
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(key_pem)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    client_context = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    assert handshake(client_context, server_context, "sip.example.test")
    # And a different self-signed certificate (what the throw-away context holds) is refused.
    assert not handshake(client_context, self_signed_context(["sip.example.test"]), "sip.example.test")


def handshake(client_context: ssl.SSLContext, server_context: ssl.SSLContext, server_name: str) -> bool:
    """A TLS handshake between the two contexts over memory buffers; False when the client refuses the server."""
    client_in, client_out, server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context.wrap_bio(client_in, client_out, server_hostname=server_name)
    server = server_context.wrap_bio(server_in, server_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, end in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLCertVerificationError:
                    return False
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if all(done.values()):
            return True
    raise AssertionError("the handshake neither completed nor failed")
