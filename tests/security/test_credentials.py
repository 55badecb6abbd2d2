"""Credentials: where a token may come from, and which tokens never cost an IdP call."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.auth.credentials import bearer_token, form_has_token, query_token
from gateway.errors import InvalidRequestToken, InvalidToken
from tests.conftest import GatewayFactory
from tests.support import FakeIdP, RecordingUpstream

from .raw import request, send

Headers = dict[str, str]
QUERY_ROUTES: list[dict[str, Any]] = [
    {"path": "/api/private", "policy": "authenticated"},
    {"path": "/qt/**", "policy": "authenticated", "allow_query_token": True},
    {"path": "/open/**", "policy": "public"},
]


@pytest.mark.parametrize(
    ("values", "token"),
    [
        ([], None),
        (["Basic dXNlcjpwYXNz"], None),  # another scheme: not ours, a bare 401
        (["Bearer abc"], "abc"),
        (["bearer abc"], "abc"),
        (["BEARER abc"], "abc"),
        (["Bearer   abc  "], "abc"),
        (["Bearer a-b.c_d~e+f/g=="], "a-b.c_d~e+f/g=="),
    ],
)
def test_bearer_token(values: list[str], token: str | None) -> None:
    assert bearer_token(values) == token


@pytest.mark.parametrize("values", [["Bearer"], ["Bearer "], ["bearer    "], ["Bearer a", "Bearer a"]])
def test_malformed_authorization_is_invalid_request(values: list[str]) -> None:
    with pytest.raises(InvalidRequestToken):
        bearer_token(values)


@pytest.mark.parametrize(
    "value",
    ["Bearer a b", "Bearer a$b", "Bearer =abc", "Bearer ab=c", "Bearer a,b", 'Bearer a"b', "Bearer caf\u00e9"],
)
def test_non_b64token_is_invalid_token(value: str) -> None:
    with pytest.raises(InvalidToken):
        bearer_token([value])


def test_token_length_limit_is_configurable() -> None:
    assert bearer_token(["Bearer " + "a" * 64], max_bytes=64) == "a" * 64
    with pytest.raises(InvalidToken):
        bearer_token(["Bearer " + "a" * 65], max_bytes=64)


@pytest.mark.parametrize(
    ("query", "token", "rest"),
    [
        (None, None, None),
        ("a=1", None, "a=1"),
        ("access_token=tok", "tok", None),
        ("a=1&access_token=tok&b=%2F", "tok", "a=1&b=%2F"),  # the rest stays byte for byte
        ("access%5Ftoken=tok", "tok", None),  # an encoded name is the same name
        ("access_token=a%2Bb", "a+b", None),
    ],
)
def test_query_token(query: str | None, token: str | None, rest: str | None) -> None:
    assert query_token(query) == (token, rest)


@pytest.mark.parametrize("query", ["access_token=a&access_token=b", "access_token=", "access_token"])
def test_bad_query_tokens_are_invalid_request(query: str) -> None:
    with pytest.raises(InvalidRequestToken):
        query_token(query)


@pytest.mark.parametrize(
    ("body", "found"),
    [(b"a=1&access_token=x", True), (b"access_token=", True), (b"a=1", False), (b"\xff\xfe", False)],
)
def test_form_body_token(body: bytes, found: bool) -> None:
    assert form_has_token(body) is found


# ----------------------------------------------------------------------------------------------------------------
# Against a real gateway and a counting IdP.


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BeArEr"])
async def test_scheme_is_case_insensitive(make_gateway: GatewayFactory, scheme: str) -> None:
    gateway = await make_gateway()
    resp = await gateway.get("/api/private", headers={"Authorization": f"{scheme} demo-reader-token"})
    assert resp.status == 200


@pytest.mark.parametrize(
    "headers",
    [
        ("Authorization: Bearer",),
        ("Authorization: Bearer   ",),
        ("Authorization: Bearer demo-reader-token", "Authorization: Bearer demo-reader-token"),
        ("Authorization: Bearer demo-reader-token", "authorization: Basic eDp5"),
    ],
)
async def test_missing_or_repeated_credentials_are_400(
    make_gateway: GatewayFactory, idp: FakeIdP, upstream: RecordingUpstream, headers: tuple[str, ...]
) -> None:
    gateway = await make_gateway()
    answer = await send(gateway.port, request("/api/private", *headers))
    assert answer.status == 400
    assert answer.json()["error"] == "invalid_request"
    assert idp.introspections == 0 and upstream.seen == []


@pytest.mark.parametrize("target", ["/api/private?access_token=other-token", "/qt/x?access_token=other-token"])
async def test_token_in_header_and_query_is_400(
    make_gateway: GatewayFactory, idp: FakeIdP, upstream: RecordingUpstream, target: str
) -> None:
    gateway = await make_gateway(routes=QUERY_ROUTES)
    resp = await gateway.get(target, headers={"Authorization": "Bearer demo-reader-token"})
    assert resp.status == 400
    assert (await resp.json())["error"] == "invalid_request"
    assert idp.introspections == 0 and upstream.seen == []


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/api/private", {"Authorization": "Bearer demo-reader-token"}),
        ("/qt/x?access_token=demo-reader-token", {}),
    ],
)
async def test_token_and_form_body_token_is_400(
    make_gateway: GatewayFactory, idp: FakeIdP, upstream: RecordingUpstream, target: str, headers: Headers
) -> None:
    gateway = await make_gateway(routes=QUERY_ROUTES)
    resp = await gateway.post(target, headers=headers, data={"access_token": "other-token", "x": "1"})
    assert resp.status == 400
    assert upstream.seen == []
    # Looked for only once the token is accepted: an anonymous client cannot make the gateway buffer bodies.
    assert idp.introspections == 1


async def test_form_body_is_not_read_for_an_invalid_token(
    make_gateway: GatewayFactory, idp: FakeIdP, upstream: RecordingUpstream
) -> None:
    gateway = await make_gateway(routes=QUERY_ROUTES)
    resp = await gateway.post(
        "/api/private", headers={"Authorization": "Bearer demo-expired-token"}, data={"access_token": "other-token"}
    )
    assert resp.status == 401
    assert upstream.seen == []


async def test_form_body_is_not_read_for_a_token_without_the_role(
    make_gateway: GatewayFactory, upstream: RecordingUpstream
) -> None:
    gateway = await make_gateway(routes=[{"path": "/admin", "roles": {"any_of": ["admin"]}}])
    resp = await gateway.post(
        "/admin", headers={"Authorization": "Bearer demo-noroles-token"}, data={"access_token": "other-token"}
    )
    assert resp.status == 403  # decided before the body is looked at (a 400 would mean it was read)
    assert upstream.seen == []


async def test_form_body_without_token_is_forwarded_intact(
    make_gateway: GatewayFactory, upstream: RecordingUpstream
) -> None:
    gateway = await make_gateway(routes=QUERY_ROUTES)
    resp = await gateway.post(
        "/api/private", headers={"Authorization": "Bearer demo-reader-token"}, data={"a": "1", "b": "2"}
    )
    assert resp.status == 200
    assert upstream.last.body == b"a=1&b=2"


async def test_query_token_is_ignored_unless_the_route_opts_in(
    make_gateway: GatewayFactory, idp: FakeIdP, upstream: RecordingUpstream
) -> None:
    gateway = await make_gateway(routes=QUERY_ROUTES)
    resp = await gateway.get("/api/private?access_token=demo-reader-token")
    assert resp.status == 401
    assert "error=" not in resp.headers["WWW-Authenticate"]  # as if no token was sent at all
    assert idp.introspections == 0 and upstream.seen == []


async def test_opted_in_route_takes_the_query_token_and_moves_it_out_of_the_url(
    make_gateway: GatewayFactory, idp: FakeIdP, upstream: RecordingUpstream
) -> None:
    gateway = await make_gateway(routes=QUERY_ROUTES)
    resp = await gateway.get("/qt/x?a=1&access_token=demo-reader-token&b=2")
    assert resp.status == 200
    assert idp.introspections == 1
    assert upstream.last.raw_path == "/qt/x?a=1&b=2"
    assert ("Authorization", "Bearer demo-reader-token") in upstream.last.headers


async def test_opted_in_route_refuses_a_bad_query_token_without_the_idp(
    make_gateway: GatewayFactory, idp: FakeIdP
) -> None:
    gateway = await make_gateway(routes=QUERY_ROUTES)
    assert (await gateway.get("/qt/x?access_token=a&access_token=b")).status == 400
    assert (await gateway.get("/qt/x?access_token=bad%24token")).status == 401
    assert idp.introspections == 0


async def test_token_over_4_kib_is_401_without_calling_the_idp(make_gateway: GatewayFactory, idp: FakeIdP) -> None:
    gateway = await make_gateway()
    resp = await gateway.get("/api/private", headers={"Authorization": "Bearer " + "a" * 4097})
    assert resp.status == 401
    assert (await resp.json())["error"] == "invalid_token"
    assert idp.introspections == 0
    resp = await gateway.get("/api/private", headers={"Authorization": "Bearer " + "a" * 4096})
    assert resp.status == 401  # not too long, merely unknown: this one is asked about
    assert idp.introspections == 1


async def test_token_length_limit_comes_from_config(make_gateway: GatewayFactory, idp: FakeIdP) -> None:
    gateway = await make_gateway(limits={"max_token_bytes": 32})
    resp = await gateway.get("/api/private", headers={"Authorization": "Bearer " + "a" * 33})
    assert resp.status == 401
    assert idp.introspections == 0


@pytest.mark.parametrize("token", ["a$b", "a%20b", "a,b", "ab=c", "=", "a\\b", "a'b"])
async def test_token_outside_b64token_is_401_without_calling_the_idp(
    make_gateway: GatewayFactory, idp: FakeIdP, upstream: RecordingUpstream, token: str
) -> None:
    gateway = await make_gateway()
    answer = await send(gateway.port, request("/api/private", f"Authorization: Bearer {token}"))
    assert answer.status == 401
    assert answer.json()["error"] == "invalid_token"
    assert idp.introspections == 0 and upstream.seen == []
