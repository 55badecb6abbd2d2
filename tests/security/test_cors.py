"""CORS preflight: answered without a token only on routes that opt in, only when genuine."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.rules import Cors
from tests.conftest import GatewayFactory
from tests.support import FakeIdP, RecordingUpstream

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
    assert allowed is not None and allowed["Access-Control-Allow-Origin"] == "https://any.example"
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
