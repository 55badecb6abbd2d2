"""`python -m demo_backend --host H --port P`: serve the demo upstream."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from aiohttp import web

from .app import build_app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo_backend", description="The demo upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args(argv)
    web.run_app(build_app(), host=args.host, port=args.port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
