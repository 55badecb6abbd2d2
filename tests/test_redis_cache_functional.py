"""The shared cache in a real redis-server: one IdP call per token across gateways, hashed keys, never open."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from gateway.app import CACHE, METRICS
from gateway.auth.introspection import Principal
from gateway.auth.redis_store import KEY_PREFIX, RedisStore, dump_answer, load_answer
from gateway.ops.metrics import Metrics

from .conftest import GatewayFactory
from .support import ENV, FakeIdP, RecordingUpstream, free_port, gateway_document, gateway_process

Client = TestClient[Any, Any]
READER = {"authorization": "Bearer demo-reader-token"}


def redis_cache(url: str) -> dict[str, Any]:
    return {"backend": "redis", "url": url}


async def test_two_gateway_processes_share_one_introspection_per_token(
    make_gateway: GatewayFactory, idp: FakeIdP, upstream_url: str, redis_url: str, tmp_path: Path
) -> None:
    first = await make_gateway(cache=redis_cache(redis_url))
    assert (await first.get("/api/private-scoped", headers=READER)).status == 200
    assert (await first.get("/api/private", headers={"authorization": "Bearer bogus-1"})).status == 401
    assert idp.introspections == 1 + 1
    document = gateway_document(
        issuer=idp.issuer, upstream_url=upstream_url, introspection_endpoint=idp.issuer + "/oauth/v2/introspect"
    )
    document["cache"] = redis_cache(redis_url)
    async with gateway_process(document, tmp_path, ENV) as (second, _), aiohttp.ClientSession() as client:
        async with client.get(second + "/api/private-scoped", headers=READER) as resp:
            assert resp.status == 200
        async with client.get(second + "/api/private", headers={"authorization": "Bearer bogus-1"}) as resp:
            assert resp.status == 401  # the negative answer is shared too
    assert idp.introspections == 2


async def test_entries_are_stored_under_hashed_keys_with_their_ttl(
    make_gateway: GatewayFactory, idp: FakeIdP, redis_url: str
) -> None:
    gateway = await make_gateway(cache={**redis_cache(redis_url), "ttl_seconds": 30, "negative_ttl_seconds": 3})
    await gateway.get("/api/private", headers=READER)
    await gateway.get("/api/private", headers={"authorization": "Bearer bogus-2"})
    store = aioredis.Redis.from_url(redis_url)
    try:
        key = gateway.app[CACHE].key("demo-reader-token")
        name = KEY_PREFIX + key.hex().encode()
        raw = await store.get(name)
        assert isinstance(raw, bytes) and b"demo-reader-token" not in raw
        assert isinstance(load_answer(raw), Principal)
        assert 0 < await store.pttl(name) <= 30_000
        negative = KEY_PREFIX + gateway.app[CACHE].key("bogus-2").hex().encode()
        negative_raw = await store.get(negative)
        assert isinstance(negative_raw, bytes) and load_answer(negative_raw) == "inactive"
        assert 0 < await store.pttl(negative) <= 3_000
        names = [n async for n in store.scan_iter(match=KEY_PREFIX + b"*")]
        assert all(b"token" not in n and b"bogus" not in n for n in names)
    finally:
        await store.aclose()


async def test_redis_down_falls_back_to_local_cache_and_idp_never_open(
    make_gateway: GatewayFactory, idp: FakeIdP
) -> None:
    gateway = await make_gateway(cache=redis_cache(f"redis://127.0.0.1:{free_port()}/0"))
    assert (await gateway.get("/api/private-scoped", headers=READER)).status == 200
    assert (await gateway.get("/api/private-scoped", headers=READER)).status == 200
    assert idp.introspections == 1  # the local cache still answers
    assert (await gateway.get("/api/private", headers={"authorization": "Bearer bogus"})).status == 401
    noroles = {"authorization": "Bearer demo-noroles-token"}
    assert (await gateway.get("/api/private-scoped", headers=noroles)).status == 403
    assert (await gateway.get("/api/private")).status == 401
    errors = gateway.app[METRICS].registry.get_sample_value(
        "gateway_introspection_cache_total", {"result": "shared_error"}
    )
    assert errors is not None and errors >= 1


async def test_a_garbled_shared_entry_is_a_miss_not_a_principal(redis_url: str) -> None:
    store = RedisStore(redis_url, Metrics(), timeout=1.0)
    raw = aioredis.Redis.from_url(redis_url)
    try:
        key = b"\x01" * 32
        await raw.set(KEY_PREFIX + key.hex().encode(), b'{"v":1,"sub":"x","roles":"admin","scope":""}')
        assert await store.get(key) is None
        await raw.set(KEY_PREFIX + key.hex().encode(), b"not json")
        assert await store.get(key) is None
    finally:
        await store.close()
        await raw.aclose()


async def test_store_pauses_after_a_failure_instead_of_asking_every_request() -> None:
    now = [0.0]
    store = RedisStore(
        f"redis://127.0.0.1:{free_port()}/0", Metrics(), timeout=0.5, pause=2.0, monotonic=lambda: now[0]
    )
    try:
        key = b"\x02" * 32
        assert await store.get(key) is None  # connection refused: counted, paused
        assert not store.available
        now[0] = 2.0
        assert store.available
    finally:
        await store.close()


@pytest.mark.parametrize(
    "answer",
    [
        "inactive",
        Principal(subject="s", roles=frozenset({"a", "b"}), username="u", client_id="c", org_id="o", scope="openid"),
        Principal(subject="s", roles=frozenset(), expires_at=1_800_000_000.0),
        Principal(subject=None, roles=frozenset({"a"}), client_id="c", grants=frozenset({("a", "1"), ("a", "2")})),
    ],
)
def test_answers_round_trip_through_json(answer: Principal | str) -> None:
    assert load_answer(dump_answer(answer)) == answer


async def test_redis_is_asked_once_per_token_burst(make_gateway: GatewayFactory, idp: FakeIdP, redis_url: str) -> None:
    gateway = await make_gateway(cache=redis_cache(redis_url))
    idp.delay = 0.2
    headers = {"authorization": "Bearer demo-noroles-token"}
    responses = await asyncio.gather(*(gateway.get("/api/private", headers=headers) for _ in range(30)))
    assert [r.status for r in responses] == [200] * 30
    assert idp.introspections == 1


async def test_a_burst_across_two_gateways_makes_one_call(
    make_gateway: GatewayFactory, idp: FakeIdP, redis_url: str
) -> None:
    first = await make_gateway(cache=redis_cache(redis_url))
    second = await make_gateway(cache=redis_cache(redis_url))
    idp.delay = 0.3
    headers = {"authorization": "Bearer demo-reader-token"}
    requests = [g.get("/api/private-scoped", headers=headers) for _ in range(20) for g in (first, second)]
    responses = await asyncio.gather(*requests)
    assert [r.status for r in responses] == [200] * 40
    assert idp.introspections == 1


async def test_when_the_claiming_call_fails_the_others_ask_for_themselves(
    make_gateway: GatewayFactory, idp: FakeIdP, redis_url: str
) -> None:
    first = await make_gateway(cache=redis_cache(redis_url))
    second = await make_gateway(cache=redis_cache(redis_url))
    idp.mode = "status:500"
    idp.delay = 0.3
    headers = {"authorization": "Bearer demo-reader-token"}
    responses = await asyncio.gather(*(g.get("/api/private", headers=headers) for g in (first, second)))
    assert [r.status for r in responses] == [503, 503]  # never open, never a cached failure
    idp.mode, idp.delay = "ok", 0.0
    assert (await second.get("/api/private", headers=headers)).status == 200


async def test_mapped_claims_are_shared_and_other_mappings_never_read_them(
    make_gateway: GatewayFactory, idp: FakeIdP, redis_url: str, upstream: RecordingUpstream
) -> None:
    reader = dict(idp.tokens["demo-reader-token"] or {})
    reader["email"] = "reader@example.com"
    idp.tokens["demo-reader-token"] = reader
    mapped = {"headers": {"X-Redis-Test-Email": "email"}}
    first = await make_gateway(cache=redis_cache(redis_url), identity=mapped)
    assert (await first.get("/api/private", headers=READER)).status == 200
    calls = idp.introspections
    second = await make_gateway(cache=redis_cache(redis_url), identity=mapped)
    assert (await second.get("/api/private", headers=READER)).status == 200
    assert idp.introspections == calls  # from Redis, with the kept claim
    assert ("X-Redis-Test-Email", "reader@example.com") in upstream.last.headers
    other = await make_gateway(cache=redis_cache(redis_url), identity={"headers": {"X-Redis-Test-Name": "username"}})
    assert (await other.get("/api/private", headers=READER)).status == 200
    assert idp.introspections == calls + 1  # another mapping keeps other claims: not the same entry
    assert ("X-Redis-Test-Name", "reader") in upstream.last.headers
