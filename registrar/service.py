"""The SIP service: what the server answers itself (REGISTER, OPTIONS to it), and what it proxies.

Sits between the transports and the registrar. Sans-IO like the layers below:
`handle` takes a parsed request and its `Source` and returns a response, an
awaitable of one (when the store is involved), or None when no answer is due.
Every other request (INVITE, BYE, MESSAGE, in-dialog requests, methods we do
not know) is a proxy's business (registrar.proxy): `proxied` says which.
Without a proxy (the service alone), those get 405 with `Allow` (RFC 3261 8.2.1).
"""

from __future__ import annotations

from collections.abc import Awaitable

from registrar.registrar import SERVER_NAME, Registrar, Source
from registrar.sip.headers import parse_name_addr
from registrar.sip.message import KNOWN_METHODS, Request, Response, make_response
from registrar.sip.uri import URIError, parse_uri

# What this server answers itself, and relays (RFC 3261 20.5: what its users can send through it).
ALLOWED_METHODS = ("REGISTER", "OPTIONS", "INVITE", "ACK", "CANCEL", "BYE", "MESSAGE", "INFO", "UPDATE",
                   "PRACK", "SUBSCRIBE", "NOTIFY", "REFER")
ALLOW = ", ".join(ALLOWED_METHODS)
# Without a proxy only these are served.
_SERVED_ALONE = "REGISTER, OPTIONS"

Answer = Response | Awaitable[Response] | None


class SipService:
    def __init__(self, registrar: Registrar):
        self.registrar = registrar

    @staticmethod
    def proxied(request: Request) -> bool:
        """Whether a request is for a proxy to relay rather than for us to answer.

        We answer REGISTER, and OPTIONS sent to us (a Request-URI without a user
        and no dialog: keep-alive pings, monitoring). Everything else is relayed.
        """
        method = request.method
        if method == "REGISTER":
            return False
        if method != "OPTIONS":
            return True
        try:
            user = parse_uri(request.uri).user
            to_tag = parse_name_addr(request.get("To") or "").tag
        except (URIError, ValueError):
            return False  # answered (with the precise error) by the service
        return user is not None or to_tag is not None

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
            return self._answer(request, 405, "Method Not Allowed", [("Allow", _SERVED_ALONE)])
        return self._answer(request, 501, "Not Implemented", [("Allow", _SERVED_ALONE)])

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

