"""SIP over WebSocket (RFC 7118): the ws and wss listeners, on aiohttp's WebSocket server.

A WebSocket connection is a flow like a TCP one (registrar.transport's `Flow`):
bindings made over it name it, requests to its UA go down it, and it is gone
for them the moment it closes. What differs is the framing, which aiohttp
does: one SIP message per WebSocket message, no Content-Length needed.

Every accepted connection is counted against ConnectionLimits first, as on the
TCP and TLS listeners (`SipEndpoint.admit_connection`); only then does the TLS
handshake (wss) or the HTTP handshake start, and both must be done within
`handshake_seconds` of the accept, or the connection is closed: a flood of
connections that never finish costs a place in the limits for that long, and
no more. A handshake that does not offer the `sip` subprotocol is answered 400,
one from an Origin the served domains do not allow 403; either closes the
connection. The HTTP server here is its own aiohttp application: it serves
nothing but the handshake, and shares nothing with registrar.http's loopback
health, metrics and API server.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web
from aiohttp.http_exceptions import HttpProcessingError

from registrar.eager import start_eagerly
from registrar.ratelog import exception_summary
from registrar.sip.message import MAX_MESSAGE_SIZE
from registrar.sip.source import Source
from registrar.transport import ACCEPT_BACKLOG, Flow, SipEndpoint, socket_address

log = logging.getLogger("sipreg.websocket")

SUBPROTOCOL = "sip"  # RFC 7118 section 4
HANDSHAKE_START = b"GET "  # what a WebSocket opening handshake's first bytes are (RFC 6455 section 4.1)
# What may wait to go down one connection, in our queue and in the socket's buffer: two
# messages of the largest size. A peer that reads slower than its calls write to it is
# closed rather than let its backlog grow without bound.
MAX_QUEUED_BYTES = 2 * MAX_MESSAGE_SIZE
# aiohttp waits this long for a WebSocket's closing handshake, and for its connections on stop.
CLOSE_TIMEOUT = 2.0


class FrameWriter:
    """A WebSocket as a Flow's writer: `write` at once and in order, one SIP message per WebSocket message.

    aiohttp's send is a coroutine, which waits only when the socket's buffer is
    full; the transport's callers (the endpoint's replies, the proxy) write
    synchronously. Messages go to a queue that one coroutine empties, started
    eagerly: while the peer keeps up, a message is on the socket before `write`
    returns, as on TCP.
    """

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport, max_queued: int = MAX_QUEUED_BYTES):
        self._ws = ws
        self._transport = transport
        self._max_queued = max_queued
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._sending = False
        self._closing = False
        self._tasks: set[asyncio.Future[Any]] = set()  # closing handshakes under way

    def write(self, data: bytes) -> None:
        if self.is_closing():
            return
        self._queue.append(data)
        self._queued += len(data)
        if self._queued + self._transport.get_write_buffer_size() > self._max_queued:
            log.debug("closing a WebSocket whose peer does not read: %d bytes waiting", self._queued)
            self.abort()
            return
        if not self._sending:
            self._sending = True
            start_eagerly(self._send_queued())

    async def _send_queued(self) -> None:
        try:
            while self._queue and not self._transport.is_closing():
                data = self._queue.popleft()
                self._queued -= len(data)
                # Text frames for UTF-8, binary for anything else (RFC 7118 section 5.1): a body may be binary.
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError:
                    await self._ws.send_bytes(data)
                else:
                    await self._ws.send_str(text)
        except Exception as error:  # the connection went away under us: nothing to send to
            log.debug("WebSocket send failed: %s", exception_summary(error))
            self.abort()
        finally:
            self._sending = False
        if self._closing and not self._transport.is_closing():
            self._close_now()

    def close(self) -> None:
        """Close once what is queued is sent, with a WebSocket closing handshake."""
        if self._closing:
            return
        self._closing = True
        if not self._sending:
            self._close_now()

    def _close_now(self) -> None:
        task = asyncio.ensure_future(self._ws.close())
        self._tasks.add(task)
        task.add_done_callback(self._closed)

    def _closed(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._transport.abort()

    def abort(self) -> None:
        self._closing = True
        self._queue.clear()
        self._queued = 0
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._closing or self._transport.is_closing()


class WebSocketListener:
    """One ws or wss listener: its socket, the aiohttp server of its handshakes, and its connections."""

    def __init__(self, endpoint: SipEndpoint, transport_name: str, tls: ssl.SSLContext | None = None):
        self.endpoint = endpoint
        self.name = transport_name  # "ws" or "wss": in Via, bindings, flows and metrics
        self.tls = tls
        app = web.Application()
        # Any path: clients are configured with a URL, and which path it names is theirs to choose.
        app.router.add_get("/{path:.*}", self._handshake)
        # No access log: its lines would quote what strangers send, one per connection. Nor aiohttp's
        # own log of bad requests, which has their bytes and a traceback: _HttpErrors counts them.
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=CLOSE_TIMEOUT,
            logger=_HttpErrors(lambda: endpoint.metrics.websocket_refused.labels("not_websocket").inc()),
        )
        self._server: asyncio.Server | None = None
        # The accepted connections by the transport aiohttp reads them from, for the handshake to find its own.
        self._connections: dict[asyncio.BaseTransport, _Connection] = {}

    async def start(self, host: str, port: int) -> None:
        await self._runner.setup()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, reuse_address=True, backlog=ACCEPT_BACKLOG
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    def stop_accepting(self) -> None:
        """Close the listening socket; the connections it accepted stay open."""
        if self._server is not None:
            self._server.close()

    async def stop(self) -> None:
        self.stop_accepting()
        await self._runner.cleanup()

    def http_handler(self) -> asyncio.Protocol:
        """aiohttp's protocol for one connection, which parses its handshake and then its frames."""
        assert self._runner.server is not None
        return self._runner.server()

    async def _handshake(self, request: web.Request) -> web.StreamResponse:
        connection = self._connections.get(request.transport)  # type: ignore[arg-type]
        if connection is None or connection.peer is None:
            raise web.HTTPBadRequest()  # lost while aiohttp read the request
        offered = [token.strip() for value in request.headers.getall("Sec-WebSocket-Protocol", ())
                   for token in value.split(",")]
        # Compared ignoring case (some gateways send "SIP"), answered with the client's own spelling.
        subprotocol = next((token for token in offered if token.lower() == SUBPROTOCOL), None)
        not_websocket = web.HTTPBadRequest(text="Not a WebSocket handshake\n")
        if "websocket" not in request.headers.get("Upgrade", "").lower():
            return self._refuse(connection, "not_websocket", not_websocket)
        allowed = self.endpoint.security().websocket_origins
        if allowed and request.headers.get("Origin", "").lower() not in allowed:
            return self._refuse(connection, "origin", web.HTTPForbidden(text="Origin not allowed\n"))
        if subprotocol is None:
            # Refused here, not by aiohttp: it would accept with no subprotocol, and log what was offered.
            return self._refuse(connection, "subprotocol",
                                web.HTTPBadRequest(text="WebSocket subprotocol 'sip' required (RFC 7118)\n"))
        ws = web.WebSocketResponse(
            protocols=(subprotocol,), max_msg_size=MAX_MESSAGE_SIZE, compress=False,
            # Pings come to us (see _serve), so that a frame of any kind ends the wait for a whole one.
            autoping=False, timeout=CLOSE_TIMEOUT,
        )
        if not ws.can_prepare(request).ok:  # the rest of RFC 6455's handshake: version, key
            return self._refuse(connection, "not_websocket", not_websocket)
        try:
            await ws.prepare(request)
        except Exception as error:  # the peer went away mid-handshake
            log.debug("%s handshake with %s failed: %s", self.name, connection.peer, exception_summary(error))
            return ws
        await self._serve(connection, ws, request.transport)  # type: ignore[arg-type]
        return ws

    def _refuse(self, connection: _Connection, reason: str, answer: web.HTTPException) -> web.HTTPException:
        self.endpoint.metrics.websocket_refused.labels(reason).inc()
        log.debug("refused %s handshake from %s: %s", self.name, connection.peer, reason)
        answer.force_close()  # one handshake per connection: a refused one has nothing more to say
        return answer

    async def _serve(self, connection: _Connection, ws: web.WebSocketResponse, transport: asyncio.Transport) -> None:
        endpoint = self.endpoint
        assert connection.peer is not None
        flow = endpoint.open_flow(
            self.name, FrameWriter(ws, transport), connection.peer, socket_address(transport)  # type: ignore[arg-type]
        )
        connection.upgraded(flow)
        source = Source(self.name, connection.peer[0], connection.peer[1], flow.id)
        try:
            while True:
                message = await ws.receive()
                flow.last_activity = endpoint.clock()
                endpoint.message_ended(flow)
                if message.type == WSMsgType.TEXT:
                    data = message.data.encode("utf-8")
                elif message.type == WSMsgType.BINARY:
                    data = message.data
                elif message.type == WSMsgType.PING:
                    await ws.pong(message.data)
                    continue
                elif message.type == WSMsgType.PONG:
                    continue
                else:
                    if message.type == WSMsgType.ERROR:
                        # A frame aiohttp could not read (too large, bad framing, bad UTF-8): the
                        # stream is lost, as on TCP when Content-Length cannot frame it.
                        endpoint.metrics.parse_errors.labels(self.name).inc()
                        log.debug("closing %s flow %s: %s", self.name, flow.id, exception_summary(message.data))
                    break  # closed, closing or broken
                if data == b"\r\n\r\n":
                    endpoint.pong(flow)  # a keep-alive ping, as on TCP
                elif data != b"\r\n":
                    endpoint.receive(data, source, flow.send)
        except ConnectionError as error:  # gone while we answered a ping: nothing wrong on our side
            log.debug("%s flow %s lost: %s", self.name, flow.id, exception_summary(error))
        except Exception as error:
            endpoint.failed(f"unexpected error on a {self.name} connection", source, error)
        finally:
            endpoint.close_flow(flow)
            if not ws.closed:
                flow.writer.close()


class _HttpErrors:
    """What aiohttp's HTTP server logs, in its place: a request it could not read is counted, and
    logged in a line at debug level that quotes nothing of it; the rest goes to our debug log."""

    def __init__(self, on_bad_request: Callable[[], None]):
        self._on_bad_request = on_bad_request

    def _note(self, message: str, *args: Any, exc_info: BaseException | None = None, **_: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            self._on_bad_request()
            log.debug("bad HTTP request on a WebSocket port: %s", type(exc_info).__name__)
        elif exc_info is not None:
            log.debug("aiohttp: %s", exception_summary(exc_info) if isinstance(exc_info, Exception) else exc_info)

    debug = info = warning = error = exception = _note


class _Connection(asyncio.Protocol):
    """One accepted connection: counted, given its TLS, handed to aiohttp, timed until its WebSocket is up.

    It stays the transport's protocol throughout and passes everything on to
    aiohttp's, so that it sees the connection's end and gives its place in the
    limits back, whatever aiohttp does.
    """

    def __init__(self, listener: WebSocketListener):
        self.listener = listener
        self.peer: tuple[str, int] | None = None
        self._http: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._counted: str | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._flow: Flow | None = None
        self._early: bytearray | None = None  # TLS data that arrived with the handshake's end
        self._opening = b""  # the first bytes, until they show the GET a handshake begins with

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        if not peer:
            transport.close()  # reset before we got to it
            return
        endpoint = self.listener.endpoint
        self._counted = endpoint.admit_connection(self.listener.name, peer[0])
        if self._counted is None:
            transport.abort()
            return
        self.peer = (peer[0], peer[1])
        self._transport = transport  # type: ignore[assignment]
        seconds = endpoint.security().connections.handshake_seconds
        self._deadline = asyncio.get_running_loop().call_later(seconds, self._too_slow)
        if self.listener.tls is not None:
            # At once, not as a task: start_tls must take the transport over before it first reads (uvloop).
            start_eagerly(self._start_tls(transport, seconds))  # type: ignore[arg-type]
            return
        self._hand_over(transport)  # type: ignore[arg-type]

    async def _start_tls(self, transport: asyncio.Transport, seconds: float) -> None:
        assert self.listener.tls is not None
        self._early = bytearray()
        try:
            tls_transport = await asyncio.get_running_loop().start_tls(
                transport, self, self.listener.tls, server_side=True, ssl_handshake_timeout=seconds,
            )
        except Exception as error:  # a failed handshake, a timeout, a reset: whatever the peer did
            log.debug("%s TLS handshake with %s failed: %r", self.listener.name, self.peer, error)
            transport.abort()
            self._release()
            return
        early, self._early = self._early, None
        if tls_transport.is_closing():
            self._release()
            return
        self._transport = tls_transport
        self._hand_over(tls_transport)
        if early:
            self.data_received(bytes(early))

    def _hand_over(self, transport: asyncio.Transport) -> None:
        self._http = self.listener.http_handler()
        self.listener._connections[transport] = self
        self._http.connection_made(transport)

    def upgraded(self, flow: Flow) -> None:
        """The WebSocket is up: no more deadline for the handshake; messages have theirs (message_seconds)."""
        self._flow = flow
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        self.listener.endpoint.metrics.websocket_refused.labels("timeout").inc()
        log.debug("closing %s connection from %s: no WebSocket within the handshake time", self.listener.name, self.peer)
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._http is None:
            if self._early is not None:
                self._early += data
            return
        if len(self._opening) < len(HANDSHAKE_START) and not self._opens_a_handshake(data):
            return
        flow = self._flow
        if flow is not None and flow.message_started is None:
            # A frame begun: it must be whole within message_seconds, as a message on TCP. A whole
            # one reaches the serving loop, which ends the wait (message_ended) for every frame.
            self.listener.endpoint.message_begun(flow, self.listener.endpoint.clock())
        self._http.data_received(data)

    def _opens_a_handshake(self, data: bytes) -> bool:
        """Whether the first bytes can begin a WebSocket handshake (a GET, RFC 6455 4.1); else closed unanswered.

        What is not even an HTTP GET has nothing to learn from us: aiohttp would answer it
        400 with a text that quotes its bytes, more bytes out than a stranger sent in.
        """
        self._opening = (self._opening + data)[:len(HANDSHAKE_START)]
        if HANDSHAKE_START.startswith(self._opening):
            return True
        self.listener.endpoint.metrics.websocket_refused.labels("not_websocket").inc()
        log.debug("closing %s connection from %s: not an HTTP GET", self.listener.name, self.peer)
        if self._transport is not None:
            self._transport.abort()
        return False

    def eof_received(self) -> bool | None:
        return self._http.eof_received() if self._http is not None else None

    def pause_writing(self) -> None:
        if self._http is not None:
            self._http.pause_writing()

    def resume_writing(self) -> None:
        if self._http is not None:
            self._http.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._http is not None:
            self.listener._connections.pop(self._transport, None)  # type: ignore[arg-type]
            self._http.connection_lost(exc)
            self._http = None
        if self._flow is not None:
            self.listener.endpoint.close_flow(self._flow)
        self._release()

    def _release(self) -> None:
        # Once: after a failed TLS handshake, the connection's loss may still be reported.
        if self._counted is not None:
            self.listener.endpoint.release_connection(self._counted)
            self._counted = None


async def listen_websocket(
    endpoint: SipEndpoint, host: str, port: int, ssl_context: ssl.SSLContext | None = None
) -> WebSocketListener:
    """A ws listener, or a wss one with `ssl_context` (TLS starts after the connection limits)."""
    listener = WebSocketListener(endpoint, "wss" if ssl_context is not None else "ws", ssl_context)
    await listener.start(host, port)
    return listener
