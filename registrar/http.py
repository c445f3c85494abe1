"""The HTTP side of a registrar (aiohttp): health, readiness, Prometheus metrics, a read-only bindings API."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from registrar.metrics import Metrics
from registrar.model import Binding
from registrar.registrar import received_uri
from registrar.store import LocationStore


def make_app(store: LocationStore, metrics: Metrics, ready: Callable[[], bool]) -> web.Application:
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
        found = await store.all_bindings(domain.lower() if domain else None)
        now = time.time()
        return web.json_response({"bindings": [binding_json(b, now) for b in found]})

    async def bindings_of(request: web.Request) -> web.Response:
        aor = request.match_info["aor"]
        if aor.startswith("sip:") or aor.startswith("sips:"):
            aor = aor.partition(":")[2]
        user, at, host = aor.rpartition("@")
        if not at or not user:
            raise web.HTTPBadRequest(text="AOR must be user@domain")
        now = time.time()
        found = await store.lookup(f"{user}@{host.lower()}")
        return web.json_response({"aor": f"{user}@{host.lower()}", "bindings": [binding_json(b, now) for b in found]})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/api/v1/bindings", bindings)
    app.router.add_get("/api/v1/bindings/{aor}", bindings_of)
    return app


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
        "received": received_uri(binding),
        "flow": binding.flow,
        "node": binding.node,
        "userAgent": binding.user_agent,
        "registeredAt": rfc3339(binding.registered_at),
    }


def rfc3339(seconds: float) -> str:
    """Unix seconds as an RFC 3339 UTC time to the second, as Kubernetes writes times ("...Z")."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
