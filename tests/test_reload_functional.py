"""Hot reload against real servers: valid and invalid files under concurrent load, in-flight requests, polling."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from gateway.app import INTROSPECTOR, METRICS, RELOADER, RUNTIME, build_app
from gateway.ops.reload import ConfigSource
from gateway.testing import GatewayTestServer

from .support import ENV, FakeIdP, RecordingUpstream, gateway_document

Client = TestClient[Any, Any]
READER = {"authorization": "Bearer demo-reader-token"}


class Files:
    def __init__(self, tmp_path: Path, idp: FakeIdP, upstream_url: str) -> None:
        self.path = tmp_path / "gateway.yaml"
        self.env = tmp_path / ".env"
        self.issuer = idp.issuer
        self.upstream_url = upstream_url
        self.env.write_text("".join(f"{k}={v}\n" for k, v in ENV.items()))

    def write(self, routes: list[dict[str, Any]] | None = None, **top: Any) -> None:
        document = gateway_document(issuer=self.issuer, upstream_url=self.upstream_url, routes=routes)
        document.update(top)
        self.path.write_text(yaml.safe_dump(document, sort_keys=False))

    def write_invalid(self) -> None:
        self.write([{"path": "/api/public", "policy": "sometimes"}])


@pytest.fixture
def files(tmp_path: Path, idp: FakeIdP, upstream_url: str) -> Files:
    return Files(tmp_path, idp, upstream_url)


async def start(files: Files, aiohttp_client: AiohttpClient, **top: Any) -> Client:
    files.write(**top)
    source = ConfigSource(files.path)
    client: TestClient[Any, Any] = await aiohttp_client(GatewayTestServer(build_app(source.load(), source=source)))
    for _ in range(200):
        if client.app[INTROSPECTOR].ready:
            break
        await asyncio.sleep(0.02)
    return client


def reloads(client: Client, result: str) -> float:
    value = client.app[METRICS].registry.get_sample_value("gateway_config_reloads_total", {"result": result})
    return value or 0.0


async def test_reload_under_load_fails_no_request(
    files: Files, aiohttp_client: AiohttpClient, caplog: pytest.LogCaptureFixture
) -> None:
    client = await start(files, aiohttp_client, reload={"watch": False})
    reloader = client.app[RELOADER]
    answers: list[tuple[str, int, int]] = []
    stop = asyncio.Event()

    async def hammer(path: str, headers: dict[str, str], expected: int) -> None:
        while not stop.is_set():
            async with client.get(path, headers=headers) as resp:
                await resp.read()
                answers.append((path, expected, resp.status))

    load = [("/api/public", {}, 200), ("/api/public", READER, 200), ("/api/private", {}, 401)]
    load += [("/api/private", READER, 200)] * 2
    workers = [asyncio.create_task(hammer(*args)) for args in load]
    extra = [*(gateway_document(issuer="", upstream_url="")["routes"]), {"path": "/new/**", "policy": "public"}]
    try:
        for round_ in range(6):
            if round_ % 2:
                files.write_invalid()
                assert await reloader.reload() is False
            else:
                files.write(extra if round_ % 4 == 0 else None)
                assert await reloader.reload() is True
            await asyncio.sleep(0.05)  # let the load run against the result
    finally:
        stop.set()
        await asyncio.gather(*workers)

    assert len(answers) > 20
    assert [a for a in answers if a[1] != a[2]] == []  # not one request failed or changed its answer
    assert reloads(client, "ok") == 3 and reloads(client, "failed") == 3
    assert "routes[0].policy: expected public or authenticated (or a roles mapping), got 'sometimes'" in caplog.text
    assert "the last good config keeps serving" in caplog.text
    # The last good file had /new/**; the invalid file after it changed nothing.
    assert (await client.get("/new/thing")).status == 200
    assert (await client.get("/api/public")).status == 200


async def test_invalid_file_keeps_the_last_good_config(files: Files, aiohttp_client: AiohttpClient) -> None:
    client = await start(files, aiohttp_client, reload={"watch": False})
    reloader = client.app[RELOADER]
    files.write([{"path": "/api/public", "policy": "public"}, {"path": "/new/**", "policy": "public"}])
    assert await reloader.reload()
    assert (await client.get("/new/x")).status == 200
    files.write_invalid()
    assert not await reloader.reload()
    assert (await client.get("/new/x")).status == 200  # still the last good config
    assert client.app[RUNTIME].current.config.routes[1].pattern.source == "/new/**"


async def test_in_flight_request_finishes_under_its_config(
    files: Files, aiohttp_client: AiohttpClient, upstream: RecordingUpstream
) -> None:
    routes = [{"path": "/open/slow", "policy": "public"}, {"path": "/api/public", "policy": "public"}]
    client = await start(files, aiohttp_client, routes=routes, reload={"watch": False})
    slow = asyncio.create_task(client.get("/open/slow?s=0.5"))
    while not any(seen.raw_path.startswith("/open/slow") for seen in upstream.seen):
        await asyncio.sleep(0.01)
    files.write([{"path": "/api/public", "policy": "public"}])  # /slow is gone for new requests
    assert await client.app[RELOADER].reload()
    assert (await client.get("/open/slow?s=0")).status == 404
    resp = await slow
    assert resp.status == 200 and await resp.text() == "slow"


async def test_unchanged_idp_keeps_its_introspector_and_a_changed_one_is_rebuilt(
    files: Files, aiohttp_client: AiohttpClient
) -> None:
    client = await start(files, aiohttp_client, reload={"watch": False})
    first = client.app[RUNTIME].current.introspector
    files.write([{"path": "/api/private", "policy": "authenticated"}])
    assert await client.app[RELOADER].reload()
    assert client.app[RUNTIME].current.introspector is first
    document = gateway_document(issuer=files.issuer, upstream_url=files.upstream_url, timeout_seconds=3)
    files.path.write_text(yaml.safe_dump(document))
    assert await client.app[RELOADER].reload()
    second = client.app[RUNTIME].current.introspector
    assert second is not first and second is not None and second.ready  # discovered before taking traffic
    assert (await client.get("/api/private", headers=READER)).status == 200


async def test_the_env_file_is_read_again(files: Files, aiohttp_client: AiohttpClient) -> None:
    client = await start(files, aiohttp_client, reload={"watch": False})
    files.env.write_text(f"ZITADEL_CLIENT_ID={ENV['ZITADEL_CLIENT_ID']}\nZITADEL_CLIENT_SECRET=rotated\n")
    assert await client.app[RELOADER].reload()
    idp = client.app[RUNTIME].current.config.idp
    assert idp is not None and idp.client_secret == "rotated"


async def test_watch_picks_up_a_changed_file_and_trigger_reloads(files: Files, aiohttp_client: AiohttpClient) -> None:
    client = await start(files, aiohttp_client, reload={"watch": True, "poll_seconds": 0.05})
    files.write([{"path": "/watched", "policy": "public"}], reload={"watch": True, "poll_seconds": 0.05})
    for _ in range(400):  # a deadline, not a timing assertion
        if reloads(client, "ok"):
            break
        await asyncio.sleep(0.02)
    assert reloads(client, "ok") == 1
    assert client.app[RUNTIME].current.config.routes[0].id == "/watched"

    files.write_invalid()
    for _ in range(400):
        if reloads(client, "failed"):
            break
        await asyncio.sleep(0.02)
    assert reloads(client, "failed") == 1
    await asyncio.sleep(0.2)
    assert reloads(client, "failed") == 1  # an unchanged bad file is tried once, not at every poll

    files.write([{"path": "/triggered", "policy": "public"}], reload={"watch": False})
    client.app[RELOADER].trigger()  # what SIGHUP does
    for _ in range(400):
        if client.app[RUNTIME].current.config.routes[0].id == "/triggered":
            break
        await asyncio.sleep(0.02)
    assert client.app[RUNTIME].current.config.routes[0].id == "/triggered"
