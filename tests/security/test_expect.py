"""`Expect: 100-continue`: the client uploads its body only once the gateway has let the request through.

RFC 9110 §10.1.1 lets a server answer with the final status instead of 100 (Continue). The gateway sends 100 when
it first wants the body, after the token, the roles and the size have been checked: a refused client never sends
its body, and an unknown expectation is 417.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.conftest import GatewayFactory
from tests.support import RecordingUpstream

from .raw import WAIT, Answer, request, send

BODY = b"hello"


def _post(target: str, *headers: str, length: int = len(BODY)) -> bytes:
    """The head alone: the body is sent only if the gateway says 100 Continue."""
    return request(target, "Expect: 100-continue", f"Content-Length: {length}", *headers, method="POST")


async def _exchange(port: int | None, head: bytes) -> tuple[bytes, Answer]:
    """(the first answer's head, everything after it). The body goes out only after a `100 Continue`; after any
    other answer the client hangs up without it, as curl does."""
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        if not first.startswith(b"HTTP/1.1 100 "):
            return first, Answer(b"")
        writer.write(BODY)
        await writer.drain()
        return first, Answer(await asyncio.wait_for(reader.read(), WAIT))
    finally:
        writer.close()
        await writer.wait_closed()


async def test_an_allowed_request_gets_100_continue_then_its_answer(
    make_gateway: GatewayFactory, upstream: RecordingUpstream
) -> None:
    gateway = await make_gateway()
    first, rest = await _exchange(gateway.port, _post("/echo/x", "Authorization: Bearer demo-reader-token"))
    assert first == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert rest.status == 200
    assert upstream.last.body == BODY
    assert "expect" not in {name.lower() for name, _ in upstream.last.headers}  # the expectation was ours to meet


async def test_a_public_route_continues_too(make_gateway: GatewayFactory, upstream: RecordingUpstream) -> None:
    gateway = await make_gateway()
    first, rest = await _exchange(gateway.port, _post("/open/x"))
    assert first.startswith(b"HTTP/1.1 100 ")
    assert rest.status == 200
    assert upstream.last.body == BODY


async def test_a_request_without_a_token_is_refused_before_its_body_is_sent(
    make_gateway: GatewayFactory, upstream: RecordingUpstream
) -> None:
    gateway = await make_gateway()
    first, _ = await _exchange(gateway.port, _post("/echo/x"))
    assert first.startswith(b"HTTP/1.1 401 ")
    assert upstream.seen == []


async def test_a_request_without_the_role_is_refused_before_its_body_is_sent(
    make_gateway: GatewayFactory, upstream: RecordingUpstream
) -> None:
    gateway = await make_gateway([{"path": "/echo/**", "roles": {"any_of": ["write:messages"]}}])
    first, _ = await _exchange(gateway.port, _post("/echo/x", "Authorization: Bearer demo-reader-token"))
    assert first.startswith(b"HTTP/1.1 403 ")
    assert upstream.seen == []


async def test_a_body_over_the_limit_is_refused_before_it_is_sent(
    make_gateway: GatewayFactory, upstream: RecordingUpstream
) -> None:
    gateway = await make_gateway(limits={"max_body_bytes": 4})
    first, _ = await _exchange(gateway.port, _post("/open/x"))
    assert first.startswith(b"HTTP/1.1 413 ")
    assert upstream.seen == []


async def test_an_unknown_expectation_is_417(make_gateway: GatewayFactory, upstream: RecordingUpstream) -> None:
    gateway = await make_gateway()
    answer = await send(gateway.port, request("/open/x", "Expect: 200-ok"))
    assert answer.status == 417
    assert answer.json()["error"] == "expectation_failed"
    assert upstream.seen == []


async def test_http_10_has_no_expectations(make_gateway: GatewayFactory, upstream: RecordingUpstream) -> None:
    gateway = await make_gateway()
    answer = await send(gateway.port, b"GET /open/x HTTP/1.0\r\nHost: g\r\nExpect: 200-ok\r\n\r\n")
    assert answer.status == 200
    assert len(upstream.seen) == 1


async def _head_of_answer(port: int | None, head: bytes) -> bytes:
    """Send a keep-alive request head alone; the head of the answer."""
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    finally:
        writer.close()
        await writer.wait_closed()


KEEP_ALIVE_POST = b"POST /echo/x HTTP/1.1\r\nHost: g\r\nExpect: 100-continue\r\nContent-Length: 1000000\r\n"


async def test_a_refusal_before_the_body_closes_the_connection(make_gateway: GatewayFactory) -> None:
    """The client may still hold its body back: bytes it sends next could be body or a new request. The answer
    says the connection closes, rather than leave the two to guess."""
    gateway = await make_gateway()
    head = await _head_of_answer(gateway.port, KEEP_ALIVE_POST + b"\r\n")
    assert head.startswith(b"HTTP/1.1 401 ")
    assert b"\r\nConnection: close\r\n" in head


async def test_an_answer_after_the_body_keeps_the_connection(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway()
    assert gateway.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        writer.write(b"POST /open/x HTTP/1.1\r\nHost: g\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(BODY)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"Connection: close" not in head
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_client_gone_before_its_body_is_a_499_line_not_an_upstream_failure(
    make_gateway: GatewayFactory, upstream: RecordingUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    """The client sends a head saying a body follows, then hangs up: the access line says the client went away
    (499, aborted), and nothing blames the upstream."""
    gateway = await make_gateway()
    assert gateway.port is not None
    caplog.set_level(logging.INFO, logger="gateway")
    _, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"POST /open/x HTTP/1.1\r\nHost: g\r\nContent-Length: 100\r\n\r\nabc")
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    for _ in range(250):  # wait for the line, not a timing assertion
        lines = [r for r in caplog.records if r.name == "gateway.access"]
        if lines:
            break
        await asyncio.sleep(0.02)
    assert [(vars(r)["fields"]["status"], vars(r)["fields"]["reason"]) for r in lines] == [(499, "aborted")]
    assert not [r for r in caplog.records if r.name == "gateway.proxy"]  # no "upstream ..." warning
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
