"""How long a relayed WebSocket lives: exp, rechecks (revocation, roles, reload, an unreachable IdP), idle time,
message size and maximum lifetime."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import yaml
from aiohttp import WSMsgType
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpClient

from demo_backend.idp import DEMO_TOKENS
from gateway.app import INTROSPECTOR, RELOADER, build_app
from gateway.ops.reload import ConfigSource
from gateway.testing import GatewayTestServer

from ..support import ENV, FakeIdP, gateway_document
from .helpers import READER, Client, Factory, closed, until, url
from .servers import WebSocketUpstream


def short_lived(idp: FakeIdP, token: str, seconds: float) -> None:
    claims = DEMO_TOKENS[token]
    assert claims is not None
    idp.tokens[token] = {**claims, "exp": int(time.time() + seconds)}


async def test_the_socket_closes_1008_when_the_token_expires(
    make_gateway: Factory, idp: FakeIdP, upstream: WebSocketUpstream
) -> None:
    short_lived(idp, "demo-reader-token", 2)
    gateway = await make_gateway(websocket={"recheck_seconds": 3600, "idle_timeout_seconds": 3600})
    async with gateway.session.ws_connect(url(gateway, "/ws/echo"), headers=READER) as ws:
        message = await closed(ws)
        assert (message.type, message.data) == (WSMsgType.CLOSE, 1008)
    await until(lambda: len(upstream.closes) == 1)
    assert upstream.closes[0][1] == 1008


async def test_a_revoked_token_ends_the_socket_at_the_next_recheck(
    make_gateway: Factory, idp: FakeIdP, upstream: WebSocketUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = await make_gateway(websocket={"recheck_seconds": 0.2}, cache={"ttl_seconds": 0.1})
    async with gateway.session.ws_connect(url(gateway, "/ws/echo"), headers=READER) as ws:
        await ws.send_str("still here")
        assert await ws.receive_str() == "still here"
        idp.tokens["demo-reader-token"] = None  # revoked in ZITADEL
        message = await closed(ws)
        assert (message.type, message.data) == (WSMsgType.CLOSE, 1008)
    await until(lambda: len(upstream.closes) == 1)
    assert upstream.closes[0][1] == 1008
    close = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "close"]
    assert [r.fields["close_reason"] for r in close] == ["revoked"]  # type: ignore[attr-defined]


async def test_a_removed_role_ends_the_socket_at_the_next_recheck(make_gateway: Factory, idp: FakeIdP) -> None:
    gateway = await make_gateway(websocket={"recheck_seconds": 0.2}, cache={"ttl_seconds": 0})
    async with gateway.session.ws_connect(url(gateway, "/scoped/ws/echo"), headers=READER) as ws:
        idp.tokens["demo-reader-token"] = DEMO_TOKENS["demo-noroles-token"]
        message = await closed(ws)
        assert (message.type, message.data) == (WSMsgType.CLOSE, 1008)


async def test_an_unreachable_idp_is_tolerated_for_two_rechecks_and_closes_at_the_third(
    make_gateway: Factory, idp: FakeIdP
) -> None:
    gateway = await make_gateway(
        websocket={"recheck_seconds": 0.2}, cache={"ttl_seconds": 0}, idp={"breaker_failures": 0}
    )
    async with gateway.session.ws_connect(url(gateway, "/ws/echo"), headers=READER) as ws:
        for _ in range(2):  # two outages of two failed rechecks each, with a good one between: never closed
            idp.mode = "status:500"
            failed = idp.introspections
            await until(lambda: idp.introspections >= failed + 2)  # noqa: B023
            idp.mode = "ok"
            good = idp.introspections
            await until(lambda: idp.introspections >= good + 1)  # noqa: B023
        await ws.send_str("still open")
        assert await ws.receive_str() == "still open"
        idp.mode = "status:500"
        message = await closed(ws)
        assert (message.type, message.data) == (WSMsgType.CLOSE, 1013)


async def test_idle_sockets_close_1001_and_pings_do_not_keep_them(make_gateway: Factory) -> None:
    gateway = await make_gateway(websocket={"idle_timeout_seconds": 1})
    async with gateway.session.ws_connect(url(gateway, "/ws/echo"), headers=READER) as ws:
        started = time.monotonic()
        while time.monotonic() - started < 2:  # data keeps it open past twice the idle timeout
            await ws.send_str("data")
            assert await ws.receive_str() == "data"
            await asyncio.sleep(0.1)

        async def pinging() -> None:
            while True:
                await ws.ping(b"p")
                await asyncio.sleep(0.1)

        pings = asyncio.create_task(pinging())
        try:
            message = await closed(ws)
        finally:
            pings.cancel()
        assert (message.type, message.data) == (WSMsgType.CLOSE, 1001)


async def test_a_message_over_the_limit_closes_both_sides_1009(
    make_gateway: Factory, upstream: WebSocketUpstream
) -> None:
    gateway = await make_gateway(websocket={"max_message_bytes": 1000})
    async with gateway.session.ws_connect(url(gateway, "/ws/echo"), headers=READER) as ws:
        await ws.send_bytes(b"x" * 1000)
        assert len(await ws.receive_bytes()) == 1000
        await ws.send_bytes(b"x" * 1001)
        message = await closed(ws)
        assert (message.type, message.data) == (WSMsgType.CLOSE, 1009)
    await until(lambda: len(upstream.closes) == 1)
    assert upstream.closes[0][1] == 1009
    async with gateway.session.ws_connect(url(gateway, "/ws/echo"), headers=READER) as ws:
        await ws.send_str("push:1:1001")  # too big from the upstream's side
        message = await closed(ws)
        assert (message.type, message.data) == (WSMsgType.CLOSE, 1009)


async def test_max_lifetime_bounds_a_socket(make_gateway: Factory) -> None:
    gateway = await make_gateway(websocket={"max_lifetime_seconds": 0.5})
    async with gateway.session.ws_connect(url(gateway, "/ws/echo"), headers=READER) as ws:
        message = await closed(ws)
        assert (message.type, message.data) == (WSMsgType.CLOSE, 1008)


async def test_a_reload_ends_sockets_whose_route_no_longer_takes_them(
    tmp_path: Path, idp: FakeIdP, ws_upstream: tuple[WebSocketUpstream, TestServer], aiohttp_client: AiohttpClient
) -> None:
    path = tmp_path / "gateway.yaml"
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in ENV.items()))
    upstream_url = str(ws_upstream[1].make_url("")).rstrip("/")

    def write(websocket: bool) -> None:
        routes = [{"id": "ws", "path": "/ws/**", "policy": "authenticated", "websocket": websocket}]
        document = gateway_document(issuer=idp.issuer, upstream_url=upstream_url, routes=routes)
        document.update(reload={"watch": False}, websocket={"recheck_seconds": 0.2})
        path.write_text(yaml.safe_dump(document))

    write(True)
    source = ConfigSource(path)
    gateway: Client = await aiohttp_client(GatewayTestServer(build_app(source.load(), source=source)))
    await until(lambda: gateway.app[INTROSPECTOR].ready)
    async with gateway.session.ws_connect(url(gateway, "/ws/echo"), headers=READER) as ws:
        await ws.send_str("before")
        assert await ws.receive_str() == "before"
        write(False)
        assert await gateway.app[RELOADER].reload()
        message = await closed(ws)
        assert (message.type, message.data) == (WSMsgType.CLOSE, 1008)
