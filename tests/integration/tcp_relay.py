"""A TCP relay that stands for a network path between a phone and a registrar: cut it and the flow dies.

Each connection accepted on (host, port) is relayed to the target from a socket
bound to `host`, so the registrar sees the relay's address as the phone's.
`cut()` closes every relayed connection at both ends and stops listening, as a
NAT that reboots or a link that goes down would: the phone cannot reconnect by
this path.
"""

from __future__ import annotations

import selectors
import socket
import threading


class TcpRelay:
    def __init__(self, host: str, target: tuple[str, int]):
        self.host = host
        self.target = target
        self._listener = socket.create_server((host, 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._peers: dict[socket.socket, socket.socket] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"relay-{host}", daemon=True)

    def __enter__(self) -> TcpRelay:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._close_all()
        self._selector.close()

    def cut(self) -> None:
        """Every relayed connection closed, and no new one accepted."""
        with self._lock:
            self._close_all()

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._peers) // 2

    def _close_all(self) -> None:
        for sock in [self._listener, *self._peers]:
            try:
                self._selector.unregister(sock)
            except (KeyError, ValueError):
                pass
            sock.close()
        self._peers.clear()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if self._listener.fileno() == -1 and not self._peers:
                    events = []
                else:
                    events = self._selector.select(timeout=0.05)
                for key, _ in events:
                    sock = key.fileobj
                    if sock is self._listener:
                        self._accept()
                    elif sock in self._peers:
                        self._pump(sock)  # type: ignore[arg-type]
            if not events:
                self._stop.wait(0.01)

    def _accept(self) -> None:
        try:
            phone, _ = self._listener.accept()
        except OSError:
            return
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.bind((self.host, 0))
        try:
            server.connect(self.target)
        except OSError:
            phone.close()
            server.close()
            return
        for one, other in ((phone, server), (server, phone)):
            one.setblocking(False)
            self._peers[one] = other
            self._selector.register(one, selectors.EVENT_READ)

    def _pump(self, sock: socket.socket) -> None:
        other = self._peers[sock]
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if data:
            try:
                other.setblocking(True)
                other.sendall(data)
                other.setblocking(False)
                return
            except OSError:
                pass
        for end in (sock, other):
            self._selector.unregister(end)
            del self._peers[end]
            end.close()
