"""sipreg behind an edge proxy (RFC 3327 Path): Kamailio at the border, a phone registered through it, called through it."""

from __future__ import annotations

import re
import socket
import threading
from pathlib import Path

import pytest

from tests.helpers import RunningRegistrar, free_port
from tests.integration.kamailio import edge_proxy
from tests.integration.sip_client import UserAgent, status_of

pytestmark = pytest.mark.integration

EDGE = "127.0.0.83"
PHONE = "127.0.0.84"
CALLER = "127.0.0.85"
DOMAIN = "sip.example.test"


def busy_answer(invite: str) -> bytes:
    """The phone's 486 to an INVITE: its Vias, From, To (tagged), Call-ID and CSeq (RFC 3261 8.2.6)."""
    head = invite.split("\r\n\r\n", 1)[0].split("\r\n")
    copied = [line for line in head[1:] if re.match(r"(?i)(via|from|call-id|cseq):", line)]
    to = next(line for line in head[1:] if re.match(r"(?i)to:", line))
    lines = ["SIP/2.0 486 Busy Here", *copied, f"{to};tag=phone", "Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


def test_a_phone_registered_through_kamailio_is_called_through_it(registrar: RunningRegistrar, tmp_path: Path) -> None:
    edge_port = free_port(EDGE)
    with edge_proxy(tmp_path, EDGE, edge_port, (registrar.host, registrar.sip_port)) as edge_log, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as phone:
        phone.bind((PHONE, 0))
        phone.settimeout(5)
        contact = f"sip:bob@{PHONE}:{phone.getsockname()[1]}"
        bob = UserAgent(EDGE, edge_port, "bob", "bob-secret-2", local_ip=PHONE)
        assert status_of(bob.register(contact, 300)) == 200
        [binding] = registrar.bindings(f"bob@{DOMAIN}")
        assert binding["path"] == [f"<sip:{EDGE}:{edge_port};lr>"]  # what Kamailio's add_path() wrote
        assert binding["source"] == f"udp:{EDGE}:{edge_port}"  # the REGISTER came from the edge

        alice = UserAgent(registrar.host, registrar.sip_port, "alice", "alice-secret-1", local_ip=CALLER)
        answers: list[str] = []
        calling = threading.Thread(target=lambda: answers.append(alice.call(f"sip:bob@{DOMAIN}", timeout=10)))
        calling.start()
        try:
            invite, edge_address = phone.recvfrom(65535)
            text = invite.decode()
            assert edge_address == (EDGE, edge_port)  # the edge sent it, not the registrar
            assert text.startswith(f"INVITE {contact} SIP/2.0")
            vias = re.findall(r"(?im)^Via: (.*)$", text)
            assert vias[0].startswith(f"SIP/2.0/UDP {EDGE}:{edge_port}")  # Kamailio's, on top
            assert vias[1].startswith(f"SIP/2.0/UDP {registrar.host}:{registrar.sip_port}")  # sipreg's, below
            assert not re.search(r"(?im)^Route:", text)  # the edge consumed the Path route
            phone.sendto(busy_answer(text), edge_address)
            ack = phone.recv(65535).decode()  # the edge ACKs the failure, hop by hop
            assert ack.startswith(f"ACK {contact} SIP/2.0"), ack
        finally:
            calling.join(15)
        assert answers and status_of(answers[0]) == 486, answers
        trace = edge_log.read_text()
        assert "REGISTER of bob with Path" in trace
        # The registrar sent the INVITE to the edge with the stored Path as its Route set (RFC 3327 5.3).
        assert f"in INVITE {contact} from {registrar.host}:{registrar.sip_port} route=<sip:{EDGE}:{edge_port};lr>" \
            in trace, trace
