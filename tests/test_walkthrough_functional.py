"""The seed example's walk-through, through the gateway, against real servers on 127.0.0.1."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from demo_backend.app import PRIVATE, PRIVATE_SCOPED, PUBLIC

from .conftest import GatewayFactory
from .support import FakeIdP

Client = TestClient[Any, Any]


async def test_public_route_needs_no_token(gateway: Client) -> None:
    resp = await gateway.get("/api/public")
    assert resp.status == 200
    assert await resp.read() == PUBLIC


async def test_private_route_without_token_is_401_with_challenge(gateway: Client) -> None:
    resp = await gateway.get("/api/private")
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="gateway"'
    assert (await resp.json())["error"] == "unauthorized"


async def test_private_route_with_pat(gateway: Client) -> None:
    resp = await gateway.get("/api/private", headers={"authorization": "Bearer demo-reader-token"})
    assert resp.status == 200
    assert await resp.read() == PRIVATE


async def test_private_scoped_with_role(gateway: Client) -> None:
    resp = await gateway.get("/api/private-scoped", headers={"authorization": "Bearer demo-reader-token"})
    assert resp.status == 200
    assert await resp.read() == PRIVATE_SCOPED


async def test_private_scoped_without_role_is_403(gateway: Client) -> None:
    resp = await gateway.get("/api/private-scoped", headers={"authorization": "Bearer demo-noroles-token"})
    assert resp.status == 403
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="gateway", error="insufficient_scope"'
    assert await resp.json() == {
        "error": "insufficient_scope",
        "error_description": "this route requires the role read:messages",
    }


async def test_role_removed_in_zitadel_takes_effect(make_gateway: GatewayFactory, idp: FakeIdP) -> None:
    """The seed's last step: remove the role from the service user, try again.

    The introspection cache's TTL is the revocation delay; with positive caching off it takes effect at once.
    """
    gateway = await make_gateway(cache={"ttl_seconds": 0})
    headers = {"authorization": "Bearer demo-reader-token"}
    assert (await gateway.get("/api/private-scoped", headers=headers)).status == 200
    claims = idp.tokens["demo-reader-token"]
    assert claims is not None
    idp.tokens["demo-reader-token"] = {
        k: v for k, v in claims.items() if not k.startswith("urn:zitadel:iam:org:project")
    }
    assert (await gateway.get("/api/private-scoped", headers=headers)).status == 403


async def test_inactive_token_is_401_invalid_token(gateway: Client) -> None:
    resp = await gateway.get("/api/private", headers={"authorization": "Bearer demo-expired-token"})
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="gateway", error="invalid_token"'
    body = await resp.text()
    assert "demo-expired-token" not in body
    assert (await resp.json())["error"] == "invalid_token"


async def test_unknown_token_is_401(gateway: Client) -> None:
    resp = await gateway.get("/api/private", headers={"authorization": "Bearer nope"})
    assert resp.status == 401


async def test_unlisted_path_is_404_json(gateway: Client) -> None:
    resp = await gateway.get("/api/admin", headers={"authorization": "Bearer demo-reader-token"})
    assert resp.status == 404
    assert (await resp.json())["error"] == "not_found"


async def test_identity_headers_reach_the_upstream(gateway: Client) -> None:
    resp = await gateway.get("/api/whoami", headers={"authorization": "Bearer demo-reader-token"})
    assert await resp.json() == {
        "X-Auth-Client-Id": "reader",
        "X-Auth-Org-Id": "170086305978381234",
        "X-Auth-Roles": "read:messages",
        "X-Auth-Subject": "259242039378444290",
        "X-Auth-Username": "reader",
    }


async def test_client_basic_auth_is_form_encoded_and_request_is_rfc7662(gateway: Client, idp: FakeIdP) -> None:
    # The stand-in only answers when id and secret were form-urlencoded before base64 ('@' and '!').
    resp = await gateway.get("/api/private", headers={"authorization": "Bearer demo-reader-token"})
    assert resp.status == 200
    assert idp.seen_forms[-1] == {"token": "demo-reader-token", "token_type_hint": "access_token"}
