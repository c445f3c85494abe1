"""A tiny user agent for integration tests: one REGISTER (UDP or TCP) or INVITE (UDP), answering a digest challenge once.

sipp drives the load and baresip the real softphone; this is for the steps in
between, such as a REGISTER without Contact (a query) sent to another replica,
or a password guesser computing real digest responses, where a scenario file
would be more ceremony than test.
"""

from __future__ import annotations

import re
import socket
import uuid
from dataclasses import dataclass, field

from registrar.sip import digest


@dataclass
class UserAgent:
    host: str
    port: int
    user: str
    password: str
    domain: str = "sip.example.test"
    call_id: str = field(default_factory=lambda: f"{uuid.uuid4().hex}@test")
    cseq: int = 0
    local_ip: str = "127.0.0.1"  # other 127.x addresses stand for other hosts
    local_port: int = 0  # 0: any; a fixed one for a UA that must be found there again (UDP)
    transport: str = "udp"  # REGISTER over "udp" or "tcp" (both legs on one connection)

    def register(self, contact: str | None = None, expires: int | None = None, timeout: float = 3) -> str:
        """Send a REGISTER (answering a 401 once) and return the final response's text."""
        with self._connection(timeout) if self.transport == "tcp" else self._socket(timeout) as sock:
            answer = self._exchange(sock, contact, expires, None)
            if answer.startswith("SIP/2.0 401"):
                answer = self._exchange(sock, contact, expires, self._authorization(answer))
            return answer

    def call(self, uri: str, timeout: float = 3) -> str:
        """Send an INVITE to `uri` (answering a 407 once) and return the final response's text.

        Non-2xx finals are ACKed, as RFC 3261 17.1.1.3 asks, so the server stops retransmitting them.
        """
        with self._socket(timeout) as sock:
            answer = self._invite(sock, uri, None)
            if answer.startswith("SIP/2.0 407"):
                answer = self._invite(sock, uri, self._authorization(answer, "Proxy-Authenticate", "INVITE", uri))
            return answer

    def _socket(self, timeout: float) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((self.local_ip, self.local_port))
        sock.settimeout(timeout)
        return sock

    def _connection(self, timeout: float) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout, source_address=(self.local_ip, 0))

    def _invite(self, sock: socket.socket, uri: str, authorization: str | None) -> str:
        self.cseq += 1
        port = sock.getsockname()[1]
        branch = f"z9hG4bK{uuid.uuid4().hex}"
        via = f"Via: SIP/2.0/UDP {self.local_ip}:{port};branch={branch};rport"
        from_ = f"From: <sip:{self.user}@{self.domain}>;tag={uuid.uuid4().hex[:8]}"
        lines = [
            f"INVITE {uri} SIP/2.0", via, "Max-Forwards: 70", from_, f"To: <{uri}>", f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} INVITE", f"Contact: <sip:{self.user}@{self.local_ip}:{port}>",
        ]
        if authorization is not None:
            lines.append(f"Proxy-Authorization: {authorization}")
        lines += ["Content-Length: 0", "", ""]
        sock.sendto("\r\n".join(lines).encode(), (self.host, self.port))
        while True:
            answer = sock.recv(65535).decode()
            if status_of(answer) >= 200:
                break
        if status_of(answer) >= 300:
            to = re.search(r"^To: (.*)$", answer, re.M | re.I)
            assert to, answer
            ack = [
                f"ACK {uri} SIP/2.0", via, "Max-Forwards: 70", from_, f"To: {to.group(1).strip()}",
                f"Call-ID: {self.call_id}", f"CSeq: {self.cseq} ACK", "Content-Length: 0", "", "",
            ]
            sock.sendto("\r\n".join(ack).encode(), (self.host, self.port))
        return answer

    def send_authenticated_register(self, sock: socket.socket, contact: str | None, expires: int | None) -> None:
        """Over TCP on `sock`: a REGISTER, its 401, and the REGISTER with credentials, whose answer is left
        to read_response(sock): for a test that acts while the registrar works on it."""
        assert self.transport == "tcp"
        challenge = self._exchange(sock, contact, expires, None)
        assert challenge.startswith("SIP/2.0 401"), challenge
        sock.sendall(self._register(sock, contact, expires, self._authorization(challenge)))

    def _exchange(self, sock: socket.socket, contact: str | None, expires: int | None, authorization: str | None) -> str:
        message = self._register(sock, contact, expires, authorization)
        if self.transport == "tcp":
            sock.sendall(message)
            return read_response(sock)
        sock.sendto(message, (self.host, self.port))
        return sock.recv(65535).decode()

    def _register(self, sock: socket.socket, contact: str | None, expires: int | None, authorization: str | None) -> bytes:
        self.cseq += 1
        port = sock.getsockname()[1]
        lines = [
            f"REGISTER sip:{self.domain} SIP/2.0",
            f"Via: SIP/2.0/{self.transport.upper()} {self.local_ip}:{port};branch=z9hG4bK{uuid.uuid4().hex};rport",
            "Max-Forwards: 70",
            f"From: <sip:{self.user}@{self.domain}>;tag={uuid.uuid4().hex[:8]}",
            f"To: <sip:{self.user}@{self.domain}>",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} REGISTER",
        ]
        if contact is not None:
            lines.append("Contact: *" if contact == "*" else f"Contact: <{contact}>")
        if expires is not None:
            lines.append(f"Expires: {expires}")
        if authorization is not None:
            lines.append(f"Authorization: {authorization}")
        lines += ["Content-Length: 0", "", ""]
        return "\r\n".join(lines).encode()

    def _authorization(
        self, challenge: str, header_name: str = "WWW-Authenticate", method: str = "REGISTER", uri: str | None = None
    ) -> str:
        header = re.search(rf"^{header_name}: Digest (.*)$", challenge, re.M | re.I)
        assert header, challenge
        params = dict(re.findall(r'(\w+)="?([^",]*)"?', header.group(1)))
        algorithm = params.get("algorithm", "MD5")
        uri = uri or f"sip:{self.domain}"
        cnonce = uuid.uuid4().hex[:16]
        response = digest.compute_response(
            algorithm, digest.ha1(algorithm, self.user, params["realm"], self.password), params["nonce"],
            method, uri, qop="auth", nc="00000001", cnonce=cnonce,
        )
        return (
            f'Digest username="{self.user}", realm="{params["realm"]}", nonce="{params["nonce"]}", uri="{uri}", '
            f'response="{response}", algorithm={algorithm}, cnonce="{cnonce}", qop=auth, nc=00000001'
        )


def read_response(sock: socket.socket) -> str:
    """One response from a stream: its header block, then Content-Length bytes of body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65535)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"^(?:Content-Length|l):\s*(\d+)", head, re.M | re.I)
    while len(body) < (int(length.group(1)) if length else 0):
        chunk = sock.recv(65535)
        assert chunk, "connection closed in a body"
        body += chunk
    return (head + b"\r\n\r\n" + body).decode()


def status_of(response: str) -> int:
    return int(response.split(" ", 2)[1])


def contacts_of(response: str) -> list[str]:
    return re.findall(r"^(?:Contact|m): (.*)$", response, re.M)
