"""CORS preflight: answered without a token only on routes that opt in, only when genuine."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import ConfigError, parse_config
from gateway.policy.rules import Cors
from tests.conftest import GatewayFactory
from tests.support import ENV, FakeIdP, RecordingUpstream, gateway_document

ORIGIN = "https://app.example"
ROUTES: list[dict[str, Any]] = [
    {
        "path": "/api/private",
        "policy": "authenticated",
        "methods": ["GET", "POST"],
        "cors": {"allowed_origins": [ORIGIN], "allowed_headers": ["Authorization", "Content-Type"]},
    },
    {"path": "/echo/**", "policy": "authenticated"},  # no CORS opt-in
]
PREFLIGHT = {"Origin": ORIGIN, "Access-Control-Request-Method": "GET"}


async def test_genuine_preflight_is_answered_without_a_token(
    make_gateway: GatewayFactory, idp: FakeIdP, upstream: RecordingUpstream
) -> None:
    gateway = await make_gateway(routes=ROUTES)
    resp = await gateway.options(
        "/api/private", headers={**PREFLIGHT, "Access-Control-Request-Headers": "authorization, content-type"}
    )
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert resp.headers["Access-Control-Allow-Methods"] == "GET, POST"
    assert resp.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
    assert resp.headers["Vary"] == "Origin"
    assert idp.introspections == 0 and upstream.seen == []


@pytest.mark.parametrize(
    "headers",
    [
        {**PREFLIGHT, "Origin": "https://evil.example"},
        {**PREFLIGHT, "Origin": "https://app.example.evil.example"},
        {**PREFLIGHT, "Access-Control-Request-Method": "DELETE"},
        {**PREFLIGHT, "Access-Control-Request-Headers": "authorization, x-auth-subject"},
    ],
)
async def test_preflight_outside_the_allowed_set_is_403(
    make_gateway: GatewayFactory, upstream: RecordingUpstream, headers: dict[str, str]
) -> None:
    gateway = await make_gateway(routes=ROUTES)
    resp = await gateway.options("/api/private", headers=headers)
    # DELETE is not a method of the route at all: no route, so it is handled as a plain OPTIONS (404 here).
    assert resp.status in (403, 404)
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert upstream.seen == []


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/api/private", {"Origin": ORIGIN}),  # no Access-Control-Request-Method: not a preflight
        ("/api/private", {"Access-Control-Request-Method": "GET"}),  # no Origin: not a preflight
        ("/echo/x", PREFLIGHT),  # the route did not opt in
    ],
)
async def test_any_other_options_is_authenticated(
    make_gateway: GatewayFactory, idp: FakeIdP, upstream: RecordingUpstream, path: str, headers: dict[str, str]
) -> None:
    gateway = await make_gateway(routes=[*ROUTES, {"path": "/api/private", "policy": "authenticated"}])
    resp = await gateway.options(path, headers=headers)
    assert resp.status == 401
    assert upstream.seen == []
    resp = await gateway.options(path, headers={**headers, "Authorization": "Bearer demo-reader-token"})
    assert resp.status == 200
    assert [s.method for s in upstream.seen] == ["OPTIONS"]


def test_cors_policy_is_pure() -> None:
    cors = Cors(frozenset({"*"}), frozenset({"GET"}), frozenset({"authorization"}), 60)
    allowed = cors.preflight("https://any.example", "GET", "Authorization")
    assert allowed is not None and allowed["Access-Control-Allow-Origin"] == "*"
    assert cors.preflight("null", "GET", "") is None
    assert cors.preflight("https://any.example", "POST", "") is None
    assert cors.preflight("https://any.example", "GET", "cookie") is None


@pytest.mark.parametrize(
    ("headers", "status"),
    [({"Authorization": "Bearer demo-reader-token"}, 200), ({}, 401)],
)
async def test_actual_requests_from_an_allowed_origin_carry_allow_origin(
    make_gateway: GatewayFactory, headers: dict[str, str], status: int
) -> None:
    gateway = await make_gateway(routes=ROUTES)
    resp = await gateway.get("/api/private", headers={**headers, "Origin": ORIGIN})
    assert resp.status == status
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Origin" in resp.headers.getall("Vary")


@pytest.mark.parametrize(("path", "origin"), [("/api/private", "https://evil.example"), ("/echo/x", ORIGIN)])
async def test_no_allow_origin_for_other_origins_or_routes(
    make_gateway: GatewayFactory, path: str, origin: str
) -> None:
    gateway = await make_gateway(routes=ROUTES)
    resp = await gateway.get(path, headers={"Authorization": "Bearer demo-reader-token", "Origin": origin})
    assert resp.status == 200
    assert "Access-Control-Allow-Origin" not in resp.headers


# The gateway owns the CORS headers on a route with `cors:`; the upstream (tests/support.py /open/cors) echoes any
# Origin with credentials, as a careless framework default does.
OWNED_ROUTES: list[dict[str, Any]] = [
    {"path": "/open/cors", "policy": "public", "cors": {"allowed_origins": [ORIGIN], "expose_headers": ["X-Upstream"]}},
]
STAR_ROUTES: list[dict[str, Any]] = [{"path": "/open/cors", "policy": "public", "cors": {"allowed_origins": ["*"]}}]


def _access_control(headers: Any) -> dict[str, list[str]]:
    names = {name.lower() for name in headers if name.lower().startswith("access-control-")}
    return {name: headers.getall(name) for name in sorted(names)}


@pytest.mark.parametrize("stream", ["", "1"])
@pytest.mark.parametrize("origin", ["https://evil.example", "null", None])
async def test_the_upstreams_cors_headers_never_pass_for_an_origin_the_route_refuses(
    make_gateway: GatewayFactory, stream: str, origin: str | None
) -> None:
    gateway = await make_gateway(routes=OWNED_ROUTES)
    resp = await gateway.get(f"/open/cors?stream={stream}", headers={"Origin": origin} if origin else {})
    assert resp.status == 200 and await resp.read() == b"cors"
    assert _access_control(resp.headers) == {}


@pytest.mark.parametrize("stream", ["", "1"])
async def test_an_allowed_origin_gets_the_routes_cors_headers_only(make_gateway: GatewayFactory, stream: str) -> None:
    gateway = await make_gateway(routes=OWNED_ROUTES)
    resp = await gateway.get(f"/open/cors?stream={stream}", headers={"Origin": ORIGIN})
    assert _access_control(resp.headers) == {
        "access-control-allow-origin": [ORIGIN],
        "access-control-expose-headers": ["X-Upstream"],
    }
    assert "Origin" in resp.headers.getall("Vary")


@pytest.mark.parametrize("origin", ["https://any.example", "http://localhost:3000"])
async def test_star_is_answered_as_star_without_credentials(make_gateway: GatewayFactory, origin: str) -> None:
    gateway = await make_gateway(routes=STAR_ROUTES)
    resp = await gateway.get("/open/cors", headers={"Origin": origin})
    assert _access_control(resp.headers) == {"access-control-allow-origin": ["*"]}
    resp = await gateway.options("/open/cors", headers={"Origin": origin, "Access-Control-Request-Method": "GET"})
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in resp.headers


async def test_star_never_allows_the_null_origin(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(routes=STAR_ROUTES)
    resp = await gateway.get("/open/cors", headers={"Origin": "null"})
    assert _access_control(resp.headers) == {}
    resp = await gateway.options("/open/cors", headers={"Origin": "null", "Access-Control-Request-Method": "GET"})
    assert resp.status == 403
    assert _access_control(resp.headers) == {}


async def test_credentials_only_where_the_route_allows_them(make_gateway: GatewayFactory) -> None:
    routes = [
        {"path": "/open/cors", "policy": "public", "cors": {"allowed_origins": [ORIGIN], "allow_credentials": True}}
    ]
    gateway = await make_gateway(routes=routes)
    resp = await gateway.get("/open/cors", headers={"Origin": ORIGIN})
    assert _access_control(resp.headers) == {
        "access-control-allow-credentials": ["true"],
        "access-control-allow-origin": [ORIGIN],
    }
    resp = await gateway.options("/open/cors", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"})
    assert resp.headers["Access-Control-Allow-Credentials"] == "true"


def test_star_with_credentials_is_a_config_error() -> None:
    document = gateway_document(
        issuer="https://idp.example",
        upstream_url="http://127.0.0.1:1",
        routes=[{"path": "/a", "policy": "public", "cors": {"allowed_origins": ["*"], "allow_credentials": True}}],
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(document, source="c.yaml", env=ENV)
    assert caught.value.problems == [
        "c.yaml: routes[0].cors.allow_credentials: cannot be combined with allowed_origins '*'"
    ]
