"""Fixtures of the WebSocket tests: a real aiohttp WebSocket upstream, and the gateway in front of it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpClient, AiohttpServer

from gateway.app import INTROSPECTOR, build_app
from gateway.config import parse_config
from gateway.testing import GatewayTestServer

from ..support import ENV, FakeIdP, gateway_document
from .helpers import ROUTES, Client, Factory
from .servers import WebSocketUpstream


@pytest.fixture
async def ws_upstream(aiohttp_server: AiohttpServer) -> tuple[WebSocketUpstream, TestServer]:
    upstream = WebSocketUpstream()
    return upstream, await aiohttp_server(upstream.build_app())


@pytest.fixture
def upstream(ws_upstream: tuple[WebSocketUpstream, TestServer]) -> WebSocketUpstream:
    return ws_upstream[0]


@pytest.fixture
def make_gateway(
    idp: FakeIdP, ws_upstream: tuple[WebSocketUpstream, TestServer], aiohttp_client: AiohttpClient
) -> Factory:
    """The gateway in front of the WebSocket upstream; `websocket` and other top-level sections as given."""

    async def make(routes: list[dict[str, Any]] | None = None, **top: Any) -> Client:
        url = str(ws_upstream[1].make_url("")).rstrip("/")
        document = gateway_document(issuer=idp.issuer, upstream_url=url, routes=routes or ROUTES)
        for key, value in top.items():
            document[key] = {**document.get(key, {}), **value} if isinstance(value, dict) else value
        config = parse_config(document, source="test.yaml", env=ENV)
        client: Client = await aiohttp_client(GatewayTestServer(build_app(config)))
        for _ in range(200):
            if client.app[INTROSPECTOR].ready:
                break
            await asyncio.sleep(0.02)
        return client

    return make
