"""Unknown tokens against a slow but healthy IdP: they cost their sender, never the breaker or other clients."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from gateway.app import INTROSPECTOR
from gateway.auth.client_budget import ClientBudget
from gateway.errors import TooManyRequests
from tests.conftest import GatewayFactory
from tests.support import FakeIdP, RecordingUpstream

READER = {"Authorization": "Bearer demo-reader-token"}
WAIT = 30.0  # a bound against hanging, never a timing assertion


def _random_token() -> dict[str, str]:
    return {"Authorization": f"Bearer {secrets.token_urlsafe(24)}"}


async def test_waiting_for_a_call_slot_never_opens_the_breaker(
    make_gateway: GatewayFactory, idp: FakeIdP, upstream: RecordingUpstream
) -> None:
    # One slot, a 1 s wait for it, an IdP that takes at least 0.2 s a call: most of 30 new tokens cannot get a slot.
    gateway = await make_gateway(
        idp={"max_concurrent_calls": 1, "timeout_seconds": 1, "max_concurrent_calls_per_client": 0}
    )
    idp.delay = 0.2
    answers = await asyncio.gather(*(gateway.get("/api/private", headers=_random_token()) for _ in range(30)))
    statuses = [a.status for a in answers]
    assert set(statuses) <= {401, 503} and 503 in statuses
    for answer in answers:
        if answer.status == 503:
            assert answer.headers["Retry-After"] == "1"
            assert (await answer.json())["error"] == "idp_unavailable"
    assert not gateway.app[INTROSPECTOR].breaker.is_open
    idp.delay = 0
    resp = await gateway.get("/api/private", headers=READER)  # a slot is free again: a legitimate token passes
    assert resp.status == 200


async def test_the_idps_own_timeouts_still_open_it(make_gateway: GatewayFactory, idp: FakeIdP) -> None:
    gateway = await make_gateway(idp={"timeout_seconds": 0.2, "breaker_failures": 2})
    idp.mode = "hang"
    for _ in range(2):
        assert (await gateway.get("/api/private", headers=_random_token())).status == 503
    assert gateway.app[INTROSPECTOR].breaker.is_open


async def test_one_client_cannot_hold_every_call_slot(
    make_gateway: GatewayFactory, idp: FakeIdP, upstream: RecordingUpstream
) -> None:
    gateway = await make_gateway(idp={"max_concurrent_calls_per_client": 2, "timeout_seconds": 10})
    assert (await gateway.get("/api/private", headers=READER)).status == 200  # cached from now on
    idp.delay = 1.0
    held = [asyncio.ensure_future(gateway.get("/api/private", headers=_random_token())) for _ in range(2)]
    for _ in range(int(WAIT / 0.01)):
        if idp.in_flight == 2:
            break
        await asyncio.sleep(0.01)
    assert idp.in_flight == 2
    refused = await gateway.get("/api/private", headers=_random_token())
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "1"
    assert (await refused.json())["error"] == "too_many_requests"
    assert (await gateway.get("/api/private", headers=READER)).status == 200  # a cached token costs nothing
    assert [(await a).status for a in held] == [401, 401]
    assert idp.introspections == 3  # the refused token never reached the IdP
    assert (await gateway.get("/api/private", headers=_random_token())).status == 401  # its budget is back


def test_client_budget_counts_per_client() -> None:
    budget = ClientBudget(1)
    with budget.checking("a"), budget.checking("b"):
        with pytest.raises(TooManyRequests), budget.checking("a"):
            pass
        assert len(budget) == 2
    assert len(budget) == 0  # nothing is kept for a client with nothing in flight
    unlimited = ClientBudget(0)
    with unlimited.checking("a"), unlimited.checking("a"):
        assert len(unlimited) == 0
