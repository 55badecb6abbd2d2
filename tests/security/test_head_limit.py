"""The request head is bounded in total (`limits.max_head_bytes`): 431, counted before the parser keeps the bytes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.config import Limits
from gateway.ops.head_limit import bytes_after_head, head_end
from tests.conftest import GatewayFactory
from tests.support import RecordingUpstream

from .raw import WAIT, Answer, request, send

ROUTES: list[dict[str, Any]] = [{"path": "/open/**", "policy": "public"}]
# Under the per-line bounds of the gateway (16 KiB) and of the test upstream (8 KiB); five of them are over 32 KiB.
LINE = "X-Pad-{}: " + "a" * 8000


def _pads(count: int) -> list[str]:
    return [LINE.format(i) for i in range(count)]


def _is_431(answer: Answer) -> bool:
    return answer.statuses == [431] and answer.json()["error"] == "request_header_fields_too_large"


def test_the_default_is_nginxs() -> None:
    assert Limits().max_head_bytes == 32 * 1024


async def test_a_head_under_the_bound_passes(make_gateway: GatewayFactory, upstream: RecordingUpstream) -> None:
    gateway = await make_gateway(routes=ROUTES)
    assert (await send(gateway.port, request("/open/x", *_pads(3)))).status == 200


@pytest.mark.parametrize("complete", [True, False])
async def test_a_head_over_the_bound_is_431_and_never_parsed(
    make_gateway: GatewayFactory, upstream: RecordingUpstream, complete: bool
) -> None:
    gateway = await make_gateway(routes=ROUTES)
    data = request("/open/x", *_pads(5))
    # Incomplete: the attack holds heads open; the answer must not wait for a blank line that never comes.
    answer = await send(gateway.port, data if complete else data[:-4])
    assert _is_431(answer)
    assert b"Connection: close" in answer.raw
    assert upstream.seen == []


async def test_the_bound_holds_across_reads(make_gateway: GatewayFactory, upstream: RecordingUpstream) -> None:
    gateway = await make_gateway(routes=ROUTES, limits={"max_head_bytes": 4096})
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        writer.write(b"GET /open/x HTTP/1.1\r\nHost: gateway.test\r\n")
        for i in range(100):  # 100 short lines, one write each: no single read is over the bound
            if reader.at_eof():
                break
            writer.write(f"X-Pad-{i}: {'b' * 90}\r\n".encode())
            await writer.drain()
            await asyncio.sleep(0.001)  # pacing, so the lines arrive in many reads
        answer = Answer(await asyncio.wait_for(reader.read(), WAIT))
    except ConnectionResetError:  # the gateway closed while lines were still coming: nothing left to read
        answer = Answer(b"")
    finally:
        writer.close()
    assert answer.raw == b"" or _is_431(answer)
    assert upstream.seen == []


async def test_the_bound_is_per_request_not_per_connection(
    make_gateway: GatewayFactory, upstream: RecordingUpstream
) -> None:
    gateway = await make_gateway(routes=ROUTES, limits={"max_head_bytes": 2048})
    get = b"GET /open/x HTTP/1.1\r\nHost: gateway.test\r\nX-Pad: " + b"g" * 1000 + b"\r\n\r\n"
    post = b"POST /open/x HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 4000\r\n\r\n" + b"p" * 4000
    last = request("/open/last", "X-Pad: " + "l" * 1000)
    # 40 pipelined requests in a few reads, heads and bodies far over the bound in sum, each head under it.
    answer = await send(gateway.port, (get + post) * 20 + last)
    assert answer.statuses == [200] * 41
    assert len(upstream.seen) == 41


async def test_the_bound_is_configurable(make_gateway: GatewayFactory, upstream: RecordingUpstream) -> None:
    gateway = await make_gateway(routes=ROUTES, limits={"max_head_bytes": 2048})
    assert (await send(gateway.port, request("/open/x", "X-Pad: " + "a" * 1800))).status == 200
    assert _is_431(await send(gateway.port, request("/open/x", "X-Pad: " + "a" * 2100)))


@pytest.mark.parametrize(
    ("seen", "after"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", 0),
        (b"\r\n\r\nGET /", 5),
        (b"\n\r\nGE", 2),
        (b"a\n\nb", 1),
        (b"GET / HTTP/1.1", None),
    ],
)
def test_bytes_after_head(seen: bytes, after: int | None) -> None:
    assert bytes_after_head(seen) == after


@pytest.mark.parametrize(
    ("seen", "end"),
    [(b"GET / HTTP/1.1\r\n\r\nGET", 18), (b"a\n\nb\r\n\r\n", 3), (b"\r\n\r", None), (b"", None)],
)
def test_head_end(seen: bytes, end: int | None) -> None:
    assert head_end(seen) == end


async def test_a_body_in_the_same_read_is_not_head(make_gateway: GatewayFactory, upstream: RecordingUpstream) -> None:
    gateway = await make_gateway(routes=ROUTES, limits={"max_head_bytes": 2048})
    answer = await send(gateway.port, request("/open/x", "Content-Length: 200000", method="POST", body=b"b" * 200_000))
    assert answer.status == 200
    assert len(upstream.last.body) == 200_000
