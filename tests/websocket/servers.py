"""A real aiohttp WebSocket upstream for the WebSocket tests: echo, server push, pings, close codes, a refusal, a
flood (flow control) and a server-sent-event stream; it records every request it gets and every close it sees."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from ..support import Handler


@dataclass
class Upgrade:
    raw_path: str
    headers: list[tuple[str, str]]


@dataclass
class WebSocketUpstream:
    seen: list[Upgrade] = field(default_factory=list)
    closes: list[tuple[str, int | None, str]] = field(default_factory=list)  # (path, code seen, reason text)
    open: int = 0
    flood_sent: int = 0  # bytes the flood handler has handed to its socket so far
    flood_done: asyncio.Event = field(default_factory=asyncio.Event)
    sse_release: asyncio.Event = field(default_factory=asyncio.Event)
    sse_finished: bool = False

    def build_app(self) -> web.Application:
        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            self.seen.append(Upgrade(request.raw_path, list(request.headers.items())))
            return await handler(request)

        app = web.Application(middlewares=[record])
        app.router.add_get("/{prefix:.*}ws/echo", self.echo)
        app.router.add_get("/ws/flood", self.flood)
        app.router.add_get("/ws/refuse", refuse)
        app.router.add_get("/sse", self.sse)
        app.router.add_route("*", "/{tail:.*}", plain)
        return app

    async def echo(self, request: web.Request) -> web.StreamResponse:
        """Echoes data messages. Text commands: `close:CODE:REASON`, `ping:DATA`, `push:N:SIZE` (N binary
        messages of SIZE bytes). Records the close it was sent: (path, code, reason)."""
        ws = web.WebSocketResponse(protocols=("chat.v2",), max_msg_size=0)
        await ws.prepare(request)
        self.open += 1
        reason = ""
        try:
            while True:
                message = await ws.receive()
                if message.type is WSMsgType.CLOSE:
                    reason = message.extra or ""
                if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    break
                if message.type is WSMsgType.TEXT:
                    text = message.data
                    if text.startswith("close:"):
                        _, code, said = text.split(":", 2)
                        await ws.close(code=int(code), message=said.encode())
                    elif text.startswith("ping:"):
                        await ws.ping(text[5:].encode())
                    elif text.startswith("push:"):
                        _, count, size = text.split(":")
                        for i in range(int(count)):
                            await ws.send_bytes(bytes([i % 256]) * int(size))
                    else:
                        await ws.send_str(text)
                elif message.type is WSMsgType.BINARY:
                    await ws.send_bytes(message.data)
        finally:
            self.open -= 1
            self.closes.append((request.path, ws.close_code, reason))
        return ws

    async def flood(self, request: web.Request) -> web.StreamResponse:
        """Sends `n` binary messages of `size` bytes as fast as the connection takes them."""
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        count, size = int(request.query["n"]), int(request.query["size"])
        payload = b"f" * size
        try:
            for _ in range(count):
                await ws.send_bytes(payload)
                self.flood_sent += size
        finally:
            self.flood_done.set()
        await ws.close()
        return ws

    async def sse(self, request: web.Request) -> web.StreamResponse:
        """One event, then waits for the test to release it, then a second event and the end."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        await response.write(b"data: first\n\n")
        await self.sse_release.wait()
        await response.write(b"data: second\n\n")
        await response.write_eof()
        self.sse_finished = True
        return response


async def refuse(_: web.Request) -> web.Response:
    return web.json_response({"error": "upstream_says_no"}, status=403, headers={"X-Upstream": "refused"})


async def plain(request: web.Request) -> web.Response:
    return web.Response(text=f"plain {request.raw_path}")
