"""The SIP service: what the server answers itself (REGISTER, OPTIONS to it), and what it proxies.

Sits between the transports and the registrar. Sans-IO like the layers below:
`proxied` says which requests are a proxy's business (registrar.proxy): all
but REGISTER and OPTIONS sent to us. `handle` answers those two, with a
response or, when the store is involved, an awaitable of one.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING

from registrar.sip.headers import parse_name_addr
from registrar.sip.message import Request, Response, SipError, check_extensions, error_response, server_response
from registrar.sip.source import Source
from registrar.sip.uri import URIError, parse_uri

if TYPE_CHECKING:  # the registrar's 405 names what the service allows: it imports this module
    from registrar.registrar import Registrar

Answer = Response | Awaitable[Response]

# What this server answers itself (REGISTER, OPTIONS to it) and relays: its Allow (RFC 3261 20.5).
ALLOWED_METHODS = ("REGISTER", "OPTIONS", "INVITE", "ACK", "CANCEL", "BYE", "MESSAGE", "INFO", "UPDATE",
                   "PRACK", "SUBSCRIBE", "NOTIFY", "REFER")
ALLOW = ", ".join(ALLOWED_METHODS)
# A domain that refuses registration still takes calls: all of the above but REGISTER (the registrar's 405).
ALLOW_WITHOUT_REGISTER = ", ".join(method for method in ALLOWED_METHODS if method != "REGISTER")
RETRY_AFTER_SECONDS = 5  # of a 503 for the location store being unavailable
# Connections a request may have to read before it can be answered, by a registrar reading them
# on demand (model.NotHeld): the AOR's or the callee's, the authenticating user's, and one more
# should the first be let go of meanwhile.
CONNECTION_READS = 3


def store_unavailable() -> SipError:
    """The answer to a REGISTER, or a call, that the location store cannot serve now (etcd away)."""
    return SipError(503, "Location Service Unavailable", [("Retry-After", str(RETRY_AFTER_SECONDS))])


class SipService:
    def __init__(self, registrar: Registrar):
        self.registrar = registrar

    @staticmethod
    def proxied(request: Request) -> bool:
        """Whether a request is for the proxy to relay rather than for us to answer.

        We answer REGISTER, and OPTIONS sent to us (a Request-URI without a user
        and no dialog: keep-alive pings, monitoring). Everything else is relayed,
        a malformed OPTIONS included: the proxy answers 400 naming what is wrong.
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
            return True
        return user is not None or to_tag is not None

    def handle(self, request: Request, source: Source) -> Answer:
        """Answer a request `proxied` says is ours: REGISTER, or OPTIONS to us."""
        if request.method == "REGISTER":
            return self.registrar.register(request, source)
        try:
            # As the UAS of an OPTIONS, Require is ours to judge (RFC 4475 bext01); Proxy-Require is not.
            check_extensions(request, "Require")
        except SipError as error:
            return error_response(request, error)
        return server_response(
            request,
            200,
            "OK",
            [("Allow", ALLOW), ("Accept", "application/sdp"), ("Accept-Encoding", "identity"),
             ("Accept-Language", "en")],
        )
