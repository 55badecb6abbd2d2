"""The upstream of ZITADEL's Python API example: the same three messages, byte for byte, plus /api/whoami.

It trusts the gateway completely and checks nothing itself: only the gateway may reach it.
"""

from __future__ import annotations

import json

from aiohttp import web

PUBLIC = b'{"message":"Public route - You don\'t need to be authenticated to see this."}'
PRIVATE = b'{"message":"Private route - You need to be authenticated to see this."}'
PRIVATE_SCOPED = (
    b'{"message":"Private, scoped route - You need to be authenticated and have the role read:messages to see this."}'
)  # fmt: skip


def _json(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


async def public(_: web.Request) -> web.Response:
    return _json(PUBLIC)


async def private(_: web.Request) -> web.Response:
    return _json(PRIVATE)


async def private_scoped(_: web.Request) -> web.Response:
    return _json(PRIVATE_SCOPED)


async def whoami(request: web.Request) -> web.Response:
    """Echo the identity headers the gateway injected (every X-Auth-* header, as received)."""
    seen = {name: value for name, value in request.headers.items() if name.lower().startswith("x-auth-")}
    return _json(json.dumps(seen, separators=(",", ":"), sort_keys=True).encode())


def build_app(client_max_size: int = 1024**2) -> web.Application:
    app = web.Application(client_max_size=client_max_size)
    app.router.add_get("/api/public", public)
    app.router.add_get("/api/private", private)
    app.router.add_get("/api/private-scoped", private_scoped)
    app.router.add_get("/api/whoami", whoami)
    return app
