"""The bench's IdP: demo_backend.idp's ZITADEL stand-in plus a call counter (`GET /_count`) and a burst token.

Run: `python -m bench.idp --port P`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from demo_backend.idp import DEMO_TOKENS, IdPSettings, build_idp_app

BURST_TOKENS = tuple(f"bench-burst-{i}" for i in range(10))


def build_app(issuer: str) -> web.Application:
    reader = DEMO_TOKENS["demo-reader-token"]
    tokens = {**DEMO_TOKENS, **dict.fromkeys(BURST_TOKENS, reader)}
    app = build_idp_app(IdPSettings(issuer=issuer, tokens=tokens))
    calls = [0]

    @web.middleware
    async def count(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path == "/oauth/v2/introspect":
            calls[0] += 1
        return await handler(request)

    async def counted(_: web.Request) -> web.Response:
        return web.json_response({"introspections": calls[0]})

    app.middlewares.append(count)
    app.router.add_get("/_count", counted)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.idp")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    issuer = f"http://127.0.0.1:{args.port}"
    web.run_app(build_app(issuer), host="127.0.0.1", port=args.port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
