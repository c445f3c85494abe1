"""The SIP service: routes each request to its handler by method and answers the rest.

Sits between the transports and the registrar. Sans-IO like the layers below:
`handle` takes a parsed request and its `Source` and returns a response, an
awaitable of one (when the store is involved), or None when no answer is due
(ACK). Methods we recognise but do not serve get 405 with `Allow`; methods we
do not recognise get 501 (RFC 3261 8.2.1, 21.5.2).
"""

from __future__ import annotations

from collections.abc import Awaitable

from registrar.registrar import SERVER_NAME, Registrar, Source
from registrar.sip.message import KNOWN_METHODS, Request, Response, make_response

# What this server answers itself. Call routing (INVITE and friends) comes with
# the proxy; until then those methods are recognised and refused with 405.
ALLOWED_METHODS = ("REGISTER", "OPTIONS")
ALLOW = ", ".join(ALLOWED_METHODS)

Answer = Response | Awaitable[Response] | None


class SipService:
    def __init__(self, registrar: Registrar):
        self.registrar = registrar

    def handle(self, request: Request, source: Source) -> Answer:
        method = request.method
        if method == "REGISTER":
            return self.registrar.register(request, source)
        if method == "ACK":
            # ACK for a non-2xx final response belongs to its INVITE transaction and
            # is never answered (RFC 3261 17.2.1).
            return None
        if method == "OPTIONS":
            return self._options(request)
        if method in KNOWN_METHODS:
            return self._answer(request, 405, "Method Not Allowed", [("Allow", ALLOW)])
        return self._answer(request, 501, "Not Implemented", [("Allow", ALLOW)])

    def _options(self, request: Request) -> Response:
        return self._answer(
            request,
            200,
            "OK",
            [("Allow", ALLOW), ("Accept", "application/sdp"), ("Accept-Encoding", "identity"),
             ("Accept-Language", "en")],
        )

    @staticmethod
    def _answer(request: Request, status: int, reason: str, headers: list[tuple[str, str]]) -> Response:
        response = make_response(request, status, reason)
        response.add("Server", SERVER_NAME)
        for name, value in headers:
            response.add(name, value)
        return response

