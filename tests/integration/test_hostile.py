"""Hostile traffic against a real `sipreg serve`: a scanner enumerating users, a flood, reflection.

Each attacker has a loopback address of its own (127.0.0.66, .77 ...), so the
per-source limits see it as another host. Password guessing and connection
floods have their own tests (test_lockout.py, test_connection_limits.py).
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import RunningRegistrar, manifests_with_security, serving
from tests.integration.sip_client import UserAgent, status_of
from tests.integration.sipp import flood, run_sipp, users_csv

pytestmark = pytest.mark.integration

DOMAIN = "sip.example.test"
USERS = ["alice", "bob", "carol", "trunk1", "pbx-office"]  # manifests/connections.yaml
NOT_USERS = ["zed", "nobody", "admin", "100", "1000", "guest"]
SVWAR = shutil.which("svwar")


# -- enumeration ---------------------------------------------------------------------------------------


def svwar(registrar: RunningRegistrar, method: str, dictionary: Path, *force: str) -> str:
    """svwar's report for `dictionary` over `method`. It sends from 127.0.0.1 whatever -b says (a bug of 0.3.3)."""
    result = subprocess.run(
        [SVWAR, *force, "-p", str(registrar.sip_port), "--domain", DOMAIN, "-m", method, "-d", str(dictionary),
         registrar.host],
        capture_output=True, text=True, timeout=120,
    )
    return result.stdout + result.stderr


def reported(report: str) -> set[str]:
    """The extensions svwar's table lists (| name | status |)."""
    return {name for name, _ in re.findall(r"^\|\s*(\S+)\s*\|\s*(.*?)\s*\|$", report, re.M)} - {"Extension"}


@pytest.fixture
def dictionary(tmp_path: Path) -> Path:
    path = tmp_path / "users.txt"
    path.write_text("\n".join(USERS + NOT_USERS) + "\n")
    return path


@pytest.mark.skipif(SVWAR is None, reason="svwar missing: make test installs Debian's sipvicious")
@pytest.mark.parametrize("method", ["REGISTER", "INVITE", "OPTIONS"])
def test_svwar_finds_none_of_the_users(tmp_path: Path, dictionary: Path, method: str) -> None:
    with serving(tmp_path) as registrar:
        assert "found nothing" in svwar(registrar, method, dictionary)
        # Forced past its sanity check, it can only list every name alike (users or not) or none.
        listed = reported(svwar(registrar, method, dictionary, "--force"))
        assert listed in (set(), set(USERS + NOT_USERS)), listed


def answers(registrar: RunningRegistrar, method: str, users: list[str], local_host: str) -> dict[str, str]:
    """Each user's answer to `method` from `local_host`, with what differs by request (tags, nonce...) blanked."""
    shapes = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((local_host, 0))
        sock.settimeout(3)
        port = sock.getsockname()[1]
        for user in users:
            uri = f"sip:{DOMAIN}" if method == "REGISTER" else f"sip:{user}@{DOMAIN}"
            sock.sendto(
                (f"{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local_host}:{port};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
                 f"Max-Forwards: 70\r\nFrom: <sip:{user}@{DOMAIN}>;tag=x\r\nTo: <sip:{user}@{DOMAIN}>\r\n"
                 f"Call-ID: {uuid.uuid4().hex}\r\nCSeq: 1 {method}\r\nContact: <sip:{user}@{local_host}:{port}>\r\n"
                 "Content-Length: 0\r\n\r\n").encode(),
                (registrar.host, registrar.sip_port),
            )
            answer = sock.recv(65535).decode()
            shapes[user] = re.sub(rf"\b{re.escape(user)}\b|tag=[^;\r\n]+|branch=[^;\r\n]+|Call-ID: .*|"
                                  r'nonce="[^"]+"', "", answer)
    return shapes


@pytest.mark.parametrize("method", ["REGISTER", "INVITE", "OPTIONS", "MESSAGE"])
def test_a_stranger_gets_the_same_answer_for_users_and_non_users(tmp_path: Path, method: str) -> None:
    # pbx-office authenticates by address (127.0.0.2): from elsewhere its REGISTER is challenged like any.
    manifests = manifests_with_security(tmp_path / "manifests", {"trustedNetworks": ["127.0.0.9/32"]})
    with serving(tmp_path, manifests=manifests) as registrar:
        shapes = answers(registrar, method, USERS + NOT_USERS, "127.0.0.99")
        assert len(set(shapes.values())) == 1, shapes
        # The control: a trusted peer (a carrier) is told who exists, so the comparison above can tell.
        if method != "REGISTER":
            precise = answers(registrar, method, ["alice", "zed"], "127.0.0.9")
            assert precise["alice"].startswith("SIP/2.0 480") and precise["zed"].startswith("SIP/2.0 404"), precise


# -- reflection ----------------------------------------------------------------------------------------


def test_requests_refused_to_a_stranger_get_one_packet_back_each(registrar: RunningRegistrar) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.88", 0))
        port = sock.getsockname()[1]
        sent = 0
        for n in range(20):
            for method in ("INVITE", "OPTIONS", "MESSAGE"):
                user = f"{method.lower()}{n}"
                sock.sendto(
                    (f"{method} sip:{user}@{DOMAIN} SIP/2.0\r\n"
                     f"Via: SIP/2.0/UDP 127.0.0.88:{port};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
                     f"Max-Forwards: 70\r\nFrom: <sip:{user}@{DOMAIN}>;tag=t{n}\r\nTo: <sip:{user}@{DOMAIN}>\r\n"
                     f"Call-ID: {uuid.uuid4().hex}\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n").encode(),
                    (registrar.host, registrar.sip_port),
                )
                sent += 1
        # Never ACKed: Timer G would resend each INVITE's final at 0.5, 1.5 and 3.5 s.
        answers = []
        sock.settimeout(0.5)
        deadline = time.monotonic() + 4.5
        while time.monotonic() < deadline:
            try:
                answers.append(sock.recv(65535).decode())
            except TimeoutError:
                continue
    assert 0 < len(answers) <= sent, (len(answers), sent)
    assert {answer.split("\r\n", 1)[0] for answer in answers} == {"SIP/2.0 407 Proxy Authentication Required"}


# -- flood -----------------------------------------------------------------------------------------------


def rss_kib(registrar: RunningRegistrar) -> int:
    status = Path(f"/proc/{registrar.process.pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))


FLOOD_SECONDS = 20


def test_a_flood_from_one_source_is_banned_and_a_phone_elsewhere_registers_throughout(
    registrar: RunningRegistrar, tmp_path: Path
) -> None:
    phone = UserAgent(registrar.host, registrar.sip_port, "alice", "alice-secret-1", local_ip="127.0.0.77")
    assert status_of(phone.register("sip:alice@127.0.0.77:5060", 300)) == 200
    before = rss_kib(registrar)
    flooded: list[int] = []
    flooding = threading.Thread(target=lambda: flooded.append(flood(
        f"{registrar.host}:{registrar.sip_port}", workdir=tmp_path, local_ip="127.0.0.66", seconds=FLOOD_SECONDS,
        keys={"domain": DOMAIN},
    )))
    statuses: list[tuple[int, float]] = []
    flooding.start()
    try:
        started = time.monotonic()
        while time.monotonic() - started < FLOOD_SECONDS - 1:
            attempt = time.monotonic()
            try:
                status = status_of(phone.register("sip:alice@127.0.0.77:5060", 300, timeout=2))
            except TimeoutError:
                status = 0
            statuses.append((status, time.monotonic() - attempt))
            time.sleep(max(0.0, 1.0 - (time.monotonic() - attempt)))
    finally:
        flooding.join(FLOOD_SECONDS + 60)
    after = rss_kib(registrar)
    assert flooded and flooded[0] > 20_000, f"sipp sent only {flooded} INVITEs: no flood to speak of"
    assert [status for status, _ in statuses] == [200] * len(statuses), statuses
    assert len(statuses) >= FLOOD_SECONDS - 3
    assert max(seconds for _, seconds in statuses) < 1.0, statuses
    assert after - before < 40 * 1024, f"RSS grew {before} -> {after} KiB"
    assert registrar.metric("sipreg_source_bans_total") >= 1
    assert "source banned source=127.0.0.66 seconds=60" in registrar.log()
    assert registrar.metric("sipreg_requests_refused_total", why="banned") > flooded[0] / 2


# -- an office behind one NAT ----------------------------------------------------------------------------


def office_manifests(directory: Path, phones: int) -> Path:
    """sip.example.test with `phones` users, default security."""
    directory.mkdir()
    documents = [f"""apiVersion: sipreg.io/v1alpha1
kind: SipDomain
metadata: {{name: office, namespace: office}}
spec:
  domain: {DOMAIN}
  registration: {{}}
"""]
    for n in range(phones):
        documents.append(f"""apiVersion: v1
kind: Secret
metadata: {{name: phone{n}, namespace: office}}
stringData: {{password: pw-{n}}}
---
apiVersion: sipreg.io/v1alpha1
kind: SipConnection
metadata: {{name: phone{n}, namespace: office}}
spec:
  domain: {DOMAIN}
  username: phone{n}
  authentication: {{passwordSecretRef: {{name: phone{n}}}}}
""")
    (directory / "office.yaml").write_text("---\n".join(documents))
    return directory


def test_three_hundred_phones_behind_one_nat_re_registering_at_once_are_not_banned(tmp_path: Path) -> None:
    phones = 300  # more than the burst (400) holds without the authenticated legs given back
    with serving(tmp_path, manifests=office_manifests(tmp_path / "manifests", phones)) as registrar:
        csv = users_csv(tmp_path / "phones.csv", [(f"phone{n}", f"pw-{n}") for n in range(phones)], DOMAIN)
        # All of them within a fifth of a second, from one address (the office's NAT), as after an outage.
        run = run_sipp("register_auth.xml", f"{registrar.host}:{registrar.sip_port}", workdir=tmp_path,
                       local_ip="127.0.0.55", injection=csv, calls=phones, rate=1000, timeout=30,
                       keys={"contact_port": "5999", "expires": "300"}, trace_messages=False)
        assert (run.successful, run.failed) == (phones, 0), run.errors
        assert len(registrar.bindings()) == phones
        assert registrar.metric("sipreg_source_bans_total") == 0
        assert registrar.metric("sipreg_requests_refused_total", why="rate") == 0
