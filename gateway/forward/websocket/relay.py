"""Relay one WebSocket pair: messages both ways until one side closes or the lifetime watch ends it.

Text, binary, ping and pong go across as they came (the gateway answers no ping itself: the far side's pong comes
back), and a close goes across with its code and reason. Each direction is one loop that sends a message before it
reads the next: a slow reader holds the sender back through TCP, and what is in flight per socket is bounded by
aiohttp's read buffer and write buffer (64 KiB each) and one message of at most `max_message_bytes` per direction.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Literal

import aiohttp
from aiohttp import WSMsgType, web

from gateway.forward.websocket.lifetime import GOING_AWAY, SHUTDOWN, Ending, Lifetime

TOO_BIG = 1009
INTERNAL_ERROR = 1011
NORMAL = 1000
_DATA = (WSMsgType.TEXT, WSMsgType.BINARY)
_CONTROL = (WSMsgType.PING, WSMsgType.PONG)

ClientSide = web.WebSocketResponse[Literal[False]]
UpstreamSide = aiohttp.ClientWebSocketResponse[Literal[False]]
Socket = ClientSide | UpstreamSide


@dataclass(slots=True)
class Tally:
    """Data messages and their payload bytes, one direction."""

    messages: int = 0
    bytes: int = 0


# aiohttp has closed the sending side with 1009 already; the other side learns why with the same code.
TOO_BIG_ENDING = Ending("too_big", TOO_BIG, "message too big")


def side_failed(side: str, code: int | None = None) -> Ending:
    """A side that went away or broke the protocol: the other side gets 1001 (the client left) or 1011 (the
    upstream failed); `code` is what the failing side was told or sent, for the log."""
    if side == "client":
        return Ending("client", code or GOING_AWAY, "the client went away", to_upstream=GOING_AWAY)
    return Ending("upstream", code or INTERNAL_ERROR, "the upstream failed", to_client=INTERNAL_ERROR)


class Relay:
    def __init__(self, client: ClientSide, upstream: UpstreamSide, lifetime: Lifetime) -> None:
        self.client = client
        self.upstream = upstream
        self.lifetime = lifetime
        self.from_client = Tally()
        self.from_upstream = Tally()
        self._stop: asyncio.Future[Ending] = asyncio.get_running_loop().create_future()

    def stop(self, ending: Ending = SHUTDOWN) -> None:
        """End the relay from outside (shutdown)."""
        if not self._stop.done():
            self._stop.set_result(ending)

    async def run(self, close_timeout: float) -> Ending:
        """Relay until the end, close both sides (each within `close_timeout`), and say why it ended."""
        tasks = [
            asyncio.ensure_future(self._pump(self.client, self.upstream, self.from_client, "client")),
            asyncio.ensure_future(self._pump(self.upstream, self.client, self.from_upstream, "upstream")),
            asyncio.ensure_future(self.lifetime.watch()),
            self._stop,
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            ending = next(task.result() for task in tasks if task in done)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._close(ending, close_timeout)
        return ending

    async def _close(self, ending: Ending, timeout: float) -> None:
        message = ending.message.encode()
        closing = (
            self.client.close(code=ending.client_code, message=message),
            self.upstream.close(code=ending.upstream_code, message=message),
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await asyncio.gather(*closing, return_exceptions=True)

    async def _pump(self, source: Socket, sink: Socket, tally: Tally, side: str) -> Ending:
        """One direction, a message at a time; returns when `source` closes or fails, or `sink` cannot be written."""
        loop = asyncio.get_running_loop()
        other = "upstream" if side == "client" else "client"
        while True:
            message = await source.receive()
            kind = message.type
            if kind in _DATA or kind in _CONTROL:
                payload: bytes = message.data
                try:
                    await sink.send_frame(payload, kind)
                except ConnectionError:
                    return side_failed(other)
                if kind in _DATA:
                    tally.messages += 1
                    tally.bytes += len(payload)
                    self.lifetime.touch(loop.time())
                continue
            if kind is WSMsgType.CLOSE:
                # A close with its code and reason goes across; one without a code is a normal close.
                code = message.data or NORMAL
                return Ending(side, code, message.extra or "")
            if kind is WSMsgType.ERROR and isinstance(message.data, aiohttp.WebSocketError):
                if message.data.code == TOO_BIG:
                    return TOO_BIG_ENDING
                return side_failed(side, message.data.code)
            return side_failed(side)  # CLOSED, CLOSING, or an error of the connection itself
