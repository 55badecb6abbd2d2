"""The introspection cache on its own: a scripted inner authenticator and hand-driven clocks, no network."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from gateway.auth.cache import CachingAuthenticator, LocalCache, cache_key_prefix, positive_ttl
from gateway.auth.introspection import Principal
from gateway.config import CacheConfig
from gateway.errors import IdPUnavailable, InvalidToken
from gateway.ops.metrics import Metrics


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Inner:
    """Answers from a table; counts calls; can be held at a gate to make calls overlap."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.answers: dict[str, Principal | Exception] = {}
        self.gate: asyncio.Event | None = None

    async def authenticate(self, token: str) -> Principal:
        self.calls.append(token)
        if self.gate is not None:
            await self.gate.wait()
        answer = self.answers.get(token, InvalidToken(reason="inactive"))
        if isinstance(answer, Exception):
            raise answer
        return answer


WALL = 1_800_000_000.0


def principal(exp: float | None = WALL + 3600, roles: frozenset[str] = frozenset({"read"})) -> Principal:
    return Principal(subject="user-1", roles=roles, expires_at=exp)


def make(
    inner: Inner, *, ttl: float = 60, negative_ttl: float = 10, max_entries: int = 1000
) -> tuple[CachingAuthenticator, Clock, Clock, Metrics]:
    mono, wall, metrics = Clock(100.0), Clock(WALL), Metrics()
    cache = CachingAuthenticator(
        inner,
        CacheConfig(ttl=ttl, negative_ttl=negative_ttl, max_entries=max_entries),
        metrics,
        key_prefix=cache_key_prefix("http://idp/introspect", "client", None),
        monotonic=mono,
        wall=wall,
    )
    return cache, mono, wall, metrics


def count(metrics: Metrics, result: str) -> float:
    return metrics.registry.get_sample_value("gateway_introspection_cache_total", {"result": result}) or 0.0


async def test_a_cached_answer_costs_no_second_call() -> None:
    inner = Inner()
    inner.answers["t"] = principal()
    cache, _, _, metrics = make(inner)
    assert await cache.authenticate("t") == principal()
    assert await cache.authenticate("t") == principal()
    assert inner.calls == ["t"]
    assert (count(metrics, "miss"), count(metrics, "hit")) == (1, 1)


async def test_cached_answers_at_hand_without_a_call() -> None:
    inner = Inner()
    inner.answers["t"] = principal(exp=WALL + 30)
    cache, _, wall, metrics = make(inner)
    assert cache.cached("t") is None  # not asked yet: the caller goes on to authenticate()
    assert inner.calls == []
    await cache.authenticate("t")
    assert cache.cached("t") == principal(exp=WALL + 30)
    assert count(metrics, "hit") == 1
    wall.now = WALL + 30
    with pytest.raises(InvalidToken):  # `exp` is checked on this path too
        cache.cached("t")
    with pytest.raises(InvalidToken):
        await cache.authenticate("bogus")
    with pytest.raises(InvalidToken):  # the negative answer, from the cache
        cache.cached("bogus")
    assert inner.calls == ["t", "bogus"]
    assert count(metrics, "negative_hit") == 1


async def test_concurrent_first_requests_share_one_call() -> None:
    inner = Inner()
    inner.answers["t"] = principal()
    inner.gate = asyncio.Event()
    cache, _, _, metrics = make(inner)
    waiters = [asyncio.ensure_future(cache.authenticate("t")) for _ in range(50)]
    await asyncio.sleep(0)
    inner.gate.set()
    assert all(p == principal() for p in await asyncio.gather(*waiters))
    assert inner.calls == ["t"]
    assert count(metrics, "coalesced") == 49


async def test_a_failed_call_wakes_every_waiter_with_the_same_503_and_is_not_cached() -> None:
    inner = Inner()
    failure = IdPUnavailable()
    inner.answers["t"] = failure
    inner.gate = asyncio.Event()
    cache, _, _, _ = make(inner)
    waiters = [asyncio.ensure_future(cache.authenticate("t")) for _ in range(5)]
    await asyncio.sleep(0)
    inner.gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(r is failure for r in results)
    assert inner.calls == ["t"]
    inner.gate = None
    inner.answers["t"] = principal()
    assert await cache.authenticate("t") == principal()  # the IdP is back: asked again, not a cached 503
    assert inner.calls == ["t", "t"]


async def test_a_waiter_that_goes_away_does_not_cancel_the_shared_call() -> None:
    inner = Inner()
    inner.answers["t"] = principal()
    inner.gate = asyncio.Event()
    cache, _, _, _ = make(inner)
    first = asyncio.ensure_future(cache.authenticate("t"))
    second = asyncio.ensure_future(cache.authenticate("t"))
    await asyncio.sleep(0)
    first.cancel()
    inner.gate.set()
    assert await second == principal()
    assert inner.calls == ["t"]


async def test_inactive_answers_are_cached_for_the_negative_ttl() -> None:
    inner = Inner()
    cache, mono, _, metrics = make(inner, negative_ttl=10)
    for _ in range(3):
        with pytest.raises(InvalidToken):
            await cache.authenticate("bogus")
    assert inner.calls == ["bogus"]
    assert count(metrics, "negative_hit") == 2
    mono.now += 10
    with pytest.raises(InvalidToken):
        await cache.authenticate("bogus")
    assert inner.calls == ["bogus", "bogus"]


async def test_positive_entries_live_no_longer_than_the_token() -> None:
    inner = Inner()
    inner.answers["t"] = principal(exp=WALL + 5)
    cache, mono, _, _ = make(inner, ttl=60)
    await cache.authenticate("t")
    mono.now += 5
    await cache.authenticate("t")
    assert inner.calls == ["t", "t"]


async def test_positive_entries_expire_after_the_ttl() -> None:
    inner = Inner()
    inner.answers["t"] = principal()
    cache, mono, _, _ = make(inner, ttl=60)
    await cache.authenticate("t")
    mono.now += 59
    await cache.authenticate("t")
    mono.now += 1
    await cache.authenticate("t")
    assert inner.calls == ["t", "t"]


async def test_exp_is_checked_again_on_every_hit() -> None:
    # The wall clock passes exp while the entry is still in the cache (a clock step, or a shared entry).
    inner = Inner()
    inner.answers["t"] = principal(exp=WALL + 30)
    cache, _, wall, metrics = make(inner)
    await cache.authenticate("t")
    wall.now += 30
    with pytest.raises(InvalidToken) as refused:
        await cache.authenticate("t")
    assert refused.value.reason == "expired"
    assert inner.calls == ["t"]
    assert count(metrics, "expired_on_hit") == 1


async def test_ttl_zero_turns_positive_caching_off() -> None:
    inner = Inner()
    inner.answers["t"] = principal()
    cache, _, _, _ = make(inner, ttl=0)
    await cache.authenticate("t")
    await cache.authenticate("t")
    assert inner.calls == ["t", "t"]


async def test_the_cache_is_bounded_and_evicts_the_least_recently_used() -> None:
    inner = Inner()
    cache, _, _, metrics = make(inner, max_entries=3)
    for token in ("a", "b", "c"):
        with pytest.raises(InvalidToken):
            await cache.authenticate(token)
    with pytest.raises(InvalidToken):
        await cache.authenticate("a")  # a is now the most recently used
    for token in ("d", "e"):
        with pytest.raises(InvalidToken):
            await cache.authenticate(token)
    assert len(cache) == 3
    inner.calls.clear()
    for token in ("a", "b", "c", "d", "e"):
        with pytest.raises(InvalidToken):
            await cache.authenticate(token)
    assert inner.calls[:2] == ["b", "c"]  # evicted; a, d and e were still there
    assert count(metrics, "evicted") >= 2


def test_keys_are_sha256_of_idp_and_token_never_the_token() -> None:
    cache, _, _, _ = make(Inner())
    key = cache.key("secret-token")
    assert b"secret-token" not in key
    assert key == hashlib.sha256(b"http://idp/introspect\0client\0\0secret-token").digest()
    other = cache_key_prefix("http://other-idp/introspect", "client", None)
    other.update(b"secret-token")
    assert other.digest() != key


def test_local_cache_expires_by_deadline() -> None:
    local = LocalCache(10)
    local.put(b"k", "inactive", deadline=5.0)
    assert local.get(b"k", now=4.9) == "inactive"
    assert local.get(b"k", now=5.0) is None
    assert len(local) == 0


@pytest.mark.parametrize(
    ("exp", "ttl", "expected"),
    [(None, 60.0, 60.0), (WALL + 10, 60.0, 10.0), (WALL + 100, 60.0, 60.0), (WALL - 1, 60.0, -1.0)],
)
def test_positive_ttl_is_bounded_by_exp(exp: float | None, ttl: float, expected: float) -> None:
    assert positive_ttl(principal(exp=exp), ttl, WALL) == expected
