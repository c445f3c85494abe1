"""REGISTER against a real `sipreg serve`, driven by sipp over UDP and TCP."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import MANIFESTS, RunningRegistrar
from tests.integration.sipp import SIPP, manifest_passwords, run_sipp, single_request_scenario, users_csv

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(SIPP is None, reason="sipp not installed; `make test` installs Debian's sip-tester"),
]

DOMAIN = "sip.example.test"
CONTACT_PORT = "5999"  # differs from sipp's source port: the registrar must keep the source (NAT)


def target(registrar: RunningRegistrar) -> str:
    return f"{registrar.host}:{registrar.sip_port}"


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_users_register_with_digest_and_unregister(registrar: RunningRegistrar, tmp_path: Path, transport: str) -> None:
    passwords = manifest_passwords(MANIFESTS)
    users = [(name, passwords[name]) for name in ("alice", "bob", "carol")]
    csv = users_csv(tmp_path / "users.csv", users, DOMAIN)

    run = run_sipp(
        "register_auth.xml", target(registrar), workdir=tmp_path, transport=transport, calls=3,
        injection=csv, keys={"contact_port": CONTACT_PORT, "expires": "300"},
    )
    assert (run.successful, run.failed) == (3, 0), run.errors or run.messages

    for user, _ in users:
        [binding] = registrar.bindings(f"{user}@{DOMAIN}")
        assert binding["contact"] == f"sip:{user}@127.0.0.1:{CONTACT_PORT};transport={transport.upper()}"
        assert binding["transport"] == transport
        assert 270 <= binding["expires"] <= 300  # the default --expires-spread takes up to 10% off
        assert binding["source"].startswith(f"{transport}:127.0.0.1:")
        assert binding["received"] == f"sip:{binding['source'].partition(':')[2]}" + (
            "" if transport == "udp" else f";transport={transport}"
        )
        assert binding["userAgent"] == "sipp"
        assert (binding["flow"] is None) == (transport == "udp")
    # The 200 OK lists the contact with its expiry and the source it was seen from.
    assert re.search(r"Contact: <sip:alice@127\.0\.0\.1:5999;transport=\w+>;expires=\d+;received=\"sip:127\.0\.0\.1:\d+", run.messages)

    run = run_sipp(
        "register_auth.xml", target(registrar), workdir=tmp_path, transport=transport, calls=3,
        injection=csv, keys={"contact_port": CONTACT_PORT, "expires": "0"},
    )
    assert (run.successful, run.failed) == (3, 0), run.errors or run.messages
    assert registrar.bindings() == []


def test_wrong_password_gets_a_fresh_challenge_and_no_binding(registrar: RunningRegistrar, tmp_path: Path) -> None:
    csv = users_csv(tmp_path / "users.csv", [("alice", "not-the-password")], DOMAIN)
    run = run_sipp(
        "register_wrong_password.xml", target(registrar), workdir=tmp_path, injection=csv,
        keys={"contact_port": CONTACT_PORT, "expires": "300"},
    )
    assert (run.successful, run.failed) == (1, 0), run.errors or run.messages
    nonces = re.findall(r'WWW-Authenticate: Digest .*nonce="([^"]+)"', run.messages)
    assert len(nonces) == 2 and nonces[0] != nonces[1]
    assert registrar.bindings() == []
    assert 'sipreg_auth_failures_total{domain="sip.example.test"} 1.0' in registrar.metrics()


REGISTER = """
REGISTER sip:{domain} SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
Max-Forwards: 70
From: <sip:{user}@{domain}>;tag=[call_number]
To: <sip:{user}@{domain}>
Call-ID: [call_id]
CSeq: 1 REGISTER
Contact: <sip:{user}@[local_ip]:[local_port]>
Expires: {expires}
Content-Length: 0
"""


def register_once(registrar: RunningRegistrar, tmp_path: Path, *, user: str, domain: str = DOMAIN,
                  expires: int = 300, expect: int, local_ip: str = "127.0.0.1"):
    scenario = single_request_scenario(
        tmp_path / "one.xml", REGISTER.format(user=user, domain=domain, expires=expires), expect
    )
    run = run_sipp(scenario, target(registrar), workdir=tmp_path, local_ip=local_ip)
    assert (run.successful, run.failed) == (1, 0), run.errors or run.messages
    return run


def test_domain_with_registration_disabled_answers_405_with_allow(registrar: RunningRegistrar, tmp_path: Path) -> None:
    run = register_once(registrar, tmp_path, user="trunk1", domain="siphv.example.test", expect=405)
    [allow] = re.findall(r"^Allow: (.*)$", run.messages, re.M)
    assert "REGISTER" not in allow and "INVITE" in allow


def test_unserved_domain_gets_404(registrar: RunningRegistrar, tmp_path: Path) -> None:
    run = register_once(registrar, tmp_path, user="alice", domain="elsewhere.example", expect=404)
    assert "SIP/2.0 404 Domain Not Served" in run.messages


def test_ip_authenticated_pbx_registers_without_a_challenge(registrar: RunningRegistrar, tmp_path: Path) -> None:
    # pbx-office's allow-list in manifests/connections.yaml holds 127.0.0.2/32.
    run = register_once(registrar, tmp_path, user="pbx-office", local_ip="127.0.0.2", expect=200)
    assert "SIP/2.0 401" not in run.messages  # (a bare "401" can be part of a port number)
    [binding] = registrar.bindings(f"pbx-office@{DOMAIN}")
    assert binding["source"].startswith("udp:127.0.0.2:")
    assert binding["received"] is None  # Contact and source agree: no NAT


def test_ip_authenticated_pbx_from_another_address_is_challenged_like_anyone(
    registrar: RunningRegistrar, tmp_path: Path
) -> None:
    # A 403 here would tell that the name exists: it gets the 401 every name gets, and can never pass it.
    run = register_once(registrar, tmp_path, user="pbx-office", local_ip="127.0.0.1", expect=401)
    assert "SIP/2.0 401 Unauthorized" in run.messages and "WWW-Authenticate: Digest" in run.messages
    assert registrar.bindings() == []


def test_too_brief_expiry_gets_423_with_min_expires(registrar: RunningRegistrar, tmp_path: Path) -> None:
    run = register_once(registrar, tmp_path, user="pbx-office", local_ip="127.0.0.2", expires=10, expect=423)
    assert re.search(r"^Min-Expires: 60$", run.messages, re.M)
    assert registrar.bindings() == []


def test_options_is_answered_with_allow_and_accept(registrar: RunningRegistrar, tmp_path: Path) -> None:
    scenario = single_request_scenario(
        tmp_path / "options.xml",
        """
OPTIONS sip:sip.example.test SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
Max-Forwards: 70
From: <sip:probe@sip.example.test>;tag=[call_number]
To: <sip:sip.example.test>
Call-ID: [call_id]
CSeq: 1 OPTIONS
Content-Length: 0
""",
        200,
    )
    run = run_sipp(scenario, target(registrar), workdir=tmp_path)
    assert (run.successful, run.failed) == (1, 0), run.errors
    assert re.search(r"^Allow: .*REGISTER", run.messages, re.M)
    assert re.search(r"^Accept: application/sdp", run.messages, re.M)
