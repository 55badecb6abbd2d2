"""`python -m demo_backend --host H --port P`: serve the demo upstream."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from aiohttp import web

from .app import AssertionCheck, build_app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo_backend", description="The demo upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--assertion-jwks", help="the gateway's JWKS URL: check the signed identity assertion")
    parser.add_argument("--assertion-issuer", default="zitadel-gateway", help="its expected `iss`")
    parser.add_argument("--assertion-audience", default="default", help="its expected `aud` (the upstream's name)")
    args = parser.parse_args(argv)
    check = (
        AssertionCheck(args.assertion_jwks, args.assertion_issuer, args.assertion_audience)
        if args.assertion_jwks
        else None
    )
    web.run_app(build_app(assertion=check), host=args.host, port=args.port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
