"""A browser softphone's SIP stack (SIP.js, under Node) calls and is called by a real baresip over UDP, through `sipreg serve`.

bob is SIP.js (tests/js/softphone.mjs) registered over ws or wss with digest; alice is
baresip registered over UDP, answering by herself. bob calls alice and hangs up, then alice
calls bob and hangs up. The assertions read the messages as they crossed bob's WebSocket
(SIP.js's traces) and alice's socket (baresip's -s trace). The media engine is the one thing
replaced (Node has no RTCPeerConnection: a fixed SDP); the signalling is SIP.js's own.

Needs Node.js and `npm ci` in tests/js (`make test` runs it: the `js` target).
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT, RunningRegistrar, serving
from tests.integration.baresip import BARESIP, CALL_SUMMARY_AFTER, Baresip
from tests.pki import CertificateAuthority

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.access(BARESIP, os.X_OK), reason=f"{BARESIP} not installed (Debian package baresip-core)"),
]

JS = ROOT / "tests" / "js"
NODE = shutil.which("node")
DOMAIN = "sip.example.test"
PASSWORDS = {"alice": "alice-secret-1", "bob": "bob-secret-2"}  # manifests/connections.yaml


class Softphone:
    """tests/js/softphone.mjs as a subprocess: commands in on stdin, events and traced messages out on stdout."""

    def __init__(self, server: str, user: str, password: str, extra_ca: Path | None = None):
        if NODE is None or not (JS / "node_modules" / "sip.js").is_dir():
            pytest.fail("needs node and tests/js/node_modules: run `make js` (make test does)", pytrace=False)
        env = {**os.environ, **({"NODE_EXTRA_CA_CERTS": str(extra_ca)} if extra_ca else {})}
        self.process = subprocess.Popen(
            [NODE, str(JS / "softphone.mjs"), server, user, password, DOMAIN],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
        )
        self.lines: queue.Queue[dict] = queue.Queue()
        self.events: list[dict] = []
        self.traces: list[dict] = []
        self.noise: list[str] = []  # anything that is not one of our JSON lines (Node's errors)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                self.noise.append(line)

    def command(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def wait_for(self, event: str, timeout: float = 10, **fields: str) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"SIP.js: no {event} {fields} in {timeout} s; events {self.events}, output {self.noise}")
            if "trace" in item:
                self.traces.append(item)
                continue
            self.events.append(item)
            assert item["event"] != "failed", item
            if item["event"] == event and all(item.get(key) == value for key, value in fields.items()):
                return item

    def messages(self, direction: str, start: str) -> list[str]:
        """The messages SIP.js sent or received whose start line begins with `start`."""
        return [t["message"] for t in self.traces if t["trace"] == direction and t["message"].startswith(start)]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def header(message: str, name: str) -> list[str]:
    return re.findall(rf"^{name}: (.*?)\r?$", message, re.M | re.I)


def cseq_method(message: str) -> str:
    return header(message, "CSeq")[0].split()[1]


@pytest.fixture(params=["ws", "wss"])
def scheme(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def registrar_and_ca(tmp_path: Path) -> Iterator[tuple[RunningRegistrar, Path]]:
    """A registrar whose TLS and wss present a certificate of a test CA (Node checks it, as a browser would)."""
    ca = CertificateAuthority(tmp_path / "ca")
    server = ca.issue("registrar", server_names=["127.0.0.1"])
    with serving(tmp_path, "--tls-cert", str(server.cert), "--tls-key", str(server.key)) as running:
        yield running, ca.ca_file


def test_sipjs_over_websocket_calls_and_is_called_by_a_udp_phone(
    registrar_and_ca: tuple[RunningRegistrar, Path], scheme: str, tmp_path: Path
) -> None:
    registrar, ca_file = registrar_and_ca
    port = registrar.ws_port if scheme == "ws" else registrar.wss_port
    alice = Baresip(tmp_path / "alice", user="alice", password=PASSWORDS["alice"], domain=DOMAIN,
                    proxy_host=registrar.host, proxy_port=registrar.sip_port, transport="udp", answermode="auto")
    bob = Softphone(f"{scheme}://127.0.0.1:{port}/", "bob", PASSWORDS["bob"], extra_ca=ca_file)
    try:
        with alice:
            alice.wait_registered()
            bob.wait_for("registered")
            [binding] = registrar.bindings(f"bob@{DOMAIN}")
            assert binding["transport"] == scheme, binding

            # bob (the browser) calls alice (the UDP phone); alice answers by herself; bob hangs up.
            bob.command(f"call sip:alice@{DOMAIN}")
            bob.wait_for("established", direction="out")
            alice.wait_call_established()
            time.sleep(CALL_SUMMARY_AFTER)
            bob.command("hangup")
            bob.wait_for("terminated", direction="out")
            alice.wait_call_closed()

            # alice calls bob, down his WebSocket; SIP.js answers; alice hangs up.
            since = len(alice.log())
            alice.dial(f"sip:bob@{DOMAIN}")
            bob.wait_for("established", direction="in")
            alice.wait_call_established(since=since)
            time.sleep(CALL_SUMMARY_AFTER)
            alice.hangup()
            bob.wait_for("terminated", direction="in")
            alice.wait_call_closed(since=since)
        bob.command("quit")
        bob.wait_for("unregistered")
    finally:
        bob.stop()

    record_route_of = lambda entry: re.search(r";transport=(\w+)", entry).group(1).lower()  # noqa: E731
    # bob's call: 200 OK from alice came back with the route set (the proxy's two entries, one per
    # transport: RFC 5658), and SIP.js's ACK and BYE followed it.
    [outgoing_invite] = bob.messages("sent", "INVITE ")
    call_id = header(outgoing_invite, "Call-ID")
    # (Once, or again while alice's UDP retransmissions cross the ACK: each is passed on.)
    answers = [m for m in bob.messages("received", "SIP/2.0 200 ") if cseq_method(m) == "INVITE"]
    assert answers and all(header(answer, "Call-ID") == call_id for answer in answers), bob.traces
    answer = answers[0]
    assert sorted(map(record_route_of, header(answer, "Record-Route"))) == sorted(["udp", scheme]), answer
    acks = bob.messages("sent", "ACK ")  # one per 200 received
    [bye] = bob.messages("sent", "BYE ")
    route = [uri.strip("<>").split(";")[0] for uri in header(answer, "Record-Route")[::-1]]
    assert acks and all(header(ack, "Route") == header(bye, "Route") for ack in acks), (acks, bye)
    assert [uri.strip("<>").split(";")[0] for uri in header(bye, "Route")] == route, bye
    assert [m for m in bob.messages("received", "SIP/2.0 200 ") if cseq_method(m) == "BYE"], bob.traces

    # alice's call: the INVITE reached SIP.js down its WebSocket, with our Via on top naming the WebSocket
    # transport and a Record-Route for each of the two transports; SIP.js's 200 was ACKed; alice's BYE arrived.
    [incoming_invite] = bob.messages("received", "INVITE ")
    top_via = header(incoming_invite, "Via")[0]
    assert top_via.startswith(f"SIP/2.0/{scheme.upper()} {registrar.host}:{port};"), incoming_invite
    assert sorted(map(record_route_of, header(incoming_invite, "Record-Route"))) == sorted(["udp", scheme])
    assert all(f"{registrar.host}:{port};transport={scheme}" in entry
               for entry in header(incoming_invite, "Record-Route") if record_route_of(entry) == scheme)
    assert "m=audio" in incoming_invite  # alice's SDP offer came through
    [ok] = [m for m in bob.messages("sent", "SIP/2.0 200 ") if cseq_method(m) == "INVITE"]
    assert header(ok, "Call-ID") == header(incoming_invite, "Call-ID")
    assert bob.messages("received", "ACK "), bob.traces
    [incoming_bye] = bob.messages("received", "BYE ")
    assert header(incoming_bye, "Call-ID") == header(incoming_invite, "Call-ID")
    assert [m for m in bob.messages("sent", "SIP/2.0 200 ") if cseq_method(m) == "BYE"], bob.traces
    assert "Traceback" not in registrar.log()
