"""Serve an app on a TCP port with a cap on open connections (aiohttp has none of its own)."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from .config import Limits

log = logging.getLogger("gateway")

_BODY = b'{"error":"too_many_connections","error_description":"the gateway is at capacity, try again shortly"}'
_FULL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\n"
    + b"Content-Length: %d\r\n\r\n" % len(_BODY)
    + _BODY
)


class _Refuse(asyncio.Protocol):
    """Answers 503 at once and closes: cheaper than a full handler, and the client learns why."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_FULL)
        transport.close()


class ConnectionCap:
    """A protocol factory: aiohttp's connection handler while fewer than `limit` are open, else a refusal."""

    def __init__(self, server: web.Server, limit: int) -> None:
        self._server = server
        self._limit = limit

    def __call__(self) -> asyncio.Protocol:
        if len(self._server.connections) >= self._limit:
            log.warning("connection refused: %d connections open", self._limit)
            return _Refuse()
        return self._server()


async def start_server(runner: web.AppRunner, host: str, port: int, limits: Limits) -> asyncio.Server:
    """Listen for `runner` (already set up) on host:port, at most `limits.max_connections` at a time."""
    assert runner.server is not None
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        ConnectionCap(runner.server, limits.max_connections),
        host,
        port,
        backlog=limits.backlog,
        reuse_address=True,
    )


async def serve(app: web.Application, host: str, port: int, limits: Limits) -> None:
    """Run until SIGINT/SIGTERM (aiohttp's runner turns them into GracefulExit)."""
    runner = web.AppRunner(app, handle_signals=True)
    await runner.setup()
    server = await start_server(runner, host, port, limits)
    log.info("listening on http://%s:%d", host, port)
    try:
        await asyncio.Event().wait()
    finally:
        server.close()
        await runner.cleanup()
