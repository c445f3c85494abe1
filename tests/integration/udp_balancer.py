"""A UDP load balancer that stands for a Kubernetes Service in front of registrar replicas.

Each datagram from a client goes to the next backend, in turn, among those whose /readyz says
ready (asked every `poll` seconds, as a kube-proxy follows the endpoints a readiness probe
keeps), from a socket of the balancer's own per client and backend, so the backend's answers
come back to it and go on to that client (the backends see the balancer's address, as behind
kube-proxy's source NAT). A backend taken out (not ready, or gone) gets no new datagrams; the
answers it still sends are relayed.
"""

from __future__ import annotations

import json
import selectors
import socket
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field


@dataclass
class Backend:
    sip: tuple[str, int]
    readyz: str  # the URL of its /readyz
    ready: bool = False
    datagrams: int = field(default=0)  # sent to it, so a test can tell it was used


class UdpBalancer:
    def __init__(self, host: str, poll: float = 0.1):
        self.host = host
        self.poll = poll
        self._front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._front.bind((host, 0))
        self._front.setblocking(False)
        self.port: int = self._front.getsockname()[1]
        self.backends: list[Backend] = []
        self._next = 0
        # (client, backend's SIP address) -> the socket its datagrams leave from; socket -> client.
        self._upstream: dict[tuple[tuple[str, int], tuple[str, int]], socket.socket] = {}
        self._client_of: dict[socket.socket, tuple[str, int]] = {}
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._front, selectors.EVENT_READ)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._relay, name="balancer-relay", daemon=True),
            threading.Thread(target=self._follow_readiness, name="balancer-readiness", daemon=True),
        ]

    def add(self, sip: tuple[str, int], http: tuple[str, int]) -> Backend:
        backend = Backend(sip, f"http://{http[0]}:{http[1]}/readyz")
        with self._lock:
            self.backends.append(backend)
        return backend

    def __enter__(self) -> UdpBalancer:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        for sock in [self._front, *self._client_of]:
            sock.close()
        self._selector.close()

    def _follow_readiness(self) -> None:
        while not self._stop.wait(self.poll):
            with self._lock:
                backends = list(self.backends)
            for backend in backends:
                backend.ready = _ready(backend.readyz)

    def _relay(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data, sender = sock.recvfrom(65535)
                except OSError:  # ICMP unreachable from a backend that is gone
                    continue
                if sock is self._front:
                    self._forward(data, sender)
                else:
                    self._front.sendto(data, self._client_of[sock])

    def _forward(self, data: bytes, client: tuple[str, int]) -> None:
        with self._lock:
            ready = [backend for backend in self.backends if backend.ready]
        if not ready:
            return  # no endpoint: the datagram is lost, as a Service without endpoints loses it
        backend = ready[self._next % len(ready)]
        self._next += 1
        upstream = self._upstream.get((client, backend.sip))
        if upstream is None:
            upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            upstream.bind((self.host, 0))
            upstream.setblocking(False)
            self._upstream[(client, backend.sip)] = upstream
            self._client_of[upstream] = client
            self._selector.register(upstream, selectors.EVENT_READ)
        backend.datagrams += 1
        try:
            upstream.sendto(data, backend.sip)
        except OSError:
            pass


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:
            return bool(json.load(answer).get("ready"))
    except (OSError, ValueError):  # 503 (HTTPError is an OSError), refused, gone
        return False
