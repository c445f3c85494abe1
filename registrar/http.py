"""The HTTP side of a registrar (aiohttp): health, readiness, Prometheus metrics, read-only bindings and trace APIs.

The bindings API shows who is registered from where (AORs, contacts, source
addresses, Call-IDs, User-Agents), and the trace API whole SIP messages (digest
responses, never passwords: those are never on the wire), so they answer only a
request carrying the configured bearer token; without a token configured it is not served at all
(404, like any unknown path). Health, readiness and /metrics carry nothing
personal and stay open to whoever reaches the port: the listen address (the
loopback by default) and, in a cluster, the NetworkPolicy decide who that is.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web, web_response
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from registrar.metrics import Metrics
from registrar.model import Binding
from registrar.pcap import pcap_bytes
from registrar.service import RETRY_AFTER_SECONDS
from registrar.sip.trace import as_text, trace_key
from registrar.sip.uri import typed_aor
from registrar.store import LocationStore, StoreUnavailable
from registrar.times import rfc3339
from registrar.trace_gathering import TraceGatherer

# The Server header of every HTTP response: versions of Python and aiohttp would tell a scanner which
# published bugs to try, and nobody else needs them.
SERVER = "sipreg"
# RFC 6750's b64token, what may follow "Bearer ": a token outside it could not be sent.
TOKEN_SYNTAX = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# Shorter tokens can be guessed by trying; the operator's are 43 characters (32 random bytes).
MIN_TOKEN_LENGTH = 16
CHALLENGE = 'Bearer realm="sipreg"'
TRACE_FORMATS = ("json", "text", "pcap")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_app(
    store: LocationStore, metrics: Metrics, ready: Callable[[], bool], api_token: str | None = None,
    traces: TraceGatherer | None = None,
) -> web.Application:
    """The registrar's HTTP routes; the bindings and trace APIs only with an `api_token` (checked by
    check_api_token), the trace API only with `traces`."""
    app = web.Application()

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        ok = ready() and store.ready
        return web.json_response({"ready": ok}, status=200 if ok else 503)

    async def metrics_endpoint(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def bindings(request: web.Request) -> web.Response:
        domain = request.query.get("domain")
        try:
            found = await store.all_bindings(domain.lower() if domain else None)
        except StoreUnavailable as error:
            raise _unavailable(error) from None
        now = time.time()
        return web.json_response({"bindings": [binding_json(b, now) for b in found]})

    async def bindings_of(request: web.Request) -> web.Response:
        try:
            aor = typed_aor(request.match_info["aor"])
        except ValueError:
            raise web.HTTPBadRequest(text="AOR must be user@domain") from None
        now = time.time()
        try:
            found = await store.lookup(aor)
        except StoreUnavailable as error:
            raise _unavailable(error) from None
        return web.json_response({"aor": aor, "bindings": [binding_json(b, now) for b in found]})

    async def trace_of(request: web.Request) -> web.Response:
        """A connection's (or an address's) recent SIP messages: from every node, or with scope=node this one's.
        format=json (the default), text (full=1: whole messages) or pcap."""
        assert traces is not None
        try:
            key = trace_key(request.match_info["key"])
            since = float(request.query.get("since", "0"))
        except ValueError as error:
            raise web.HTTPBadRequest(text=str(error)) from None
        answer_format = request.query.get("format", "json")
        if answer_format not in TRACE_FORMATS:
            raise web.HTTPBadRequest(text=f"format must be one of {', '.join(TRACE_FORMATS)}")
        gathered = traces.local(key, since) if request.query.get("scope") == "node" else await traces.gather(key, since)
        if answer_format == "pcap":
            return web.Response(body=pcap_bytes(gathered.messages), content_type="application/vnd.tcpdump.pcap")
        if answer_format == "text":
            return web.Response(text=as_text(gathered.messages, request.query.get("full") == "1"))
        return web.json_response(gathered.to_json(key))

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    if api_token is not None:
        authorized = bearer_token_required(api_token)
        app.router.add_get("/api/v1/bindings", authorized(bindings))
        app.router.add_get("/api/v1/bindings/{aor}", authorized(bindings_of))
        if traces is not None:
            app.router.add_get("/api/v1/trace/{key}", authorized(trace_of))
    return app


def check_api_token(token: str) -> str:
    """`token` without surrounding white space; ValueError says why it cannot be the bindings API's bearer token."""
    token = token.strip()
    if not TOKEN_SYNTAX.fullmatch(token):
        raise ValueError("the token may hold only letters, digits and -._~+/ (then = padding), and not be empty")
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"the token has {len(token)} characters; use at least {MIN_TOKEN_LENGTH} random ones")
    return token


def bearer_token_required(token: str) -> Callable[[Handler], Handler]:
    """Wraps a handler so that only `Authorization: Bearer <token>` reaches it; anything else gets 401.

    The comparison takes the same time wherever a wrong token differs, so
    timing tells nothing about the right one.
    """
    expected = token.encode()

    def wrap(handler: Handler) -> Handler:
        async def authorized(request: web.Request) -> web.StreamResponse:
            header = request.headers.get("Authorization")
            if header is None:
                raise web.HTTPUnauthorized(headers={"WWW-Authenticate": CHALLENGE}, text="bearer token required")
            scheme, _, credentials = header.strip().partition(" ")
            # aiohttp decodes header bytes that are not UTF-8 as surrogates; encode them back as they came.
            offered = credentials.strip().encode("utf-8", "surrogateescape")
            if scheme.lower() != "bearer" or not hmac.compare_digest(offered, expected):
                raise web.HTTPUnauthorized(
                    headers={"WWW-Authenticate": f'{CHALLENGE}, error="invalid_token"'}, text="wrong bearer token"
                )
            return await handler(request)

        return authorized

    return wrap


async def start_server(app: web.Application, hosts: Sequence[str], port: int) -> web.AppRunner:
    """Serve `app` on `port` of each of `hosts` as every sipreg HTTP endpoint does; stop with the runner's cleanup().

    No access log; `Server: sipreg`; a request aiohttp cannot parse gets its
    400 and one debug line, not a traceback quoting the client's bytes.
    """
    # aiohttp fills in a missing Server header from this module attribute, also in its own answers to
    # unparsable requests, which no on_response_prepare signal sees: the one place that covers them all.
    web_response.SERVER_SOFTWARE = SERVER
    runner = web.AppRunner(app, access_log=None, logger=_ClientErrorsQuiet(logging.getLogger("sipreg.http"), {}))
    await runner.setup()
    try:
        for host in hosts:
            await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


class _ClientErrorsQuiet(logging.LoggerAdapter):
    """aiohttp's server log, where a client's malformed request is one debug line without a traceback."""

    def log(self, level: int, msg: Any, *args: Any, exc_info: Any = None, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            # Hostile bytes are no error of ours; at debug, a flood of them cannot flood the log.
            level, msg, exc_info = logging.DEBUG, f"{msg}: {exc_info.code} {type(exc_info).__name__}", None
        super().log(level, msg, *args, exc_info=exc_info, **kwargs)


def _unavailable(error: StoreUnavailable) -> web.HTTPServiceUnavailable:
    return web.HTTPServiceUnavailable(
        text=json.dumps({"error": f"the location store is unavailable: {error}"}),
        content_type="application/json", headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def binding_json(binding: Binding, now: float) -> dict:
    """A binding as the API shows it (camelCase, like the SipConnection status)."""
    return {
        "aor": binding.aor,
        "contact": binding.contact,
        "expires": binding.expires_in(now),
        "expiresAt": rfc3339(binding.expires_at),
        "q": binding.q,
        "callId": binding.call_id,
        "cseq": binding.cseq,
        "instance": binding.instance,
        "regId": binding.reg_id,
        "transport": binding.transport,
        "source": binding.source,
        "sourceHost": binding.source_host or None,
        "sourcePort": binding.source_port or None,
        "received": binding.received_uri(),
        "flow": binding.flow,
        "node": binding.node,
        "userAgent": binding.user_agent,
        "registeredAt": rfc3339(binding.registered_at),
        "path": list(binding.path),
    }
