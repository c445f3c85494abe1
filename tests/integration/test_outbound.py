"""RFC 5626 outbound with a real phone: baresip (sipnat=outbound) over TCP, its flows, and a flow's end."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from registrar.store import layout
from tests.etcd_server import EtcdServer
from tests.helpers import RunningRegistrar, manifests_with_domain_spec, serving
from tests.integration.baresip import Baresip
from tests.integration.sip_client import UserAgent, status_of
from tests.integration.tcp_relay import TcpRelay

pytestmark = pytest.mark.integration

DOMAIN = "sip.example.test"


def test_an_outbound_phone_gets_its_flow_keeps_it_alive_and_a_call_to_it_after_the_flow_dies_is_refused_at_once(
    tmp_path: Path,
) -> None:
    # The shortest Flow-Timer a SipDomain allows, so that the phone's first keep-alive comes within the test.
    manifests = manifests_with_domain_spec(tmp_path / "manifests", keepalive={"flowTimerStreamSeconds": 10})
    with serving(tmp_path, manifests=manifests) as registrar:
        outbound_phone_flow(registrar, tmp_path)


def outbound_phone_flow(registrar: RunningRegistrar, tmp_path: Path) -> None:
    bob = Baresip(tmp_path / "bob", user="bob", password="bob-secret-2", domain=DOMAIN, proxy_host=registrar.host,
                  proxy_port=registrar.sip_port, transport="tcp", sipnat="outbound")
    with bob:  # (started by entering)
        # Not bob.wait_registered(): with outbound on, baresip's status line and its -s trace of the
        # 200 OK come out interleaved mid-line. The registrar's table says it as well.
        deadline = time.monotonic() + 15
        while not registrar.bindings(f"bob@{DOMAIN}") and time.monotonic() < deadline:
            time.sleep(0.1)
        [binding] = registrar.bindings(f"bob@{DOMAIN}")
        # The 200 OK as baresip printed it (-s): read as text, as its lines may come out interleaved
        # with baresip's status lines, and a little after the binding exists.
        while not ("Require: outbound" in bob.raw_log() and "Flow-Timer: 10" in bob.raw_log()) \
                and time.monotonic() < deadline + 5:
            time.sleep(0.1)
        assert "Require: outbound" in bob.raw_log() and "Flow-Timer: 10" in bob.raw_log(), bob.raw_log()
        assert binding["regId"] == 1 and binding["instance"] and binding["transport"] == "tcp"
        # The phone pings its flow (a double CRLF) and gets its pong (RFC 5626 4.4.1). baresip's first ping
        # comes 16-19 s after its registration with a Flow-Timer of 10 (measured): its timer, not ours.
        deadline = time.monotonic() + 30
        while not registrar.metric("sipreg_crlf_keepalives_total", transport="tcp") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert registrar.metric("sipreg_crlf_keepalives_total", transport="tcp") >= 1
        # Answered, the flow stands: the same connection still holds the binding (a missed pong would
        # have made baresip drop it and register again over a new one).
        [still] = registrar.bindings(f"bob@{DOMAIN}")
        assert still["source"] == binding["source"]
        bob.kill()  # the phone dies: its TCP connection closes, its binding stays until it expires
    deadline = time.monotonic() + 5
    while registrar.metric("sipreg_connections", transport="tcp") != 0 and time.monotonic() < deadline:
        time.sleep(0.05)  # the kernel's FIN reaches the registrar
    alice = UserAgent(registrar.host, registrar.sip_port, "alice", "alice-secret-1", local_ip="127.0.0.91")
    started = time.monotonic()
    answer = alice.call(f"sip:bob@{DOMAIN}", timeout=10)
    assert status_of(answer) == 480, answer  # at once: no INVITE down a dead connection, no Timer B
    assert time.monotonic() - started < 2.0
    assert registrar.metric("sipreg_unreachable_contacts_total", why="closed") == 1


def test_a_phone_with_a_flow_through_each_of_two_replicas_is_called_on_the_other_when_one_path_is_cut(
    replicas: Callable[..., RunningRegistrar], etcd: EtcdServer, tmp_path: Path,
) -> None:
    a, b = replicas(node="a"), replicas(node="b")
    # A network path to each replica, as the phone's two flows would take (RFC 5626: two edge proxies).
    with TcpRelay("127.0.0.61", (a.host, a.sip_port)) as to_a, TcpRelay("127.0.0.62", (b.host, b.sip_port)) as to_b:
        bob = Baresip(tmp_path / "bob", user="bob", password="bob-secret-2", domain=DOMAIN, proxy_host=to_a.host,
                      proxy_port=to_a.port, outbound2=(to_b.host, to_b.port), transport="tcp", sipnat="outbound",
                      answermode="auto")
        with bob:
            deadline = time.monotonic() + 15
            while len(a.bindings(f"bob@{DOMAIN}")) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            bindings = a.bindings(f"bob@{DOMAIN}")
            assert sorted((binding["regId"], binding["node"]) for binding in bindings) == [(1, "a"), (2, "b")]
            assert len({binding["instance"] for binding in bindings}) == 1
            # Cut the path of the flow a call would take first (the newest), and call through the other
            # replica: it hands the INVITE to the flow's holder, which answers 430 Flow Failed, and the
            # call falls over to the phone's other flow, held where the call came in.
            # (Registration times to the microsecond, as etcd holds them: the API's are to the second.)
            stored = layout.decode_bindings(f"bob@{DOMAIN}", etcd.value(layout.bindings_key(f"bob@{DOMAIN}")))
            newest = max(stored, key=lambda binding: binding.registered_at)
            holder, entry, path = (a, b, to_a) if newest.node == "a" else (b, a, to_b)
            path.cut()
            while holder.metric("sipreg_connections", transport="tcp") and time.monotonic() < deadline + 5:
                time.sleep(0.05)  # the registrar has seen its end of the flow close
            alice = UserAgent(entry.host, entry.sip_port, "alice", "alice-secret-1", local_ip="127.0.0.92")
            answer = alice.call(f"sip:bob@{DOMAIN}", timeout=10)
            assert status_of(answer) == 200, answer  # bob answered (answermode auto), on the flow left
            assert holder.metric("sipreg_unreachable_contacts_total", why="closed") == 1
