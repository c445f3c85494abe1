"""Password guessing against a real `sipreg serve`: our own digest guesser locks itself out, a phone never is.

The guesser computes real digest responses with wrong passwords (tests/integration/sip_client.py)
from 127.0.0.2, then a "botnet" from 127.0.0.4-6; meanwhile alice's phone registers from
127.0.0.3 every second with the right password. The domain's lockout is scaled down to seconds
(`spec.security.lockout`). The registrar's log lines are then read as fail2ban would read them,
with the filter the repository ships (contrib/fail2ban/sipreg.conf).
"""

from __future__ import annotations

import collections
import configparser
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT, RunningRegistrar, free_port, serving
from tests.integration.sip_client import UserAgent, status_of

pytestmark = pytest.mark.integration

DOMAIN = "sip.example.test"
PASSWORD = "alice-right-password"
LOCKED = "SIP/2.0 403 Too Many Failed Authentications"
# Small enough for a test of a few seconds: the pair locks at its 3rd failure, the user at its 8th.
FAILURES_PER_SOURCE, FAILURES_PER_USER, LOCKOUT_SECONDS = 3, 8, 3
FAIL2BAN_FILTER = ROOT / "contrib" / "fail2ban" / "sipreg.conf"


def write_manifests(directory: Path) -> Path:
    directory.mkdir()
    (directory / "sip.yaml").write_text(f"""
apiVersion: sipreg.io/v1alpha1
kind: SipDomain
metadata: {{name: sip-example-test, namespace: voip}}
spec:
  domain: {DOMAIN}
  registration: {{enabled: true, minExpires: 60, defaultExpires: 600, maxExpires: 3600}}
  outbound: {{gateway: "sip:127.0.0.1:{free_port()}"}}
  security:
    lockout:
      failuresPerSource: {FAILURES_PER_SOURCE}
      failuresPerUser: {FAILURES_PER_USER}
      windowSeconds: 60
      lockoutSeconds: {LOCKOUT_SECONDS}
      maxLockoutSeconds: 12
      failuresPerNonce: 2
---
apiVersion: v1
kind: Secret
metadata: {{name: alice-sip, namespace: voip}}
stringData: {{password: "{PASSWORD}"}}
---
apiVersion: sipreg.io/v1alpha1
kind: SipConnection
metadata: {{name: alice, namespace: voip}}
spec:
  domain: {DOMAIN}
  username: alice
  authentication:
    type: credentials
    passwordSecretRef: {{name: alice-sip, key: password}}
""")
    return directory


@pytest.fixture
def registrar(tmp_path: Path) -> Iterator[RunningRegistrar]:
    with serving(tmp_path, manifests=write_manifests(tmp_path / "manifests")) as running:
        yield running


class Phone(threading.Thread):
    """alice's phone: registers every second with the right password until stopped; keeps every answer."""

    def __init__(self, registrar: RunningRegistrar, local_ip: str):
        super().__init__(daemon=True)
        self.ua = UserAgent(registrar.host, registrar.sip_port, "alice", PASSWORD, DOMAIN, local_ip=local_ip)
        self.local_ip = local_ip
        self.statuses: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.statuses.append(status_of(self.ua.register(f"sip:alice@{self.local_ip}:5060", 600)))
            except OSError:  # no answer within the client's timeout
                self.statuses.append(0)
            self.stop.wait(1.0)


def guess(registrar: RunningRegistrar, local_ip: str, password: str) -> str:
    """One guess: a REGISTER, its challenge answered with a real digest response for `password`."""
    ua = UserAgent(registrar.host, registrar.sip_port, "alice", password, DOMAIN, local_ip=local_ip)
    return ua.register(f"sip:alice@{local_ip}:5060", 600)


def first_line(response: str) -> str:
    return response.split("\r\n", 1)[0]


def test_a_guesser_locks_itself_out_while_the_phone_keeps_registering(registrar: RunningRegistrar) -> None:
    phone = Phone(registrar, "127.0.0.3")
    phone.start()
    try:
        deadline = time.monotonic() + 5
        while not phone.statuses and time.monotonic() < deadline:
            time.sleep(0.02)
        assert phone.statuses == [200]  # the phone has proved the password from 127.0.0.3

        # The guesser is locked out within its first failuresPerSource tries...
        answers = [first_line(guess(registrar, "127.0.0.2", f"guess-{n}")) for n in range(FAILURES_PER_SOURCE)]
        locked_at = time.monotonic()
        assert answers == ["SIP/2.0 401 Unauthorized"] * (FAILURES_PER_SOURCE - 1) + [LOCKED]
        # ...and then the right password fails from there too, REGISTER and outbound call alike,
        # as do further guesses (refused unverified: not logged one by one).
        assert first_line(guess(registrar, "127.0.0.2", PASSWORD)) == LOCKED
        for n in range(5):
            assert first_line(guess(registrar, "127.0.0.2", f"more-{n}")) == LOCKED
        caller = UserAgent(registrar.host, registrar.sip_port, "alice", PASSWORD, DOMAIN, local_ip="127.0.0.2")
        assert first_line(caller.call(f"sip:+15551234@{DOMAIN}")) == LOCKED
        assert time.monotonic() - locked_at < LOCKOUT_SECONDS, "the checks above must run within the lock"

        # Once the lock has ended, one more wrong guess locks the guesser again, for twice as long.
        time.sleep(max(0.0, locked_at + LOCKOUT_SECONDS + 0.2 - time.monotonic()))
        assert first_line(guess(registrar, "127.0.0.2", "after-the-lock")) == LOCKED

        # A botnet: a few guesses from each of other addresses, below the pair threshold, until the
        # user's count (8) locks alice out for every address that never proved her password.
        assert [first_line(guess(registrar, "127.0.0.4", f"bot-{n}")) for n in range(2)] == [
            "SIP/2.0 401 Unauthorized"
        ] * 2
        assert [first_line(guess(registrar, "127.0.0.5", f"bot-{n}")) for n in range(2)] == [
            "SIP/2.0 401 Unauthorized", LOCKED,
        ]
        assert first_line(guess(registrar, "127.0.0.6", PASSWORD)) == LOCKED  # right password, unproven address
        time.sleep(1.5)  # the phone registers through the user lock
    finally:
        phone.stop.set()
        phone.join(timeout=5)

    assert len(phone.statuses) >= 4
    assert phone.statuses == [200] * len(phone.statuses)

    log = registrar.log()
    failures = re.findall(r"^(\S+ \S+) WARNING sipreg: auth failed user=(\S+) source=udp:([\d.]+):\d+ reason=\"(.*)\"$",
                          log, re.M)
    # One line per verified failure: 3 + 1 from the guesser, 2 + 2 from the botnet; none for refusals.
    assert [(user, host, reason) for _, user, host, reason in failures] == (
        [(f"alice@{DOMAIN}", "127.0.0.2", "wrong password")] * 4
        + [(f"alice@{DOMAIN}", "127.0.0.4", "wrong password")] * 2
        + [(f"alice@{DOMAIN}", "127.0.0.5", "wrong password")] * 2
    )
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}", when) for when, *_ in failures)
    lockouts = re.findall(r"sipreg: auth lockout user=(\S+) source=udp:([\d.]+):\d+ seconds=(\d+) scope=(\w+) "
                          r"failures=(\d+)$", log, re.M)
    assert lockouts == [
        (f"alice@{DOMAIN}", "127.0.0.2", str(LOCKOUT_SECONDS), "source", "3"),
        (f"alice@{DOMAIN}", "127.0.0.2", str(2 * LOCKOUT_SECONDS), "source", "4"),
        (f"alice@{DOMAIN}", "127.0.0.5", str(LOCKOUT_SECONDS), "user", "8"),
    ]
    assert "127.0.0.3" not in "".join(line for line in log.splitlines() if "sipreg: auth" in line)

    labels = {"domain": DOMAIN}
    assert registrar.metric("sipreg_auth_failures_total", **labels) == 8
    assert registrar.metric("sipreg_auth_lockouts_total", **labels, scope="source") == 2
    assert registrar.metric("sipreg_auth_lockouts_total", **labels, scope="user") == 1
    # The right password, five more guesses and the call from 127.0.0.2; the right password from 127.0.0.6.
    assert registrar.metric("sipreg_auth_lockout_refusals_total", **labels, scope="source") == 7
    assert registrar.metric("sipreg_auth_lockout_refusals_total", **labels, scope="user") == 1

    # fail2ban, fed the same log, finds one failure per failure line, each with the guesser's address.
    banned = collections.Counter(host for line in log.splitlines() if (host := fail2ban_host(line)) is not None)
    assert banned == {"127.0.0.2": 4, "127.0.0.4": 2, "127.0.0.5": 2}
    # The same lines as a Kubernetes node's container log has them match too.
    line = next(line for line in log.splitlines() if " auth failed " in line)
    assert fail2ban_host(f"2026-12-06T18:47:48.123456789Z stderr F {line}") == "127.0.0.2"


def fail2ban_failregex() -> list[re.Pattern[str]]:
    """The shipped filter's failregex lines, with <HOST> as a Python equivalent of fail2ban's."""
    config = configparser.ConfigParser(interpolation=None)
    config.read(FAIL2BAN_FILTER)
    host = r"(?:\[?(?P<ip6>[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7})\]?|(?P<ip4>\d{1,3}(?:\.\d{1,3}){3})|(?P<dns>[\w.-]*\w))"
    return [re.compile(regex.replace("<HOST>", host)) for regex in config["Definition"]["failregex"].split("\n") if regex]


# What fail2ban does with a line before its failregex sees it (datepattern {^LN-BEG}): the time
# that starts the line is cut out.
_LEADING_TIME = re.compile(r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?Z?")


def fail2ban_host(line: str) -> str | None:
    rest = _LEADING_TIME.sub("", line, count=1)
    for regex in fail2ban_failregex():
        match = regex.search(rest)
        if match:
            return match["ip4"] or match["ip6"] or match["dns"]
    return None


def test_the_fail2ban_filter_cannot_be_steered_by_a_username() -> None:
    # A username built to look like another source: sipreg escapes it (unit-tested in
    # test_registrar), and the regex insists on one \S+ token before the real source.
    forged = ("2026-12-06 18:47:48,123 WARNING sipreg: auth failed user=x\\x20source\\x3dudp\\x3a6.6.6.6\\x3a1"
              "@sip.example.test source=udp:192.0.2.7:5060 reason=\"unknown user\"")
    assert fail2ban_host(forged) == "192.0.2.7"
    assert fail2ban_host("2026-12-06 18:47:48,123 INFO sipreg: listening on udp 127.0.0.1:5060") is None
    ipv6 = "2026-12-06 18:47:48,123 WARNING sipreg: auth failed user=a@d source=tls:[2001:db8::7]:5061 reason=\"x\""
    assert fail2ban_host(ipv6) == "2001:db8::7"
