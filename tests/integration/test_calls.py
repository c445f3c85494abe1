"""Calls through a real `sipreg serve` (and two of them on one etcd), driven by sipp on both ends.

The callee is a sipp that REGISTERs (Contact port where nothing listens, unlike its source port) and then
answers; the caller is another sipp sending INVITE to the registrar. Each test checks sipp's own verdict
on both ends and what the callee actually received (Request-URI, Record-Route, Via, Max-Forwards).
"""

from __future__ import annotations

import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import RunningRegistrar, free_port, serving
from tests.integration.sipp import (
    SCENARIOS,
    SIPP,
    BackgroundSipp,
    SippRun,
    TracedMessage,
    run_sipp,
    start_sipp,
    traced_messages,
    users_csv,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(SIPP is None, reason="sipp not installed; `make test` installs Debian's sip-tester"),
]

DOMAIN = "sip.example.test"
REDIRECT_DOMAIN = "redirect.example.test"
PASSWORDS = {"alice": "alice-call-secret", "bob": "bob-call-secret", "carol": "carol-call-secret",
             "dave": "dave-call-secret"}
NUMBER = "+15551234"
SIPP_TIMEOUT = 15  # seconds: a call here takes well under one


# --- manifests -------------------------------------------------------------------------------------------

def connection(user: str, domain: str) -> str:
    return f"""---
apiVersion: v1
kind: Secret
metadata: {{name: {user}-sip, namespace: voip}}
stringData: {{password: "{PASSWORDS[user]}"}}
---
apiVersion: sipreg.io/v1alpha1
kind: SipConnection
metadata: {{name: {user}, namespace: voip}}
spec:
  domain: {domain}
  username: {user}
  authentication:
    type: credentials
    passwordSecretRef: {{name: {user}-sip, key: password}}
  inbound: true
  outbound: true
"""


def write_manifests(directory: Path, gateway_port: int) -> Path:
    """sip.example.test (proxy, its gateway a sipp on `gateway_port`) with alice, bob and carol;
    redirect.example.test (redirect mode) with dave."""
    directory.mkdir()
    (directory / "domains.yaml").write_text(f"""
apiVersion: sipreg.io/v1alpha1
kind: SipDomain
metadata: {{name: sip-example-test, namespace: voip}}
spec:
  domain: {DOMAIN}
  registration: {{enabled: true, minExpires: 60, defaultExpires: 600, maxExpires: 3600}}
  mode: proxy
  outbound: {{gateway: "sip:127.0.0.1:{gateway_port}"}}
---
apiVersion: sipreg.io/v1alpha1
kind: SipDomain
metadata: {{name: redirect-example-test, namespace: voip}}
spec:
  domain: {REDIRECT_DOMAIN}
  registration: {{enabled: true}}
  mode: redirect
""")
    (directory / "connections.yaml").write_text(
        "".join(connection(user, DOMAIN) for user in ("alice", "bob", "carol")) + connection("dave", REDIRECT_DOMAIN)
    )
    return directory


@pytest.fixture
def gateway_port() -> int:
    return free_port()


@pytest.fixture
def manifests(tmp_path: Path, gateway_port: int) -> Path:
    return write_manifests(tmp_path / "manifests", gateway_port)


@pytest.fixture
def proxy(tmp_path: Path, manifests: Path) -> Iterator[RunningRegistrar]:
    with serving(tmp_path, manifests=manifests) as running:
        yield running


@pytest.fixture
def background(tmp_path: Path) -> Iterator[Callable[..., BackgroundSipp]]:
    """Starts sipps in the background; whatever is still running at the end (a failed test) is killed."""
    started: list[BackgroundSipp] = []

    def start(scenario: str, target: str | None, **options) -> BackgroundSipp:
        sipp = start_sipp(scenario, target, workdir=tmp_path, timeout=SIPP_TIMEOUT, **options)
        started.append(sipp)
        return sipp

    yield start
    for sipp in started:
        sipp.kill()


# --- helpers ---------------------------------------------------------------------------------------------

def target(registrar: RunningRegistrar) -> str:
    return f"{registrar.host}:{registrar.sip_port}"


def new_call_id() -> str:
    """A Call-ID for -cid_str, shared by caller and callee (see callee_register_answer.xml)."""
    return f"{uuid.uuid4().hex}@127.0.0.1"


def register_callee(
    background, registrar: RunningRegistrar, tmp_path: Path, *, user: str, transport: str, scenario: str,
    call_id: str, domain: str = DOMAIN,
) -> tuple[BackgroundSipp, dict]:
    """Start a callee sipp on `registrar` and wait until its binding is there; returns it and the binding.
    Its logs in tmp_path are callee-USER-TRANSPORT-*."""
    csv = users_csv(tmp_path / f"{user}.csv", [(user, PASSWORDS[user])], domain)
    contact_port = free_port()
    name = f"callee-{user}-{transport}"
    callee = background(
        # over TCP a connection of the call's own, from a port nobody listens on (sipp listens on its -p port):
        # a request reaches the callee only down the connection its REGISTER opened.
        scenario, target(registrar), transport={"udp": "udp", "tcp": "tcp-per-call"}[transport],
        injection=csv, name=name, keys={"contact_port": str(contact_port), "expires": "300"},
        extra=["-cid_str", call_id],
    )
    deadline = time.monotonic() + 10
    while not (bindings := [b for b in registrar.bindings(f"{user}@{domain}") if f":{contact_port};" in b["contact"]]):
        if callee.process.poll() is not None or time.monotonic() > deadline:
            callee.kill()
            run = callee.wait()
            pytest.fail(f"{user} did not register over {transport}:\n{run.errors or run.messages}")
        time.sleep(0.05)
    [binding] = bindings
    # The point of the exercise: the Contact names a port nobody listens on, the source is sipp's socket.
    source_port = int(binding["source"].rpartition(":")[2])
    assert contact_port != source_port, binding
    if transport == "tcp":  # nothing to connect to: neither at the Contact nor at the connection's source
        assert refuses_tcp(contact_port) and refuses_tcp(source_port), binding
    return callee, binding


def refuses_tcp(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def call(registrar: RunningRegistrar, tmp_path: Path, scenario: str, *, call_id: str, callee: str = "bob",
         caller: str = "alice", transport: str = "udp") -> SippRun:
    """A caller sipp (over UDP unless told) through `registrar`, run to its end."""
    return run_sipp(
        scenario, target(registrar), workdir=tmp_path, name=f"caller-{caller}", transport=transport,
        timeout=SIPP_TIMEOUT, keys={"caller": caller, "callee": callee, "domain": DOMAIN}, extra=["-cid_str", call_id],
    )


def settle(uas: BackgroundSipp, uac: SippRun) -> SippRun:
    """The UAS's run once the UAC is done: it has a moment to take its last message when the UAC succeeded,
    none when the UAC failed (waiting for its own timeout would only make a failing test slow)."""
    if (uac.successful, uac.failed) != (1, 0):
        uas.kill()
    return uas.wait(timeout=5)


def ok(run: SippRun, what: str) -> None:
    assert (run.successful, run.failed) == (1, 0), f"{what}: {run.errors or run.messages}"


def received(run: SippRun, start: str) -> list[TracedMessage]:
    """The messages `run` received whose start line begins with `start` ("INVITE", "SIP/2.0 180")."""
    return [message for message in traced_messages(run.messages, "received") if message.start_line.startswith(start)]


def responses(run: SippRun, status: int, method: str) -> list[TracedMessage]:
    return [m for m in received(run, f"SIP/2.0 {status} ") if m.header("CSeq")[0].endswith(f" {method}")]


def caller_port(run: SippRun) -> int:
    """The port of the caller's own Contact (sipp's local port)."""
    [invite] = [m for m in traced_messages(run.messages, "sent") if m.start_line.startswith("INVITE")]
    return int(re.search(r"127\.0\.0\.1:(\d+)", invite.header("Contact")[0]).group(1))


def assert_proxied(message: TracedMessage, registrar: RunningRegistrar, *, request_uri: str, transport: str,
                   max_forwards: int | None = 69) -> None:
    """`message` came out of `registrar` as a proxy does it (RFC 3261 16.6); the sender used Max-Forwards 70."""
    assert message.request_uri == request_uri, message.text
    assert message.transport == transport.upper(), message.text
    [top, *below] = message.header("Via")
    assert top.startswith(f"SIP/2.0/{transport.upper()} {registrar.host}:{registrar.sip_port};"), message.text
    assert re.search(r";branch=z9hG4bK", top), message.text
    assert below, f"the sender's Via is kept below the registrar's:\n{message.text}"
    [hops] = message.header("Max-Forwards")
    assert int(hops) == max_forwards if max_forwards is not None else int(hops) < 70, message.text


# --- one registrar ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("caller_transport", ["udp", "tcp"])
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_a_call_reaches_the_registered_callee_and_bye_crosses_the_proxy(
    proxy: RunningRegistrar, background, tmp_path: Path, transport: str, caller_transport: str
) -> None:
    call_id = new_call_id()
    callee, binding = register_callee(
        background, proxy, tmp_path, user="bob", transport=transport, scenario="callee_register_answer.xml",
        call_id=call_id,
    )
    caller = call(proxy, tmp_path, "caller_invite_bye.xml", call_id=call_id, transport=caller_transport)
    answered = settle(callee, caller)
    ok(caller, "caller")
    ok(answered, "callee")

    # The callee got the INVITE where it is reachable: over UDP at its source port (nothing listens on the
    # Contact's port), over TCP down the connection it registered on (nothing to connect to on the Contact's).
    [invite] = received(answered, "INVITE")
    assert_proxied(invite, proxy, request_uri=binding["contact"], transport=transport)
    assert invite.header("Call-ID") == [call_id]
    assert "m=audio" in invite.text  # the SDP offer travels with it
    # Record-Routed by the registrar, once per transport it spans.
    record_route = invite.header("Record-Route")
    assert all(f"{proxy.host}:{proxy.sip_port}" in entry and ";lr" in entry for entry in record_route), invite.text
    transports = sorted(re.search(r";transport=(\w+)", entry).group(1).lower() for entry in record_route)
    assert transports == sorted({caller_transport, transport}), invite.text
    # The caller heard the call being set up: 100 at once, the 180 and the 200 with the route set.
    assert responses(caller, 100, "INVITE"), caller.messages
    assert responses(caller, 180, "INVITE"), caller.messages
    [answer] = responses(caller, 200, "INVITE")
    assert answer.header("Record-Route"), answer.text
    assert "m=audio" in answer.text
    # In-dialog requests went through the registrar (the route set) to the same place as the INVITE.
    [ack] = received(answered, "ACK")
    assert_proxied(ack, proxy, request_uri=binding["contact"], transport=transport)
    [bye] = received(answered, "BYE")
    assert_proxied(bye, proxy, request_uri=binding["contact"], transport=transport)
    assert not bye.header("Route"), f"the registrar's own Route entry is consumed:\n{bye.text}"
    assert responses(caller, 200, "BYE"), caller.messages


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_the_callee_hangs_up_and_its_bye_reaches_the_caller(
    proxy: RunningRegistrar, background, tmp_path: Path, transport: str
) -> None:
    call_id = new_call_id()
    callee, binding = register_callee(
        background, proxy, tmp_path, user="bob", transport=transport, scenario="callee_register_hangup.xml",
        call_id=call_id,
    )
    caller = call(proxy, tmp_path, "caller_invite_wait_bye.xml", call_id=call_id)
    hung_up = settle(callee, caller)
    ok(caller, "caller")
    ok(hung_up, "callee")
    [bye] = received(caller, "BYE")
    assert_proxied(bye, proxy, request_uri=f"sip:alice@127.0.0.1:{caller_port(caller)};transport=UDP", transport="udp")
    assert responses(hung_up, 200, "BYE"), hung_up.messages


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_cancel_stops_the_ringing_callee_and_the_caller_gets_487(
    proxy: RunningRegistrar, background, tmp_path: Path, transport: str
) -> None:
    call_id = new_call_id()
    callee, binding = register_callee(
        background, proxy, tmp_path, user="bob", transport=transport, scenario="callee_register_cancelled.xml",
        call_id=call_id,
    )
    caller = call(proxy, tmp_path, "caller_cancel.xml", call_id=call_id)
    cancelled = settle(callee, caller)
    ok(caller, "caller")
    ok(cancelled, "callee")
    assert_cancelled(caller, cancelled, proxy, binding, transport)


def test_a_call_forks_to_both_contacts_and_the_losing_branch_is_cancelled(
    proxy: RunningRegistrar, background, tmp_path: Path
) -> None:
    """bob registered twice (UDP, TCP): both ring at once, the UDP one answers, the TCP one is cancelled, and
    its 180, sent after the CANCEL reached it, must not reach the caller after the 200 (RFC 3261 16.7 step 5)."""
    call_id = new_call_id()
    winner, won = register_callee(background, proxy, tmp_path, user="bob", transport="udp",
                                  scenario="callee_register_answer.xml", call_id=call_id)
    loser, lost = register_callee(background, proxy, tmp_path, user="bob", transport="tcp",
                                  scenario="callee_register_late_ringing.xml", call_id=call_id)
    assert len(proxy.bindings(f"bob@{DOMAIN}")) == 2
    caller = call(proxy, tmp_path, "caller_invite_bye.xml", call_id=call_id)
    answered, cancelled = settle(winner, caller), settle(loser, caller)
    # The caller saw one answer and no ringing from the branch that lost (sipp aborts the call on such a 180).
    late = [m for m in responses(caller, 180, "INVITE") if m.header("Contact")[0] == f"<{lost['contact']}>"]
    assert not late, f"a 180 forwarded after the 200:\n{caller.messages}"
    ok(caller, "caller")
    ok(answered, "the answering callee")
    ok(cancelled, "the cancelled callee")
    [answer] = responses(caller, 200, "INVITE")
    assert answer.header("Contact") == [f"<{won['contact']}>"], answer.text
    [invite] = received(cancelled, "INVITE")
    assert invite.request_uri == lost["contact"]
    [cancel] = received(cancelled, "CANCEL")
    assert cancel.header("Via")[0] == invite.header("Via")[0], (invite.text, cancel.text)
    assert received(cancelled, "ACK"), cancelled.messages  # for its 487, from the proxy
    assert not received(cancelled, "BYE")
    [bye] = received(answered, "BYE")
    assert bye.request_uri == won["contact"]


def assert_cancelled(caller: SippRun, callee: SippRun, registrar: RunningRegistrar, binding: dict,
                     transport: str) -> None:
    assert responses(caller, 200, "CANCEL"), caller.messages
    assert responses(caller, 487, "INVITE"), caller.messages
    [invite] = received(callee, "INVITE")
    [cancel] = received(callee, "CANCEL")
    # The registrar cancels its own branch: same Request-URI and top Via as the INVITE it forwarded.
    assert cancel.request_uri == invite.request_uri == binding["contact"], cancel.text
    assert cancel.header("Via")[0] == invite.header("Via")[0], (invite.text, cancel.text)
    # The 487 is ACKed hop by hop: by the registrar, on the INVITE's branch.
    [ack] = received(callee, "ACK")
    assert ack.header("Via") == [invite.header("Via")[0]], (invite.text, ack.text)
    assert ack.transport == transport.upper()


# --- requests that are not proxied -----------------------------------------------------------------------

def invite_expecting(path: Path, request_uri: str, status: int, caller: str = "alice") -> Path:
    """A scenario: INVITE `request_uri`, optional 100, the final `status`, ACK for it (same branch)."""
    path.write_text(f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<!-- INVITE {request_uri}, optional 100, expect {status}, ACK it ([branch-3]: the INVITE's, 3 messages back) -->
<scenario name="invite, expect {status}">
  <send retrans="500"><![CDATA[
INVITE {request_uri} SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
Max-Forwards: 70
From: <sip:{caller}@{DOMAIN}>;tag=[pid]SIPpTag00[call_number]
To: <{request_uri}>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:{caller}@[local_ip]:[local_port]>
Content-Length: 0

]]></send>
  <recv response="100" optional="true"/>
  <recv response="{status}"/>
  <send><![CDATA[
ACK {request_uri} SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-3]
Max-Forwards: 70
From: <sip:{caller}@{DOMAIN}>;tag=[pid]SIPpTag00[call_number]
[last_To:]
Call-ID: [call_id]
CSeq: 1 ACK
Content-Length: 0

]]></send>
</scenario>
""")
    return path


def test_a_stranger_is_challenged_alike_for_unknown_and_unregistered_users_and_our_phones_get_480(
    proxy: RunningRegistrar, tmp_path: Path
) -> None:
    # Nothing from 127.0.0.1 has proved credentials yet: alice, who exists, looks like nobody.
    for user in ("alice", "nobody"):
        run = run_sipp(invite_expecting(tmp_path / f"{user}-407.xml", f"sip:{user}@{DOMAIN}", 407), target(proxy),
                       workdir=tmp_path, timeout=SIPP_TIMEOUT)
        ok(run, f"INVITE to {user} from a stranger")
        [refused] = responses(run, 407, "INVITE")
        assert not responses(run, 100, "INVITE"), run.messages
    # A phone at that address registers: the address is ours now, and is told the precise answers.
    csv = users_csv(tmp_path / "carol.csv", [("carol", PASSWORDS["carol"])], DOMAIN)
    ok(run_sipp("register_auth.xml", target(proxy), workdir=tmp_path, injection=csv, timeout=SIPP_TIMEOUT,
                keys={"contact_port": str(free_port()), "expires": "300"}), "carol registers")
    run = run_sipp(invite_expecting(tmp_path / "480.xml", f"sip:alice@{DOMAIN}", 480), target(proxy),
                   workdir=tmp_path, timeout=SIPP_TIMEOUT)
    ok(run, "INVITE to alice, not registered")
    run = run_sipp(invite_expecting(tmp_path / "404.xml", f"sip:nobody@{DOMAIN}", 404), target(proxy),
                   workdir=tmp_path, timeout=SIPP_TIMEOUT)
    ok(run, "INVITE to nobody")


def test_a_redirect_domain_answers_302_with_the_registered_contacts_highest_q_first(
    proxy: RunningRegistrar, tmp_path: Path
) -> None:
    csv = users_csv(tmp_path / "dave.csv", [("dave", PASSWORDS["dave"])], REDIRECT_DOMAIN)
    # dave registers twice: first a contact with q=0.5, then one without q (which counts as 1.0).
    with_q = tmp_path / "register_q.xml"
    with_q.write_text((SCENARIOS / "register_auth.xml").read_text().replace(
        "transport=[transport]>", "transport=[transport]>;q=0.5"))
    low, high = free_port(), free_port()
    for scenario, port in ((with_q, low), ("register_auth.xml", high)):
        run = run_sipp(scenario, target(proxy), workdir=tmp_path, injection=csv, timeout=SIPP_TIMEOUT,
                       keys={"contact_port": str(port), "expires": "300"})
        ok(run, f"dave registers contact port {port}")
    assert len(proxy.bindings(f"dave@{REDIRECT_DOMAIN}")) == 2
    run = run_sipp(invite_expecting(tmp_path / "302.xml", f"sip:dave@{REDIRECT_DOMAIN}", 302), target(proxy),
                   workdir=tmp_path, timeout=SIPP_TIMEOUT)
    ok(run, "INVITE to dave")
    [moved] = responses(run, 302, "INVITE")
    first, second = moved.header("Contact")
    assert re.fullmatch(rf"<sip:dave@127\.0\.0\.1:{high};transport=UDP>(;q=1(\.0*)?)?;expires=\d+", first), moved.text
    assert re.fullmatch(rf"<sip:dave@127\.0\.0\.1:{low};transport=UDP>;q=0\.5;expires=\d+", second), moved.text


def test_an_outbound_call_is_challenged_then_forwarded_to_the_gateway(
    proxy: RunningRegistrar, background, tmp_path: Path, gateway_port: int
) -> None:
    gateway = background("gateway_answer.xml", None, local_port=gateway_port, name="gateway")
    csv = users_csv(tmp_path / "alice.csv", [("alice", PASSWORDS["alice"])], DOMAIN)
    caller = run_sipp("caller_outbound_auth.xml", target(proxy), workdir=tmp_path, injection=csv,
                      name="caller-alice", keys={"number": NUMBER}, timeout=SIPP_TIMEOUT)
    answered = settle(gateway, caller)
    ok(caller, "caller")
    ok(answered, "gateway")
    [challenge] = responses(caller, 407, "INVITE")
    assert any(value.startswith(f'Digest realm="{DOMAIN}"') for value in challenge.header("Proxy-Authenticate")), \
        challenge.text
    # Only the authenticated INVITE went out, rewritten to the number at the gateway, Record-Routed.
    [invite] = received(answered, "INVITE")
    assert_proxied(invite, proxy, request_uri=f"sip:{NUMBER}@127.0.0.1:{gateway_port}", transport="udp")
    assert invite.header("CSeq") == ["2 INVITE"]
    assert not invite.header("Proxy-Authorization"), f"alice's credentials are for us, not the gateway:\n{invite.text}"
    record_route = invite.header("Record-Route")
    assert any(f"{proxy.host}:{proxy.sip_port}" in entry and ";lr" in entry for entry in record_route), invite.text
    [bye] = received(answered, "BYE")
    assert_proxied(bye, proxy, request_uri=f"sip:gateway@127.0.0.1:{gateway_port};transport=UDP", transport="udp")
    assert responses(caller, 200, "BYE"), caller.messages


# --- two registrars on one etcd --------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("ending", ["bye", "cancel", "hangup"])
def test_a_callee_registered_on_one_replica_is_called_through_another(
    replicas, background, manifests: Path, tmp_path: Path, transport: str, ending: str
) -> None:
    home = replicas(manifests=manifests, node="replica-a")
    entry = replicas(manifests=None, node="replica-b")  # serves what etcd holds
    call_id = new_call_id()
    scenarios = {"bye": ("callee_register_answer.xml", "caller_invite_bye.xml"),
                 "cancel": ("callee_register_cancelled.xml", "caller_cancel.xml"),
                 # the callee's BYE reaches replica A (its connection), its Route names B
                 "hangup": ("callee_register_hangup.xml", "caller_invite_wait_bye.xml")}[ending]
    callee, binding = register_callee(
        background, home, tmp_path, user="bob", transport=transport, scenario=scenarios[0], call_id=call_id
    )
    deadline = time.monotonic() + 5
    while not entry.bindings(f"bob@{DOMAIN}"):
        assert time.monotonic() < deadline, "bob's binding never showed on the second replica"
        time.sleep(0.05)
    caller = call(entry, tmp_path, scenarios[1], call_id=call_id)
    answered = settle(callee, caller)
    ok(caller, "caller")
    ok(answered, "callee")
    [invite] = received(answered, "INVITE")
    # The replica holding bob's flow sent it (its Via on top); the one the caller used Record-Routed it.
    # (Whether B reaches A as a SIP hop is B's business: Max-Forwards is only required to have gone down.)
    assert_proxied(invite, home, request_uri=binding["contact"], transport=transport, max_forwards=None)
    assert any(f"{entry.host}:{entry.sip_port}" in route for route in invite.header("Record-Route")), invite.text
    if ending == "bye":
        [bye] = received(answered, "BYE")
        assert bye.request_uri == binding["contact"] and bye.transport == transport.upper(), bye.text
        assert responses(caller, 200, "BYE"), caller.messages
    elif ending == "cancel":
        assert_cancelled(caller, answered, home, binding, transport)
    else:
        [bye] = received(caller, "BYE")
        assert bye.request_uri == f"sip:alice@127.0.0.1:{caller_port(caller)};transport=UDP", bye.text
        assert responses(answered, 200, "BYE"), answered.messages



def test_a_callee_whose_replica_died_is_skipped_reported_and_the_caller_gets_480(
    replicas, background, manifests: Path, tmp_path: Path
) -> None:
    home = replicas(manifests=manifests, node="replica-a")
    entry = replicas(manifests=None, node="replica-b")
    callee, _ = register_callee(
        background, home, tmp_path, user="bob", transport="tcp", scenario="callee_register_answer.xml",
        call_id=new_call_id(),
    )
    deadline = time.monotonic() + 5
    while not entry.bindings(f"bob@{DOMAIN}"):
        assert time.monotonic() < deadline, "bob's binding never showed on the second replica"
        time.sleep(0.05)
    home.process.kill()  # SIGKILL: bob's connection dies with it; his binding stays in etcd
    home.process.wait()
    callee.kill()
    run = run_sipp(invite_expecting(tmp_path / "480.xml", f"sip:bob@{DOMAIN}", 480), target(entry),
                   workdir=tmp_path, timeout=SIPP_TIMEOUT)
    ok(run, "INVITE to bob, whose replica is gone")
    assert entry.bindings(f"bob@{DOMAIN}"), "the binding is reported, not deleted: it ends with its lease"
    assert entry.metric("sipreg_unreachable_contacts_total", why="node_gone") == 1
    assert "call skipped bob@sip.example.test's contact" in entry.log() and "replica-a" in entry.log()
