"""TLS server contexts for SIP over TLS: from the operator's certificate, or self-signed for a laptop."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


log = logging.getLogger("sipreg")


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


class RotatingCertificate:
    """A server context whose certificate follows its files, for a certificate that is renewed in place
    (cert-manager renews the Secret; the kubelet swaps the mounted files, both at once).

    `reload_if_changed` loads a changed pair into the same context: handshakes from then on present the
    new certificate, and connections already open keep the one they were made with (OpenSSL gives each
    connection its own copy). A pair that does not load (a key that does not match, a half-written file)
    is refused whole, checked on a context of its own first, and the one in service stays.
    """

    def __init__(self, cert_file: str, key_file: str):
        self.cert_file = cert_file
        self.key_file = key_file
        self._loaded = self._read()
        self._refused: tuple[bytes, bytes] | None = None  # the last pair that did not load: said once
        self.context = server_context(cert_file, key_file)

    def _read(self) -> tuple[bytes, bytes]:
        with open(self.cert_file, "rb") as cert, open(self.key_file, "rb") as key:
            return cert.read(), key.read()

    def reload_if_changed(self) -> bool:
        """Whether a new certificate was loaded; a failure is logged and leaves the old one in service."""
        files = None
        try:
            files = self._read()
            if files == self._loaded or files == self._refused:
                return False
            server_context(self.cert_file, self.key_file)  # loads, key matching, or raises
            self.context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as error:
            if files is None or files != self._refused:
                log.warning("sipreg: TLS certificate %s not reloaded (%s); serving the previous one",
                            self.cert_file, error)
            self._refused = files
            return False
        self._loaded = files
        log.info("sipreg: reloaded the TLS certificate from %s", self.cert_file)
        return True


def subject_alt_names(names: list[str]) -> list[x509.GeneralName]:
    """A certificate's subjectAltName entries: IP addresses as such, everything else as a DNS name."""
    alt_names: list[x509.GeneralName] = []
    for name in names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt_names.append(x509.DNSName(name))
    return alt_names


def self_signed_pem(names: list[str]) -> tuple[bytes, bytes]:
    """A fresh EC key and a one-year self-signed certificate for `names` (DNS names or IPs)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    alt_names = subject_alt_names(names)
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        # A server's certificate, not an authority: its key signs TLS handshakes and nothing else, so
        # a client that trusts it (pins it) trusts no certificate the key might otherwise sign.
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert_pem, key_pem


def self_signed_context(names: list[str]) -> ssl.SSLContext:
    """A server context with a throw-away certificate (ssl only loads chains from files)."""
    cert_pem, key_pem = self_signed_pem(names)
    with tempfile.TemporaryDirectory(prefix="sipreg-tls-") as directory:
        cert_file = os.path.join(directory, "cert.pem")
        key_file = os.path.join(directory, "key.pem")
        with open(cert_file, "wb") as f:
            f.write(cert_pem)
        with open(os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
            f.write(key_pem)
        return server_context(cert_file, key_file)
