"""Issue 11: one upstream answer must never reach a client as something else.

A scripted raw upstream, a raw client and a real gateway: stray bytes after an answer, header bytes that are not
UTF-8, two Transfer-Encoding lines, an unasked-for 101, and a connection whose request body the upstream did not
take as a body (its rest would be the next request, and its answer the next client's).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GatewayFactory
from tests.support import ENV, FakeIdP, gateway_document, gateway_process

from .raw import WAIT, raw_upstream, request, send, until_closed

STRAY = b"HTTP/1.1 302 Found\r\nLocation: https://evil.test/\r\nSet-Cookie: session=evil\r\nContent-Length: 0\r\n\r\n"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: upstream.test\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def _upstreams(url: str, **settings: Any) -> dict[str, Any]:
    return {"default": {"url": url, "connect_timeout_seconds": 2, "read_timeout_seconds": 2, **settings}}


def _head_and_body(raw: bytes) -> tuple[bytes, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, body


# -- 1. stray bytes after a complete answer ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "stray"),
    [
        (b"ok", STRAY),
        (b"ok", STRAY.replace(b"Content-Length: 0", b"Content-Length: 100000")),  # a length the body never fills
        (b"x" * 200_000, STRAY),  # a streamed answer
        (b"ok", STRAY.replace(b"\r\n\r\n", b"\r\nX-Pad: " + b"p" * 30_000 + b"\r\n\r\n")),  # a large stray head
    ],
    ids=["small", "unfilled-length", "large-body", "large-stray-head"],
)
async def test_bytes_after_an_answer_change_nothing_in_it(
    make_gateway: GatewayFactory, body: bytes, stray: bytes
) -> None:
    # llhttp went on parsing the stray head with the first answer's callbacks: its status, Location and
    # Set-Cookie replaced the real answer's, or its Content-Length was added to it.
    async def stray_after(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b%b" % (len(body), body, stray))

    async with raw_upstream(stray_after) as url:
        gateway = await make_gateway(upstreams=_upstreams(url))
        for _ in range(2):  # the spoilt connection is not reused: the second request meets the same script
            answer = await send(gateway.port, request("/open/x"))
            head, relayed = _head_and_body(answer.raw)
            assert answer.statuses[:1] == [200]
            assert relayed == body
            assert b"evil" not in answer.raw
            assert head.lower().count(b"\r\ncontent-length:") <= 1
            assert b"content-length: 100000" not in head.lower()


# -- 2. header bytes that are not UTF-8 ----------------------------------------------------------------------------


async def test_a_header_byte_outside_utf8_is_a_502_not_dropped(make_gateway: GatewayFactory) -> None:
    # `/\xff/evil.test/login` passed the upstream's "local paths only" check; with the byte dropped on the way
    # out it became `//evil.test/login`, an open redirect.
    async def redirect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 302 Found\r\nLocation: /\xff/evil.test/login\r\nContent-Length: 0\r\n\r\n")
        await until_closed(reader)

    async with raw_upstream(redirect) as url:
        gateway = await make_gateway(upstreams=_upstreams(url))
        answer = await send(gateway.port, request("/open/x"))
        assert answer.status == 502
        assert b"evil.test" not in answer.raw


async def test_utf8_header_bytes_are_relayed_unchanged(make_gateway: GatewayFactory) -> None:
    value = "attachment; filename*=UTF-8''caf\u00e9 \u2713".encode()

    async def disposition(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Disposition: " + value + b"\r\nContent-Length: 2\r\n\r\nok")
        await until_closed(reader)

    async with raw_upstream(disposition) as url:
        gateway = await make_gateway(upstreams=_upstreams(url))
        answer = await send(gateway.port, request("/open/x"))
        assert answer.status == 200
        assert b"\r\nContent-Disposition: " + value + b"\r\n" in answer.raw


# -- 3. two Transfer-Encoding lines --------------------------------------------------------------------------------


async def test_two_transfer_encodings_cut_short_are_a_502(make_gateway: GatewayFactory) -> None:
    # llhttp framed by the chunked line, the client by the first (gzip: read to the close), so a chunked body cut
    # short was relayed as complete.
    async def two(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")

    async with raw_upstream(two) as url:
        gateway = await make_gateway(upstreams=_upstreams(url))
        answer = await send(gateway.port, request("/open/x"))
        assert answer.status == 502
        assert b"hello" not in answer.raw


# -- 4. an unasked-for 101 -----------------------------------------------------------------------------------------


async def test_an_unasked_for_101_is_a_502_with_one_log_line(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    async def switch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi")
        await until_closed(reader)

    async with raw_upstream(switch) as url:
        gateway = await make_gateway(upstreams=_upstreams(url))
        with caplog.at_level(logging.INFO):
            answer = await send(gateway.port, request("/open/x"))
        assert answer.status == 502
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        upstream_lines = [r.getMessage() for r in caplog.records if r.name == "gateway.proxy"]
        assert upstream_lines == ["upstream default: 101 Switching Protocols to a request that asked for no upgrade"]


# -- 6. an upstream that does not take the request body as a body ---------------------------------------------------


def _body_as_next_request(early: bool, answered: asyncio.Event, connections: list[int]) -> Any:
    """The first connection answers its request (early: before the body arrived), reads the body as a request,
    and answers that one to whatever request comes next on the connection; later connections answer `ok`."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(len(connections))
        if len(connections) > 1:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(OK)
        await reader.readuntil(b"\r\n\r\n")
        if early:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
            await writer.drain()
            answered.set()
        assert await reader.readuntil(b"\r\n\r\n") == SMUGGLED  # the request body, taken as a request
        writer.write(b"ok" if early else OK)
        await reader.readuntil(b"\r\n\r\n")  # the next client's request, on the same connection if pooled
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled")
        await until_closed(reader)

    return handler


async def test_an_answer_before_the_body_was_sent_never_pools_the_connection(make_gateway: GatewayFactory) -> None:
    answered = asyncio.Event()
    connections: list[int] = []
    async with raw_upstream(_body_as_next_request(True, answered, connections)) as url:
        # reuse_after_body on: only the early answer may keep this connection out of the pool.
        gateway = await make_gateway(upstreams=_upstreams(url, reuse_after_body=True))
        head = request("/open/x", f"Content-Length: {len(SMUGGLED)}", method="POST")
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        try:
            writer.write(head + SMUGGLED[:5])
            await asyncio.wait_for(answered.wait(), WAIT)  # the answer's head is on its way before the body's rest
            writer.write(SMUGGLED[5:])
            first = await asyncio.wait_for(reader.read(), WAIT)
        finally:
            writer.close()
        assert first.endswith(b"\r\n\r\nok")
        second = await send(gateway.port, request("/open/y"))
        assert _head_and_body(second.raw)[1] == b"ok"  # not the answer to the smuggled request
        assert len(connections) == 2


@pytest.mark.parametrize("reuse", [False, True])
async def test_reuse_after_body_decides_whether_a_connection_serves_again(
    make_gateway: GatewayFactory, reuse: bool
) -> None:
    # Sent whole, then answered: no proxy can tell whether the upstream read the body as one. Off (the default),
    # the connection is closed after every request with a body; on, this upstream's bug reaches the next client.
    connections: list[int] = []
    async with raw_upstream(_body_as_next_request(False, asyncio.Event(), connections)) as url:
        settings = {"reuse_after_body": reuse} if reuse else {}
        gateway = await make_gateway(upstreams=_upstreams(url, **settings))
        head = request("/open/x", f"Content-Length: {len(SMUGGLED)}", method="POST")
        first = await send(gateway.port, head + SMUGGLED)
        assert _head_and_body(first.raw)[1] == b"ok"
        second = await send(gateway.port, request("/open/y"))
        assert _head_and_body(second.raw)[1] == (b"smuggled" if reuse else b"ok")
        assert len(connections) == (1 if reuse else 2)


async def test_the_gateway_process_refuses_what_the_upstream_reshapes(idp: FakeIdP, tmp_path: Path) -> None:
    """`python -m gateway`: the same boundary in the real process, with reuse_after_body in its config file."""

    async def reshaping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.readuntil(b"\r\n\r\n"):
            if head.startswith(b"GET /open/stray "):
                writer.write(OK + STRAY)
            elif head.startswith(b"GET /open/latin1 "):
                writer.write(b"HTTP/1.1 302 Found\r\nLocation: /\xff/evil.test/login\r\nContent-Length: 0\r\n\r\n")
            elif head.startswith(b"GET /open/two-te "):
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n")

    async with raw_upstream(reshaping) as url:
        document = gateway_document(
            issuer=idp.issuer, upstream_url=url, routes=[{"path": "/open/**", "policy": "public"}]
        )
        document["upstreams"] = _upstreams(url, reuse_after_body=False)
        async with gateway_process(document, tmp_path, ENV) as (base, _):
            port = int(base.rsplit(":", 1)[1])
            stray = await send(port, request("/open/stray"))
            assert stray.statuses == [200]
            assert b"evil" not in stray.raw
            for path in ("/open/latin1", "/open/two-te", "/open/switch"):
                answer = await send(port, request(path))
                assert answer.status == 502, path
                assert b"evil" not in answer.raw
