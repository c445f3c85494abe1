"""etcd over TLS with client certificates (--client-cert-auth): the store, the session's refusals, `sipreg registrar`.

A real etcd serves TLS with certificates a throw-away CA (tests/pki.py) made, as the chart's
etcd does with `etcd.tls` on; clients read their CA, certificate and key from files, as a pod
reads the mounted Secret.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from registrar.model import Binding
from registrar.store import layout
from registrar.store.etcd import EtcdStore
from registrar.store.etcd_session import EtcdSession, EtcdTls, EtcdUnavailable, parse_endpoints
from tests.etcd_server import ETCD, INSTALL_HINT, EtcdServer, EtcdServerTls, records
from tests.helpers import start_registrar, stop_registrar
from tests.pki import CertFiles, CertificateAuthority

pytestmark = pytest.mark.integration

ALICE = "alice@sip.example.test"


def tls_environment(files: CertFiles) -> dict[str, str]:
    return {"SIPREG_ETCD_CA": str(files.ca), "SIPREG_ETCD_CERT": str(files.cert), "SIPREG_ETCD_KEY": str(files.key)}


@pytest.fixture
def pki(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path / "pki")


@pytest.fixture
def tls_etcd(tmp_path: Path, pki: CertificateAuthority) -> Iterator[EtcdServer]:
    if ETCD is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    # Both usages: etcd's own gRPC gateway dials etcd with the server certificate as its client one.
    tls = EtcdServerTls(server=pki.issue("etcd", server_names=["127.0.0.1", "localhost"], client=True),
                        probe_client=pki.issue("probe", client=True))
    with EtcdServer(tmp_path, tls=tls) as server:
        yield server


async def test_the_store_reads_and_writes_over_tls_with_a_client_certificate(tls_etcd, pki):
    client = EtcdTls.from_environment(tls_environment(pki.issue("registrar", client=True)))
    store = EtcdStore(EtcdSession(parse_endpoints(tls_etcd.url), timeout=2.0, tls=client),
                      node="tls-node", node_address="127.0.0.1", sip_port=5060)
    await store.start(wait=10)
    try:
        assert store.ready
        now = time.time()
        await store.update(ALICE, lambda current: [Binding(ALICE, "sip:alice@192.0.2.1", now + 300, "c1", 1,
                                                           registered_at=now)])
        stored = await records(tls_etcd.url, layout.BINDINGS, tls=client)
        assert list(stored) == [layout.bindings_key(ALICE)]
    finally:
        await store.close()


async def assert_refused(url: str, tls: EtcdTls | None) -> None:
    session = EtcdSession(parse_endpoints(url), timeout=1.0, tls=tls)
    try:
        with pytest.raises(EtcdUnavailable):
            await session.connect()
    finally:
        await session.close()


@pytest.mark.parametrize("client", ["plain text", "no client certificate", "certificate from another CA"])
async def test_etcd_refuses_clients_without_a_certificate_it_trusts(tls_etcd, pki, tmp_path, client):
    """What etcd's --client-cert-auth is for: only holders of a certificate from its CA get in."""
    if client == "plain text":
        tls = None
    elif client == "no client certificate":
        tls = EtcdTls.from_environment({"SIPREG_ETCD_CA": str(pki.ca_file)})
    else:
        stranger = CertificateAuthority(tmp_path / "other-ca", name="another CA").issue("intruder", client=True)
        tls = EtcdTls.from_environment({**tls_environment(stranger), "SIPREG_ETCD_CA": str(pki.ca_file)})
    await assert_refused(tls_etcd.url, tls)


async def test_a_server_certificate_from_another_ca_is_not_trusted(tls_etcd, pki, tmp_path):
    """The client checks etcd too: a CA that did not sign etcd's certificate makes the connection fail."""
    stranger = CertificateAuthority(tmp_path / "other-ca", name="another CA")
    tls = EtcdTls.from_environment({**tls_environment(pki.issue("registrar", client=True)),
                                    "SIPREG_ETCD_CA": str(stranger.ca_file)})
    await assert_refused(tls_etcd.url, tls)


def test_sipreg_registrar_connects_with_the_files_the_environment_names(tls_etcd, pki, tmp_path, monkeypatch):
    """What a registrar pod does with the mounted Secret: SIPREG_ETCD_CA/_CERT/_KEY, then ready."""
    for variable, value in tls_environment(pki.issue("registrar", client=True)).items():
        monkeypatch.setenv(variable, value)
    registrar = start_registrar(tmp_path, "--store", tls_etcd.url, manifests=None, command_name="registrar")
    try:
        assert registrar.api("/readyz")["ready"]
        assert f"connected to etcd at {tls_etcd.endpoint} over TLS" in registrar.log()
    finally:
        stop_registrar(registrar)
    assert "Traceback" not in registrar.log(), registrar.log()


def test_tls_settings_from_the_environment(tmp_path):
    """None without variables; a missing file or a certificate without its key is an error naming it."""
    assert EtcdTls.from_environment({}) is None
    ca = tmp_path / "ca.crt"
    ca.write_bytes(b"PEM")
    assert EtcdTls.from_environment({"SIPREG_ETCD_CA": str(ca)}) == EtcdTls(ca=b"PEM")
    with pytest.raises(ValueError, match=r"SIPREG_ETCD_CERT: cannot read .*/missing\.crt"):
        EtcdTls.from_environment({"SIPREG_ETCD_CERT": str(tmp_path / "missing.crt"), "SIPREG_ETCD_KEY": str(ca)})
    with pytest.raises(ValueError, match="go together"):
        EtcdTls.from_environment({"SIPREG_ETCD_CERT": str(ca)})
