"""Raw HTTP/1.1 over asyncio streams: aiohttp's client normalises URLs and headers, attackers do not."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")  # pipelined answers follow bodies on the same line
WAIT = 30.0  # a bound against hanging, never a timing assertion


@dataclass
class Answer:
    raw: bytes

    @property
    def statuses(self) -> list[int]:
        return [int(s) for s in _STATUS.findall(self.raw)]

    @property
    def status(self) -> int:
        assert self.statuses, f"no HTTP response in {self.raw[:200]!r}"
        return self.statuses[0]

    def json(self) -> Any:
        return json.loads(self.raw.partition(b"\r\n\r\n")[2])


def request(target: str, *headers: str, method: str = "GET", body: bytes = b"") -> bytes:
    """One request with Host and `Connection: close`, exactly as written."""
    lines = [f"{method} {target} HTTP/1.1", "Host: gateway.test", *headers, "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def send(port: int | None, data: bytes) -> Answer:
    """Send bytes, read until the server closes the connection. `port`: a TestClient's (None only if unstarted)."""
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return Answer(await asyncio.wait_for(reader.read(), WAIT))
    finally:
        writer.close()
        await writer.wait_closed()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_upstream(handler: Handler) -> AsyncIterator[str]:
    """An upstream on a free port that runs `handler` for each connection; yields its base URL."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(handler(reader, writer), WAIT)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the gateway cut the connection: what several tests want
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def until_closed(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass
