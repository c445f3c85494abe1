"""SIGTERM drains a registrar the Kubernetes way: not ready first, serving on, then every request in flight answered.

A rolling restart of two replicas on one etcd, behind a UDP balancer that follows /readyz as
a Service follows its endpoints, under sipp's REGISTER load: no REGISTER may go unanswered
and no acknowledged binding may be lost. And one registrar, its etcd hung, with REGISTERs on
TCP connections waiting on the store when SIGTERM comes and after its drain period: they still
get their answers, on their connections, before the process exits.
"""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.etcd_server import EtcdServer
from tests.helpers import MANIFESTS, RunningRegistrar, start_registrar, stop_registrar
from tests.integration.conftest import NONCE_SECRET
from tests.integration.sip_client import UserAgent, read_response, status_of
from tests.integration.sipp import SIPP, manifest_passwords, start_sipp, users_csv
from tests.integration.udp_balancer import UdpBalancer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(SIPP is None, reason="sipp not installed; `make test` installs Debian's sip-tester"),
]

DOMAIN = "sip.example.test"
PASSWORDS = manifest_passwords(MANIFESTS)
USERS = ["alice", "bob", "carol"]
CONTACT_PORT = "5999"  # register_auth.xml's Contact: sip:USER@127.0.0.1:5999


def readyz(registrar: RunningRegistrar) -> bool:
    try:
        return registrar.api("/readyz")["ready"]
    except urllib.error.HTTPError as error:  # 503 while not ready
        return json.load(error)["ready"]


def wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} not within {timeout} s"
        time.sleep(0.05)


def test_a_rolling_restart_under_load_loses_no_answer_and_no_binding(tmp_path: Path, etcd: EtcdServer) -> None:
    options = ["--store", etcd.url, "--nonce-secret", NONCE_SECRET, "--drain-seconds", "1"]
    started: list[RunningRegistrar] = []

    def replica() -> RunningRegistrar:
        started.append(start_registrar(tmp_path, *options, manifests=MANIFESTS if not started else None))
        return started[-1]

    try:
        with UdpBalancer("127.0.0.1") as balancer:
            old = [replica(), replica()]
            backends = [balancer.add((r.host, r.sip_port), (r.http_host, r.http_port)) for r in old]
            wait_for(lambda: all(backend.ready for backend in backends), 10, "both replicas in the balancer")
            csv = users_csv(tmp_path / "users.csv", [(user, PASSWORDS[user]) for user in USERS], DOMAIN)
            calls = 1200  # 24 s at 50/s: two replicas replaced, one after the other, meanwhile
            load = start_sipp(
                "register_auth.xml", f"127.0.0.1:{balancer.port}", workdir=tmp_path, calls=calls, rate=50,
                injection=csv, keys={"contact_port": CONTACT_PORT, "expires": "3600"}, timeout=120,
                trace_messages=False,
            )
            time.sleep(3)
            for leaving in old:
                # As a Deployment's rolling update with maxSurge 1: the new pod is ready before the old goes.
                arriving = replica()
                backend = balancer.add((arriving.host, arriving.sip_port), (arriving.http_host, arriving.http_port))
                wait_for(lambda: backend.ready, 10, "the new replica in the balancer")
                time.sleep(2)
                leaving.process.send_signal(signal.SIGTERM)
                wait_for(lambda: not readyz(leaving), 0.5, "/readyz 503 at once on SIGTERM")
                assert leaving.process.wait(timeout=20) == 0, leaving.log()
                assert "drained: every request answered" in leaving.log(), leaving.log()
            run = load.wait()
            assert (run.successful, run.failed) == (calls, 0), run.errors[-3000:]
            assert backend.datagrams > 0  # the last replica served too
            # Every user got 200s: each one's binding is in etcd, as a replica that never saw them says.
            survivor = started[-1]
            for user in USERS:
                contacts = [b["contact"] for b in survivor.bindings(f"{user}@{DOMAIN}")]
                assert any(f"{user}@127.0.0.1:{CONTACT_PORT}" in contact for contact in contacts), (user, contacts)
    finally:
        for registrar in started:
            stop_registrar(registrar)
    for registrar in started:
        assert "Traceback" not in registrar.log(), registrar.log()


def test_requests_waiting_on_etcd_at_sigterm_get_their_answers_on_their_connections(
    tmp_path: Path, etcd: EtcdServer
) -> None:
    """etcd hung, so the REGISTERs wait out the store's 2 s bound: bob's is in flight at SIGTERM; carol's
    comes on a new connection during the drain period (taken: the balancer may not have moved yet) and is
    still in flight after it, when new connections are refused. Both get their 503 on their connections,
    and only then does the process end."""
    registrar = start_registrar(tmp_path, "--store", etcd.url, "--drain-seconds", "1")
    try:
        bob = UserAgent(registrar.host, registrar.sip_port, "bob", PASSWORDS["bob"], transport="tcp")
        carol = UserAgent(registrar.host, registrar.sip_port, "carol", PASSWORDS["carol"], transport="tcp")
        with socket.create_connection((registrar.host, registrar.sip_port), timeout=10) as bobs:
            etcd.pause()
            try:
                bob.send_authenticated_register(bobs, "sip:bob@192.0.2.2:5060;transport=tcp", 300)
                time.sleep(0.2)  # on its way to the hung etcd
                registrar.process.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                wait_for(lambda: not readyz(registrar), 0.5, "/readyz 503 at once on SIGTERM")
                time.sleep(0.9 - (time.monotonic() - signalled))
                with socket.create_connection((registrar.host, registrar.sip_port), timeout=10) as carols:
                    carol.send_authenticated_register(carols, "sip:carol@192.0.2.3:5060;transport=tcp", 300)
                    # Past the drain period, carol's REGISTER still in flight: the process lives, refusing.
                    time.sleep(1.6 - (time.monotonic() - signalled))
                    assert registrar.process.poll() is None, registrar.log()
                    with pytest.raises(ConnectionRefusedError):
                        socket.create_connection((registrar.host, registrar.sip_port), timeout=2).close()
                    assert status_of(read_response(bobs)) == 503
                    assert status_of(read_response(carols)) == 503
            finally:
                etcd.resume()
        assert registrar.process.wait(timeout=10) == 0, registrar.log()
        assert "drained: every request answered" in registrar.log(), registrar.log()
    finally:
        stop_registrar(registrar)
    assert "Traceback" not in registrar.log(), registrar.log()
