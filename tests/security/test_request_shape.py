"""Issue 12, points 3, 4, 10 and 11: versions, request codings, Host, bodies by method, HEAD under GET's rule, and
what error answers carry. Raw sockets: aiohttp's client would fix up most of these requests before sending them."""

from __future__ import annotations

import pytest

from tests.conftest import GatewayFactory
from tests.support import RecordingUpstream

from .raw import request, send

ROUTES = [
    {"path": "/open/del-body/**", "policy": "public", "delete_body": True},
    {"path": "/open/**", "policy": "public"},
    {"path": "/get-only", "methods": ["GET"], "policy": "authenticated"},
    {"path": "/**", "policy": "public"},
]


@pytest.mark.parametrize(
    ("line", "status"),
    [
        ("GET /open/x", 400),  # no version: llhttp reads HTTP/0.9
        ("GET /open/x HTTP/0.9", 400),
        ("GET /open/x HTTP/2.0", 505),
        ("GET /open/x HTTP/3.0", 400),  # refused by llhttp itself
        ("DESCRIBE /open/x RTSP/1.0", 400),  # llhttp reports 1.0; the method can only be RTSP's
        ("SET_PARAMETER /open/x RTSP/1.0", 400),
        ("PLAY /open/x RTSP/2.0", 400),
        ("GET /open/x RTSP/1.0", 400),  # an HTTP method on an RTSP line: llhttp takes it for HTTP/1.0
        ("POST /open/x RTSP/1.0", 400),
        ("GET /open/x ICE/1.0", 400),
    ],
)
async def test_only_http_10_and_11_are_served(
    make_gateway: GatewayFactory, upstream: RecordingUpstream, line: str, status: int
) -> None:
    gw = await make_gateway(ROUTES)
    answer = await send(gw.port, f"{line}\r\nHost: gateway.test\r\n\r\n".encode())
    assert answer.raw.startswith(b"HTTP/1.") and answer.statuses == [status]  # never `HTTP/0.9 200`
    assert b"X-Content-Type-Options: nosniff" in answer.raw
    assert upstream.seen == []


@pytest.mark.parametrize(
    ("framing", "status"),
    [
        ("Transfer-Encoding: gzip, chunked", 501),
        ("Transfer-Encoding: x, chunked", 501),
        ("Transfer-Encoding: chunked, chunked", 400),  # llhttp refuses these itself
        ("Transfer-Encoding: deflate\r\nTransfer-Encoding: chunked", 400),
    ],
)
async def test_a_request_coding_other_than_a_lone_chunked_is_refused(
    make_gateway: GatewayFactory, upstream: RecordingUpstream, framing: str, status: int
) -> None:
    gw = await make_gateway(ROUTES)
    answer = await send(gw.port, request("/open/x", framing, method="POST", body=b"3\r\nabc\r\n0\r\n\r\n"))
    assert answer.statuses == [status]
    assert upstream.seen == []


async def test_chunked_is_still_relayed_and_refused_on_http_10(
    make_gateway: GatewayFactory, upstream: RecordingUpstream
) -> None:
    gw = await make_gateway(ROUTES)
    answer = await send(
        gw.port, request("/open/x", "Transfer-Encoding: chunked", method="POST", body=b"3\r\nabc\r\n0\r\n\r\n")
    )
    assert answer.status == 200 and upstream.last.body == b"abc"
    old = b"POST /open/x HTTP/1.0\r\nHost: gateway.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    assert (await send(gw.port, old)).statuses == [400]
    assert len(upstream.seen) == 1


@pytest.mark.parametrize("host", ["a,b;c", "a;b", "a,b", "a b", "x@y", "a/b", "a%2fb", "a:b:c", "", "a:99999x"])
async def test_a_host_that_is_not_host_port_is_refused(
    make_gateway: GatewayFactory, upstream: RecordingUpstream, host: str
) -> None:
    gw = await make_gateway(ROUTES)
    raw = f"GET /open/x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    assert (await send(gw.port, raw)).statuses == [400]
    assert upstream.seen == []


@pytest.mark.parametrize("host", ["gateway.test", "gateway.test:8080", "127.0.0.1:1", "[::1]:8443", "my_host.local"])
async def test_a_valid_host_reaches_x_forwarded_host(
    make_gateway: GatewayFactory, upstream: RecordingUpstream, host: str
) -> None:
    gw = await make_gateway(ROUTES)
    raw = f"GET /open/x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    assert (await send(gw.port, raw)).status == 200
    assert ("X-Forwarded-Host", host) in upstream.last.headers


async def test_http_11_without_host_is_refused_http_10_is_not(
    make_gateway: GatewayFactory, upstream: RecordingUpstream
) -> None:
    gw = await make_gateway(ROUTES)
    assert (await send(gw.port, b"GET /open/x HTTP/1.1\r\nConnection: close\r\n\r\n")).statuses == [400]
    assert (await send(gw.port, b"GET /open/x HTTP/1.0\r\n\r\n")).status == 200


@pytest.mark.parametrize("method", ["OPTIONS", "TRACE", "DELETE", "GET", "HEAD"])
async def test_a_body_on_a_method_that_has_none_is_refused(
    make_gateway: GatewayFactory, upstream: RecordingUpstream, method: str
) -> None:
    gw = await make_gateway(ROUTES)
    smuggled = b"GET /open/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = await send(gw.port, request("/open/x", f"Content-Length: {len(smuggled)}", method=method, body=smuggled))
    assert answer.statuses == [400]
    assert upstream.seen == []


async def test_delete_with_a_body_passes_where_the_route_allows_it(
    make_gateway: GatewayFactory, upstream: RecordingUpstream
) -> None:
    gw = await make_gateway(ROUTES)
    answer = await send(gw.port, request("/open/del-body/1", "Content-Length: 4", method="DELETE", body=b"{ }\n"))
    assert answer.status == 200 and upstream.last.method == "DELETE" and upstream.last.body == b"{ }\n"
    for method in ("DELETE", "OPTIONS", "PROPFIND"):  # without a body, and a body where one is defined
        assert (await send(gw.port, request("/open/x", method=method))).status == 200
    answer = await send(gw.port, request("/open/x", "Content-Length: 2", method="PATCH", body=b"{}"))
    assert answer.status == 200 and upstream.last.body == b"{}"


async def test_head_falls_under_the_rule_that_lists_get(
    make_gateway: GatewayFactory, upstream: RecordingUpstream
) -> None:
    gw = await make_gateway(ROUTES)
    for method in ("GET", "HEAD"):
        answer = await send(gw.port, request("/get-only", method=method))
        assert answer.status == 401, method  # not the public catch-all below it
    assert (await send(gw.port, request("/get-only", method="POST"))).status == 200  # the catch-all
    assert [seen.method for seen in upstream.seen] == ["POST"]


async def test_error_answers_carry_nosniff(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(ROUTES)
    for target in ("/get-only", "/open/%2e%2e/%2e%2e/x"):
        answer = await send(gw.port, request(target))
        assert answer.status >= 400
        assert b"\r\nX-Content-Type-Options: nosniff\r\n" in answer.raw


@pytest.mark.parametrize("method", ["FOO", "GETX", "CONNECTX"])
async def test_a_method_llhttp_does_not_know_is_refused_by_the_parser(
    make_gateway: GatewayFactory, upstream: RecordingUpstream, method: str
) -> None:
    gw = await make_gateway(ROUTES)
    answer = await send(gw.port, request("/open/x", "Content-Length: 3", method=method, body=b"abc"))
    assert answer.statuses == [400]
    assert upstream.seen == []


async def test_a_pipelined_request_of_another_protocol_is_refused_after_the_first_is_answered(
    make_gateway: GatewayFactory, upstream: RecordingUpstream
) -> None:
    gw = await make_gateway(ROUTES)
    first = b"GET /open/a HTTP/1.1\r\nHost: gateway.test\r\n\r\n"
    second = b"GET /open/b RTSP/1.0\r\nHost: gateway.test\r\n\r\n"
    for data in (first + second, second + first):  # in one read: the connection is closed, nothing after is served
        answer = await send(gw.port, data)
        assert 200 not in answer.statuses[1:]
    answer = await send(gw.port, first + b"\r\n" + second)
    assert "/open/b" not in [s.raw_path for s in upstream.seen]  # the RTSP request never reaches the upstream
