"""The proxy's listening socket, with a cap on open connections (aiohttp has none of its own)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import cast

from aiohttp import web

from gateway.config import Limits

log = logging.getLogger("gateway")
_LOG_EVERY = 10.0  # seconds

_BODY = b'{"error":"too_many_connections","error_description":"the gateway is at capacity, try again shortly"}'
_FULL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\n"
    + b"Content-Length: %d\r\n\r\n" % len(_BODY)
    + _BODY
)


class _Refuse(asyncio.Protocol):
    """Answers 503 at once and closes: cheaper than a full handler, and the client learns why."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport: uvloop's (what `python -m gateway` runs on) does not subclass asyncio.Transport.
        stream = cast(asyncio.Transport, transport)
        stream.write(_FULL)
        stream.close()


class ConnectionCap:
    """A protocol factory: aiohttp's connection handler while fewer than `limit` are open, else a refusal."""

    def __init__(self, server: web.Server, limit: int) -> None:
        self._server = server
        self._limit = limit
        self._refused = 0
        self._logged_at = -math.inf

    def __call__(self) -> asyncio.Protocol:
        if len(self._server.connections) < self._limit:
            return self._server()
        self._refused += 1
        now = time.monotonic()
        if now - self._logged_at >= _LOG_EVERY:  # a flood of refusals must not become a flood of log lines
            log.warning("%d connection(s) refused: %d connections open", self._refused, self._limit)
            self._refused, self._logged_at = 0, now
        return _Refuse()


class CappedSite(web.TCPSite):
    """web.TCPSite whose connections go through ConnectionCap; stopped by the runner's cleanup like any site."""

    __slots__ = ("_limit",)

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, limits: Limits, *, reuse_port: bool | None = None
    ) -> None:
        super().__init__(runner, host, port, backlog=limits.backlog, reuse_port=reuse_port)
        self._limit = limits.max_connections

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site, so that runner.cleanup() stops it
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            ConnectionCap(server, self._limit),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
