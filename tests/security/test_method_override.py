"""Issue 12, point 2: `POST /x?_method=DELETE`, or the same as a body field, is refused (400); it never reaches the
upstream, where Rails, Laravel and Symfony would dispatch it as a DELETE around the rule that refuses DELETE."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient, AiohttpServer

from gateway.app import build_app
from gateway.config import parse_config
from gateway.forward.method_override import FormScanner, query_overrides_method
from gateway.testing import GatewayTestServer
from tests.conftest import GatewayFactory
from tests.support import ENV, FakeIdP, RecordingUpstream, gateway_document

from .raw import WAIT, request, send

ROUTES: list[dict[str, Any]] = [
    {"path": "/items", "methods": ["DELETE"], "roles": {"any_of": ["admin"]}},
    {"path": "/items", "methods": ["POST"], "policy": "public"},
    {"path": "/api/items", "methods": ["POST"], "policy": "authenticated"},
]
READER = "Authorization: Bearer demo-noroles-token"


@pytest.mark.parametrize(
    "query",
    [
        "_method=DELETE",
        "a=1&_method=DELETE",
        "_METHOD=delete",
        "%5Fmethod=DELETE",
        ".method=DELETE",  # PHP reads '.' (and ' ', '[') in a name as '_'
        "+method=DELETE",
        "_method[]=DELETE",
        "x-http-method-override=DELETE",
        "X_HTTP_METHOD_OVERRIDE=DELETE",
        "x-method-override=DELETE",
        "x-http-method=DELETE",
        "_method",
    ],
)
async def test_a_method_override_in_the_query_is_refused(
    make_gateway: GatewayFactory, upstream: RecordingUpstream, query: str
) -> None:
    gw = await make_gateway(ROUTES)
    answer = await send(gw.port, request(f"/items?{query}", "Content-Length: 0", method="POST"))
    assert answer.statuses == [400]
    assert upstream.seen == []


FORM = "Content-Type: application/x-www-form-urlencoded"
MULTIPART = "Content-Type: multipart/form-data; boundary=XX"
JSON = "Content-Type: application/json"


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (FORM, b"_method=DELETE"),
        (FORM, b"a=1&_method=DELETE&b=2"),
        (FORM, b"%5Fmethod=DELETE"),
        (FORM, b"x-http-method-override=DELETE"),
        (FORM, b"a=" + b"x" * 200_000 + b"&_method=DELETE"),  # past the first chunks
        (MULTIPART, b'--XX\r\nContent-Disposition: form-data; name="_method"\r\n\r\nDELETE\r\n--XX--\r\n'),
        (JSON, b'{"title": "x", "_method": "DELETE"}'),
        ("Content-Type: text/json", b'{"_METHOD" : "DELETE"}'),
        ("Content-Type: application/vnd.api+json; charset=utf-8", b'{"x-http-method-override": "DELETE"}'),
        ("Content-Type: Application/X-WWW-Form-Urlencoded; Charset=UTF-8", b"_method=DELETE"),
    ],
)
async def test_a_method_override_in_the_body_is_refused_and_never_relayed_whole(
    make_gateway: GatewayFactory, upstream: RecordingUpstream, content_type: str, body: bytes
) -> None:
    gw = await make_gateway(ROUTES)
    answer = await send(
        gw.port, request("/items", content_type, f"Content-Length: {len(body)}", method="POST", body=body)
    )
    assert answer.statuses == [400]
    assert all(b"_method=" not in seen.body and b'"_method"' not in seen.body for seen in upstream.seen)


async def test_an_authenticated_form_with_an_override_is_refused(
    make_gateway: GatewayFactory, upstream: RecordingUpstream
) -> None:
    gw = await make_gateway(ROUTES)
    body = b"a=1&_method=DELETE"
    answer = await send(
        gw.port, request("/api/items", READER, FORM, f"Content-Length: {len(body)}", method="POST", body=body)
    )
    assert answer.statuses == [400]
    assert upstream.seen == []


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (FORM, b"method=DELETE&my_method=x&note=_method%3DDELETE&v=_method=x"),
        (MULTIPART, b'--XX\r\nContent-Disposition: form-data; name="my_method"\r\n\r\n_method\r\n--XX--\r\n'),
        (JSON, b'{"note": "\\"_method\\": no", "method": "DELETE"}'),
        ("Content-Type: text/plain", b"_method=DELETE"),  # no framework reads a method from text
    ],
)
async def test_other_bodies_pass_byte_for_byte(
    make_gateway: GatewayFactory, upstream: RecordingUpstream, content_type: str, body: bytes
) -> None:
    gw = await make_gateway(ROUTES)
    answer = await send(
        gw.port, request("/items", content_type, f"Content-Length: {len(body)}", method="POST", body=body)
    )
    assert answer.status == 200
    assert upstream.last.body == body and upstream.last.method == "POST"


async def test_an_anonymous_form_streams_through_and_is_cut_at_the_override(
    idp: FakeIdP, aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient
) -> None:
    """Scanned as it streams, never held: the upstream has the form's first part before the client sends the rest.
    A gateway that buffered the form would never reach `first_part` (the bounded wait below would fail)."""
    first_part, finished = asyncio.Event(), asyncio.Event()
    received = bytearray()

    async def upstream(request: web.Request) -> web.Response:
        received.extend(await request.content.readany())
        first_part.set()
        try:
            while chunk := await request.content.readany():
                received.extend(chunk)
        finally:
            finished.set()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upstream)
    server = await aiohttp_server(app)
    document = gateway_document(issuer=idp.issuer, upstream_url=str(server.make_url("")).rstrip("/"), routes=ROUTES)
    gw: TestClient[Any, Any] = await aiohttp_client(
        GatewayTestServer(build_app(parse_config(document, source="t.yaml", env=ENV)))
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        rest = b"&_method=DELETE"
        writer.write(
            request("/items", FORM, f"Content-Length: {50 + len(rest)}", method="POST", body=b"a=" + b"x" * 48)
        )
        await writer.drain()
        await asyncio.wait_for(first_part.wait(), WAIT)
        writer.write(rest)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), WAIT)
        assert answer.startswith(b"HTTP/1.1 400 ")
        await asyncio.wait_for(finished.wait(), WAIT)
        assert bytes(received) == b"a=" + b"x" * 48  # the override's piece never left the gateway
    finally:
        writer.close()
        await writer.wait_closed()


def test_a_form_field_split_across_chunks_is_seen() -> None:
    scanner = FormScanner()
    assert not scanner.found_in(b"a=1&_me")
    assert not scanner.found_in(b"th")
    assert scanner.found_in(b"od=DELETE")
    scanner = FormScanner()
    assert not scanner.found_in(b"a=_method&b=_method")  # values, not names
    assert not scanner.found_in(b"&my_method=1")


def test_query_override_names() -> None:
    assert query_overrides_method("_method=PUT")
    assert not query_overrides_method("method=PUT&x=_method")
    assert not query_overrides_method(None)
