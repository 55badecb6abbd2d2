"""`python -m gateway` as a real process with WebSockets open: they count against `limits.max_connections`, and
SIGTERM closes them with 1001, both sides, within `shutdown_grace_seconds`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import WSMsgType
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from ..support import ENV, FakeIdP, gateway_document, gateway_process
from .servers import WebSocketUpstream

WAIT = 30.0  # a bound against hanging, never a timing assertion
READER = {"Authorization": "Bearer demo-reader-token"}


async def test_open_websockets_count_as_connections_and_sigterm_closes_them_1001(
    idp: FakeIdP, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    upstream = WebSocketUpstream()
    server: TestServer = await aiohttp_server(upstream.build_app())
    routes = [{"id": "ws", "path": "/ws/**", "policy": "authenticated", "websocket": True}]
    document: dict[str, Any] = gateway_document(
        issuer=idp.issuer, upstream_url=str(server.make_url("")).rstrip("/"), routes=routes
    )
    document.update(limits={"max_connections": 2}, shutdown_grace_seconds=10, reload={"watch": False})
    async with (
        gateway_process(document, tmp_path, ENV) as (base, proc),
        aiohttp.ClientSession() as first,
        aiohttp.ClientSession() as second,
    ):
        sockets = [await s.ws_connect(f"{base}/ws/echo", headers=READER) for s in (first, second)]
        for ws in sockets:
            await ws.send_str("open")
            assert await ws.receive_str(timeout=WAIT) == "open"
        # A third connection is over the cap: answered 503 at once (read without sending, as the answer comes
        # before any request and a request sent into the closing socket could turn it into a reset).
        reader, writer = await asyncio.open_connection("127.0.0.1", int(base.rsplit(":", 1)[1]))
        refused = await asyncio.wait_for(reader.read(), WAIT)
        writer.close()
        assert refused.startswith(b"HTTP/1.1 503 ") and b"too_many_connections" in refused
        proc.terminate()
        for ws in sockets:
            message = await ws.receive(timeout=WAIT)
            assert (message.type, message.data) == (WSMsgType.CLOSE, 1001)
        assert await asyncio.to_thread(proc.wait, WAIT) == 0
    assert [code for _, code, _ in upstream.closes] == [1001, 1001]
    log = next(tmp_path.glob("gateway-*.log")).read_text().splitlines()
    closes = [json.loads(line) for line in log if '"event":"close"' in line]
    assert [line["close_reason"] for line in closes] == ["shutdown", "shutdown"]
