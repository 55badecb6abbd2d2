"""GatewayTestServer: a gateway app on a free port, for tests and benchmarks, served the way production serves it."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import BaseTestServer

from gateway.app import GatewayRunner


class GatewayTestServer(BaseTestServer):
    """aiohttp's TestServer, with the GatewayRunner that `python -m gateway` uses instead of web.AppRunner.

    Takes the place of TestServer in `aiohttp_client(GatewayTestServer(build_app(config)))`; `client.app` is the
    gateway app, as with TestServer."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        self.app = app
        super().__init__(**kwargs)

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        return GatewayRunner(self.app, **kwargs)
