"""The admin listener's app: /healthz, /readyz and /metrics, on an address of its own (loopback by default).

Answers depend on the path only: no header, query or body is read, so nothing a caller sends can change them.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.app import METRICS, RUNTIME
from gateway.pipeline import JWKS_HEADERS

_NO_STORE = {"Cache-Control": "no-store"}


def readiness(gateway: web.Application, stopping: bool) -> tuple[bool, str]:
    """Ready when a config is loaded and, if any route needs the IdP, its discovery document was fetched."""
    if stopping:
        return False, "stopping"
    slot = gateway.get(RUNTIME)
    if slot is None:
        return False, "config not loaded"
    introspector = slot.current.introspector
    if introspector is not None and not introspector.ready:
        return False, "identity provider discovery pending"
    dispatch = slot.current.dispatch
    if dispatch is not None and not dispatch.jwks.ready:  # JWTs would get 503 until the keys are fetched
        return False, "signing keys pending"
    return True, "ready"


def build_admin_app(gateway: web.Application, stopping: Callable[[], bool] = lambda: False) -> web.Application:
    """`gateway` is the proxy app whose state is reported; `stopping()` turns /readyz to 503 while draining."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"}, headers=_NO_STORE)

    async def readyz(_: web.Request) -> web.Response:
        ready, why = readiness(gateway, stopping())
        return web.json_response({"status": why}, status=200 if ready else 503, headers=_NO_STORE)

    async def jwks(_: web.Request) -> web.Response:
        """identity.assertion's public keys: what a backend checks an assertion against (404 when it is off)."""
        slot = gateway.get(RUNTIME)
        signer = slot.current.signer if slot is not None else None
        if signer is None:
            raise web.HTTPNotFound()
        return web.Response(body=signer.jwks, headers=JWKS_HEADERS)

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(gateway[METRICS].registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, **_NO_STORE})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/.well-known/jwks.json", jwks)
    return app
