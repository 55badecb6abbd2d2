"""The request body on its way to the upstream, bounded in size and in how long the client may stall.

aiohttp's `client_max_size` only guards `request.read()`; a streamed body has no limit unless we count it here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import StreamReader
from aiohttp.abc import AbstractStreamWriter

from gateway.errors import BadRequest, ClientClosedRequest, GatewayError, PayloadTooLarge, RequestTimeout
from gateway.forward.method_override import Scanner


class BodyGuard:
    """Yields the client's body in pieces; stops with 413 past `limit` bytes, 408 after `timeout` of silence.

    The error is also kept in `.error`: when it is raised inside the upstream client's body writer, the client
    library reports a connection failure, and the pipeline answers with this instead.
    """

    __slots__ = ("_continue", "_limit", "_scanner", "_stream", "_timeout", "buffered", "error")

    def __init__(
        self,
        stream: StreamReader,
        *,
        limit: int,
        timeout: float,
        send_continue: AbstractStreamWriter | None = None,
        scanner: Scanner | None = None,
    ) -> None:
        """`send_continue`: the client sent `Expect: 100-continue`; its `100 Continue` goes out on this writer when
        the body is first wanted, that is once the request has been allowed (RFC 9110 §10.1.1): a client the
        gateway refuses never uploads its body.

        `scanner`: looks for a method-override field in each piece before it is passed on (400 if found)."""
        self._scanner = scanner
        self._stream = stream
        self._limit = limit
        self._timeout = timeout
        self._continue = send_continue
        self.error: GatewayError | None = None
        self.buffered: bytes | None = None

    async def read_all(self) -> bytes:
        """The whole body (at most `limit` bytes), kept so that it can still be forwarded."""
        if self.buffered is None:
            self.buffered = b"".join([chunk async for chunk in self._pieces()])
        return self.buffered

    async def chunks(self) -> AsyncIterator[bytes]:
        if self.buffered is not None:
            yield self.buffered
            return
        async for chunk in self._pieces():
            yield chunk

    async def _pieces(self) -> AsyncIterator[bytes]:
        if self._continue is not None:
            writer, self._continue = self._continue, None
            try:
                await writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            except ConnectionError:
                self.error = ClientClosedRequest()
                raise self.error from None
            writer.output_size = 0  # the interim answer is not part of the final one
        total = 0
        while True:
            try:
                async with asyncio.timeout(self._timeout):
                    chunk = await self._stream.readany()
            except TimeoutError:
                self.error = RequestTimeout()
                raise self.error from None
            except ConnectionError:
                self.error = ClientClosedRequest()
                raise self.error from None
            if not chunk:
                return
            total += len(chunk)
            if total > self._limit:
                self.error = PayloadTooLarge()
                raise self.error
            if self._scanner is not None and self._scanner.found_in(chunk):
                self.error = BadRequest("a method override in the request body")
                raise self.error
            yield chunk
