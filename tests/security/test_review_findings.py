"""Defects found by the security review of the forward-auth, WebSocket, JWT and identity round, each reproduced
through real servers: `python -m gateway`, real nginx and Caddy with the shipped recipes, a recording upstream."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import yaml
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient, AiohttpServer

from bench.recipes import render
from demo_backend.idp import DEMO_TOKENS
from gateway.app import build_app
from gateway.config import parse_config
from gateway.testing import GatewayTestServer

from ..conftest import GatewayFactory
from ..ingress import ingress
from ..signing_idp import PROJECT_ID, SigningIdP
from ..support import ENV, FakeIdP, RecordingUpstream, free_port, gateway_document, gateway_process
from ..websocket.servers import WebSocketUpstream
from .raw import raw_upstream, request, send

READER = "Authorization: Bearer demo-reader-token"
ROUTES: list[dict[str, Any]] = [
    {"path": "/api/public", "policy": "public"},
    {"path": "/api/private", "policy": "authenticated"},
    {"path": "/api/private-scoped", "roles": {"any_of": ["read:messages"]}},
    {"path": "/items/**", "methods": ["POST"], "policy": "authenticated"},
    {"path": "/cors/**", "policy": "authenticated", "cors": {"allowed_origins": ["https://app.example"]}},
]


@contextlib.asynccontextmanager
async def stack(
    kind: str, idp: FakeIdP, upstream_url: str, tmp_path: Path, routes: list[dict[str, Any]], **top: Any
) -> AsyncIterator[tuple[int, int]]:
    """The gateway as a process with its forward-auth listener, and `kind` (nginx, caddy) from the shipped recipe
    in front of `upstream_url`; yields (ingress port, the gateway's proxy port)."""
    document = gateway_document(
        issuer=idp.issuer,
        upstream_url=upstream_url,
        routes=routes,
        introspection_endpoint=idp.issuer + "/oauth/v2/introspect",
    )
    decisions = free_port()
    document["forward_auth"] = {"host": "127.0.0.1", "port": decisions, "original": "headers"}
    document.update(top)
    backend = int(upstream_url.rsplit(":", 1)[1])
    async with gateway_process(document, tmp_path, ENV) as (url, _):
        async with ingress(kind, tmp_path, gateway=decisions, backend=backend) as port:
            yield port, int(url.rsplit(":", 1)[1])


def _names(headers: list[tuple[str, str]]) -> set[str]:
    return {name.lower() for name, _ in headers}


# The headers the proxy mode drops because a backend framework would act on them (docs/security.md, "Headers,
# exactly"): another method than the one the rules matched, another path than the one authorised.
OVERRIDES = [
    ("POST", "/items/x", "X-HTTP-Method-Override: DELETE"),
    ("POST", "/items/x", "X-HTTP-Method: DELETE"),
    ("POST", "/items/x", "X-Method-Override: DELETE"),
    ("GET", "/api/public", "X-Original-URL: /api/private-scoped"),
    ("GET", "/api/public", "X-Rewrite-URL: /api/private-scoped"),
]


@pytest.mark.parametrize("kind", ["nginx", "caddy"])
async def test_forward_auth_lets_method_override_and_url_rewrite_headers_reach_the_backend(
    kind: str, idp: FakeIdP, upstream: RecordingUpstream, upstream_url: str, tmp_path: Path
) -> None:
    """A client sends `POST /items/x` (a route that allows POST only) with `X-HTTP-Method-Override: DELETE`, or
    `GET /api/public` with `X-Original-URL: /api/private-scoped`. The proxy mode drops these headers, so the backend
    acts on the method and path that were decided. Forward-auth allows the request as it stands and the ingress
    relays the header: the backend (Express method-override, Symfony, Laminas, IIS) acts on DELETE, or on the
    private path, which the rules never allowed. Forward-auth cannot strip a header, so it must refuse (400), as it
    refuses `_` spellings of identity headers."""
    async with stack(kind, idp, upstream_url, tmp_path, ROUTES) as (port, proxy):
        for method, target, header in OVERRIDES:
            name = header.partition(":")[0].lower()
            headers = (READER, header, "Content-Length: 0") if method == "POST" else (READER, header)
            before = len(upstream.seen)
            through_proxy = await send(proxy, request(target, *headers, method=method))
            assert through_proxy.status == 200
            assert name not in _names(upstream.seen[-1].headers)  # the proxy mode: dropped
            before = len(upstream.seen)
            answer = await send(port, request(target, *headers, method=method))
            await asyncio.sleep(0.05)
            reached = [name in _names(seen.headers) for seen in upstream.seen[before:]]
            assert True not in reached, (kind, method, target, header, answer.status)


@pytest.mark.parametrize("kind", ["nginx", "caddy"])
async def test_forward_auth_allows_a_non_canonical_preflight_target_to_reach_the_backend(
    kind: str, idp: FakeIdP, upstream: RecordingUpstream, upstream_url: str, tmp_path: Path
) -> None:
    """Forward-auth refuses any target that canonicalisation would change, "so the path the backend receives is
    exactly the path that was authorised". The CORS preflight branch of the decision core returns before that check
    (and before the `_method` check): `OPTIONS /api/private/../../cors/x` with an allowed Origin is decided as the
    preflight of `/cors/x` and allowed without a token, and the ingress hands the backend the raw target, which
    names `/api/private` (a backend that does not resolve dot segments, such as an Express prefix router, dispatches
    it there, unauthenticated). It must be 400, as the same target is without the preflight headers."""
    preflight = ("Origin: https://app.example", "Access-Control-Request-Method: GET")
    targets = ["/api/private/../../cors/x", "/cors//x", "/cors/x/%2e%2e/y", "/cors/x?_method=DELETE"]
    async with stack(kind, idp, upstream_url, tmp_path, ROUTES) as (port, _):
        for target in targets:
            before = len(upstream.seen)
            answer = await send(port, request(target, *preflight, method="OPTIONS"))
            await asyncio.sleep(0.05)
            reached = [seen.raw_path for seen in upstream.seen[before:]]
            assert reached == [], (kind, target, answer.status)
            assert answer.status == 400, (kind, target)


WS_ROUTES: list[dict[str, Any]] = [
    {"path": "/plain/**", "policy": "authenticated"},
    {"path": "/live/**", "policy": "authenticated", "websocket": True},
]


@contextlib.asynccontextmanager
async def ws_stack(
    idp: FakeIdP, aiohttp_server: AiohttpServer, tmp_path: Path
) -> AsyncIterator[tuple[WebSocketUpstream, str, str]]:
    upstream = WebSocketUpstream()
    server = await aiohttp_server(upstream.build_app())
    top = {"cache": {"ttl_seconds": 1}, "websocket": {"recheck_seconds": 1}}
    async with stack("caddy", idp, str(server.make_url("")).rstrip("/"), tmp_path, WS_ROUTES, **top) as (port, proxy):
        yield upstream, f"ws://127.0.0.1:{port}", f"ws://127.0.0.1:{proxy}"


async def test_forward_auth_through_caddy_opens_a_websocket_on_a_route_without_websocket_true(
    idp: FakeIdP, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    """A route without `websocket: true` takes no WebSocket: through the proxy the upgrade is refused. Through Caddy
    with the shipped recipe, forward-auth answers the upgrade's GET with 200 and Caddy relays the upgrade: the client
    gets a socket to the backend that no recheck, `exp`, size or idle bound ever touches."""
    async with ws_stack(idp, aiohttp_server, tmp_path) as (upstream, caddy, proxy), aiohttp.ClientSession() as client:
        auth = {"Authorization": "Bearer demo-reader-token"}
        with pytest.raises(aiohttp.WSServerHandshakeError):
            async with client.ws_connect(proxy + "/plain/ws/echo", headers=auth):
                pass
        opened = upstream.open
        with pytest.raises(aiohttp.WSServerHandshakeError):
            async with client.ws_connect(caddy + "/plain/ws/echo", headers=auth) as ws:
                await ws.send_str("hello")
                assert (await ws.receive(timeout=5)).data == "hello"
        assert upstream.open == opened


async def test_forward_auth_websocket_outlives_the_revocation_of_its_token(
    idp: FakeIdP, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    """The README promises that the gateway ends a socket whose token is revoked (within the cache TTL plus the
    recheck interval: 1 s + 1 s here). Through the proxy it does (1008). Through Caddy with the forward-auth recipe,
    the socket is allowed at the upgrade and then never looked at again: it still relays messages long after the
    token was revoked in ZITADEL. Forward-auth should refuse upgrades it cannot police, or the README should say it
    cannot."""
    async with ws_stack(idp, aiohttp_server, tmp_path) as (_, caddy, proxy), aiohttp.ClientSession() as client:
        token = "review-token-proxy"
        idp.tokens[token] = dict(DEMO_TOKENS["demo-reader-token"] or {})
        async with client.ws_connect(proxy + "/live/ws/echo", headers={"Authorization": f"Bearer {token}"}) as ws:
            await ws.send_str("before")
            assert (await ws.receive(timeout=5)).data == "before"
            idp.tokens[token] = None  # revoked in ZITADEL
            await asyncio.sleep(4)  # well past cache TTL + recheck interval
            with contextlib.suppress(ConnectionResetError):
                await ws.send_str("after")
            message = await ws.receive(timeout=5)
            assert message.type is not aiohttp.WSMsgType.TEXT, message.data
            assert ws.close_code == 1008
        # Behind an ingress nobody would police the socket's life: forward-auth refuses the upgrade itself.
        idp.tokens["review-token-caddy"] = dict(DEMO_TOKENS["demo-reader-token"] or {})
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            async with client.ws_connect(
                caddy + "/live/ws/echo", headers={"Authorization": "Bearer review-token-caddy"}
            ):
                pass
        assert refused.value.status == 400


async def test_the_cached_recipe_keeps_a_jwt_allow_past_cache_ttl_and_past_a_reload(
    aiohttp_server: AiohttpServer, upstream_url: str, tmp_path: Path
) -> None:
    """README: an allow's `X-Accel-Expires` is "never more than `cache.ttl_seconds`", and "a config reload reaches
    cached allows within N too". With `idp.access_tokens: jwt` the verified-token cache has no TTL, so the allow
    says what is left of the token's `exp` (an hour here, with `ttl_seconds: 2`). An operator who tightens a route
    (now `roles: [admin]`) gets 403 through the proxy at once, while nginx's cached recipe keeps serving the old
    allow to the same token for the rest of the hour."""
    port = free_port()
    signing = SigningIdP(issuer=f"http://127.0.0.1:{port}")
    await aiohttp_server(signing.build_app(), port=port)
    routes: list[dict[str, Any]] = [{"path": "/api/private", "policy": "authenticated"}]
    document = gateway_document(
        issuer=signing.issuer, upstream_url=upstream_url, routes=routes, access_tokens="jwt", project_id=PROJECT_ID
    )
    decisions = free_port()
    document["forward_auth"] = {"host": "127.0.0.1", "port": decisions}
    document["cache"] = {"ttl_seconds": 2}
    document["reload"] = {"poll_seconds": 0.2}
    token = signing.sign(lifetime=3600)
    auth = f"Authorization: Bearer {token}"
    backend = int(upstream_url.rsplit(":", 1)[1])
    async with gateway_process(document, tmp_path, ENV) as (url, _):
        proxy = int(url.rsplit(":", 1)[1])
        asked = await send(decisions, request("/", auth, "X-Forwarded-Method: GET", "X-Forwarded-Uri: /api/private"))
        assert asked.status == 200
        head = asked.raw.partition(b"\r\n\r\n")[0].decode().lower()
        keep = next(int(line.split(": ")[1]) for line in head.splitlines() if line.startswith("x-accel-expires: "))
        async with ingress("nginx-cached", tmp_path, gateway=decisions, backend=backend) as nginx:
            assert (await send(nginx, request("/api/private", auth))).status == 200
            config = tmp_path / f"gateway-{proxy}.yaml"
            tightened = yaml.safe_load(config.read_text())
            tightened["routes"] = [{"path": "/api/private", "roles": {"any_of": ["admin"]}}]
            config.write_text(yaml.safe_dump(tightened))
            await asyncio.sleep(4)  # the reload (0.2 s poll) and the 2 s TTL have both passed
            assert (await send(proxy, request("/api/private", auth))).status == 403
            through_nginx = (await send(nginx, request("/api/private", auth))).status
    assert (through_nginx, keep <= 2) == (403, True), f"X-Accel-Expires {keep} with ttl_seconds 2"


OVERRIDE_ROUTES: list[dict[str, Any]] = [
    {"path": "/api/public", "policy": "public"},
    {"path": "/items/**", "methods": ["POST"], "policy": "authenticated"},
]
FORM = "Content-Type: application/x-www-form-urlencoded"


@pytest.mark.parametrize(
    ("target", "body"),
    [
        ("/items/x?%20_method=DELETE", b""),
        ("/items/x?+_method=DELETE", b""),
        ("/items/x", b"+_method=DELETE"),
        ("/items/x", b"%20%20_method=DELETE"),
    ],
)
async def test_a_method_override_behind_a_leading_space_reaches_the_upstream(
    make_gateway: GatewayFactory, upstream: RecordingUpstream, target: str, body: bytes
) -> None:
    """`_method` is refused "as PHP reads them" (`.method`, `%5Fmethod`, `_method[]`), but PHP also drops leading
    spaces from a parameter name (php-src main/php_variables.c, php_register_variable_ex: "ignore leading spaces in
    the variable name"), so `+_method=DELETE` (or `%20_method`) in the query or a form body is `_method=DELETE` to
    Laravel and Symfony. The gateway relays it on a route that allows POST only, and the backend runs a DELETE."""
    gateway = await make_gateway(OVERRIDE_ROUTES)
    before = len(upstream.seen)
    headers = (READER, FORM, f"Content-Length: {len(body)}")
    answer = await send(gateway.port, request(target, *headers, method="POST", body=body))
    assert upstream.seen[before:] == [], answer.status
    assert answer.status == 400


@pytest.mark.parametrize("field", ["access.token", "+access_token", "access%20token", "access[token"])
async def test_a_query_token_spelled_as_php_reads_it_is_not_removed_on_a_public_route(
    make_gateway: GatewayFactory, upstream: RecordingUpstream, field: str
) -> None:
    """On a public route every `access_token` query parameter is removed, so that an upstream is never handed a
    credential nobody checked. PHP reads `access.token`, `+access_token`, `access token` and `access[token` as
    `access_token` (the same folding the `_method` check already knows); the gateway relays them untouched."""
    gateway = await make_gateway(OVERRIDE_ROUTES)
    answer = await send(gateway.port, request(f"/api/public?{field}=forged.jwt.value"))
    assert answer.status == 200
    assert "forged" not in upstream.last.raw_path, upstream.last.raw_path


@pytest.mark.parametrize("path", ["/live/ws/echo", "/pub/ws/echo"])
async def test_a_forged_mapped_identity_header_reaches_a_websocket_upstream(
    idp: FakeIdP, aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, path: str
) -> None:
    """`identity.headers` names are removed from every client request "on every route, by the same normalised
    comparison" as `X-Auth-*`, so a backend can believe `X-User-Email`. A plain request has it removed; a WebSocket
    upgrade does not: the client's own `X-User-Email: forged` arrives at the upstream's WebSocket handler (on an
    authenticated route whose token has no `email` claim, and on a public route), where the backend takes it for the
    gateway's."""
    upstream = WebSocketUpstream()
    server = await aiohttp_server(upstream.build_app())
    routes = [
        {"path": "/live/**", "policy": "authenticated", "websocket": True},
        {"path": "/pub/**", "policy": "public", "websocket": True},
    ]
    document = gateway_document(
        issuer=idp.issuer,
        upstream_url=str(server.make_url("")).rstrip("/"),
        routes=routes,
        introspection_endpoint=idp.issuer + "/oauth/v2/introspect",
    )
    document["identity"] = {"headers": {"X-User-Email": "email"}}
    client: TestClient[Any, Any] = await aiohttp_client(
        GatewayTestServer(build_app(parse_config(document, source="t.yaml", env=ENV)))
    )
    headers = {"Authorization": "Bearer demo-reader-token", "X-User-Email": "forged@evil.example"}
    async with client.ws_connect(path, headers=headers) as ws:
        await ws.send_str("hi")
        assert (await ws.receive(timeout=5)).data == "hi"
    seen = dict((name.lower(), value) for name, value in upstream.seen[-1].headers)
    assert seen.get("x-user-email") != "forged@evil.example", path


async def test_a_websocket_upgrade_carries_no_identity_assertion(
    idp: FakeIdP, aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient
) -> None:
    """With `identity.assertion` on, "every allowed request carries a JWT signed by the gateway", and the upgrade is
    forwarded with "the identity and forwarded headers of a plain request". An allowed upgrade reaches the upstream
    without `X-Auth-Assertion`, so a backend that verifies the assertion (as README's ten lines do) must refuse
    every WebSocket, or fall back to the unsigned headers the assertion exists to replace."""
    upstream = WebSocketUpstream()
    server = await aiohttp_server(upstream.build_app())
    routes = [{"path": "/live/**", "policy": "authenticated", "websocket": True}]
    document = gateway_document(
        issuer=idp.issuer,
        upstream_url=str(server.make_url("")).rstrip("/"),
        routes=routes,
        introspection_endpoint=idp.issuer + "/oauth/v2/introspect",
    )
    document["identity"] = {"assertion": {"issuer": "zitadel-gateway"}}
    client: TestClient[Any, Any] = await aiohttp_client(
        GatewayTestServer(build_app(parse_config(document, source="t.yaml", env=ENV)))
    )
    async with client.ws_connect("/live/ws/echo", headers={"Authorization": "Bearer demo-reader-token"}) as ws:
        await ws.send_str("hi")
        assert (await ws.receive(timeout=5)).data == "hi"
    names = {name.lower() for name, _ in upstream.seen[-1].headers}
    assert "x-auth-assertion" in names


async def test_an_upgrade_allowed_on_a_public_route_through_caddy_tunnels_unchecked_requests(
    idp: FakeIdP, tmp_path: Path
) -> None:
    """h2c smuggling through the Caddy recipe. An anonymous client sends `GET /api/public` with `Upgrade: h2c`;
    forward-auth decides only the public GET (200), Caddy relays the upgrade, and once the backend switches
    protocols the connection is a tunnel that neither Caddy nor the gateway reads again: every request the client
    then writes (`GET /api/private-scoped`, which needs a role) reaches the backend without a token or a decision.
    The proxy mode never relays an `Upgrade` outside a `websocket: true` route; forward-auth should refuse one."""
    heads: list[bytes] = []

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A backend that accepts an h2c upgrade; after the switch it reads what the client sends (HTTP/1.1 framing
        # stands in for HTTP/2 frames here: either way, nobody in front of it checks what it reads).
        head = await reader.readuntil(b"\r\n\r\n")
        heads.append(head.split(b"\r\n")[0])
        if b"upgrade: h2c" in head.lower():
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                heads.append(head.split(b"\r\n")[0])
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecret")
                await writer.drain()
        writer.close()

    routes: list[dict[str, Any]] = [
        {"path": "/api/public", "policy": "public"},
        {"path": "/api/private-scoped", "roles": {"any_of": ["read:messages"]}},
    ]
    async with raw_upstream(backend) as url, stack("caddy", idp, url, tmp_path, routes) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                b"GET /api/public HTTP/1.1\r\nHost: gateway.test\r\nUpgrade: h2c\r\n"
                b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n"
            )
            await writer.drain()
            first = await asyncio.wait_for(reader.read(4096), 10)
            if first.startswith(b"HTTP/1.1 101"):
                writer.write(b"GET /api/private-scoped HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
                await writer.drain()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(reader.read(4096), 5)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    assert b"GET /api/private-scoped HTTP/1.1" not in heads, heads


async def test_the_cached_recipe_hands_the_backend_an_expired_assertion(
    idp: FakeIdP, upstream: RecordingUpstream, upstream_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The allow answer carries the signed assertion, and the README tells nginx users to copy it like the five
    `X-Auth-*`. nginx's cached recipe keeps the whole answer for `X-Accel-Expires`, which follows the token's cache
    entry (60 s here) and not the assertion's `exp` (2 s here), so for most of that time every request reaches the
    backend with an assertion that has already expired: a backend that verifies it (README's ten lines) answers 401
    to a user the gateway allowed. An allow that carries an assertion may be kept no longer than the assertion."""

    def with_assertion(recipe: str, **ports: int) -> str:
        text = render(recipe, **ports)
        pair = (
            "auth_request_set $zg_assertion $upstream_http_x_auth_assertion;\n"
            "        proxy_set_header X-Auth-Assertion $zg_assertion;\n"
            "        auth_request_set $zg_subject"
        )
        return text.replace("auth_request_set $zg_subject", pair, 1)

    monkeypatch.setattr("tests.ingress.render", with_assertion)
    top = {"cache": {"ttl_seconds": 60}, "identity": {"assertion": {"issuer": "gw", "lifetime_seconds": 2}}}
    async with stack("nginx-cached", idp, upstream_url, tmp_path, ROUTES, **top) as (port, _):
        received: list[tuple[float, dict[str, Any]]] = []
        for _ in range(2):
            answer = await send(port, request("/api/private", READER))
            assert answer.status == 200
            token = dict((n.lower(), v) for n, v in upstream.last.headers)["x-auth-assertion"]
            received.append((time.time(), jwt.decode(token, options={"verify_signature": False})))
            await asyncio.sleep(3.5)
    for at, claims in received:
        assert claims["exp"] > at, f"the backend got an assertion {at - claims['exp']:.1f} s past its exp"
