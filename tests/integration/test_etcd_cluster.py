"""Several `sipreg serve --store etcd://` processes share one binding table through a real etcd.

sipp and a small UDP user agent register on one replica; the others must show
the binding (HTTP API, and a REGISTER without Contact), take the removal, keep
everything across a SIGKILL, answer 503 while etcd is away and heal without a
restart, and leave nothing behind in etcd once bindings expire.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import socket
import time
import urllib.error
from collections.abc import Callable
from pathlib import Path

import pytest

from registrar.store import layout
from tests.etcd_server import EtcdServer, records
from tests.helpers import MANIFESTS, RunningRegistrar, stop_registrar
from tests.integration.sip_client import UserAgent, contacts_of, status_of
from tests.integration.sipp import SIPP, manifest_passwords, run_sipp, users_csv

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(SIPP is None, reason="sipp not installed; `make test` installs Debian's sip-tester"),
]

DOMAIN = "sip.example.test"
PASSWORDS = manifest_passwords(MANIFESTS)


def eventually(check: Callable[[], object], timeout: float = 10, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"{what} not met within {timeout} s"
        time.sleep(0.05)
    return result


def ready(registrar: RunningRegistrar) -> bool:
    try:
        return registrar.api("/readyz")["ready"]
    except urllib.error.HTTPError as error:  # 503 while not ready
        return json.load(error)["ready"]


def ua(registrar: RunningRegistrar, user: str, **kwargs) -> UserAgent:
    return UserAgent(registrar.host, registrar.sip_port, user, PASSWORDS[user], **kwargs)


def register_with_sipp(registrar: RunningRegistrar, tmp_path: Path, users: list[str], expires: int) -> None:
    csv = users_csv(tmp_path / "users.csv", [(user, PASSWORDS[user]) for user in users], DOMAIN)
    run = run_sipp(
        "register_auth.xml", f"{registrar.host}:{registrar.sip_port}", workdir=tmp_path, calls=len(users),
        injection=csv, keys={"contact_port": "5999", "expires": str(expires)},
    )
    assert (run.successful, run.failed) == (len(users), 0), run.errors or run.messages


def contacts(registrar: RunningRegistrar, aor: str) -> list[str]:
    return [binding["contact"] for binding in registrar.bindings(aor)]


def etcd_keys(etcd: EtcdServer, prefix: str) -> dict[bytes, bytes]:
    return {key: kv.value for key, kv in asyncio.run(records(etcd.url, prefix)).items()}


def test_a_binding_made_on_one_replica_shows_on_the_others_and_unregistering_anywhere_removes_it(
    replicas, tmp_path: Path
) -> None:
    one = replicas()
    two, three = replicas(manifests=None), replicas(manifests=None)  # these only read what etcd holds
    register_with_sipp(one, tmp_path, ["alice", "bob"], expires=300)
    assert re.search(r"^sipreg_store_aors_written_total [2-9]", one.metrics(), re.M), one.metrics()
    alice = f"alice@{DOMAIN}"
    for other in (two, three):
        eventually(lambda: contacts(other, alice), 5, "alice's binding on another replica")
        # Every replica counts the cluster's registered connections, not only its own.
        # Counted in etcd every 2 s.
        eventually(lambda: other.metric("sipreg_registered_connections", domain=DOMAIN) == 2, 10, "2 registered")
        assert contacts(other, alice) == ["sip:alice@127.0.0.1:5999;transport=UDP"]
        [binding] = other.bindings(alice)
        assert binding["node"] == f"{socket.gethostname()}-{one.sip_port}"  # the default node name
        assert binding["source"].startswith("udp:127.0.0.1:")
    # A REGISTER without Contact on another replica lists the binding made on the first.
    answer = ua(three, "alice").register()
    assert status_of(answer) == 200, answer
    assert [c.split(";")[0] for c in contacts_of(answer)] == ["<sip:alice@127.0.0.1:5999"]
    # Removing it through the second replica removes it everywhere.
    answer = ua(two, "alice").register(contact="*", expires=0)
    assert status_of(answer) == 200, answer
    for replica in (one, two, three):
        eventually(lambda r=replica: contacts(r, alice) == [], 5, "the removal on every replica")
    assert [b["aor"] for b in one.bindings()] == [f"bob@{DOMAIN}"]
    eventually(lambda: one.metric("sipreg_registered_connections", domain=DOMAIN) == 1, 10, "1 registered")
    # A replica reads bindings on demand and knows only those it read: the operator's status counts them all.
    assert "sipreg_bindings{" not in one.metrics()


def test_call_id_and_cseq_order_holds_across_replicas(replicas) -> None:
    one, two = replicas(), replicas(manifests=None)
    first = ua(one, "carol")
    assert status_of(first.register(contact="sip:carol@192.0.2.30:5060", expires=300)) == 200  # CSeq 1, 2
    eventually(lambda: contacts(two, f"carol@{DOMAIN}"), 5, "carol's binding on the second replica")
    # The same Call-ID and Contact with CSeq numbers not above the stored one, sent to the other replica.
    stale = ua(two, "carol", call_id=first.call_id)
    answer = stale.register(contact="sip:carol@192.0.2.30:5060", expires=60)
    assert answer.startswith("SIP/2.0 400 Invalid CSeq"), answer
    [binding] = one.bindings(f"carol@{DOMAIN}")
    assert binding["expires"] > 60 and binding["cseq"] == 2


def test_a_registrar_killed_with_sigkill_loses_no_binding(replicas, tmp_path: Path) -> None:
    one, two = replicas(), replicas(manifests=None)
    register_with_sipp(one, tmp_path, ["alice", "bob", "carol"], expires=600)
    eventually(lambda: len(two.bindings()) == 3, 5, "three bindings on the second replica")
    one.process.send_signal(signal.SIGKILL)
    one.process.wait()
    restarted = replicas(manifests=None)
    assert sorted(b["aor"] for b in restarted.bindings()) == [f"{u}@{DOMAIN}" for u in ("alice", "bob", "carol")]
    assert len(two.bindings()) == 3


def test_without_etcd_register_gets_503_and_not_ready_then_heals_without_a_restart(replicas, etcd) -> None:
    one = replicas()
    assert status_of(ua(one, "alice").register(contact="sip:alice@192.0.2.1:5060", expires=300)) == 200
    assert one.metric("sipreg_store_up") == 1
    assert one.metric("sipreg_store_errors_total", operation="watch") == 0
    etcd.stop()
    eventually(lambda: not ready(one), 10, "/readyz false")
    answer = ua(one, "bob").register(contact="sip:bob@192.0.2.2:5060", expires=300)
    assert answer.startswith("SIP/2.0 503 Location Service Unavailable"), answer
    assert "Retry-After: " in answer
    # What the registrar holds in memory still reads.
    assert contacts(one, f"alice@{DOMAIN}") == ["sip:alice@192.0.2.1:5060"]
    # The outage shows in the metrics: the watch broke, reconnecting fails, the store is down.
    assert one.metric("sipreg_store_up") == 0
    assert one.metric("sipreg_store_errors_total", operation="watch") >= 1
    eventually(lambda: one.metric("sipreg_store_errors_total", operation="connect") >= 1, 5, "a failed reconnect")
    etcd.start()
    eventually(lambda: ready(one), 15, "/readyz true again")
    assert one.metric("sipreg_store_up") == 1
    answer = ua(one, "bob").register(contact="sip:bob@192.0.2.2:5060", expires=300)
    assert status_of(answer) == 200, answer
    assert "Traceback" not in one.log()


def test_expired_bindings_vanish_from_etcd_even_with_every_registrar_down(replicas, etcd, tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, manifests)
    domain_file = manifests / "sip-example-test.yaml"
    domain_file.write_text(domain_file.read_text().replace("minExpires: 60", "minExpires: 1"))
    one = replicas(manifests=manifests)
    assert status_of(ua(one, "alice").register(contact="sip:alice@192.0.2.1:5060", expires=2)) == 200
    assert status_of(ua(one, "bob").register(contact="sip:bob@192.0.2.2:5060", expires=300)) == 200
    assert len(etcd_keys(etcd, layout.BINDINGS)) == 2
    eventually(lambda: contacts(one, f"alice@{DOMAIN}") == [], 5, "alice's binding gone from the registrar")
    one.process.send_signal(signal.SIGKILL)
    one.process.wait()
    eventually(
        lambda: list(etcd_keys(etcd, layout.BINDINGS)) == [layout.bindings_key(f"bob@{DOMAIN}")],
        8, "alice's key removed by its lease",
    )


def test_wrong_passwords_are_recorded_for_the_connection_without_flooding_etcd(replicas, etcd) -> None:
    one = replicas()
    answers = [
        UserAgent(one.host, one.sip_port, "alice", "not-the-password").register(
            contact="sip:alice@192.0.2.1:5060", expires=300
        ).split("\r\n", 1)[0]
        for _ in range(30)
    ]
    # The fifth failure from one address locks it out (the default lockout); the rest are refused unverified.
    assert answers == ["SIP/2.0 401 Unauthorized"] * 4 + ["SIP/2.0 403 Too Many Failed Authentications"] * 26
    key = layout.failure_key(DOMAIN, "alice")
    locked_out = "locked out for 60 s after 5 failed authentications from udp:127.0.0.1:"

    def lockout_record() -> bool:
        value = etcd_keys(etcd, layout.FAILURES).get(key)
        return value is not None and layout.decode_failure(DOMAIN, "alice", value).reason.startswith(locked_out)

    eventually(lockout_record, 5, "the lockout as the failure record")
    # 30 failed REGISTERs within seconds: the first failure and the lockout, one write each at most.
    assert asyncio.run(records(etcd.url, layout.FAILURES))[key].version <= 2


def test_each_registrar_lists_itself_as_a_node_until_it_stops(replicas, etcd) -> None:
    one = replicas(node="pod-one")
    two = replicas(manifests=None, node="pod-two")
    nodes = etcd_keys(etcd, layout.NODES)
    assert set(nodes) == {layout.node_key("pod-one"), layout.node_key("pod-two")}
    assert layout.decode_node(nodes[layout.node_key("pod-two")])["sipPort"] == two.sip_port
    stop_registrar(two)
    assert set(etcd_keys(etcd, layout.NODES)) == {layout.node_key("pod-one")}
    assert one.api("/readyz")["ready"]


def test_a_hung_etcd_gets_503_within_the_request_timeout_and_heals(replicas, etcd) -> None:
    one = replicas()
    etcd.pause()  # SIGSTOP: connections stay open, nothing answers
    try:
        started = time.monotonic()
        answer = ua(one, "alice").register(contact="sip:alice@192.0.2.1:5060", expires=300, timeout=6)
        assert answer.startswith("SIP/2.0 503 Location Service Unavailable"), answer
        assert time.monotonic() - started < 5
        # The write timed out: reading the AOR's record (this replica held none), granting its lease, or the
        # transaction itself.
        eventually(
            lambda: sum(one.metric("sipreg_store_errors_total", operation=op) for op in ("read", "lease", "txn")) >= 1,
            5, "the timed-out call counted",
        )
        eventually(lambda: not ready(one), 15, "/readyz false while etcd hangs")
    finally:
        etcd.resume()
    eventually(lambda: ready(one), 15, "/readyz true again")
    assert status_of(ua(one, "alice").register(contact="sip:alice@192.0.2.1:5060", expires=300)) == 200
