"""Request smuggling: the upstream sees exactly one request per client request, framed by the gateway.

aiohttp's C parser (llhttp) rejects the ambiguous framings; the gateway re-frames every body it forwards and
refuses bodies on GET/HEAD, which some upstreams would otherwise read as the start of the next request.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import aiohttp
import pytest
from aiohttp import http_parser

from gateway.app import native_parser
from tests.conftest import GatewayFactory
from tests.support import RecordingUpstream

from .raw import request, send

SMUGGLED = b"GET /api/private HTTP/1.1\r\nHost: x\r\nX-Auth-Subject: admin\r\n\r\n"


def test_aiohttp_c_parser_is_in_use() -> None:
    assert os.environ.get("AIOHTTP_NO_EXTENSIONS", "") == ""
    assert http_parser.HttpRequestParser is not http_parser.HttpRequestParserPy
    assert http_parser.HttpRequestParser.__module__ == "aiohttp._http_parser"
    assert native_parser()


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:3])


def test_aiohttp_has_the_smuggling_fixes() -> None:
    assert _version(aiohttp.__version__) >= (3, 12, 14)
    # The pin itself, so that no install can resolve to an older aiohttp.
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text(encoding="utf-8"))
    pins = [d for d in pyproject["project"]["dependencies"] if re.match(r"aiohttp\s*[>=~]", d)]
    assert len(pins) == 1
    floor = re.search(r">=\s*([0-9.]+)", pins[0])
    assert floor is not None and _version(floor.group(1)) >= (3, 12, 14)


@pytest.mark.parametrize(
    "framing",
    [
        ("Content-Length: 5", "Transfer-Encoding: chunked"),  # CL.TE
        ("Transfer-Encoding: chunked", "Content-Length: 5"),  # TE.CL
        ("Content-Length: 5", "Content-Length: 6"),
        ("Content-Length: 5", "Content-Length: 5"),
        ("Content-Length: 5, 5",),
        ("Content-Length: +5",),
        ("Content-Length: 0x5",),
        ("Transfer-Encoding: xchunked",),
        ("Transfer-Encoding: chunked, identity",),
        ("Transfer-Encoding: identity",),
        ("Transfer-Encoding: chunked", "Transfer-Encoding: chunked"),
        ("Transfer-Encoding:\tchunked ", "Content-Length: 5"),
        ("Transfer-Encoding : chunked",),
        ("Transfer-Encoding: chunked\r\n x",),  # obsolete line folding
        ("Transfer_Encoding: chunked", "Content-Length: 5"),
    ],
)
@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_ambiguous_framing_never_reaches_the_upstream(
    make_gateway: GatewayFactory, upstream: RecordingUpstream, framing: tuple[str, ...], method: str
) -> None:
    gateway = await make_gateway()
    body = b"0\r\n\r\n" + SMUGGLED
    answer = await send(gateway.port, request("/open/x", *framing, method=method, body=body))
    assert answer.statuses and answer.statuses[0] == 400
    assert all(s.raw_path != "/api/private" for s in upstream.seen)
    assert len(upstream.seen) <= 1  # `Transfer_Encoding` is a plain header: at most the one request, re-framed


async def test_chunked_body_is_one_request_upstream(make_gateway: GatewayFactory, upstream: RecordingUpstream) -> None:
    gateway = await make_gateway()
    inner = b"0\r\n\r\n" + SMUGGLED  # looks like a chunk end and a second request, but is only data
    chunked = b"%x\r\n" % len(inner) + inner + b"\r\n0\r\n\r\n"
    answer = await send(gateway.port, request("/open/x", "Transfer-Encoding: chunked", method="POST", body=chunked))
    assert answer.statuses == [200]
    assert [(s.method, s.raw_path, s.body) for s in upstream.seen] == [("POST", "/open/x", inner)]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_get_or_head_with_a_body_is_refused(
    make_gateway: GatewayFactory, upstream: RecordingUpstream, method: str
) -> None:
    gateway = await make_gateway()
    answer = await send(
        gateway.port, request("/open/x", f"Content-Length: {len(SMUGGLED)}", method=method, body=SMUGGLED)
    )
    assert answer.status == 400
    assert upstream.seen == []


async def test_pipelined_requests_are_each_checked_and_forwarded_once(
    make_gateway: GatewayFactory, upstream: RecordingUpstream
) -> None:
    gateway = await make_gateway()
    first = b"GET /open/a HTTP/1.1\r\nHost: g\r\n\r\n"
    second = b"POST /open/b HTTP/1.1\r\nHost: g\r\nContent-Length: 5\r\n\r\nhello"
    third = request("/api/private")  # no token: must be refused even though it shares the connection
    answer = await send(gateway.port, first + second + third)
    assert answer.statuses == [200, 200, 401]
    assert [(s.method, s.raw_path, s.body) for s in upstream.seen] == [
        ("GET", "/open/a", b""),
        ("POST", "/open/b", b"hello"),
    ]


async def test_content_length_body_is_forwarded_exactly(
    make_gateway: GatewayFactory, upstream: RecordingUpstream
) -> None:
    gateway = await make_gateway()
    answer = await send(gateway.port, request("/open/x", "Content-Length: 5", method="POST", body=b"hello"))
    assert answer.statuses == [200]
    assert [(s.raw_path, s.body) for s in upstream.seen] == [("/open/x", b"hello")]


@pytest.mark.parametrize(
    "upgrade",
    [
        ("Upgrade: h2c", "Connection: Upgrade, HTTP2-Settings", "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"),
        (
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
        ),
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_upgrade_is_not_a_tunnel_for_a_second_request(
    make_gateway: GatewayFactory, upstream: RecordingUpstream, upgrade: tuple[str, ...], method: str
) -> None:
    gateway = await make_gateway()
    head = "\r\n".join([f"{method} /open/x HTTP/1.1", "Host: g", *upgrade]) + "\r\n\r\n"
    answer = await send(gateway.port, head.encode() + SMUGGLED)  # returns once the gateway closes the connection
    assert answer.statuses == [200]
    assert [(s.method, s.raw_path) for s in upstream.seen] == [(method, "/open/x")]
    assert all(k.lower() not in ("upgrade", "http2-settings") for k, _ in upstream.last.headers)


@pytest.mark.parametrize(
    "header",
    [
        b"X-Abc: \rxTransfer-Encoding: chunked",  # bare CR (aiohttp/llhttp CVE-2023-30589)
        b"X-Auth-Subject: a\x00dmin",  # NUL in a value (Envoy CVE-2019-9900)
        b"X-Abc\x00: 1",
        b" Transfer-Encoding: chunked",  # leading whitespace: a continuation line
        b"X-Abc: 1\nTransfer-Encoding: chunked",  # bare LF
    ],
)
async def test_malformed_header_lines_never_reach_the_upstream(
    make_gateway: GatewayFactory, upstream: RecordingUpstream, header: bytes
) -> None:
    gateway = await make_gateway()
    raw = b"POST /open/x HTTP/1.1\r\nHost: g\r\n" + header + b"\r\nContent-Length: 5\r\n\r\n1\r\nA\r\n" + SMUGGLED
    answer = await send(gateway.port, raw)
    assert answer.statuses[:1] == [400]
    assert upstream.seen == []


@pytest.mark.parametrize(
    "data",
    [
        b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        (
            b"CONNECT /x HTTP/1.1\r\nHost: t\r\nContent-Length: 48\r\n\r\n"
            b"GET /open/smuggled HTTP/1.1\r\nHost: t\r\nX-A: b\r\n\r\n"
        ),
    ],
)
async def test_connect_and_asterisk_targets_are_400_and_close(
    make_gateway: GatewayFactory, upstream: RecordingUpstream, data: bytes
) -> None:
    gateway = await make_gateway()
    answer = await send(gateway.port, data)  # reads until the gateway closes the connection
    assert answer.statuses == [400]  # one answer, then the connection is closed
    assert upstream.seen == []
