"""The open WebSockets of one app: the session their upstream sides share, the gauge of open sockets per route,
and their close (1001) when the gateway stops, within `shutdown_grace_seconds`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

from gateway.forward.websocket.lifetime import SHUTDOWN, Ending
from gateway.forward.websocket.relay import INTERNAL_ERROR, Relay
from gateway.forward.websocket.upstream import KeepRefusal
from gateway.ops.metrics import Metrics

log = logging.getLogger("gateway.websocket")
FAILED = Ending("error", INTERNAL_ERROR, "internal error")


class WebSocketHub:
    def __init__(self, metrics: Metrics, grace: float) -> None:
        self.metrics = metrics
        self.grace = grace
        self._session: aiohttp.ClientSession | None = None
        self._open: dict[Relay, asyncio.Task[Ending]] = {}
        self.stopping = False

    def session(self) -> aiohttp.ClientSession:
        """One session for every upstream WebSocket (made on first use, inside the event loop)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                # Every WebSocket holds its connection for its life: open ones are bounded by the listener's
                # max_connections, not here. Bodies (of a refused upgrade) are relayed as the upstream encoded them.
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=60),
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
                timeout=aiohttp.ClientTimeout(total=None),
                response_class=KeepRefusal,  # the body of a refused upgrade, to relay
            )
        return self._session

    @property
    def close_timeout(self) -> float:
        """How long one side may take to answer a close: never past the shutdown grace."""
        return max(0.05, min(5.0, self.grace))

    def run(self, relay: Relay, route: str, done: Callable[[Ending], None]) -> Awaitable[Ending]:
        """Run `relay` in a task of its own (a client that goes away cancels its handler, not the relay, which
        then closes the upstream side and logs), counted in the gauge while it runs."""
        gauge = self.metrics.websockets_open.labels(route)
        gauge.inc()
        task = asyncio.ensure_future(relay.run(self.close_timeout))
        self._open[relay] = task

        def finished(task: asyncio.Task[Ending]) -> None:
            gauge.dec()
            del self._open[relay]
            if task.cancelled():
                done(SHUTDOWN)  # cut at cleanup, once the grace ran out
            elif task.exception() is not None:
                log.error("websocket relay failed", exc_info=task.exception())
                done(FAILED)
            else:
                done(task.result())

        task.add_done_callback(finished)
        if self.stopping:
            relay.stop(SHUTDOWN)
        return asyncio.shield(task)

    def __len__(self) -> int:
        return len(self._open)

    async def shutdown(self, app: web.Application) -> None:
        """on_shutdown: every open socket is closed with 1001, both sides, within the grace."""
        self.stopping = True
        tasks = list(self._open.values())
        for relay in list(self._open):
            relay.stop(SHUTDOWN)
        if tasks:
            await asyncio.wait(tasks, timeout=self.grace)

    async def close(self, app: web.Application) -> None:
        """on_cleanup: whatever is left is cut, then the session closes."""
        for task in list(self._open.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._session is not None:
            await self._session.close()

    def attach(self, app: web.Application) -> WebSocketHub:
        app.on_shutdown.append(self.shutdown)
        app.on_cleanup.append(self.close)
        return self


WEBSOCKETS = web.AppKey("websockets", WebSocketHub)
