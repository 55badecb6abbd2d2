"""Second independent review: defects confirmed against real servers on 127.0.0.1 (each test fails until fixed)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pytest_aiohttp import AiohttpClient

from gateway.app import RELOADER, RUNTIME
from tests.conftest import GatewayFactory
from tests.support import FakeIdP, RecordingUpstream
from tests.test_reload_functional import Files, start

ROUTES = [{"path": "/open/**", "policy": "public"}]


async def _exchange(port: int | None, *writes: bytes) -> bytes:
    """Each write sent on its own (so each is one read at the gateway), then read until the server closes."""
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for data in writes:
            writer.write(data)
            await writer.drain()
            await asyncio.sleep(0.1)
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_foreign_request_line_in_the_read_that_ends_a_body_reaches_the_upstream(
    make_gateway: GatewayFactory, upstream: RecordingUpstream
) -> None:
    # The raw request-line check (head_limit._not_http) skips the head that starts in the same read as the end of
    # the previous request's body; the pipelined _FOREIGN_LINE check only runs when one read completes two heads.
    gw = await make_gateway(ROUTES)
    post = b"POST /open/a HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 5\r\n\r\n"
    rtsp = b"GET /open/rtsp RTSP/1.0\r\nHost: gateway.test\r\nConnection: close\r\n\r\n"
    await _exchange(gw.port, post, b"hello" + rtsp)
    chunked = b"POST /open/b HTTP/1.1\r\nHost: gateway.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    await _exchange(gw.port, chunked, b"5\r\nhello\r\n0\r\n\r\n" + rtsp)
    assert "/open/rtsp" not in [seen.raw_path for seen in upstream.seen]


async def test_a_config_file_that_is_not_utf8_stops_every_later_reload(
    tmp_path: Path, idp: FakeIdP, upstream_url: str, aiohttp_client: AiohttpClient
) -> None:
    # load_config catches OSError and YAML errors only: a UnicodeDecodeError escapes Reloader.reload and ends the
    # Reloader.run task, so SIGHUP and the file watch are dead from then on (and no failed reload is counted).
    files = Files(tmp_path, idp, upstream_url)
    client = await start(files, aiohttp_client, reload={"watch": False})
    files.path.write_bytes(files.path.read_bytes() + b"\n# caf\xe9 (saved as latin-1)\n")
    client.app[RELOADER].trigger()  # what SIGHUP does
    await asyncio.sleep(0.3)
    files.write([{"path": "/fixed", "policy": "public"}], reload={"watch": False})
    client.app[RELOADER].trigger()
    for _ in range(100):  # a deadline, not a timing assertion
        if client.app[RUNTIME].current.config.routes[0].id == "/fixed":
            break
        await asyncio.sleep(0.02)
    assert client.app[RUNTIME].current.config.routes[0].id == "/fixed"
