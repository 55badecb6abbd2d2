"""Every failure gets a clear JSON answer: IdP trouble is 503 (never 401, never a pass), upstream trouble 502/504."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from .conftest import GatewayFactory
from .support import FakeIdP, free_port

Client = TestClient[Any, Any]
READER = {"Authorization": "Bearer demo-reader-token"}


@pytest.mark.parametrize("mode", ["status:500", "status:401", "status:400", "html", "garbage", "no-active"])
async def test_idp_failures_are_503_with_retry_after(make_gateway: GatewayFactory, idp: FakeIdP, mode: str) -> None:
    client = await make_gateway()
    idp.mode = mode
    resp = await client.get("/api/private", headers=READER)
    assert resp.status == 503
    assert resp.headers["Retry-After"].isdigit()
    assert (await resp.json())["error"] == "idp_unavailable"
    # Public routes do not depend on the IdP.
    assert (await client.get("/api/public")).status == 200
    idp.mode = "ok"
    assert (await client.get("/api/private", headers=READER)).status == 200


async def test_bad_client_credentials_are_logged_as_a_configuration_error(
    make_gateway: GatewayFactory, idp: FakeIdP, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_gateway()
    idp.mode = "status:401"
    with caplog.at_level(logging.ERROR, logger="gateway.introspection"):
        assert (await client.get("/api/private", headers=READER)).status == 503
    assert any("client credentials" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)


async def test_hanging_idp_times_out_to_503(make_gateway: GatewayFactory, idp: FakeIdP) -> None:
    client = await make_gateway(idp={"timeout_seconds": 0.3})
    idp.mode = "hang"
    resp = await client.get("/api/private", headers=READER)
    assert resp.status == 503


async def test_unreachable_idp_is_503_and_public_still_served(make_gateway: GatewayFactory) -> None:
    client = await make_gateway(idp={"issuer": f"http://127.0.0.1:{free_port()}", "discovery_attempts": 1})
    resp = await client.get("/api/private", headers=READER)
    assert resp.status == 503
    assert (await resp.json())["error"] == "idp_unavailable"
    assert (await client.get("/api/public")).status == 200


async def test_explicit_introspection_endpoint_skips_discovery(make_gateway: GatewayFactory, idp: FakeIdP) -> None:
    client = await make_gateway(idp={"introspection_endpoint": idp.issuer + "/oauth/v2/introspect"})
    assert (await client.get("/api/private", headers=READER)).status == 200
    assert idp.discoveries == 0


async def test_discovery_is_retried_when_the_idp_comes_up_late(make_gateway: GatewayFactory, idp: FakeIdP) -> None:
    idp.mode = "status:503"
    client = await make_gateway(idp={"discovery_attempts": 1})
    assert (await client.get("/api/private", headers=READER)).status == 503
    idp.mode = "ok"
    # Discovery is retried on demand, at most once every two seconds (and not while the breaker is open).
    for _ in range(150):
        resp = await client.get("/api/private", headers=READER)
        if resp.status == 200:
            break
        await asyncio.sleep(0.1)
    assert resp.status == 200


async def test_connect_url_presents_the_issuer_host(make_gateway: GatewayFactory, idp: FakeIdP) -> None:
    # Connect to the IdP by one address while presenting (and expecting) another issuer, as inside docker compose.
    issuer = "http://zitadel.example:8080"
    idp.tokens["iss-token"] = {"sub": "s", "iss": issuer}
    client = await make_gateway(idp={"issuer": issuer, "connect_url": idp.issuer})
    resp = await client.get("/api/private", headers={"Authorization": "Bearer iss-token"})
    assert resp.status == 200
    assert idp.seen_hosts[-1] == "zitadel.example:8080"


async def test_upstream_unreachable_is_502_json(make_gateway: GatewayFactory) -> None:
    client = await make_gateway(upstreams={"default": {"url": f"http://127.0.0.1:{free_port()}"}})
    resp = await client.get("/api/public")
    assert resp.status == 502
    assert await resp.json() == {
        "error": "bad_gateway",
        "error_description": "the upstream service could not be reached",
    }


async def test_upstream_timeout_is_504_json(make_gateway: GatewayFactory, upstream_url: str) -> None:
    client = await make_gateway(upstreams={"default": {"url": upstream_url, "read_timeout_seconds": 0.2}})
    resp = await client.get("/open/slow", params={"s": "3"})
    assert resp.status == 504
    assert (await resp.json())["error"] == "gateway_timeout"


async def test_no_token_in_error_bodies_or_logs(
    make_gateway: GatewayFactory, idp: FakeIdP, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_gateway()
    token = "leak-canary-token"
    with caplog.at_level(logging.DEBUG):
        for mode in ("ok", "status:500", "garbage"):
            idp.mode = mode
            resp = await client.get("/api/private", headers={"Authorization": f"Bearer {token}"})
            assert token not in await resp.text()
    assert token not in caplog.text
