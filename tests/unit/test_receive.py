"""SipEndpoint.receive on what anyone may send: precise 400s, nothing reflected, nothing escapes, little logged.

Regressions of what a probe and the fuzzer (tests/fuzzing.py) found, through a
registrar as `sipreg serve` assembles it (tests.fuzzing.ReceivePath).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from registrar.metrics import Metrics
from registrar.model import SecurityPolicy
from registrar.ratelog import LOG_INTERVAL
from registrar.sip.source import Source
from registrar.sip.message import MAX_ECHOED_VALUE, MAX_HEADER_LINE, Response, parse_message
from registrar.source_limits import SourceLimiter
from registrar.sip.transaction import TransactionLayer
from registrar.transport import SipEndpoint
from tests.helpers import FakeClock
from tests.fuzzing import DOMAIN, SOURCE, ReceivePath

# The probe's datagram: a quoted string in a Via parameter that never ends.
VIA_PROBE = (
    f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
    'Via: SIP/2.0/UDP 1.2.3.4;x="abc\r\n'
    f"From: <sip:a@{DOMAIN}>;tag=1\r\nTo: <sip:a@{DOMAIN}>\r\nCall-ID: probe\r\nCSeq: 1 REGISTER\r\n\r\n"
).encode()


def options(call_id: str = "opt-1", *, user: str = "") -> bytes:
    target = f"{user}@{DOMAIN}" if user else DOMAIN
    return (
        f"OPTIONS sip:{target} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bK-{call_id}\r\n"
        f"From: <sip:pbx@{DOMAIN}>;tag=1\r\nTo: <sip:{target}>\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


@pytest.fixture
def path() -> Iterator[ReceivePath]:
    receive_path = ReceivePath()
    yield receive_path
    receive_path.close()


def answer(data: bytes) -> Response:
    response = parse_message(data)
    assert isinstance(response, Response)
    return response


def test_a_via_with_an_unterminated_quoted_string_gets_400_naming_it(
    path: ReceivePath, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="sipreg")
    [data] = path.receive(VIA_PROBE)
    response = answer(data)
    assert (response.status, response.reason) == (400, "Bad Via: unterminated quoted string")
    # Echoed up to the quoted string it leaves open, or the answer would not parse either.
    assert response.get_all("Via") == ["SIP/2.0/UDP 1.2.3.4;x="]
    assert (response.call_id, response.cseq) == ("probe", (1, "REGISTER"))
    assert path.internal_errors() == 0
    assert not [record for record in caplog.records if record.exc_info or record.levelno >= logging.WARNING]


def test_a_cr_in_the_sip_version_is_400_and_nothing_of_it_comes_back(path: ReceivePath) -> None:
    data = VIA_PROBE.replace(b';x="abc', b";branch=z9hG4bK-cr").replace(
        b"SIP/2.0\r\nVia", b"SIP/2.0\rX-Injected:y\r\nVia"
    )
    [sent] = path.receive(data)
    assert sent.startswith(b"SIP/2.0 400 Bad Request-Line: control character 0x0D\r\n")
    assert b"X-Injected" not in sent


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("Call-ID: a\x00b", "Bad Call-ID: control character 0x00"),
        ("Call-ID: a\nX-Injected: y", "Bad Call-ID: control character 0x0A"),
        ("From: <sip:a@x>;tag=1\rX-Injected: y", "Bad From: control character 0x0D"),
    ],
)
def test_a_control_character_in_a_header_is_400_and_not_echoed(path: ReceivePath, line: str, reason: str) -> None:
    name = line.split(":")[0]
    lines = [text for text in options().decode().split("\r\n") if not text.startswith(f"{name}:")]
    lines.insert(2, line)
    [sent] = path.receive("\r\n".join(lines).encode())
    response = answer(sent)
    assert (response.status, response.reason) == (400, reason)
    assert not any(line.startswith(b"X-Injected") for line in sent.split(b"\r\n"))
    assert not any(c in value for _, value in response.headers for c in "\x00\r\n")


def test_a_bad_message_on_a_connection_gets_its_400_and_the_connection_carries_on(path: ReceivePath) -> None:
    connection = path.receive_stream(VIA_PROBE + options(), options("opt-2"))
    assert not connection.closed
    assert [(answer(data).status, answer(data).call_id) for data in connection.answers()] == [
        (400, "probe"), (200, "opt-1"), (200, "opt-2")
    ]


def test_a_stream_that_cannot_be_framed_is_answered_and_closed(path: ReceivePath) -> None:
    connection = path.receive_stream(options().replace(b"Content-Length: 0", b"Content-Length: zero"))
    assert connection.closed
    assert [(answer(data).status, answer(data).reason) for data in connection.answers()] == [(400, "Bad Content-Length")]


def test_a_folded_header_too_long_to_send_in_one_line_is_400(path: ReceivePath) -> None:
    folded = b"Subject: " + b"a" * 5000 + b"\r\n " + b"b" * 5000 + b"\r\nContent-Length: 0"
    data = options().replace(b"Content-Length: 0", folded)
    [sent] = path.receive(data)
    assert answer(sent).reason == "Header Line Too Long: Subject (limit 8192 bytes)"


# -- the last line of defence -------------------------------------------------------------------


def broken_endpoint(metrics: Metrics, clock: FakeClock) -> SipEndpoint:
    sources = SourceLimiter(SecurityPolicy, clock=clock)
    return SipEndpoint(BrokenService(), metrics, sources, SecurityPolicy, TransactionLayer(), clock=clock)  # type: ignore[arg-type]


class BrokenService:
    """A SIP service with a bug each request runs into, whose message quotes the request."""

    def proxied(self, request) -> bool:  # type: ignore[no-untyped-def]
        if request.method == "OPTIONS":
            raise RuntimeError(f"no route for {request.call_id}")
        return False

    def handle(self, request, source):  # type: ignore[no-untyped-def]
        raise KeyError(request.call_id)


def test_a_bug_a_message_meets_is_counted_and_logged_once_per_interval_without_traceback_or_bytes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="sipreg.transport")
    clock = FakeClock(1000.0)
    metrics = Metrics()
    endpoint = broken_endpoint(metrics, clock)
    sent: list[bytes] = []
    for number in range(3):
        endpoint.receive(options(f"secret-{number}", user="pbx"), SOURCE, sent.append)  # raises nothing
    assert sent == []  # the bug struck before there was anything to answer with
    [line] = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert line.exc_info is None
    message = line.getMessage()
    assert message.startswith(f"unexpected error on a message from {SOURCE}: RuntimeError in unit/test_receive.py:")
    assert "secret" not in message

    clock.advance(LOG_INTERVAL)
    endpoint.receive(options("secret-3", user="pbx"), SOURCE, sent.append)
    lines = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert len(lines) == 2 and lines[1].endswith("(and 2 more like it in the last 10 s)")
    assert metrics.registry.get_sample_value("sipreg_internal_errors_total") == 4


def test_a_bug_in_answering_a_request_gets_500(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="sipreg.transport")
    metrics = Metrics()
    endpoint = broken_endpoint(metrics, FakeClock())
    sent: list[bytes] = []
    register = VIA_PROBE.replace(b';x="abc', b";branch=z9hG4bK-500").replace(b"probe", b"secret-call")
    endpoint.receive(register, Source("udp", "1.2.3.4", 5060), sent.append)
    [response] = [answer(data) for data in sent]
    assert (response.status, response.reason) == (500, "Server Internal Error")
    [line] = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert line.exc_info is None and "secret" not in line.getMessage()
    assert "KeyError in unit/test_receive.py" in line.getMessage()
    assert metrics.registry.get_sample_value("sipreg_internal_errors_total") == 1


def register(contact: str, branch: str) -> bytes:
    return (
        f"REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bK-{branch}\r\n"
        f"From: <sip:pbx@{DOMAIN}>;tag=1\r\nTo: <sip:pbx@{DOMAIN}>\r\nCall-ID: {branch}\r\nCSeq: 1 REGISTER\r\n"
        f"Contact: {contact}\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def test_a_contact_at_the_limit_comes_back_in_a_200_that_parses_and_one_past_it_is_400(path: ReceivePath) -> None:
    at_limit = "<sip:pbx@127.0.0.2:5060;x=" + "a" * (MAX_ECHOED_VALUE - 27) + ">"
    [sent] = path.receive(register(at_limit, "at-limit"))
    response = answer(sent)  # with ;expires= and ;received= added, and within the line limit
    assert response.status == 200 and max(map(len, sent.split(b"\r\n"))) <= MAX_HEADER_LINE
    [sent] = path.receive(register(at_limit[:-1] + "a>", "past-limit"))
    assert answer(sent).reason == f"Header Line Too Long: Contact (limit {MAX_ECHOED_VALUE} bytes)"
