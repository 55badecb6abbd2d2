"""WebSockets through the gateway, against a real aiohttp WebSocket upstream and a real client: the upgrade is
decided like any GET, messages and closes are relayed both ways, and the socket ends when its token does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient, AiohttpServer
from yarl import URL

from demo_backend.idp import DEMO_TOKENS
from gateway.app import INTROSPECTOR, METRICS, RELOADER, build_app
from gateway.config import parse_config
from gateway.reload import ConfigSource
from gateway.testing import GatewayTestServer

from .security.raw import send
from .support import ENV, FakeIdP, gateway_document
from .ws_support import WebSocketUpstream

Client = TestClient[Any, Any]
WAIT = 30.0  # a bound against hanging, never a timing assertion
READER = {"Authorization": "Bearer demo-reader-token"}
NOROLES = {"Authorization": "Bearer demo-noroles-token"}
ROUTES: list[dict[str, Any]] = [
    {"id": "ws", "path": "/ws/**", "policy": "authenticated", "websocket": True},
    {"id": "ws-scoped", "path": "/scoped/ws/**", "roles": {"any_of": ["read:messages"]}, "websocket": True},
    {"id": "ws-query", "path": "/feed/ws/**", "policy": "authenticated", "websocket": True, "allow_query_token": True},
    {
        "id": "ws-cors",
        "path": "/app/ws/**",
        "policy": "authenticated",
        "websocket": True,
        "cors": {"allowed_origins": ["https://app.example"]},
    },
    {"id": "plain", "path": "/plain/**", "policy": "authenticated"},
    {"id": "sse", "path": "/sse", "policy": "authenticated"},
]


@pytest.fixture
async def ws_upstream(aiohttp_server: AiohttpServer) -> tuple[WebSocketUpstream, TestServer]:
    upstream = WebSocketUpstream()
    return upstream, await aiohttp_server(upstream.build_app())


@pytest.fixture
def upstream(ws_upstream: tuple[WebSocketUpstream, TestServer]) -> WebSocketUpstream:
    return ws_upstream[0]


Factory = Callable[..., Awaitable[Client]]


@pytest.fixture
def make_gateway(
    idp: FakeIdP, ws_upstream: tuple[WebSocketUpstream, TestServer], aiohttp_client: AiohttpClient
) -> Factory:
    """The gateway in front of the WebSocket upstream; `websocket` and other top-level sections as given."""

    async def make(routes: list[dict[str, Any]] | None = None, **top: Any) -> Client:
        url = str(ws_upstream[1].make_url("")).rstrip("/")
        document = gateway_document(issuer=idp.issuer, upstream_url=url, routes=routes or ROUTES)
        for key, value in top.items():
            document[key] = {**document.get(key, {}), **value} if isinstance(value, dict) else value
        config = parse_config(document, source="test.yaml", env=ENV)
        client: Client = await aiohttp_client(GatewayTestServer(build_app(config)))
        for _ in range(200):
            if client.app[INTROSPECTOR].ready:
                break
            await asyncio.sleep(0.02)
        return client

    return make


def url(client: Client, target: str) -> URL:
    """The gateway's URL for `target`, exactly as written (nothing re-quoted or normalised)."""
    return URL(f"http://127.0.0.1:{client.port}{target}", encoded=True)


async def closed(ws: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
    """Read until the close arrives (data pushed before it is skipped); the close frame itself."""
    async with asyncio.timeout(WAIT):
        while True:
            message = await ws.receive()
            if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR):
                return message


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        while not condition():
            await asyncio.sleep(0.01)


def header(upgrade: Any, name: str) -> list[str]:
    return [v for k, v in upgrade.headers if k.lower() == name.lower()]


# ---------------------------------------------------------------------------------------------------------------
# The upgrade: decided like any GET


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


# ---------------------------------------------------------------------------------------------------------------
# Lifetime


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


# ---------------------------------------------------------------------------------------------------------------
# Flow, streams, operations


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


UPGRADE = (
    "GET {target} HTTP/1.1\r\nHost: gateway.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    "Authorization: Bearer demo-reader-token\r\n\r\n"
)
SMUGGLED = b"GET /ws/smuggled HTTP/1.1\r\nHost: gateway.test\r\n\r\n"


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
