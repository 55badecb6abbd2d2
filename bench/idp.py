"""The bench's IdP: demo_backend.idp's ZITADEL stand-in plus a call counter (`GET /_count`) and a burst token.

Run: `python -m bench.idp --port P`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from aiohttp import web

from demo_backend.idp import DEMO_TOKENS, IdPSettings, build_idp_app

BURST_TOKENS = tuple(f"bench-burst-{i}" for i in range(10))


def build_app(issuer: str, jwks: bytes | None = None) -> web.Application:
    """`jwks`: a key set to serve at /oauth/v2/keys (bench.jwt_tokens signs the tokens with its private half)."""
    reader = DEMO_TOKENS["demo-reader-token"]
    tokens = {**DEMO_TOKENS, **dict.fromkeys(BURST_TOKENS, reader)}
    app = build_idp_app(IdPSettings(issuer=issuer, tokens=tokens))
    calls = {"/oauth/v2/introspect": 0, "/oauth/v2/keys": 0}

    @web.middleware
    async def count(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path in calls:
            calls[request.path] += 1
        return await handler(request)

    async def counted(_: web.Request) -> web.Response:
        return web.json_response(
            {"introspections": calls["/oauth/v2/introspect"], "key_fetches": calls["/oauth/v2/keys"]}
        )

    async def keys(_: web.Request) -> web.Response:
        return web.Response(body=jwks, content_type="application/json", headers={"Cache-Control": "max-age=300"})

    app.middlewares.append(count)
    app.router.add_get("/_count", counted)
    if jwks is not None:
        app.router.add_get("/oauth/v2/keys", keys)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.idp")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--jwks", type=Path, default=None, help="a JWKS file to serve at /oauth/v2/keys")
    args = parser.parse_args(argv)
    issuer = f"http://127.0.0.1:{args.port}"
    jwks = args.jwks.read_bytes() if args.jwks is not None else None
    web.run_app(build_app(issuer, jwks), host="127.0.0.1", port=args.port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
