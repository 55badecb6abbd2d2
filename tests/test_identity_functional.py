"""Claims to headers through real servers: what the upstream receives, what a client cannot forge, what an
ingress is told to copy."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient, AiohttpRawServer

from gateway.app import FORWARD_AUTH, INTROSPECTOR, RUNTIME, build_app
from gateway.config import parse_config
from gateway.testing import GatewayTestServer
from tests.conftest import GatewayFactory
from tests.support import ENV, FakeIdP, RecordingUpstream, gateway_document

from .security.raw import request, send

ORG_ID = "urn:zitadel:iam:user:resourceowner:id"
METADATA = "urn:zitadel:iam:user:metadata"
TOKEN = "demo-reader-token"  # the demo IdP's answer for it gets the claims below too
IDENTITY = {
    "headers": {
        "X-User-Email": "email",
        "X-User-Org": ORG_ID,
        "X-User-Department": {"claim": [METADATA, "department"], "decode": "base64"},
        "X-User-Groups": "groups",
    }
}
# Every spelling a server behind the gateway may read as one of the mapped names (case, `_` for `-`).
FORGED = (
    "X-User-Email: forged@evil",
    "x-user-email: forged@evil",
    "X-USER-EMAIL: forged@evil",
    "X_User_Email: forged@evil",
    "x_user-email: forged@evil",
    "X-User_Email: forged@evil",
    "x-user-org: 1",
    "X_USER_DEPARTMENT: boss",
    "x-user-groups: admins",
)


@pytest.fixture(autouse=True)
def claims(idp: FakeIdP) -> None:
    reader = dict(idp.tokens[TOKEN] or {})
    reader.update(
        {
            "email": "reader@example.com",
            METADATA: {"department": base64.b64encode(b"sales").decode()},
            "groups": ["a", "b"],
        }
    )
    idp.tokens[TOKEN] = reader


def _mapped(upstream: RecordingUpstream) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in upstream.last.headers:
        norm = name.lower().replace("_", "-")
        if norm.startswith("x-user-"):
            out.setdefault(norm, []).append(value)
    return out


async def test_mapped_claims_reach_the_upstream(make_gateway: GatewayFactory, upstream: RecordingUpstream) -> None:
    gateway = await make_gateway(identity=IDENTITY)
    resp = await gateway.get("/api/whoami", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 200
    assert _mapped(upstream) == {
        "x-user-email": ["reader@example.com"],
        "x-user-org": ["170086305978381234"],
        "x-user-department": ["sales"],
        "x-user-groups": ["a,b"],
    }


@pytest.mark.parametrize("target", ["/api/whoami", "/open/x", "/none"])
async def test_forged_copies_never_arrive_under_any_spelling(
    make_gateway: GatewayFactory, upstream: RecordingUpstream, target: str
) -> None:
    routes = [
        {"path": "/api/whoami", "policy": "authenticated"},
        {"path": "/open/**", "policy": "public"},
        {"path": "/none", "policy": "authenticated", "identity_headers": False},
    ]
    gateway = await make_gateway(routes, identity=IDENTITY)
    answer = await send(gateway.port, request(target, f"Authorization: Bearer {TOKEN}", *FORGED))
    assert answer.status == 200
    seen = _mapped(upstream)
    if target == "/api/whoami":
        assert seen["x-user-email"] == ["reader@example.com"]
        assert seen["x-user-groups"] == ["a,b"]
        assert len(seen) == 4
    else:
        assert seen == {}  # a public route, and a route that turned mappings off: none at all


async def test_a_route_adds_its_own_mapping(make_gateway: GatewayFactory, upstream: RecordingUpstream) -> None:
    routes = [{"path": "/api/whoami", "policy": "authenticated", "identity_headers": {"X-User-Name": "username"}}]
    gateway = await make_gateway(routes, identity=IDENTITY)
    resp = await gateway.get("/api/whoami", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 200
    assert _mapped(upstream)["x-user-name"] == ["reader"]
    assert _mapped(upstream)["x-user-email"] == ["reader@example.com"]


async def test_forward_auth_sends_every_mapped_name_and_refuses_underscore_copies(
    idp: FakeIdP, upstream_url: str, aiohttp_client: AiohttpClient, aiohttp_raw_server: AiohttpRawServer
) -> None:
    document: dict[str, Any] = gateway_document(issuer=idp.issuer, upstream_url=upstream_url)
    document["forward_auth"] = {"host": "127.0.0.1", "port": 9999}
    document["identity"] = {**IDENTITY, "assertion": {"issuer": "gateway.test"}}  # one process: a generated key
    config = parse_config(document, source="test.yaml", env=ENV)
    proxy: TestClient[Any, Any] = await aiohttp_client(GatewayTestServer(build_app(config)))
    for _ in range(100):
        if proxy.app[INTROSPECTOR].ready:
            break
        await asyncio.sleep(0.02)
    ask: TestClient[Any, Any] = await aiohttp_client(await aiohttp_raw_server(proxy.app[FORWARD_AUTH].handler))
    asking = {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/api/private", "X-Forwarded-Proto": "https"}
    resp = await ask.get("/", headers={"Authorization": f"Bearer {TOKEN}", **asking})
    assert resp.status == 200
    assert resp.headers["X-User-Email"] == "reader@example.com"
    assert resp.headers["X-User-Department"] == "sales"
    signer = proxy.app[RUNTIME].current.signer
    assert signer is not None
    claims = jwt.decode(
        resp.headers["X-Auth-Assertion"], jwt.PyJWK(signer.keys[0].public_jwk), algorithms=["ES256"], audience="default"
    )
    assert claims["sub"] == "259242039378444290" and claims["request_id"] == resp.headers["X-Request-Id"]
    public = await ask.get("/", headers={**asking, "X-Forwarded-Uri": "/api/public"})
    assert public.status == 200
    assert public.headers["X-User-Email"] == ""  # empty: an ingress copying it replaces a client's copy
    assert public.headers["X-Auth-Assertion"] == ""
    assert ask.port is not None
    forged = request("/", f"Authorization: Bearer {TOKEN}", "X-Forwarded-Method: GET", "X-Forwarded-Uri: /api/private")
    answer = await send(ask.port, forged.replace(b"Connection", b"X_User_Email: forged@evil\r\nConnection"))
    assert answer.status == 400
