"""Limits: what one client may cost in header bytes, body bytes, time and connections. All configurable."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from gateway.app import GatewayRunner, build_app, handler_args
from gateway.config import Limits, parse_config
from gateway.ops.listener import CappedSite
from tests.conftest import GatewayFactory
from tests.support import ENV, RecordingUpstream, free_port, gateway_document

from .raw import WAIT, request, send

ROUTES: list[dict[str, Any]] = [
    {"path": "/small/**", "policy": "public", "max_body_bytes": 10},
    {"path": "/open/**", "policy": "public"},
]


def test_defaults_are_sane() -> None:
    limits = Limits()
    assert limits.max_token_bytes == 4096
    assert 0 < limits.max_body_bytes <= 100 * 1024 * 1024
    assert limits.max_headers <= 128
    assert limits.keepalive_timeout <= 120 and limits.body_timeout <= 60


def test_limits_reach_aiohttps_parser() -> None:
    args = handler_args(Limits(max_request_line_bytes=1000, max_header_bytes=2000, max_headers=30, keepalive_timeout=9))
    assert (args["max_line_size"], args["max_field_size"], args["max_headers"]) == (1000, 2000, 30)
    assert args["keepalive_timeout"] == 9
    assert args["lingering_time"] == 10.0  # draining an unread body after an early answer is bounded
    assert args["access_log"] is None  # aiohttp's access log would print query strings


async def test_oversized_header_is_refused(make_gateway: GatewayFactory, upstream: RecordingUpstream) -> None:
    gateway = await make_gateway(routes=ROUTES, limits={"max_header_bytes": 1024})
    assert (await send(gateway.port, request("/open/x", "X-Pad: " + "a" * 900))).status == 200
    answer = await send(gateway.port, request("/open/x", "X-Pad: " + "a" * 1100))
    assert answer.status in (400, 431)
    assert len(upstream.seen) == 1


async def test_too_many_headers_are_refused(make_gateway: GatewayFactory, upstream: RecordingUpstream) -> None:
    gateway = await make_gateway(routes=ROUTES, limits={"max_headers": 10})
    answer = await send(gateway.port, request("/open/x", *(f"X-H{i}: 1" for i in range(12))))
    assert answer.status in (400, 431)
    assert upstream.seen == []


async def test_long_request_line_is_refused(make_gateway: GatewayFactory, upstream: RecordingUpstream) -> None:
    gateway = await make_gateway(routes=ROUTES, limits={"max_request_line_bytes": 512})
    answer = await send(gateway.port, request("/open/" + "a" * 600))
    assert answer.status in (400, 414)
    assert upstream.seen == []


async def test_route_body_limit_is_413_json_before_forwarding(
    make_gateway: GatewayFactory, upstream: RecordingUpstream
) -> None:
    gateway = await make_gateway(routes=ROUTES)
    resp = await gateway.post("/small/x", data=b"x" * 11)
    assert resp.status == 413
    assert (await resp.json())["error"] == "payload_too_large"
    assert (await gateway.post("/small/x", data=b"x" * 10)).status == 200
    assert (await gateway.post("/open/x", data=b"x" * 11)).status == 200
    assert [len(s.body) for s in upstream.seen] == [10, 11]


async def test_chunked_body_over_the_limit_is_413(make_gateway: GatewayFactory, upstream: RecordingUpstream) -> None:
    gateway = await make_gateway(routes=ROUTES)

    async def chunks() -> Any:
        for _ in range(4):
            yield b"x" * 4

    resp = await gateway.post("/small/x", data=chunks())
    assert resp.status == 413
    assert (await resp.json())["error"] == "payload_too_large"
    assert upstream.seen == []  # the upstream never got a complete request


async def test_global_body_limit(make_gateway: GatewayFactory, upstream: RecordingUpstream) -> None:
    gateway = await make_gateway(routes=ROUTES, limits={"max_body_bytes": 5})
    assert (await gateway.post("/open/x", data=b"x" * 6)).status == 413
    assert (await gateway.post("/small/x", data=b"x" * 6)).status == 200  # the route's own limit wins
    assert len(upstream.seen) == 1


async def test_slow_request_head_is_cut_off(make_gateway: GatewayFactory, upstream: RecordingUpstream) -> None:
    gateway = await make_gateway(routes=ROUTES, limits={"keepalive_timeout_seconds": 0.2})
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"GET /open/x HTTP/1.1\r\nHost: g\r\nX-Slow: ")  # and never the rest
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), WAIT) == b""  # the gateway closed the connection
    writer.close()
    assert upstream.seen == []


async def test_stalled_body_is_408(
    make_gateway: GatewayFactory, upstream_url: str, upstream: RecordingUpstream
) -> None:
    gateway = await make_gateway(
        routes=ROUTES,
        limits={"body_timeout_seconds": 0.2},
        upstreams={"default": {"url": upstream_url, "read_timeout_seconds": 60}},
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"POST /open/x HTTP/1.1\r\nHost: g\r\nContent-Length: 10\r\n\r\nab")  # 8 bytes short
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), WAIT)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'"error":"request_timeout"' in answer
    assert upstream.seen == []


@pytest.mark.parametrize(
    ("limits", "problem"),
    [
        ({"max_body_bytes": -1}, "limits.max_body_bytes"),
        ({"max_headers": 0}, "limits.max_headers"),
        ({"body_timeout_seconds": 0}, "limits.body_timeout_seconds"),
        ({"max_conections": 5}, "limits.max_conections: unknown key"),
    ],
)
def test_limits_are_validated(limits: dict[str, Any], problem: str) -> None:
    from gateway.config import ConfigError

    document = {**gateway_document(issuer="https://z.example", upstream_url="http://u.example"), "limits": limits}
    with pytest.raises(ConfigError) as err:
        parse_config(document, source="t.yaml", env=ENV)
    assert any(problem in p for p in err.value.problems)


async def test_connection_cap(upstream_url: str, caplog: pytest.LogCaptureFixture) -> None:
    document = {
        **gateway_document(issuer="https://z.example", upstream_url=upstream_url, routes=ROUTES),
        "limits": {"max_connections": 2},
    }
    config = parse_config(document, source="t.yaml", env=ENV)
    runner = GatewayRunner(build_app(config))
    await runner.setup()
    port = free_port()
    await CappedSite(runner, "127.0.0.1", port, config.limits).start()
    held = []
    caplog.set_level(logging.WARNING, logger="gateway")
    try:
        for _ in range(2):
            held.append(await asyncio.open_connection("127.0.0.1", port))
        assert runner.server is not None
        while len(runner.server.connections) < 2:  # wait until both are accepted (not a timing assertion)
            await asyncio.sleep(0.01)
        refused = await send(port, request("/open/x"))
        assert refused.status == 503
        assert refused.json()["error"] == "too_many_connections"
        assert (await send(port, request("/open/x"))).status == 503
        refusals = [r for r in caplog.records if "connection(s) refused" in r.getMessage()]
        assert len(refusals) == 1  # one warning per interval, not one per refused connection
        _, writer = held.pop()
        writer.close()
        await writer.wait_closed()
        while len(runner.server.connections) > 1:
            await asyncio.sleep(0.01)
        assert (await send(port, request("/open/x"))).status == 200
    finally:
        for _, writer in held:
            writer.close()
        await runner.cleanup()  # stops the site too
