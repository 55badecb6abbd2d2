"""The upstream of ZITADEL's Python API example: the same three messages, byte for byte, plus /api/whoami.

It trusts the gateway's headers, so only the gateway may reach it. Given the gateway's JWKS URL, it also checks the
signed identity assertion (`identity.assertion`) the way any backend can, with PyJWT, and /api/whoami says whether
it verified.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import jwt
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


ASSERTION_HEADER = "X-Auth-Assertion"


@dataclass(frozen=True)
class AssertionCheck:
    """Where the gateway publishes its keys, and what the assertion must say (`iss`, `aud`)."""

    jwks_url: str
    issuer: str
    audience: str
    header: str = ASSERTION_HEADER


def verify_assertion(keys: jwt.PyJWKClient, check: AssertionCheck, token: str) -> dict[str, object]:
    """What a backend does with the assertion: the key by `kid` from the gateway's JWKS, then PyJWT's checks."""
    key = keys.get_signing_key_from_jwt(token)
    claims: dict[str, object] = jwt.decode(
        token,
        key,
        algorithms=["ES256", "EdDSA"],
        audience=check.audience,
        issuer=check.issuer,
        options={"require": ["exp", "iat", "iss", "aud"]},
    )
    return claims


def whoami_handler(check: AssertionCheck | None) -> Callable[[web.Request], Awaitable[web.Response]]:
    keys = jwt.PyJWKClient(check.jwks_url, lifespan=300) if check is not None else None

    async def whoami(request: web.Request) -> web.Response:
        """Echo the identity headers the gateway injected (every X-Auth-* header, as received), the assertion
        excepted (it is a credential for backends, not for the client): for it, whether it verified."""
        header = (check.header if check is not None else ASSERTION_HEADER).lower()
        seen: dict[str, object] = {
            name: value
            for name, value in request.headers.items()
            if name.lower().startswith("x-auth-") and name.lower() != header
        }
        if check is not None and keys is not None:
            token = request.headers.get(check.header)
            if token is None:
                seen["assertion"] = "missing"
            else:
                try:  # PyJWKClient fetches with urllib: off the event loop
                    claims = await asyncio.to_thread(verify_assertion, keys, check, token)
                    seen["assertion"] = {"verified": True, "sub": claims.get("sub"), "roles": claims.get("roles")}
                except (jwt.PyJWTError, OSError) as exc:
                    seen["assertion"] = {"verified": False, "error": type(exc).__name__}
        return _json(json.dumps(seen, separators=(",", ":"), sort_keys=True).encode())

    return whoami


def build_app(client_max_size: int = 1024**2, assertion: AssertionCheck | None = None) -> web.Application:
    app = web.Application(client_max_size=client_max_size)
    app.router.add_get("/api/public", public)
    app.router.add_get("/api/private", private)
    app.router.add_get("/api/private-scoped", private_scoped)
    app.router.add_get("/api/whoami", whoami_handler(assertion))
    return app
