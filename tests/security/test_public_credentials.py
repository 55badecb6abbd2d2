"""Public routes: a credential the gateway did not check is not relayed, unless the route says so."""

from __future__ import annotations

from typing import Any

import pytest
from yarl import URL

from gateway.auth.credentials import without_query_token
from gateway.config import ConfigError, parse_config
from tests.conftest import GatewayFactory
from tests.support import ENV, FakeIdP, RecordingUpstream, gateway_document

# An unsigned JWT ({"alg":"none"}, sub "admin"): what an upstream that decodes without verifying would believe.
FORGED = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9."
ROUTES: list[dict[str, Any]] = [
    {"path": "/open/**", "policy": "public"},
    {"path": "/relay/**", "policy": "public", "forward_unchecked_credentials": True},
    {"path": "/half/**", "policy": "public", "forward_unchecked_credentials": True, "pass_authorization": False},
]


@pytest.mark.parametrize("authorization", [f"Bearer {FORGED}", "Basic dXNlcjpwYXNz", "Token abc", "Bearer"])
async def test_a_public_route_drops_every_authorization(
    make_gateway: GatewayFactory, idp: FakeIdP, upstream: RecordingUpstream, authorization: str
) -> None:
    gateway = await make_gateway(routes=ROUTES)
    resp = await gateway.get("/open/x", headers={"Authorization": authorization})
    assert resp.status == 200
    assert "authorization" not in {name.lower() for name, _ in upstream.last.headers}
    assert idp.introspections == 0


async def test_a_public_route_drops_query_tokens_and_keeps_the_rest(
    make_gateway: GatewayFactory, upstream: RecordingUpstream
) -> None:
    gateway = await make_gateway(routes=ROUTES)
    target = URL(f"/open/x?a=1&access_token={FORGED}&b=%2F&access%5Ftoken=x", encoded=True)
    resp = await gateway.get(target)
    assert resp.status == 200
    assert upstream.last.raw_path == "/open/x?a=1&b=%2F"
    resp = await gateway.get(f"/open/x?access_token={FORGED}")
    assert upstream.last.raw_path == "/open/x"


async def test_a_route_may_opt_in_to_relay_them_as_sent(
    make_gateway: GatewayFactory, idp: FakeIdP, upstream: RecordingUpstream
) -> None:
    gateway = await make_gateway(routes=ROUTES)
    resp = await gateway.get(f"/relay/x?access_token={FORGED}", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert resp.status == 200
    assert upstream.last.raw_path == f"/relay/x?access_token={FORGED}"
    assert ("Authorization", "Basic dXNlcjpwYXNz") in upstream.last.headers
    assert idp.introspections == 0


async def test_pass_authorization_false_still_wins(make_gateway: GatewayFactory, upstream: RecordingUpstream) -> None:
    gateway = await make_gateway(routes=ROUTES)
    resp = await gateway.get("/half/x?access_token=t", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert resp.status == 200
    assert upstream.last.raw_path == "/half/x?access_token=t"
    assert "authorization" not in {name.lower() for name, _ in upstream.last.headers}


@pytest.mark.parametrize(
    ("query", "rest"),
    [(None, None), ("", ""), ("a=1", "a=1"), ("access_token=x", None), ("a=%41&access_token=&c", "a=%41&c")],
)
def test_without_query_token(query: str | None, rest: str | None) -> None:
    assert without_query_token(query) == rest


def test_only_a_public_route_may_forward_unchecked_credentials() -> None:
    document = gateway_document(
        issuer="https://idp.example",
        upstream_url="http://127.0.0.1:1",
        routes=[{"path": "/a", "policy": "authenticated", "forward_unchecked_credentials": True}],
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(document, source="c.yaml", env=ENV)
    assert caught.value.problems == [
        "c.yaml: routes[0].forward_unchecked_credentials: only a public route forwards unchecked credentials"
    ]
