"""Headers that make an upstream act on another method, path, host or client address than the one the gateway
checked never reach it: method override, URL rewrite, X-Forwarded-* beyond the three the gateway sets, client-IP
headers that allow-lists trust."""

from __future__ import annotations

import pytest

from gateway.forward.headers import header_value, identity_headers
from tests.conftest import GatewayFactory
from tests.support import RecordingUpstream

from .raw import request, send

READER = "Authorization: Bearer demo-noroles-token"

SMUGGLED = [
    "X-HTTP-Method-Override: DELETE",
    "X-HTTP-Method: DELETE",
    "X-Method-Override: DELETE",
    "X_HTTP_Method_Override: DELETE",
    "X-Original-Method: DELETE",
    "X-Original-URL: /api/private",
    "X-Original-URI: /api/private",
    "X-Rewrite-URL: /api/private",
    "X-Original-Host: evil.example",
    "X-Forwarded-Prefix: /evil",
    "X-Forwarded-Port: 1",
    "X-Forwarded-Server: evil",
    "X-Forwarded-Scheme: https",
    "X-Forwarded-Ssl: on",
    "x_forwarded_prefix: /evil",
    "True-Client-IP: 1.2.3.4",
    "X-Client-IP: 1.2.3.4",
    "X-Cluster-Client-IP: 1.2.3.4",
    "CF-Connecting-IP: 1.2.3.4",
    "Fastly-Client-IP: 1.2.3.4",
    "X-Real-IP: 1.2.3.4",
    # Issue 12, point 5.
    "Proxy: http://evil.example:3128",
    "Client-IP: 1.2.3.4",
    "X-Originating-IP: 1.2.3.4",
    "X-Remote-IP: 1.2.3.4",
    "X-Remote-Addr: 1.2.3.4",
    "X-ProxyUser-Ip: 1.2.3.4",
    "Fly-Client-IP: 1.2.3.4",
    "X-Azure-ClientIP: 1.2.3.4",
    "X-Appengine-User-IP: 1.2.3.4",
    "X-Envoy-External-Address: 1.2.3.4",
    "X-Forwarded: for=1.2.3.4",
    "Forwarded-For: 1.2.3.4",
    "X-Host: evil.example",
    "X-HTTP-Host-Override: evil.example",
    "X-Original-Path: /api/private",
    "X-Envoy-Original-Path: /api/private",
    "x_envoy_original_path: /api/private",
    "CLIENT_IP: 1.2.3.4",
    "X_Custom_Name: underscores are dropped whatever the name",
]


@pytest.mark.parametrize("header", SMUGGLED)
async def test_override_rewrite_and_client_ip_headers_are_dropped(
    make_gateway: GatewayFactory, upstream: RecordingUpstream, header: str
) -> None:
    gateway = await make_gateway(
        routes=[
            {"path": "/api/items", "methods": ["DELETE"], "roles": {"any_of": ["admin"]}},
            {"path": "/api/items", "methods": ["POST"], "policy": "authenticated"},
            {"path": "/open/**", "policy": "public"},
        ]
    )
    answer = await send(gateway.port, request("/api/items", READER, header, "Content-Length: 0", method="POST"))
    assert answer.status == 200
    name = header.split(":", 1)[0].lower().replace("_", "-")
    sent = {k.lower().replace("_", "-") for k, _ in upstream.last.headers}
    assert name not in sent
    assert upstream.last.method == "POST"


async def test_an_underscore_spelling_of_x_request_id_is_dropped(
    make_gateway: GatewayFactory, upstream: RecordingUpstream
) -> None:
    gateway = await make_gateway()
    answer = await send(gateway.port, request("/open/x", "X_Request_Id: forged-id", "X-Request-Id: mine-1"))
    assert answer.status == 200
    ids = [v for k, v in upstream.last.headers if k.lower().replace("_", "-") == "x-request-id"]
    assert ids == ["mine-1"]  # the gateway's, from the client's well-formed one


async def test_the_three_forwarded_headers_are_still_set(
    make_gateway: GatewayFactory, upstream: RecordingUpstream
) -> None:
    gateway = await make_gateway()
    answer = await send(gateway.port, request("/open/x", *SMUGGLED))
    assert answer.status == 200
    forwarded = {k.lower(): v for k, v in upstream.last.headers if k.lower().startswith("x-forwarded-")}
    assert forwarded == {
        "x-forwarded-for": "127.0.0.1",
        "x-forwarded-proto": "http",
        "x-forwarded-host": "gateway.test",
    }


@pytest.mark.parametrize(
    ("value", "sent"),
    [
        ("reader", "reader"),
        ("jörg", "j%C3%B6rg"),
        ("j%C3%B6rg", "j%25C3%25B6rg"),  # a literal '%' is encoded: the two above stay distinct
        ("a,b", "a%2Cb"),
        ("line\nbreak", "line%0Abreak"),
    ],
)
def test_header_values_are_unambiguous(value: str, sent: str) -> None:
    assert header_value(value) == sent


def test_a_role_with_a_comma_cannot_split_the_roles_header() -> None:
    headers = identity_headers(subject="s", username=None, roles={"admin,read", "x"}, client_id=None, org_id=None)
    assert headers["X-Auth-Roles"].split(",") == ["admin%2Cread", "x"]
