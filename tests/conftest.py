"""Fixtures that start real servers on 127.0.0.1 and free ports: the IdP stand-in, the upstream, the gateway."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient, AiohttpServer

from gateway.app import INTROSPECTOR, build_app
from gateway.config import parse_config
from gateway.testing import GatewayTestServer

from .secret_witness import secret_witness
from .support import ENV, FakeIdP, RecordingUpstream, free_port, gateway_document

__all__ = ["secret_witness"]  # an autouse session fixture: it watches the whole run for leaked secrets

GatewayFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def idp(aiohttp_server: AiohttpServer) -> FakeIdP:
    port = free_port()  # the issuer URL names the port, so it is chosen before the app is built
    fake = FakeIdP(issuer=f"http://127.0.0.1:{port}")
    await aiohttp_server(fake.build_app(), port=port)
    return fake


@pytest.fixture
async def upstream_server(aiohttp_server: AiohttpServer) -> tuple[RecordingUpstream, TestServer]:
    recorder = RecordingUpstream()
    server = await aiohttp_server(recorder.build_app())
    return recorder, server


@pytest.fixture
def upstream(upstream_server: tuple[RecordingUpstream, TestServer]) -> RecordingUpstream:
    return upstream_server[0]


@pytest.fixture
def upstream_url(upstream_server: tuple[RecordingUpstream, TestServer]) -> str:
    return str(upstream_server[1].make_url("")).rstrip("/")


@pytest.fixture
def make_gateway(idp: FakeIdP, upstream_url: str, aiohttp_client: AiohttpClient) -> GatewayFactory:
    """Start a gateway on a free port against the test IdP and upstream; wait until discovery is done."""

    async def make(
        routes: list[dict[str, Any]] | None = None, *, env: dict[str, str] | None = None, **overrides: Any
    ) -> TestClient[Any, Any]:
        document = gateway_document(issuer=idp.issuer, upstream_url=upstream_url, routes=routes)
        for key, value in overrides.items():
            document[key] = {**document.get(key, {}), **value} if isinstance(value, dict) else value
        config = parse_config(document, source="test.yaml", env=ENV if env is None else env)
        client: TestClient[Any, Any] = await aiohttp_client(GatewayTestServer(build_app(config)))
        if config.idp is not None:
            introspector = client.app[INTROSPECTOR]
            for _ in range(100):
                if introspector.ready or idp.mode != "ok":
                    break
                await asyncio.sleep(0.02)
        return client

    return make


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> TestClient[Any, Any]:
    return await make_gateway()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real redis-server on a free port for the whole session (scripts/ensure-system-packages.sh installs it)."""
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if server.poll() is not None:
                raise RuntimeError("redis-server exited at start")
            time.sleep(0.025)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(timeout=10)
