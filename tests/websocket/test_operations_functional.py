"""Flow control, server-sent events, the access log and metrics, and a client that goes away."""

from __future__ import annotations

import asyncio

import pytest

from gateway.app import METRICS

from .helpers import READER, UPGRADE, WAIT, Factory, until, url
from .servers import WebSocketUpstream


async def test_a_slow_reader_holds_the_sender_back(make_gateway: Factory, upstream: WebSocketUpstream) -> None:
    gateway = await make_gateway()
    count, size = 256, 512 * 1024  # 128 MiB offered; the client reads nothing at first
    async with gateway.session.ws_connect(url(gateway, f"/ws/flood?n={count}&size={size}"), headers=READER) as ws:
        stable = 0
        while stable < 5:  # until the upstream cannot hand over any more
            seen = upstream.flood_sent
            await asyncio.sleep(0.2)
            stable = stable + 1 if upstream.flood_sent == seen else 0
        assert not upstream.flood_done.is_set()
        assert upstream.flood_sent < 64 * 1024 * 1024  # socket buffers on two hops, not the whole stream
        received = 0
        async with asyncio.timeout(WAIT):
            while received < count:
                assert len(await ws.receive_bytes()) == size
                received += 1
    assert upstream.flood_sent == count * size


async def test_server_sent_events_reach_the_client_before_the_upstream_finishes(
    make_gateway: Factory, upstream: WebSocketUpstream
) -> None:
    gateway = await make_gateway()
    async with gateway.get("/sse", headers=READER) as answer:
        assert answer.headers["Content-Type"] == "text/event-stream"
        async with asyncio.timeout(WAIT):  # buffered until the end, this would never come
            first = await answer.content.readuntil(b"\n\n")
        assert first == b"data: first\n\n"
        assert not upstream.sse_finished
        upstream.sse_release.set()
        assert await answer.content.read() == b"data: second\n\n"


async def test_the_access_log_and_metrics_follow_each_socket(
    make_gateway: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = await make_gateway()
    registry = gateway.app[METRICS].registry
    async with gateway.session.ws_connect(url(gateway, "/ws/echo"), headers=READER) as ws:
        assert registry.get_sample_value("gateway_websockets_open", {"route": "ws"}) == 1
        for text in ("ab", "cde"):
            await ws.send_str(text)
            assert await ws.receive_str() == text
    await until(lambda: registry.get_sample_value("gateway_websockets_open", {"route": "ws"}) == 0)
    assert registry.get_sample_value("gateway_websocket_closes_total", {"reason": "client"}) == 1
    lines = [r.fields for r in caplog.records if r.name == "gateway.access"]  # type: ignore[attr-defined]
    upgrade, close = [line for line in lines if line["path"] == "/ws/echo"]
    assert (upgrade["status"], upgrade["mode"], upgrade["decision"]) == (101, "websocket", "allow")
    assert upgrade["token"] == close["token"] != "-"
    assert close["event"] == "close" and close["close_reason"] == "client" and close["close_code"] == 1000
    counts = [close[f"{what}_from_{side}"] for side in ("client", "upstream") for what in ("messages", "bytes")]
    assert counts == [2, 5, 2, 5]
    assert close["duration_ms"] > 0


async def test_a_client_that_goes_away_closes_the_upstream_side(
    make_gateway: Factory, upstream: WebSocketUpstream
) -> None:
    gateway = await make_gateway()
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(UPGRADE.format(target="/ws/echo").encode())
    async with asyncio.timeout(WAIT):
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101 ")
    await until(lambda: upstream.open == 1)
    writer.transport.abort()  # no close frame: the connection just goes
    await until(lambda: len(upstream.closes) == 1)
    assert upstream.closes[0][1] == 1001
