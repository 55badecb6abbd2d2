"""The admin app: health, readiness and Prometheus metrics, answers that depend on the path only."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pytest_aiohttp import AiohttpClient

from gateway.ops.admin import build_admin_app

from .conftest import GatewayFactory
from .support import FakeIdP

Client = TestClient[Any, Any]
READER = {"authorization": "Bearer demo-reader-token"}


async def admin_for(gateway: Client, aiohttp_client: AiohttpClient, stopping: bool = False) -> Client:
    return await aiohttp_client(build_admin_app(gateway.app, lambda: stopping))


async def test_healthz_and_readyz(gateway: Client, aiohttp_client: AiohttpClient) -> None:
    admin = await admin_for(gateway, aiohttp_client)
    resp = await admin.get("/healthz")
    assert resp.status == 200 and await resp.json() == {"status": "alive"}
    resp = await admin.get("/readyz")
    assert resp.status == 200 and await resp.json() == {"status": "ready"}
    assert resp.headers["Cache-Control"] == "no-store"


async def test_readyz_is_503_until_discovery_succeeds(
    make_gateway: GatewayFactory, idp: FakeIdP, aiohttp_client: AiohttpClient
) -> None:
    idp.mode = "status:500"
    gateway = await make_gateway()
    admin = await admin_for(gateway, aiohttp_client)
    resp = await admin.get("/readyz")
    assert resp.status == 503
    assert await resp.json() == {"status": "identity provider discovery pending"}
    assert (await admin.get("/healthz")).status == 200  # alive all the same


async def test_readyz_without_idp_needs_only_the_config(
    make_gateway: GatewayFactory, aiohttp_client: AiohttpClient
) -> None:
    gateway = await make_gateway(routes=[{"path": "/api/public", "policy": "public"}], idp=None)
    assert (await (await admin_for(gateway, aiohttp_client)).get("/readyz")).status == 200


async def test_readyz_is_503_while_stopping(gateway: Client, aiohttp_client: AiohttpClient) -> None:
    admin = await admin_for(gateway, aiohttp_client, stopping=True)
    resp = await admin.get("/readyz")
    assert resp.status == 503 and await resp.json() == {"status": "stopping"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer demo-reader-token"},
        {"X-Forwarded-For": "10.0.0.1", "Host": "evil.example", "Accept": "text/html"},
        {"X-Auth-Subject": "admin", "Cookie": "ready=false"},
    ],
)
async def test_answers_depend_on_the_path_only(
    gateway: Client, aiohttp_client: AiohttpClient, headers: dict[str, str]
) -> None:
    admin = await admin_for(gateway, aiohttp_client)
    for path, status, body in (("/healthz", 200, {"status": "alive"}), ("/readyz", 200, {"status": "ready"})):
        resp = await admin.get(path + "?verbose=1", headers=headers)
        assert resp.status == status and await resp.json() == body
    assert (await admin.get("/metrics", headers=headers)).status == 200
    assert (await admin.get("/api/public", headers=headers)).status == 404  # the proxy's routes are not here


async def test_metrics(gateway: Client, aiohttp_client: AiohttpClient) -> None:
    await gateway.get("/api/public")
    await gateway.get("/api/private")
    await gateway.get("/api/private-scoped", headers=READER)
    await gateway.get("/no/such/path/7f3a")
    admin = await admin_for(gateway, aiohttp_client)
    resp = await admin.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    text = await resp.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {
        "gateway_requests",
        "gateway_request_duration_seconds",
        "gateway_requests_in_flight",
        "gateway_upstream_duration_seconds",
        "gateway_introspection_requests",
        "gateway_introspection_duration_seconds",
        "gateway_introspection_cache",
        "gateway_config_reloads",
    } <= families.keys()
    requests = {
        (s.labels["route"], s.labels["decision"], s.labels["status"]): s.value
        for s in families["gateway_requests"].samples
        if s.name == "gateway_requests_total"
    }
    assert requests == {
        ("/api/public", "allow", "200"): 1,
        ("/api/private", "deny", "401"): 1,
        ("/api/private-scoped", "allow", "200"): 1,
        ("-", "deny", "404"): 1,
    }
    assert "7f3a" not in text  # a raw path never becomes a label
    assert "demo-reader-token" not in text
