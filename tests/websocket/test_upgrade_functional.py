"""The upgrade, decided like any GET, and what is relayed: messages, pings, closes, subprotocols; refusals,
the Origin check and an upgrade the upstream refuses."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import WSMsgType

from demo_backend.idp import DEMO_TOKENS

from ..security.raw import send
from ..support import FakeIdP
from .helpers import NOROLES, READER, SMUGGLED, UPGRADE, WAIT, Factory, closed, header, until, url
from .servers import WebSocketUpstream


async def test_messages_go_both_ways_with_the_canonical_path_and_identity(
    make_gateway: Factory, upstream: WebSocketUpstream
) -> None:
    gateway = await make_gateway()
    target = "/ws/./x/../%65cho?a=%2F&b=1"
    forged = {**READER, "X-Auth-Subject": "admin", "X-Forwarded-For": "10.0.0.1"}
    # The client asks for compression: that is between it and the gateway, never passed on to the upstream.
    async with gateway.session.ws_connect(url(gateway, target), headers=forged, compress=15) as ws:
        await ws.send_str("hello")
        assert await ws.receive_str() == "hello"
        await ws.send_bytes(b"\x00\x01")
        assert await ws.receive_bytes() == b"\x00\x01"
        big = bytes(range(256)) * 800  # 200 KiB: far more than a request head may be
        await ws.send_bytes(big)
        assert await ws.receive_bytes() == big
        await ws.send_str("push:3:70000")
        assert [len(await ws.receive_bytes()) for _ in range(3)] == [70000] * 3
    upgrade = upstream.seen[-1]
    assert upgrade.raw_path == "/ws/echo?a=%2F&b=1"
    assert header(upgrade, "X-Auth-Subject") == [DEMO_TOKENS["demo-reader-token"]["sub"]]  # type: ignore[index]
    assert header(upgrade, "X-Forwarded-For") == ["127.0.0.1"]
    assert header(upgrade, "Authorization") == ["Bearer demo-reader-token"]
    assert len(header(upgrade, "X-Request-Id")) == 1
    assert header(upgrade, "Sec-WebSocket-Extensions") == []
    assert header(upgrade, "Upgrade") == ["websocket"] and len(header(upgrade, "Sec-WebSocket-Key")) == 1


async def test_refusals_are_the_usual_answers_without_an_upgrade(
    make_gateway: Factory, upstream: WebSocketUpstream
) -> None:
    gateway = await make_gateway()
    cases = [("/ws/echo", {}, 401), ("/scoped/ws/echo", NOROLES, 403), ("/ws/%2e%2e/%2e%2e/x", READER, 400)]
    for target, headers, status in cases:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await gateway.session.ws_connect(url(gateway, target), headers=headers)
        assert refused.value.status == status, target
    async with gateway.get("/ws/echo", headers={"Upgrade": "websocket", "Connection": "Upgrade"}) as answer:
        assert answer.status == 401
        assert (await answer.json())["error"] == "unauthorized"
    assert upstream.seen == []


async def test_subprotocols_are_offered_upstream_and_its_choice_comes_back(
    make_gateway: Factory, upstream: WebSocketUpstream
) -> None:
    gateway = await make_gateway()
    async with gateway.session.ws_connect(
        url(gateway, "/ws/echo"), headers=READER, protocols=("chat.v1", "chat.v2")
    ) as ws:
        assert ws.protocol == "chat.v2"
    offered = header(upstream.seen[-1], "Sec-WebSocket-Protocol")
    assert [p.strip() for v in offered for p in v.split(",")] == ["chat.v1", "chat.v2"]
    async with gateway.session.ws_connect(url(gateway, "/ws/echo"), headers=READER, protocols=("other",)) as ws:
        assert ws.protocol is None


async def test_pings_and_pongs_go_across_both_ways(make_gateway: Factory) -> None:
    gateway = await make_gateway()
    async with gateway.session.ws_connect(url(gateway, "/ws/echo"), headers=READER, autoping=False) as ws:
        await ws.ping(b"from-client")
        pong = await ws.receive(timeout=WAIT)
        assert (pong.type, pong.data) == (WSMsgType.PONG, b"from-client")  # the upstream's pong: we answer none
        await ws.send_str("ping:from-upstream")
        ping = await ws.receive(timeout=WAIT)
        assert (ping.type, ping.data) == (WSMsgType.PING, b"from-upstream")


async def test_closes_go_across_with_their_code_and_reason(make_gateway: Factory, upstream: WebSocketUpstream) -> None:
    gateway = await make_gateway()
    ws = await gateway.session.ws_connect(url(gateway, "/ws/echo"), headers=READER)
    await ws.close(code=4000, message=b"bye")
    assert ws.close_code == 4000
    await until(lambda: len(upstream.closes) == 1)
    assert upstream.closes == [("/ws/echo", 4000, "bye")]  # the client's own code and reason
    async with gateway.session.ws_connect(url(gateway, "/ws/echo"), headers=READER) as ws:
        await ws.send_str("close:4001:done")
        message = await closed(ws)
        assert (message.type, message.data, message.extra) == (WSMsgType.CLOSE, 4001, "done")


async def test_a_query_token_is_taken_out_of_the_upstream_url(
    make_gateway: Factory, upstream: WebSocketUpstream
) -> None:
    gateway = await make_gateway()
    async with gateway.session.ws_connect(url(gateway, "/feed/ws/echo?access_token=demo-reader-token&x=1")) as ws:
        await ws.send_str("hi")
        assert await ws.receive_str() == "hi"
    assert upstream.seen[-1].raw_path == "/feed/ws/echo?x=1"
    assert header(upstream.seen[-1], "Authorization") == ["Bearer demo-reader-token"]
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:  # only where the route opts in
        await gateway.session.ws_connect(url(gateway, "/ws/echo?access_token=demo-reader-token"))
    assert refused.value.status == 401


async def test_an_upgrade_on_a_route_without_websocket_is_plain_http(
    make_gateway: Factory, upstream: WebSocketUpstream
) -> None:
    gateway = await make_gateway()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await gateway.session.ws_connect(url(gateway, "/plain/x"), headers=READER)
    assert refused.value.status == 200
    assert refused.value.headers is not None and refused.value.headers.get("Connection") == "close"
    assert [u.raw_path for u in upstream.seen] == ["/plain/x"]
    assert header(upstream.seen[-1], "Upgrade") == []


async def test_the_origin_must_be_one_the_routes_cors_allows(make_gateway: Factory, idp: FakeIdP) -> None:
    gateway = await make_gateway()
    before = idp.introspections
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await gateway.session.ws_connect(url(gateway, "/app/ws/echo"), headers=READER, origin="https://evil.example")
    assert refused.value.status == 403
    assert idp.introspections == before  # refused before any IdP call
    for origin in ("https://app.example", None):  # an allowed origin, and a client that is not a browser
        async with gateway.session.ws_connect(url(gateway, "/app/ws/echo"), headers=READER, origin=origin) as ws:
            await ws.send_str("ok")
            assert await ws.receive_str() == "ok"
    # Routes without `cors:` take any Origin: a page cannot send the bearer token it does not have.
    async with gateway.session.ws_connect(url(gateway, "/ws/echo"), headers=READER, origin="https://x.example"):
        pass


async def test_an_upgrade_the_upstream_refuses_is_relayed_and_closes_the_connection(
    make_gateway: Factory, upstream: WebSocketUpstream
) -> None:
    gateway = await make_gateway()
    answer = await send(gateway.port, UPGRADE.format(target="/ws/refuse").encode() + SMUGGLED)
    assert answer.statuses == [403]  # the upstream's answer, once; then the connection closed
    assert answer.json() == {"error": "upstream_says_no"}
    assert b"\r\nX-Upstream: refused\r\n" in answer.raw
    assert b"\r\nConnection: close\r\n" in answer.raw
    assert [u.raw_path for u in upstream.seen] == ["/ws/refuse"]  # the smuggled request never arrived


async def test_cross_site_websocket_hijacking_is_refused_on_cors_routes(
    make_gateway: Factory, upstream: WebSocketUpstream
) -> None:
    gateway = await make_gateway()
    head = UPGRADE.format(target="/app/ws/echo").replace("\r\n\r\n", "\r\nOrigin: https://evil.example\r\n\r\n")
    answer = await send(gateway.port, head.encode() + SMUGGLED)
    assert answer.statuses == [403]
    assert answer.json()["error"] == "cors_rejected"
    assert upstream.seen == []
