"""The forward-auth listener against real servers on 127.0.0.1: the decision core behind an ingress's question."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient, AiohttpRawServer

from gateway.app import FORWARD_AUTH, INTROSPECTOR, build_app
from gateway.config import ConfigError, parse_config
from gateway.forward.headers import IDENTITY_HEADERS
from gateway.ops.logs import FIELDS
from gateway.testing import GatewayTestServer

from .security.raw import request, send
from .support import ENV, FakeIdP, gateway_document

Client = TestClient[Any, Any]
Asker = Callable[..., Awaitable[Client]]

READER = {"Authorization": "Bearer demo-reader-token"}
NOROLES = {"Authorization": "Bearer demo-noroles-token"}


def asking(method: str, uri: str, **more: str) -> dict[str, str]:
    return {"X-Forwarded-Method": method, "X-Forwarded-Uri": uri, "X-Forwarded-Proto": "https", **more}


@pytest.fixture
def make_asker(
    idp: FakeIdP, upstream_url: str, aiohttp_client: AiohttpClient, aiohttp_raw_server: AiohttpRawServer
) -> Asker:
    """A gateway with forward-auth on; returns a client of the forward-auth listener (the proxy runs beside it)."""

    async def make(original: str = "headers", **overrides: Any) -> Client:
        document = gateway_document(issuer=idp.issuer, upstream_url=upstream_url)
        document["forward_auth"] = {"host": "127.0.0.1", "port": 9999, "original": original}
        document.update(overrides)
        config = parse_config(document, source="test.yaml", env=ENV)
        proxy: Client = await aiohttp_client(GatewayTestServer(build_app(config)))  # starts the app's sessions
        for _ in range(100):
            if proxy.app[INTROSPECTOR].ready:
                break
            await asyncio.sleep(0.02)
        server = await aiohttp_raw_server(proxy.app[FORWARD_AUTH].handler)
        client: Client = await aiohttp_client(server)
        return client

    return make


async def test_an_allowed_request_is_200_with_every_identity_header(make_asker: Asker) -> None:
    ask = await make_asker()
    resp = await ask.get("/", headers={**READER, **asking("GET", "/api/private-scoped?x=1")})
    assert resp.status == 200
    assert await resp.read() == b""
    assert resp.headers["X-Auth-Subject"] == "259242039378444290"
    assert resp.headers["X-Auth-Roles"] == "read:messages"
    assert resp.headers["X-Auth-Client-Id"] == "reader"
    for name in IDENTITY_HEADERS:
        assert name in resp.headers  # empty where absent: an ingress copying it replaces a client's copy
    assert resp.headers["X-Request-Id"]


async def test_the_listener_answers_on_any_path_in_headers_mode(make_asker: Asker) -> None:
    ask = await make_asker()
    for own in ("/", "/auth", "/api/public"):
        resp = await ask.get(own, headers=asking("GET", "/api/private"))
        assert resp.status == 401, own  # the original request decides, never the listener's own path
    resp = await ask.post("/api/private", headers=asking("GET", "/api/public"))
    assert resp.status == 200


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"X-Forwarded-Uri": "/api/public"}, 400),  # no method
        ({"X-Forwarded-Method": "GET"}, 400),  # no target
        ({}, 400),
    ],
)
async def test_both_original_headers_are_required(make_asker: Asker, headers: dict[str, str], status: int) -> None:
    ask = await make_asker()
    resp = await ask.get("/api/public", headers=headers)
    assert resp.status == status
    assert (await resp.json())["error"] == "invalid_request"


async def test_each_original_header_exactly_once(make_asker: Asker) -> None:
    ask = await make_asker()
    twice_uri = [("X-Forwarded-Method", "GET"), ("X-Forwarded-Uri", "/api/public"), ("X-Forwarded-Uri", "/x")]
    twice_method = [("X-Forwarded-Method", "GET"), ("X-Forwarded-Method", "POST"), ("X-Forwarded-Uri", "/api/public")]
    twice_host = [*asking("GET", "/api/public").items(), ("X-Forwarded-Host", "a"), ("X-Forwarded-Host", "b")]
    for headers in (twice_uri, twice_method, twice_host):
        resp = await ask.get("/", headers=headers)
        assert resp.status == 400, headers


@pytest.mark.parametrize(
    "uri",
    [
        "/api/./private",
        "/api/public/../private",
        "//api/private",
        "/api//private",
        "/api/%70rivate",  # decodes to something else than itself
        "/api/priv%61te",
        "/api/public/%2e%2e/private",
        "/api/private%2fx",
        "/api/private;x",
        "/api/private#x",
        "/API/private",
        "api/private",
        "http://evil.test/api/private",
        "*",
    ],
)
async def test_a_target_canonicalisation_would_change_is_400(make_asker: Asker, uri: str) -> None:
    ask = await make_asker()
    resp = await ask.get("/", headers={**READER, **asking("GET", uri)})
    assert resp.status == 400, uri
    assert (await resp.json())["error"] == "invalid_request"


async def test_a_canonical_target_with_a_query_that_looks_like_a_path_is_decided_on_the_path(make_asker: Asker) -> None:
    ask = await make_asker()
    resp = await ask.get("/", headers=asking("GET", "/api/public?/api/private"))
    assert resp.status == 200
    resp = await ask.get("/", headers=asking("GET", "/api/private?/api/public"))
    assert resp.status == 401


async def test_refusals_are_the_proxy_modes_answers(make_asker: Asker, idp: FakeIdP) -> None:
    ask = await make_asker()
    resp = await ask.get("/", headers=asking("GET", "/api/private"))
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="gateway"'
    assert (await resp.json())["error"] == "unauthorized"

    resp = await ask.get("/", headers={**NOROLES, **asking("GET", "/api/private-scoped")})
    assert resp.status == 403
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="gateway", error="insufficient_scope"'
    assert (await resp.json())["error"] == "insufficient_scope"

    resp = await ask.get("/", headers=asking("GET", "/nowhere"))
    assert resp.status == 404
    assert (await resp.json())["error"] == "not_found"

    resp = await ask.get("/", headers={"Authorization": "Bearer demo-expired-token", **asking("GET", "/api/private")})
    assert resp.status == 401
    assert (await resp.json())["error"] == "invalid_token"

    idp.mode = "status:500"
    resp = await ask.get("/", headers={"Authorization": "Bearer never-seen", **asking("GET", "/api/private")})
    assert resp.status == 503
    assert resp.headers["Retry-After"]
    assert (await resp.json())["error"] == "idp_unavailable"


async def test_request_mode_reads_the_request_itself_and_ignores_the_forwarded_headers(make_asker: Asker) -> None:
    ask = await make_asker("request")
    resp = await ask.get("/api/private", headers=READER)
    assert resp.status == 200
    assert resp.headers["X-Auth-Subject"] == "259242039378444290"
    resp = await ask.get("/api/private", headers=asking("GET", "/api/public"))
    assert resp.status == 401  # X-Forwarded-Uri named a public route: ignored
    resp = await ask.get("/api/public", headers={**READER, **asking("DELETE", "/api/private")})
    assert resp.status == 200
    raw = await send(ask.port, request("/api/./private", "Authorization: Bearer demo-reader-token"))
    assert raw.status == 400  # aiohttp's client would resolve the dot segment itself


async def test_an_identity_header_spelled_with_underscores_is_refused(make_asker: Asker) -> None:
    ask = await make_asker()
    resp = await ask.get("/", headers={**READER, **asking("GET", "/api/private"), "X_Auth_Subject": "admin"})
    assert resp.status == 400


async def test_an_allow_may_be_kept_no_longer_than_the_gateways_own_cache(make_asker: Asker, idp: FakeIdP) -> None:
    ask = await make_asker(cache={"ttl_seconds": 30})
    resp = await ask.get("/", headers={**READER, **asking("GET", "/api/private")})
    seconds = int(resp.headers["X-Accel-Expires"])
    assert 0 < seconds <= 30
    assert resp.headers["Cache-Control"] == f"private, max-age={seconds}"

    idp.tokens["short-lived"] = {"sub": "s", "exp": int(time.time()) + 8}
    resp = await ask.get("/", headers={"Authorization": "Bearer short-lived", **asking("GET", "/api/private")})
    assert resp.status == 200
    assert 0 < int(resp.headers["X-Accel-Expires"]) <= 8  # never past the token's exp

    resp = await ask.get("/", headers=asking("GET", "/api/public"))
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["X-Accel-Expires"] == "0"


async def test_nothing_is_kept_when_the_gateway_keeps_nothing(make_asker: Asker) -> None:
    ask = await make_asker(cache={"ttl_seconds": 0})
    resp = await ask.get("/", headers={**READER, **asking("GET", "/api/private")})
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["X-Accel-Expires"] == "0"


async def test_refusals_are_never_kept(make_asker: Asker) -> None:
    ask = await make_asker()
    resp = await ask.get("/", headers={**NOROLES, **asking("GET", "/api/private-scoped")})
    assert resp.status == 403
    assert resp.headers["Cache-Control"] == "no-store"
    assert "X-Accel-Expires" not in resp.headers


async def test_one_access_line_per_decision_in_forward_auth_mode(
    make_asker: Asker, caplog: pytest.LogCaptureFixture
) -> None:
    ask = await make_asker()
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        await ask.get("/", headers={**READER, **asking("PUT", "/api/private?q=1")})
        await ask.get("/", headers=asking("GET", "/api/private"))
    lines = [r for r in caplog.records if r.name == "gateway.access"]
    assert len(lines) == 2
    allowed, refused = (getattr(r, FIELDS) for r in lines)
    assert allowed["mode"] == "forward_auth"
    assert (allowed["method"], allowed["path"], allowed["status"], allowed["decision"]) == (
        "PUT",
        "/api/private",
        200,
        "allow",
    )
    assert allowed["subject"] == "259242039378444290"
    assert (refused["status"], refused["decision"], refused["reason"]) == (401, "deny", "no token")


def test_config_forward_auth_is_off_unless_a_port_is_given() -> None:
    base = gateway_document(issuer="http://127.0.0.1:1", upstream_url="http://127.0.0.1:2")
    assert parse_config(base, source="t.yaml", env=ENV).forward_auth is None
    empty = {**base, "forward_auth": {"host": "127.0.0.1", "port": ""}}
    assert parse_config(empty, source="t.yaml", env=ENV).forward_auth is None
    on = parse_config({**base, "forward_auth": {"port": 9092}}, source="t.yaml", env=ENV).forward_auth
    assert on is not None
    assert (on.host, on.port, on.original) == ("127.0.0.1", 9092, "headers")


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"port": 5000}, "forward_auth.port"),  # the proxy's port
        ({"port": 9091}, "forward_auth.port"),  # the admin port
        ({"port": 9092, "original": "guess"}, "forward_auth.original"),
        ({"port": 9092, "paths": "/x"}, "forward_auth.paths"),
    ],
)
def test_config_errors_name_the_key(section: dict[str, Any], key: str) -> None:
    base = gateway_document(issuer="http://127.0.0.1:1", upstream_url="http://127.0.0.1:2")
    base["admin"] = {"port": 9091}
    with pytest.raises(ConfigError) as failure:
        parse_config({**base, "forward_auth": section}, source="t.yaml", env=ENV)
    assert any(f"t.yaml: {key}" in p for p in failure.value.problems), failure.value.problems


async def test_the_client_host_is_x_forwarded_host_never_the_ingress_own(make_asker: Asker) -> None:
    ask = await make_asker()
    # nginx names the gateway by its upstream block (`zitadel_gateway`): not the client's Host, never checked.
    resp = await ask.get("/", headers={"Host": "zitadel_gateway", **asking("GET", "/api/public")})
    assert resp.status == 200
    resp = await ask.get("/", headers={**asking("GET", "/api/public"), "X-Forwarded-Host": "a,b;c"})
    assert resp.status == 400  # the client's Host, as the ingress relays it, must be a valid host[:port]
