"""Decision logs: one JSON line per request, from one place, with a request id and never the token."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict

from gateway.ops.logs import JsonFormatter, token_hash

from .conftest import GatewayFactory
from .support import RecordingUpstream

Client = TestClient[Any, Any]
TOKENS = ("demo-reader-token", "demo-noroles-token", "demo-expired-token")


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Everything every gateway logger writes, as the JSON formatter renders it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def access_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]  # every line is one JSON object
    return [line for line in lines if line["logger"] == "gateway.access"]


async def test_one_json_line_per_request_and_never_the_token(
    make_gateway: GatewayFactory, captured: io.StringIO, upstream: RecordingUpstream
) -> None:
    gateway = await make_gateway()
    requests: list[tuple[str, dict[str, str], int]] = [
        ("/api/public", {"X-Request-Id": "client-id.1"}, 200),
        ("/api/private", {}, 401),
        ("/api/private", {"Authorization": "Bearer demo-reader-token"}, 200),
        ("/api/private-scoped", {"Authorization": "Bearer demo-noroles-token"}, 403),
        ("/api/private", {"Authorization": "Bearer demo-expired-token"}, 401),
        ("/nowhere", {"Authorization": "Bearer demo-reader-token"}, 404),
        ("/api/%2fprivate", {}, 400),
        ("/open/big?n=200000", {"X-Request-Id": "bad id!"}, 200),  # streamed: over the small-body limit
    ]
    answered_ids = []
    for path, headers, status in requests:
        resp = await gateway.get(path, headers=headers)
        await resp.read()
        assert resp.status == status
        answered_ids.append(resp.headers["X-Request-Id"])

    lines = access_lines(captured)
    assert len(lines) == len(requests)
    assert [line["request_id"] for line in lines] == answered_ids
    assert answered_ids[0] == "client-id.1"
    assert answered_ids[-1] != "bad id!" and len(answered_ids[-1]) == 32  # invalid: replaced by a fresh one
    assert len(set(answered_ids)) == len(answered_ids)
    for line, (_, _, status) in zip(lines, requests, strict=True):
        assert line["status"] == status
        assert {
            "time", "request_id", "method", "path", "route", "decision", "reason",
            "status", "subject", "token", "upstream_ms", "total_ms",
        } <= line.keys()  # fmt: skip
    assert [(x["route"], x["decision"], x["reason"]) for x in lines] == [
        ("/api/public", "allow", "ok"),
        ("/api/private", "deny", "no token"),
        ("/api/private", "allow", "ok"),
        ("/api/private-scoped", "deny", "missing role read:messages"),
        ("/api/private", "deny", "inactive"),
        ("-", "deny", "no route"),
        ("-", "deny", "invalid_request"),
        ("/open/**", "allow", "ok"),
    ]
    assert lines[2]["subject"] == "259242039378444290"
    assert lines[2]["token"] == token_hash("demo-reader-token")
    assert lines[1]["token"] == "-" and lines[0]["upstream_ms"] > 0 and lines[1]["upstream_ms"] is None
    assert lines[-1]["path"] == "/open/big"
    everything = captured.getvalue()
    for token in TOKENS:
        assert token not in everything

    # The id the client sees is the one the upstream got.
    forwarded = [CIMultiDict(seen.headers).get("X-Request-Id") for seen in upstream.seen]
    assert forwarded == [answered_ids[0], answered_ids[2], answered_ids[-1]]
