"""The gateway→upstream hop against upstreams that misbehave: raw servers that send exact bytes.

A malicious or broken upstream must not make the gateway buffer without bound, relay content that is not the
answer's, present a truncated answer as complete, or starve the other upstreams of connections.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import logging
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from gateway.forward.upstream import UpstreamClient, UpstreamError
from gateway.forward.upstream.connection import Connection
from tests.conftest import GatewayFactory

from .raw import WAIT, raw_upstream, request, send, until_closed


def _upstream(url: str) -> dict[str, Any]:
    return {"default": {"url": url, "connect_timeout_seconds": 2, "read_timeout_seconds": 2}}


async def _answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A keep-alive upstream answering every request with a small 200."""
    while await reader.readuntil(b"\r\n\r\n"):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


@pytest.mark.parametrize(
    "start",
    [b"HTTP/1.1 200 OK\r\nX-Endless: ", b"HTTP/1.1 200 ", b"HTTP/1.1 200 OK\r\nX-Endless"],
    ids=["header-value", "reason", "header-name"],
)
async def test_an_endless_head_line_is_refused_not_buffered(make_gateway: GatewayFactory, start: bytes) -> None:
    # httptools keeps a header line until it ends: without a bound of ours, the gateway would take in all that
    # comes for the whole read timeout (then answer 504), copying the growing line at every read.
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(start)
        for _ in range(128):  # 8 MiB at most, then wait: the server stops by itself
            writer.write(b"a" * 65536)
            await writer.drain()
        await until_closed(reader)

    async with raw_upstream(endless) as url:
        gateway = await make_gateway(upstreams=_upstream(url))
        response = await gateway.get("/open/x")
        assert response.status == 502  # cut off as malformed, not waited out as a timeout


async def test_an_endless_trailer_line_is_refused_not_buffered(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # Trailers are header lines too, after a chunked body: the same bound, not the read timeout, ends them.
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-Endless: ")
        for _ in range(128):
            writer.write(b"a" * 65536)
            await writer.drain()
        await until_closed(reader)

    async with raw_upstream(endless) as url:
        gateway = await make_gateway(upstreams=_upstream(url))
        with caplog.at_level(logging.WARNING, logger="gateway.proxy"):
            response = await gateway.get("/open/x")
            assert response.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await asyncio.wait_for(response.read(), WAIT)
        assert "streamed body interrupted: UpstreamError" in caplog.messages  # not TimeoutError


@pytest.mark.parametrize(
    "interim",
    [b"HTTP/1.1 199 Odd\r\nContent-Length: 5\r\n\r\nHELLO", b"HTTP/1.1 099 X\r\n\r\nHELLO"],
    ids=["199-with-content", "below-100"],
)
async def test_content_in_an_interim_answer_never_reaches_the_client(
    make_gateway: GatewayFactory, interim: bytes
) -> None:
    # llhttp reads a body for 1xx codes other than 100-103 (and for codes below 100); a 1xx has none (RFC 9110
    # §15.2), so such an answer is malformed. Taken as the start of the final answer's body, it went to the client
    # after a head saying `Content-Length: 2`: bytes the client would read as its next answer (response splitting).
    async def odd(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(interim + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
        await until_closed(reader)

    async with raw_upstream(odd) as url:
        gateway = await make_gateway(upstreams=_upstream(url))
        response = await gateway.get("/open/x")
        body = await response.read()
        assert b"HE" not in body
        assert response.status == 502


async def test_idle_connections_to_one_upstream_do_not_starve_another() -> None:
    # The pool's limit counts idle connections too; aiohttp's counted only those in use. A burst to one upstream
    # must not leave the others waiting until those idle connections expire.
    client = UpstreamClient(limit=1, keepalive=300.0)
    try:
        async with raw_upstream(_answer_ok) as first, raw_upstream(_answer_ok) as second:
            for url in (first, second, first):
                answer = await client.send(url, "GET", "/", {}, body=None, connect_timeout=5.0, read_timeout=WAIT)
                try:
                    assert (answer.status, await answer.read()) == (200, b"ok")
                finally:
                    answer.release()
    finally:
        await client.close()


async def test_at_the_limit_a_waiting_request_gets_the_connection_another_returns() -> None:
    # At the limit, a request waits for a connection; one that goes back to the pool must reach it, or every
    # request past the limit waits out its connect timeout (504) while connections sit idle.
    client = UpstreamClient(limit=1, keepalive=300.0)
    try:
        async with raw_upstream(_answer_ok) as url:

            async def get() -> bytes:
                answer = await client.send(url, "GET", "/", {}, body=None, connect_timeout=5.0, read_timeout=WAIT)
                try:
                    return await answer.read()
                finally:
                    answer.release()

            first = await client.send(url, "GET", "/", {}, body=None, connect_timeout=5.0, read_timeout=WAIT)
            cancelled, waiting = asyncio.create_task(get()), asyncio.create_task(get())
            await asyncio.sleep(0)  # both find no idle connection and no free slot
            assert await first.read() == b"ok"
            first.release()  # wakes the first in line...
            cancelled.cancel()  # ...which goes away before it runs: the wake-up must reach the next
            assert await waiting == b"ok"
            assert cancelled.cancelled()
            assert client.open_connections == 1
    finally:
        await client.close()


@pytest.mark.parametrize(("method", "sent"), [("POST", True), ("DELETE", True), ("GET", False)])
async def test_a_request_without_body_carries_a_zero_length_as_before(
    make_gateway: GatewayFactory, method: str, sent: bool
) -> None:
    # aiohttp's client sent `Content-Length: 0` for a method that may carry content; servers that require a length
    # on a POST (411 Length Required) must keep working.
    heads: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    async with raw_upstream(record) as url:
        gateway = await make_gateway(upstreams=_upstream(url))
        answer = await send(gateway.port, request("/open/x", method=method))  # neither length nor body
        assert answer.status == 200
        assert (b"\r\nContent-Length: 0\r\n" in heads[0]) is sent
        assert b"Transfer-Encoding" not in heads[0]


def _inflating_body(smuggled: bytes) -> bytes:
    """A gzip body whose inflated form holds `smuggled` right where its compressed length ends."""
    pad = 0
    for _ in range(50):
        body = gzip.compress(b"a" * pad + smuggled, mtime=0)
        if len(body) == pad:
            return body
        pad = len(body)
    raise AssertionError("no fixed point")


@pytest.mark.parametrize("inflated", ["longer", "shorter"])
async def test_an_encoded_body_goes_upstream_as_sent(make_gateway: GatewayFactory, inflated: str) -> None:
    # Inflated by aiohttp's server, a `Content-Encoding: gzip` body no longer matched the client's Content-Length,
    # which is forwarded: sent whole, the inflated bytes past that length reached the upstream as a second request,
    # unauthenticated, with identity headers of the attacker's choosing. The gateway never decodes a body now.
    smuggled = b"GET /api/private HTTP/1.1\r\nHost: x\r\nX-Auth-Subject: admin\r\n\r\n"
    body = _inflating_body(smuggled) if inflated == "longer" else gzip.compress(b"tiny", mtime=0)
    received: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.readuntil(b"\r\n\r\n"))
        try:
            received.append(await reader.readexactly(len(body)))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            while extra := await reader.read(65536):  # anything past the body: the next request
                received.append(extra)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            if isinstance(exc, asyncio.IncompleteReadError):
                received.append(exc.partial)

    async with raw_upstream(record) as url:
        gateway = await make_gateway(upstreams=_upstream(url))
        headers = (f"Content-Length: {len(body)}", "Content-Encoding: gzip")
        answer = await send(gateway.port, request("/open/x", *headers, method="POST", body=body))
        assert answer.status == 200
    assert b"content-encoding: gzip" in received[0].lower()
    assert received[1:] == [body]  # the compressed bytes, exactly, and nothing after them


@pytest.mark.parametrize("sent", [b"abcdefgh" + b"GET /x HTTP/1.1\r\n\r\n", b"abc"], ids=["longer", "shorter"])
async def test_a_body_never_strays_from_its_content_length(sent: bytes) -> None:
    # Whatever hands the body over (a server that inflates it, a bug of ours), the bytes on the wire are the length
    # the head announced, or the connection is closed: never a second request, never a body the upstream waits on.
    received: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.readuntil(b"\r\n\r\n"))
        while data := await reader.read(65536):
            received.append(data)

    async def pieces() -> AsyncIterator[bytes]:
        yield sent[:2]
        yield sent[2:]

    client = UpstreamClient()
    try:
        async with raw_upstream(record) as url:
            with pytest.raises(UpstreamError):
                await client.send(
                    url, "POST", "/x", {"Content-Length": "8"}, body=pieces(), connect_timeout=2, read_timeout=2
                )
    finally:
        await client.close()
    assert len(b"".join(received[1:])) <= 8
    assert b"GET /x" not in b"".join(received)


async def test_a_connect_cancelled_as_it_completes_frees_its_slot_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Cancelled (a connect timeout, a client gone) after the connection was made but before create_connection
    # returned: asyncio closes the transport, so connection_lost frees the slot, and so did _acquire. Counted twice,
    # the limit would drift upwards for good.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    made = Connection.connection_made

    def made_then_cancelled(connection: Connection, transport: asyncio.BaseTransport) -> None:
        made(connection, transport)
        connecting.cancel()  # runs as a callback of the loop, before create_connection returns

    monkeypatch.setattr(Connection, "connection_made", made_then_cancelled)
    client = UpstreamClient(limit=1, keepalive=300.0)
    try:
        async with raw_upstream(silent) as url:
            connecting = asyncio.create_task(
                client.send(url, "GET", "/", {}, body=None, connect_timeout=5.0, read_timeout=WAIT)
            )
            with pytest.raises(asyncio.CancelledError):
                await connecting
            for _ in range(10):  # let connection_lost run
                await asyncio.sleep(0)
            assert client.open_connections == 0
    finally:
        await client.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset rather than a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def test_a_reset_in_a_body_without_length_is_not_its_end(make_gateway: GatewayFactory) -> None:
    # A body without length ends where the connection does (RFC 9112 §6.3), when the upstream closes it; a reset
    # is a failure, and the client must see the answer cut, not complete.
    relayed = asyncio.Event()

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npartial")
        await writer.drain()
        await relayed.wait()
        _reset(writer)

    async with raw_upstream(cut) as url:
        gateway = await make_gateway(upstreams=_upstream(url))
        response = await gateway.get("/open/x")
        assert response.status == 200
        assert await response.content.readexactly(7) == b"partial"
        relayed.set()
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(response.read(), WAIT)


async def test_a_body_without_length_is_not_complete_when_the_gateway_cuts_the_upload(
    make_gateway: GatewayFactory,
) -> None:
    # The upstream answers while the upload is in progress; the client then exceeds the body limit, so the gateway
    # closes the upstream connection: what was relayed so far must not be presented as the whole answer.
    relayed = asyncio.Event()

    async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npartial")
        await until_closed(reader)

    async def upload() -> AsyncIterator[bytes]:
        yield b"x" * 10
        await relayed.wait()
        yield b"y" * 1000  # past the route's limit

    async with raw_upstream(early) as url:
        routes = [{"path": "/open/**", "policy": "public", "max_body_bytes": 100}]
        gateway = await make_gateway(routes, upstreams=_upstream(url))
        response = await gateway.post("/open/x", data=upload())
        assert response.status == 200
        assert await response.content.readexactly(7) == b"partial"
        relayed.set()
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(response.read(), WAIT)


async def test_an_upstream_that_stops_taking_the_body_is_a_timeout(make_gateway: GatewayFactory) -> None:
    # The upstream neither reads the upload nor answers: the write stalls past the read timeout, a 504 (the client
    # may retry), not a 502.
    answered = asyncio.Event()

    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        # Never reads the body: the stream pauses its socket once its buffer is full.
        await answered.wait()

    async with raw_upstream(deaf) as url:
        routes = [{"path": "/open/**", "policy": "public", "max_body_bytes": 64 * 1024 * 1024}]
        gateway = await make_gateway(routes, upstreams=_upstream(url))
        try:
            upload = io.BytesIO(b"x" * (48 * 1024 * 1024))  # past every socket buffer
            response = await gateway.post("/open/x", data=upload)
        finally:
            answered.set()
        assert response.status == 504
