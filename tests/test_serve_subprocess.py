"""`python -m gateway` as a real process: both listeners, SIGHUP reload, graceful SIGTERM with a stream in flight."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from .support import CLIENT_SECRET, ENV, FakeIdP, free_port, gateway_document

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class GatedUpstream:
    """/stream sends a first chunk, then waits for the test to open the gate before it finishes."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    streaming: asyncio.Event = field(default_factory=asyncio.Event)
    hung_up: asyncio.Event = field(default_factory=asyncio.Event)  # the gateway closed the connection mid-stream

    def build_app(self) -> web.Application:
        async def stream(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse()
            await response.prepare(request)
            await response.write(b"first,")
            self.streaming.set()
            try:
                await self.gate.wait()
            except asyncio.CancelledError:
                self.hung_up.set()
                raise
            await response.write(b"last")
            await response.write_eof()
            return response

        async def echo(request: web.Request) -> web.Response:
            return web.Response(text=request.path)

        app = web.Application()
        app.router.add_get("/stream", stream)
        app.router.add_get("/{tail:.*}", echo)
        return app


@dataclass
class Process:
    proc: asyncio.subprocess.Process
    config: Path
    document: dict[str, Any]
    proxy: str
    admin: str


async def _get_status(session: aiohttp.ClientSession, url: str) -> int | None:
    try:
        async with session.get(url) as resp:
            await resp.read()
            return resp.status
    except aiohttp.ClientError:
        return None


async def _until(session: aiohttp.ClientSession, url: str, status: int | None, proc: Process) -> None:
    for _ in range(1000):  # a deadline for a slow machine, not a timing assertion
        if await _get_status(session, url) == status:
            return
        if proc.proc.returncode is not None and status is not None:
            break
        await asyncio.sleep(0.02)
    raise AssertionError(f"{url} never answered {status}")


async def start_gateway(tmp_path: Path, idp: FakeIdP, upstream_url: str, **top: Any) -> Process:
    port, admin_port = free_port(), free_port()
    document = gateway_document(
        issuer=idp.issuer,
        upstream_url=upstream_url,
        routes=[{"path": "/stream", "policy": "public"}, {"path": "/api/private", "policy": "authenticated"}],
    )
    document["upstreams"]["default"]["read_timeout_seconds"] = 60
    document.update(
        listen={"host": "127.0.0.1", "port": port},
        admin={"host": "127.0.0.1", "port": admin_port},
        logging={"level": "info", "format": "json"},
        reload={"watch": False},
        **top,
    )
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(document))
    env = {**os.environ, **ENV}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "--config",
        str(config),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    return Process(proc, config, document, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}")


@pytest.fixture
async def gated(aiohttp_server: AiohttpServer) -> AsyncIterator[tuple[GatedUpstream, str]]:
    upstream = GatedUpstream()
    server = await aiohttp_server(upstream.build_app())
    yield upstream, str(server.make_url("")).rstrip("/")
    upstream.gate.set()  # let a handler still waiting finish, so the server stops cleanly


async def finish(process: Process) -> tuple[int, list[dict[str, Any]]]:
    _, stderr = await process.proc.communicate()
    assert process.proc.returncode is not None
    lines = [json.loads(line) for line in stderr.decode().splitlines() if line.strip()]  # all JSON
    return process.proc.returncode, lines


async def test_sighup_reload_and_sigterm_drain_a_stream_in_flight(
    tmp_path: Path, idp: FakeIdP, gated: tuple[GatedUpstream, str]
) -> None:
    upstream, upstream_url = gated
    gw = await start_gateway(tmp_path, idp, upstream_url)
    try:
        async with aiohttp.ClientSession() as session:
            await _until(session, gw.admin + "/readyz", 200, gw)
            assert await _get_status(session, gw.admin + "/healthz") == 200
            assert await _get_status(session, gw.proxy + "/healthz") == 404  # admin answers only on its own port

            # SIGHUP: the new route serves without a restart.
            assert await _get_status(session, gw.proxy + "/added") == 404
            gw.document["routes"].append({"path": "/added", "policy": "public"})
            gw.config.write_text(yaml.safe_dump(gw.document))
            gw.proc.send_signal(signal.SIGHUP)
            await _until(session, gw.proxy + "/added", 200, gw)

            # A streamed answer is half-way when SIGTERM arrives.
            resp = await session.get(gw.proxy + "/stream")
            assert resp.status == 200
            await upstream.streaming.wait()
            gw.proc.send_signal(signal.SIGTERM)
            await _until(session, gw.admin + "/readyz", 503, gw)  # draining: out of the load balancer
            async with aiohttp.ClientSession() as fresh:
                await _until(fresh, gw.proxy + "/added", None, gw)  # no new connections
            assert gw.proc.returncode is None  # still draining the stream
            upstream.gate.set()
            assert await resp.read() == b"first,last"
            resp.release()
    finally:
        upstream.gate.set()
        if gw.proc.returncode is None:
            await asyncio.wait_for(gw.proc.wait(), 60)
    code, lines = await finish(gw)
    assert code == 0
    messages = [line["message"] for line in lines]
    assert any(m.startswith("listening on http://127.0.0.1:") for m in messages)
    startup = next(line for line in lines if "config" in line)
    assert startup["config"]["routes"][0]["path"] == "/stream"
    assert CLIENT_SECRET not in json.dumps(lines)
    assert "Unclosed" not in json.dumps(lines)  # the sessions were closed after the drain
    assert "config reloaded from" in " ".join(messages)
    assert "SIGTERM received" in messages and messages[-1] == "stopped"
    streamed = [x for x in lines if x["logger"] == "gateway.access" and x["path"] == "/stream"]
    assert len(streamed) == 1 and streamed[0]["status"] == 200 and streamed[0]["decision"] == "allow"


async def test_grace_period_bounds_the_drain(tmp_path: Path, idp: FakeIdP, gated: tuple[GatedUpstream, str]) -> None:
    upstream, upstream_url = gated
    gw = await start_gateway(tmp_path, idp, upstream_url, shutdown_grace_seconds=0.3)
    try:
        async with aiohttp.ClientSession() as session:
            await _until(session, gw.admin + "/readyz", 200, gw)
            resp = await session.get(gw.proxy + "/stream")
            await upstream.streaming.wait()
            gw.proc.send_signal(signal.SIGINT)
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()  # the gate never opens: cut when the grace period ends
            resp.release()
            code = await asyncio.wait_for(gw.proc.wait(), 60)
    finally:
        if gw.proc.returncode is None:
            gw.proc.kill()
    assert code == 0
    code, lines = await finish(gw)
    assert "SIGINT received" in [line["message"] for line in lines]
    cut = [x for x in lines if x["logger"] == "gateway.access"]
    assert [(x["path"], x["status"], x["reason"]) for x in cut] == [("/stream", 499, "aborted")]


async def test_a_client_that_hangs_up_cancels_its_upstream_exchange(
    tmp_path: Path, idp: FakeIdP, gated: tuple[GatedUpstream, str]
) -> None:
    """As nginx aborts the upstream request when its client closes: the upstream connection is closed at once,
    long before the upstream's 60 s read timeout, and the access line says 499."""
    upstream, upstream_url = gated
    gw = await start_gateway(tmp_path, idp, upstream_url)
    try:
        async with aiohttp.ClientSession() as session:
            await _until(session, gw.admin + "/readyz", 200, gw)
            resp = await session.get(gw.proxy + "/stream")
            await upstream.streaming.wait()
            resp.close()  # the client hangs up in the middle of the answer
            await asyncio.wait_for(upstream.hung_up.wait(), 30)  # a bound against hanging; the timeout is 60 s
    finally:
        gw.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(gw.proc.wait(), 60)
    code, lines = await finish(gw)
    assert code == 0
    cut = [x for x in lines if x["logger"] == "gateway.access"]
    assert [(x["path"], x["status"], x["reason"]) for x in cut] == [("/stream", 499, "aborted")]
