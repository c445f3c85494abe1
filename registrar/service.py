"""The SIP service: routes each request to its handler by method and answers the rest.

Sits between the transports and the registrar. Sans-IO like the layers below:
`handle` takes a parsed request and its `Source` and returns a response, an
awaitable of one (when the store is involved), or None when no answer is due
(ACK). Methods we recognise but do not serve get 405 with `Allow`; methods we
do not recognise get 501 (RFC 3261 8.2.1, 21.5.2).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from registrar.registrar import SERVER_NAME, Registrar, Source
from registrar.sip.message import KNOWN_METHODS, Request, Response, make_response
from registrar.sip.uri import URIError, parse_uri

# What this server answers itself. Call routing (INVITE and friends) comes with
# the proxy; until then those methods are recognised and refused with 405.
ALLOWED_METHODS = ("REGISTER", "OPTIONS")
ALLOW = ", ".join(ALLOWED_METHODS)

Answer = Response | Awaitable[Response] | None


class SipService:
    def __init__(self, registrar: Registrar, on_invite: Callable[[str, int], None] | None = None):
        self.registrar = registrar
        # Told (domain, status) of every INVITE answered (sipreg_invites_total); the domain is
        # the Request-URI's when served, else "other", so the label stays bounded.
        self._on_invite = on_invite or (lambda domain, status: None)

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
        if method == "INVITE":
            answer = self._answer(request, 405, "Method Not Allowed", [("Allow", ALLOW)])
            self._on_invite(self._domain_label(request), answer.status)
            return answer
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

    def _domain_label(self, request: Request) -> str:
        """The Request-URI's domain when served, else "other" (a metric label must stay bounded)."""
        try:
            host = parse_uri(request.uri).host
        except URIError:
            return "other"
        return host if host in self.registrar.catalog.domains else "other"

    @staticmethod
    def _answer(request: Request, status: int, reason: str, headers: list[tuple[str, str]]) -> Response:
        response = make_response(request, status, reason)
        response.add("Server", SERVER_NAME)
        for name, value in headers:
            response.add(name, value)
        return response

