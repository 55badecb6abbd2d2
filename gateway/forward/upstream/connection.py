"""One connection to an upstream: what we write (the request head, the body's framing) and what it hands on.

The framing of what we send is ours (RFC 9112): a request head checked for stray line breaks, and a body written
as exactly its Content-Length or in chunks. What arrives goes to the answer in progress (answer.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Final, Protocol

from gateway.forward.upstream.answer import UpstreamResponse
from gateway.forward.upstream.errors import UpstreamError
from gateway.forward.upstream.origin import Origin


class Pool(Protocol):
    """What a connection tells its pool (client.py's UpstreamClient): no import back."""

    def put(self, connection: Connection) -> None: ...
    def forget(self, connection: Connection) -> None: ...


_HEADER_LINE: Final = ": ".join  # (name, value) -> "name: value", without a Python-level loop


def request_head(method: str, target: str, host: str, headers: Mapping[str, str], framing: str | None) -> bytes:
    """The request line and headers. `framing`: a header line of ours (Transfer-Encoding or Content-Length), or None.

    Every value has passed a parser already (the client's, by aiohttp's server) or been encoded by us; a line break
    in one would still split the head, so the result is checked rather than trusted.
    """
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", *map(_HEADER_LINE, headers.items())]
    if framing is not None:
        lines.append(framing)
    breaks = len(lines) + 1
    lines += ("", "")  # the head ends with an empty line
    text = "\r\n".join(lines)
    if text.count("\n") != breaks or text.count("\r") != breaks or "\0" in text:
        raise UpstreamError("a request header carries a line break")
    # Values arrive decoded as aiohttp decodes them (UTF-8, undecodable bytes escaped): this restores the bytes.
    return text.encode("utf-8", "surrogateescape")


class Connection(asyncio.Protocol):
    """One keep-alive connection to an upstream; the answer in progress is its `exchange`."""

    __slots__ = (
        "_drain",
        "_paused",
        "exchange",
        "holds_slot",
        "idle_since",
        "key",
        "lost",
        "pool",
        "reading",
        "transport",
    )

    def __init__(self, pool: Pool, key: Origin) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.exchange: UpstreamResponse | None = None
        self.lost = False
        self.holds_slot = False  # set once _acquire has it: until then, its slot is _acquire's to free
        self.reading = True
        self.idle_since = 0.0
        self._paused = False
        self._drain: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's does not subclass asyncio.Transport, hence no isinstance check).
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:  # nobody asked: an idle connection's framing can no longer be trusted
            self.close()
            return
        exchange.feed(data)

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost ends the exchange

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.exchange is not None:
            self.exchange.lost(exc)
        self._wake_drain()
        self.pool.forget(self)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_drain()

    async def drain(self) -> None:
        if self.lost:
            raise UpstreamError("the upstream closed the connection")
        if self._paused:
            self._drain = asyncio.get_running_loop().create_future()
            try:
                await self._drain
            finally:
                self._drain = None
            if self.lost:
                raise UpstreamError("the upstream closed the connection")

    def _wake_drain(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_reading(self) -> None:
        if self.reading and self.transport is not None:
            self.reading = False
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self.reading and self.transport is not None and not self.lost:
            self.reading = True
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def unsent(self) -> int:
        transport = self.transport
        return 0 if transport is None or self.lost else transport.get_write_buffer_size()

    def recycle(self) -> None:
        self.pool.put(self)

    def close(self) -> None:
        if self.exchange is not None:
            self.exchange.fail(UpstreamError("the exchange was cut short"))
        if self.transport is not None and not self.lost:
            self.transport.abort()  # nothing in flight is worth flushing on a connection whose framing is off


async def send_body(
    connection: Connection, body: AsyncIterator[bytes], *, length: int | None, read_timeout: float
) -> None:
    """Write the body as it comes: `length` bytes exactly, or in chunks when it is None. Any failure (the client's
    413 or 408 included) closes the connection: a body cut short must never be taken by the upstream for a complete
    one, and bytes past `length` would be read as another request."""
    left = length
    try:
        async for piece in body:
            if not piece:
                continue
            if left is None:
                connection.write(b"%x\r\n%b\r\n" % (len(piece), piece))
            elif len(piece) > left:
                raise UpstreamError("the request body is longer than its Content-Length")
            else:
                left -= len(piece)
                connection.write(piece)
            async with asyncio.timeout(read_timeout):  # an upstream that stops reading is a stalled upstream
                await connection.drain()
        if left is None:
            connection.write(_LAST_CHUNK)
        elif left:
            raise UpstreamError("the request body is shorter than its Content-Length")
    except BaseException:
        connection.close()
        raise


_LAST_CHUNK: Final = b"0\r\n\r\n"
