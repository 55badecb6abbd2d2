"""What the WebSocket tests share: the routes, the tokens, and small helpers for a real aiohttp client."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient
from yarl import URL

Client = TestClient[Any, Any]
WAIT = 30.0  # a bound against hanging, never a timing assertion
READER = {"Authorization": "Bearer demo-reader-token"}
NOROLES = {"Authorization": "Bearer demo-noroles-token"}
ROUTES: list[dict[str, Any]] = [
    {"id": "ws", "path": "/ws/**", "policy": "authenticated", "websocket": True},
    {"id": "ws-scoped", "path": "/scoped/ws/**", "roles": {"any_of": ["read:messages"]}, "websocket": True},
    {"id": "ws-query", "path": "/feed/ws/**", "policy": "authenticated", "websocket": True, "allow_query_token": True},
    {
        "id": "ws-cors",
        "path": "/app/ws/**",
        "policy": "authenticated",
        "websocket": True,
        "cors": {"allowed_origins": ["https://app.example"]},
    },
    {"id": "plain", "path": "/plain/**", "policy": "authenticated"},
    {"id": "sse", "path": "/sse", "policy": "authenticated"},
]

Factory = Callable[..., Awaitable[Client]]
UPGRADE = (
    "GET {target} HTTP/1.1\r\nHost: gateway.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    "Authorization: Bearer demo-reader-token\r\n\r\n"
)
SMUGGLED = b"GET /ws/smuggled HTTP/1.1\r\nHost: gateway.test\r\n\r\n"


def url(client: Client, target: str) -> URL:
    """The gateway's URL for `target`, exactly as written (nothing re-quoted or normalised)."""
    return URL(f"http://127.0.0.1:{client.port}{target}", encoded=True)


async def closed(ws: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
    """Read until the close arrives (data pushed before it is skipped); the close frame itself."""
    async with asyncio.timeout(WAIT):
        while True:
            message = await ws.receive()
            if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR):
                return message


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        while not condition():
            await asyncio.sleep(0.01)


def header(upgrade: Any, name: str) -> list[str]:
    return [v for k, v in upgrade.headers if k.lower() == name.lower()]
