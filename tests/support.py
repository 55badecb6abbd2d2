"""Shared test servers: a counting, fault-injecting ZITADEL stand-in and a recording upstream."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from demo_backend.app import build_app as build_demo_app
from demo_backend.idp import DEMO_TOKENS, IdPSettings, build_idp_app

CLIENT_ID = "78366401571920522@tests"
CLIENT_SECRET = "veryweaksecret!"  # '!' and '@' make the RFC 6749 form-encoding matter

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(count: int) -> int:
    """The first of `count` consecutive free ports (workers' admin listeners sit at admin.port + index)."""
    for _ in range(100):
        first = free_port()
        try:
            for offset in range(1, count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", first + offset))
        except OSError:
            continue
        return first
    raise RuntimeError(f"no {count} consecutive free ports")


@dataclass
class FakeIdP:
    """ZITADEL's introspection as the demo stand-in answers it, plus a call counter and failure modes.

    mode: "ok", "status:<code>" (answer that status), "hang" (never answer), "html" (200 text/html),
    "garbage" (200 application/json that is not JSON), "no-active" (200 {} ).
    """

    issuer: str = ""
    tokens: dict[str, dict[str, Any] | None] = field(default_factory=lambda: dict(DEMO_TOKENS))
    mode: str = "ok"
    introspections: int = 0
    discoveries: int = 0
    delay: float = 0.0
    seen_forms: list[dict[str, str]] = field(default_factory=list)
    seen_hosts: list[str] = field(default_factory=list)
    drops: int = 0  # drop this many introspection connections without an answer
    in_flight: int = 0
    max_in_flight: int = 0
    settings: IdPSettings | None = None  # set by build_app; tests may change it (e.g. client_public_key)

    def build_app(self) -> web.Application:
        settings = IdPSettings(issuer=self.issuer, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, tokens=self.tokens)
        self.settings = settings
        app = build_idp_app(settings)

        @web.middleware
        async def faults(request: web.Request, handler: Handler) -> web.StreamResponse:
            self.seen_hosts.append(request.headers.get("Host", ""))
            if request.path.endswith("/openid-configuration"):
                self.discoveries += 1
            else:
                self.introspections += 1
                form = await request.post()
                self.seen_forms.append({k: str(v) for k, v in form.items()})
                if self.drops > 0:
                    self.drops -= 1
                    assert request.transport is not None
                    request.transport.abort()
                    raise asyncio.CancelledError()
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                return await self._answer(request, handler)
            finally:
                self.in_flight -= 1

        app.middlewares.append(faults)
        return app

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.mode == "hang":
            await asyncio.sleep(3600)
        if self.mode.startswith("status:"):
            return web.json_response({"error": "server_error"}, status=int(self.mode.split(":")[1]))
        if self.mode == "html":
            return web.Response(text="<html>oops</html>", content_type="text/html")
        if self.mode == "garbage":
            return web.Response(text="{not json", content_type="application/json")
        if self.mode == "no-active":
            return web.json_response({})
        return await handler(request)


@dataclass
class Seen:
    method: str
    raw_path: str
    headers: list[tuple[str, str]]
    body: bytes
    peer_port: int


@dataclass
class RecordingUpstream:
    """The demo backend's routes plus echo and edge-case endpoints; records every request it gets."""

    seen: list[Seen] = field(default_factory=list)

    def build_app(self) -> web.Application:
        # It reads whole bodies to record them; the gateway itself never buffers them.
        app = build_demo_app(client_max_size=256 * 1024 * 1024)

        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            body = await request.read()
            peer = request.transport.get_extra_info("peername") if request.transport else None
            port = peer[1] if peer else 0
            self.seen.append(Seen(request.method, request.raw_path, list(request.headers.items()), body, port))
            return await handler(request)

        app.middlewares.append(record)
        app.router.add_get("/open/cookies", _cookies)
        app.router.add_get("/open/redirect", _redirect)
        app.router.add_get("/open/big", _big)
        app.router.add_get("/open/slow", _slow)
        app.router.add_get("/open/gzip", _gzip)
        app.router.add_get("/open/broken", _broken)
        app.router.add_get("/open/cors", _cors)
        app.router.add_route("*", "/{tail:.*}", _echo)
        return app

    @property
    def last(self) -> Seen:
        return self.seen[-1]


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {"method": request.method, "raw_path": request.raw_path, "body_length": len(body)},
        headers={"X-Upstream": "echo"},
    )


async def _cookies(_: web.Request) -> web.Response:
    response = web.Response(text="cookies")
    response.headers.add("Set-Cookie", "a=1; Path=/")
    response.headers.add("Set-Cookie", "b=2; Path=/")
    return response


# An upstream with CORS of its own, as permissive as it gets: any origin, with credentials.
_UPSTREAM_CORS = {
    "Access-Control-Allow-Credentials": "true",
    "Access-Control-Expose-Headers": "X-Secret",
    "Access-Control-Allow-Methods": "*",
    "access-control-max-age": "86400",
}


async def _cors(request: web.Request) -> web.StreamResponse:
    """Echoes Origin (or `*`) with credentials; `?stream=1` answers streamed (headers go out before the body)."""
    headers = {"Access-Control-Allow-Origin": request.headers.get("Origin", "*"), **_UPSTREAM_CORS}
    if not request.query.get("stream"):
        return web.Response(text="cors", headers=headers)
    response = web.StreamResponse(headers=headers)
    await response.prepare(request)
    await response.write(b"cors")
    await response.write_eof()
    return response


async def _redirect(_: web.Request) -> web.Response:
    return web.Response(status=302, headers={"Location": "/api/public"})


async def _big(request: web.Request) -> web.StreamResponse:
    size = int(request.query.get("n", "1048576"))
    response = web.StreamResponse()
    response.content_type = "application/octet-stream"
    await response.prepare(request)
    chunk = b"x" * 65536
    sent = 0
    while sent < size:
        piece = chunk[: size - sent]
        await response.write(piece)
        sent += len(piece)
    await response.write_eof()
    return response


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("s", "5")))
    return web.Response(text="slow")


async def _gzip(_: web.Request) -> web.Response:
    return web.Response(body=gzip.compress(b"compressed"), headers={"Content-Encoding": "gzip"})


async def _broken(request: web.Request) -> web.StreamResponse:
    """Promises 1 MiB, sends 100 KiB, then drops the connection."""
    response = web.StreamResponse(headers={"Content-Length": str(1 << 20)})
    await response.prepare(request)
    await response.write(b"y" * 100_000)
    assert request.transport is not None
    request.transport.abort()
    return response


def gateway_document(
    *, issuer: str, upstream_url: str, routes: list[dict[str, Any]] | None = None, **idp: Any
) -> dict[str, Any]:
    """A config document like config.yaml, pointing at the test servers."""
    return {
        "listen": {"host": "127.0.0.1", "port": 5000},  # unused: the test server picks a free port
        "idp": {"issuer": issuer, "clock_leeway_seconds": 5, "timeout_seconds": 2, **idp},
        "upstreams": {"default": {"url": upstream_url, "connect_timeout_seconds": 2, "read_timeout_seconds": 2}},
        "routes": routes
        if routes is not None
        else [
            {"path": "/api/public", "policy": "public"},
            {"path": "/api/private", "policy": "authenticated"},
            {"path": "/api/private-scoped", "roles": {"any_of": ["read:messages"]}},
            {"path": "/api/whoami", "policy": "authenticated"},
            {"path": "/open/**", "policy": "public"},
            {"path": "/echo/**", "policy": "authenticated"},
        ],
    }


ENV = {"ZITADEL_CLIENT_ID": CLIENT_ID, "ZITADEL_CLIENT_SECRET": CLIENT_SECRET}


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 10 s."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    """Until something accepts connections on 127.0.0.1:port; RuntimeError if `proc` exits first or never listens."""
    for _ in range(400):
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.025)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise RuntimeError(f"{what} does not listen on {port}")


@contextlib.asynccontextmanager
async def gateway_process(
    document: dict[str, Any], directory: Path, env: dict[str, str]
) -> AsyncIterator[tuple[str, subprocess.Popen[bytes]]]:
    """Run `python -m gateway` as a real process on a free port; yield its base URL and process; stop it."""
    port = free_port()
    admin = document.get("admin") or {"host": "127.0.0.1", "port": free_ports(int(document.get("workers", 1)))}
    document = {**document, "listen": {"host": "127.0.0.1", "port": port}, "admin": admin}
    config = directory / f"gateway-{port}.yaml"
    config.write_text(yaml.safe_dump(document), encoding="utf-8")
    log = (directory / f"gateway-{port}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--config", str(config), "--env-file", os.devnull],
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        await wait_for_port(port, proc, "gateway")
        decisions = (document.get("forward_auth") or {}).get("port")
        if decisions:  # opened just after the proxy's: ready only once both listen
            await wait_for_port(int(decisions), proc, "gateway's forward-auth listener")
        yield f"http://127.0.0.1:{port}", proc
    finally:
        stop(proc)
        log.close()
