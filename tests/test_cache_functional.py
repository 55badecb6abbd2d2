"""The introspection cache through a real gateway, against the counting FakeIdP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from demo_backend.app import PRIVATE_SCOPED
from gateway.app import METRICS

from .conftest import GatewayFactory
from .support import FakeIdP, free_port

Client = TestClient[Any, Any]
READER = {"authorization": "Bearer demo-reader-token"}


def cache_count(gateway: Client, result: str) -> float:
    registry = gateway.app[METRICS].registry
    return registry.get_sample_value("gateway_introspection_cache_total", {"result": result}) or 0.0


async def test_a_burst_of_first_requests_makes_one_introspection_call(gateway: Client, idp: FakeIdP) -> None:
    idp.delay = 0.2  # the calls overlap for sure
    responses = await asyncio.gather(*(gateway.get("/api/private-scoped", headers=READER) for _ in range(50)))
    assert [r.status for r in responses] == [200] * 50
    assert idp.introspections == 1
    assert cache_count(gateway, "miss") == 1


async def test_a_cached_token_costs_no_call(gateway: Client, idp: FakeIdP) -> None:
    assert (await gateway.get("/api/private-scoped", headers=READER)).status == 200
    before = idp.introspections
    for _ in range(5):
        resp = await gateway.get("/api/private-scoped", headers=READER)
        assert resp.status == 200
        assert await resp.read() == PRIVATE_SCOPED
    assert idp.introspections == before
    assert cache_count(gateway, "hit") == 5


async def test_roles_are_checked_on_every_request_cache_hit_or_not(gateway: Client, idp: FakeIdP) -> None:
    headers = {"authorization": "Bearer demo-noroles-token"}
    assert (await gateway.get("/api/private", headers=headers)).status == 200
    assert (await gateway.get("/api/private-scoped", headers=headers)).status == 403
    assert (await gateway.get("/api/private", headers=headers)).status == 200
    assert idp.introspections == 1


async def test_the_same_bogus_token_twice_is_answered_from_the_negative_cache(gateway: Client, idp: FakeIdP) -> None:
    bogus = {"authorization": "Bearer no-such-token"}
    first = await gateway.get("/api/private", headers=bogus)
    second = await gateway.get("/api/private", headers=bogus)
    assert (first.status, second.status) == (401, 401)
    assert (await second.json())["error"] == "invalid_token"
    assert idp.introspections == 1
    assert cache_count(gateway, "negative_hit") == 1


async def test_a_token_past_exp_is_refused_although_it_was_cached(make_gateway: GatewayFactory, idp: FakeIdP) -> None:
    gateway = await make_gateway(idp={"clock_leeway_seconds": 0})
    claims = idp.tokens["demo-reader-token"]
    assert claims is not None
    idp.tokens["short-lived"] = {**claims, "exp": int(time.time()) + 2}
    headers = {"authorization": "Bearer short-lived"}
    assert (await gateway.get("/api/private-scoped", headers=headers)).status == 200
    await asyncio.sleep(max(0.0, int(time.time()) + 2 - time.time()) + 0.05)  # past exp (whole seconds)
    refused = await gateway.get("/api/private-scoped", headers=headers)
    assert refused.status == 401
    assert (await refused.json())["error"] == "invalid_token"


@pytest.mark.parametrize("mode", ["status:500", "hang", "html", "garbage"])
async def test_an_idp_failure_is_503_public_routes_still_served_and_recovery_is_immediate(
    make_gateway: GatewayFactory, idp: FakeIdP, mode: str
) -> None:
    gateway = await make_gateway(idp={"timeout_seconds": 0.5})
    idp.mode = mode
    failed = await gateway.get("/api/private", headers=READER)
    assert failed.status == 503
    assert (await failed.json())["error"] == "idp_unavailable"
    assert (await gateway.get("/api/public")).status == 200
    idp.mode = "ok"
    assert (await gateway.get("/api/private", headers=READER)).status == 200  # the 503 was not cached


async def test_an_unreachable_idp_is_503_and_public_routes_are_still_served(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(idp={"introspection_endpoint": f"http://127.0.0.1:{free_port()}/introspect"})
    assert (await gateway.get("/api/private", headers=READER)).status == 503
    assert (await gateway.get("/api/public")).status == 200


async def test_idp_down_for_a_burst_every_waiter_gets_503_from_one_call(
    make_gateway: GatewayFactory, idp: FakeIdP
) -> None:
    gateway = await make_gateway()
    idp.mode = "status:500"
    idp.delay = 0.2
    before = idp.introspections
    responses = await asyncio.gather(*(gateway.get("/api/private", headers=READER) for _ in range(20)))
    assert [r.status for r in responses] == [503] * 20
    assert idp.introspections - before == 1


async def test_introspection_calls_and_latency_are_exposed(gateway: Client, idp: FakeIdP) -> None:
    await gateway.get("/api/private", headers=READER)
    await gateway.get("/api/private", headers=READER)
    await gateway.get("/api/private", headers={"authorization": "Bearer nope"})
    registry = gateway.app[METRICS].registry
    calls = {
        outcome: registry.get_sample_value("gateway_introspection_requests_total", {"outcome": outcome})
        for outcome in ("active", "inactive")
    }
    assert calls == {"active": 1.0, "inactive": 1.0}
    assert registry.get_sample_value("gateway_introspection_duration_seconds_count") == 2.0
    assert (cache_count(gateway, "hit"), cache_count(gateway, "miss")) == (1.0, 2.0)
