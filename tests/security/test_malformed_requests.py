"""Issue 12, point 1: a request aiohttp's parser refuses gets a 400 and at most one short log line, without a byte
of the request in it: no token, whatever the log level."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from gateway.ops.http_server import refusal_for
from tests.conftest import GatewayFactory
from tests.secret_witness import Witness, attach
from tests.support import ENV, FakeIdP, gateway_document, gateway_process

from .raw import send

TOKEN = "demo-reader-token"
# The three cases of the issue: a token file saved with CRLF, a control character after the token, and a query
# token next to a raw UTF-8 byte or a tab.
MALFORMED = [
    f"GET /open/x HTTP/1.1\r\nHost: gateway.test\r\nAuthorization: Bearer {TOKEN}\r\r\n\r\n".encode(),
    f"GET /open/x HTTP/1.1\r\nHost: gateway.test\r\nAuthorization: Bearer {TOKEN}\x01\r\n\r\n".encode(),
    f"GET /open/x?access_token={TOKEN}\xc3\xa9 HTTP/1.1\r\nHost: gateway.test\r\n\r\n".encode("latin-1"),
    f"GET /open/x?access_token={TOKEN}\tb HTTP/1.1\r\nHost: gateway.test\r\n\r\n".encode(),
]
SHORT = 300  # characters: one line that names what happened, not what was sent


def _gateway_records(witness: Witness, start: int) -> list[str]:
    return [text for where, text in witness.texts[start:] if where.startswith(("log gateway", "log aiohttp"))]


@pytest.mark.parametrize("raw", MALFORMED)
async def test_a_malformed_request_gets_400_and_one_line_without_its_bytes(
    make_gateway: GatewayFactory, secret_witness: Witness, raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every level: aiohttp logs some parse errors at DEBUG
    gw = await make_gateway()
    caplog.clear()
    start = len(secret_witness.texts)
    answer = await send(gw.port, raw)
    assert answer.statuses == [400]
    assert TOKEN.encode() not in answer.raw  # aiohttp's own 400 body quoted the line too
    assert b"X-Content-Type-Options: nosniff" in answer.raw
    records = [r for r in caplog.records if r.name.startswith(("gateway", "aiohttp.server", "aiohttp.web"))]
    assert len(records) == 1
    assert records[0].exc_info is None and len(records[0].getMessage()) < SHORT
    assert not any(TOKEN in text for text in _gateway_records(secret_witness, start))


def test_the_witness_sees_aiohttps_server_logger_even_detached_from_the_root() -> None:
    """A record with the token in its traceback, on a logger that does not propagate to the root, is seen."""
    server = logging.getLogger("aiohttp.server")
    saved = server.propagate
    probe = "witness-probe-secret"  # not a session secret: this leak is on purpose
    watched = Witness([probe])
    detach = attach(watched)
    server.propagate = False
    try:
        try:
            raise ValueError(f"Invalid header value char: b'Bearer {probe}\\x01'")
        except ValueError:
            server.exception("Error handling request")
    finally:
        server.propagate = saved
        detach()
    assert watched.leaks() == [f"log aiohttp.server: {probe[:12]}…"]


@pytest.mark.parametrize(("level", "fmt"), [("debug", "json"), ("info", "text"), ("warning", "json")])
async def test_the_gateway_process_logs_no_token_for_malformed_requests(
    tmp_path: Path, idp: FakeIdP, upstream_url: str, level: str, fmt: str
) -> None:
    document: dict[str, Any] = gateway_document(
        issuer=idp.issuer, upstream_url=upstream_url, routes=[{"path": "/open/**", "policy": "public"}]
    )
    document["logging"] = {"level": level, "format": fmt}
    document["reload"] = {"watch": False}
    async with gateway_process(document, tmp_path, ENV) as (base, _):
        port = int(base.rsplit(":", 1)[1])
        for raw in MALFORMED:
            assert (await send(port, raw)).statuses == [400]
        assert (await send(port, b"GET /open/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")).status == 200
    lines = _log(tmp_path, port)  # complete: the process has stopped, and flushed its log on the way out
    assert TOKEN not in "\n".join(lines)
    malformed = [line for line in lines if "malformed" in line]
    assert len(malformed) == (0 if level == "warning" else len(MALFORMED))
    assert all(len(line) < SHORT for line in malformed)
    assert not any("Traceback" in line or "aiohttp.server" in line for line in lines)
    if fmt == "json":
        assert all(json.loads(line)["status"] == 400 for line in malformed)
        assert any(json.loads(line).get("path") == "/open/x" for line in lines) == (level != "warning")


def _log(directory: Path, port: int) -> list[str]:
    return (directory / f"gateway-{port}.log").read_text(encoding="utf-8", errors="replace").splitlines()


def test_a_parse_error_with_its_own_4xx_keeps_it_and_quotes_nothing() -> None:
    assert refusal_for(LineTooLong(f"Bearer {TOKEN}", "8190")).status == 400
    own = BadHttpMessage(f"Bearer {TOKEN}")
    own.code = 431
    refusal = refusal_for(own)
    assert refusal.status == 431 and TOKEN not in refusal.description
