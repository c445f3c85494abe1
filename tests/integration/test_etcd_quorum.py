"""A registrar on a three-member etcd that loses its quorum: answers in time, honest readiness, recovery.

The member the registrar is connected to stays up while the other two stop: it still answers
status requests and keeps the watch open, but can commit nothing. Every REGISTER must get its
503 within the bound (sipp's register_unavailable.xml), /readyz must say 503 from the moment the
registrar notices until the quorum is back, and then turn 200 again within seconds, with the
node listed again and REGISTERs answered 200.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
from pathlib import Path

import pytest

from registrar.store import layout
from registrar.store.etcd import QUORUM_CHECK_INTERVAL, QUORUM_CHECK_TIMEOUT
from tests.etcd_server import ETCD, EtcdCluster
from tests.helpers import MANIFESTS, RunningRegistrar, start_registrar, stop_registrar
from tests.integration.sip_client import UserAgent, status_of
from tests.integration.sipp import SIPP, manifest_passwords, run_sipp, users_csv

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(SIPP is None, reason="sipp not installed; `make test` installs Debian's sip-tester"),
    pytest.mark.skipif(ETCD is None, reason="etcd not installed; `make test` installs Debian's etcd-server"),
]

DOMAIN = "sip.example.test"
PASSWORDS = manifest_passwords(MANIFESTS)
# The registrar notices a lost quorum within one check's interval and timeout; a second more for a busy machine.
NOTICED_WITHIN = QUORUM_CHECK_INTERVAL + QUORUM_CHECK_TIMEOUT + 1.0


class ReadinessSamples:
    """/readyz every 100 ms in a thread: (monotonic time, ready) pairs, until stop()."""

    def __init__(self, registrar: RunningRegistrar) -> None:
        self.registrar = registrar
        self.samples: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        request = f"http://{self.registrar.http_host}:{self.registrar.http_port}/readyz"
        while not self._stop.wait(0.1):
            try:
                with urllib.request.urlopen(request, timeout=1) as answer:
                    ready = json.load(answer)["ready"]
            except urllib.error.HTTPError as error:  # 503 while not ready
                ready = json.load(error)["ready"]
            self.samples.append((time.monotonic(), ready))

    def stop(self) -> list[tuple[float, bool]]:
        self._stop.set()
        self._thread.join()
        return self.samples


def connected_member(registrar: RunningRegistrar) -> str:
    """host:port of the etcd member the registrar last connected to, as its log says."""
    found = re.findall(r"connected to etcd at (\S+:\d+)", registrar.log())
    assert found, registrar.log()
    return found[-1]


def test_without_a_quorum_every_register_gets_503_in_time_and_readyz_stays_503(tmp_path: Path) -> None:
    with EtcdCluster(tmp_path) as cluster:
        registrar = start_registrar(tmp_path, "--store", cluster.url, "--node", "quorum-test")
        try:
            alice = UserAgent(registrar.host, registrar.sip_port, "alice", PASSWORDS["alice"])
            assert status_of(alice.register(contact="sip:alice@192.0.2.1:5060", expires=300)) == 200
            survivor = connected_member(registrar)
            others = [member for member in cluster.members if member.endpoint != survivor]
            assert len(others) == 2
            readiness = ReadinessSamples(registrar)

            for member in others:
                member.stop()
            lost = time.monotonic()
            # Every REGISTER during the outage, from its first second: 503 within 2.5 s, or sipp fails the call.
            csv = users_csv(tmp_path / "users.csv", [("alice", PASSWORDS["alice"])], DOMAIN)
            run = run_sipp(
                "register_unavailable.xml", f"{registrar.host}:{registrar.sip_port}", workdir=tmp_path,
                calls=40, rate=5, injection=csv, keys={"contact_port": "5999", "expires": "300"}, timeout=60,
            )
            assert (run.successful, run.failed) == (40, 0), run.errors[-3000:]
            assert "SIP/2.0 200" not in run.messages

            restarting = time.monotonic()  # the outage ends as they come back, before they say they are healthy
            for member in others:
                member.launch()
            for member in others:
                member.wait_healthy()
            back = time.monotonic()
            deadline = back + 15
            while status_of(alice.register(contact="sip:alice@192.0.2.1:5060", expires=300)) != 200:
                assert time.monotonic() < deadline, f"no 200 within 15 s of the quorum's return\n{registrar.log()}"
                time.sleep(0.1)
            answered = time.monotonic()
            while not readiness.samples or readiness.samples[-1][0] < answered:
                time.sleep(0.1)
            samples = readiness.stop()

            during = [(when, ready) for when, ready in samples if lost <= when < restarting]
            first_unready = next(when for when, ready in during if not ready)
            assert first_unready - lost < NOTICED_WITHIN, f"/readyz still 200 {first_unready - lost:.1f} s into the outage"
            flaps = [round(when - lost, 1) for when, ready in during if ready and when > first_unready]
            assert not flaps, f"/readyz said 200 during the outage, at {flaps} s"
            ready_again = next(when for when, ready in samples if when >= restarting and ready)
            print(
                f"quorum lost: /readyz 503 after {first_unready - lost:.1f} s; {len(during)} samples, no 200 until "
                f"the members restarted; /readyz 200 {ready_again - restarting:.1f} s after their restart "
                f"(they said healthy after {back - restarting:.1f} s), REGISTER 200 {answered - restarting:.1f} s after"
            )
            # And this replica is listed among the nodes (the proxy's routes to it go through that).
            assert cluster.members[0].value(layout.node_key("quorum-test"), wait=15) is not None
        finally:
            stop_registrar(registrar)
        assert "Traceback" not in registrar.log(), registrar.log()
