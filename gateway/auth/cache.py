"""The introspection cache: an Authenticator in front of another, remembering the IdP's answers only.

What is cached is an answer (a Principal, or "inactive" with its reason), never an allow/deny decision: the
pipeline evaluates routes and roles on every request, hit or miss. Keys are SHA-256 over the IdP's identity
and the token, so a raw token is never stored. Positive answers live min(ttl, exp - now) and `exp` is checked
again on every hit; inactive answers live `negative_ttl`. The local cache is a bounded LRU, so a client spraying
random tokens costs at most `max_entries` entries. Concurrent requests for one uncached token share one IdP
call; a failed call is never cached and every waiter gets the same 503.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from gateway.auth.claims import Principal
from gateway.auth.introspection import Authenticator
from gateway.config import CacheConfig
from gateway.errors import InvalidToken
from gateway.ops.metrics import Metrics

# An IdP answer as the cache keeps it: a Principal, or the reason the token is inactive.
Answer = Principal | str
Clock = Callable[[], float]


class SharedStore(Protocol):
    """A cache shared between processes (Redis). Errors are its own business: it answers None / does nothing."""

    async def get(self, key: bytes) -> Answer | None: ...

    async def put(self, key: bytes, answer: Answer, ttl: float) -> None: ...

    async def claim(self, key: bytes) -> bool:
        """True: this process asks the IdP for `key` (or the store cannot tell). False: another process is."""

    async def wait(self, key: bytes) -> Answer | None:
        """Wait for the process holding the claim: its answer, or None when it gave up (ask the IdP then)."""

    async def release(self, key: bytes) -> None: ...


def cache_key_prefix(issuer: str, client_id: str, project_id: str | None, kept: object = ()) -> hashlib._Hash:
    """The hash state every key starts from: the same token at another IdP, client or project is another entry.

    The issuer stands for its introspection endpoint (discovered from it, or configured beside it), so that
    processes that discover and processes that are told the endpoint share entries. `kept`: the claims a
    principal keeps (ClaimSelection); processes that map other claims do not share entries.
    """
    extra = f"{kept}\0" if kept else ""  # nothing mapped: the keys of before, so a shared cache stays warm
    return hashlib.sha256(f"{issuer}\0{client_id}\0{project_id or ''}\0{extra}".encode())


class LocalCache:
    """A bounded LRU of key -> (monotonic deadline, answer). Not thread-safe: one per event loop."""

    __slots__ = ("_entries", "_max", "evictions")

    def __init__(self, max_entries: int) -> None:
        self._entries: OrderedDict[bytes, tuple[float, Answer]] = OrderedDict()
        self._max = max_entries
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes, now: float) -> Answer | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: bytes, answer: Answer, deadline: float) -> None:
        self._entries[key] = (deadline, answer)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
            self.evictions += 1

    def remaining(self, key: bytes, now: float) -> float:
        entry = self._entries.get(key)
        if entry is None or not isinstance(entry[1], Principal):
            return 0.0
        return max(0.0, entry[0] - now)

    def drop(self, key: bytes) -> None:
        self._entries.pop(key, None)


def positive_ttl(principal: Principal, ttl: float, now: float) -> float:
    """min(ttl, exp - now): an answer never outlives its token."""
    if principal.expires_at is None:
        return ttl
    return min(ttl, principal.expires_at - now)


class CachingAuthenticator:
    def __init__(
        self,
        inner: Authenticator,
        config: CacheConfig,
        metrics: Metrics,
        *,
        key_prefix: hashlib._Hash,
        shared: SharedStore | None = None,
        monotonic: Clock = time.monotonic,
        wall: Clock = time.time,
    ) -> None:
        self._inner = inner
        self._config = config
        self._shared = shared
        self._prefix = key_prefix
        self._local = LocalCache(config.max_entries)
        self._pending: dict[bytes, asyncio.Future[Answer]] = {}
        self._monotonic = monotonic
        self._wall = wall
        # Resolved once: a labels() lookup per request is measurable in the hot path.
        self._hits = metrics.cache.labels("hit")
        self._negative_hits = metrics.cache.labels("negative_hit")
        self._misses = metrics.cache.labels("miss")
        self._coalesced = metrics.cache.labels("coalesced")
        self._shared_hits = metrics.cache.labels("shared_hit")
        self._evicted = metrics.cache.labels("evicted")
        self._expired = metrics.cache.labels("expired_on_hit")

    def __len__(self) -> int:
        return len(self._local)

    def key(self, token: str) -> bytes:
        digest = self._prefix.copy()
        digest.update(token.encode())
        return digest.digest()

    def cached(self, token: str) -> Principal | None:
        """The answer at hand in this process (a Principal, or InvalidToken raised), else None: then authenticate().
        No coroutine, for the requests that need none."""
        return self._cached(self.key(token))

    def _cached(self, key: bytes) -> Principal | None:
        answer = self._local.get(key, self._monotonic())
        if answer is None:
            return None
        (self._hits if isinstance(answer, Principal) else self._negative_hits).inc()
        return self._verdict(key, answer)

    def pending(self, token: str) -> bool:
        """Whether a call for this token is under way already (a request for it now shares that call)."""
        return self.key(token) in self._pending

    def remaining(self, token: str) -> float:
        """Seconds this process keeps the token's positive answer (0 if none): how long a copy of a decision made
        from it (an ingress's cache) may live without outlasting ours."""
        return self._local.remaining(self.key(token), self._monotonic())

    async def authenticate(self, token: str) -> Principal:
        key = self.key(token)
        principal = self._cached(key)
        if principal is not None:
            return principal
        pending = self._pending.get(key)
        if pending is None:
            self._misses.inc()
            pending = asyncio.ensure_future(self._fill(key, token))
            self._pending[key] = pending
            pending.add_done_callback(lambda done: self._settled(key, done))
        else:
            self._coalesced.inc()
        # shield: a client that goes away must not cancel the call the other waiters share.
        return self._verdict(key, await asyncio.shield(pending))

    def _settled(self, key: bytes, done: asyncio.Future[Answer]) -> None:
        if self._pending.get(key) is done:
            del self._pending[key]
        if not done.cancelled():
            done.exception()  # retrieved here, so a call nobody waits for any more is not logged as lost

    def _verdict(self, key: bytes, answer: Answer) -> Principal:
        if isinstance(answer, str):
            raise InvalidToken(reason=answer)
        if answer.expires_at is not None and answer.expires_at <= self._wall():
            self._local.drop(key)
            self._expired.inc()
            raise InvalidToken("the access token has expired", reason="expired")
        return answer

    async def _fill(self, key: bytes, token: str) -> Answer:
        shared = self._shared
        if shared is None:
            return await self._ask(key, token)
        found = await shared.get(key)
        if found is None and not await shared.claim(key):
            # Another process is asking the IdP for this very token: one call across processes, not one each.
            self._coalesced.inc()
            found = await shared.wait(key)
        if found is not None:
            self._shared_hits.inc()
            self._remember(key, found)
            return found
        try:
            answer = await self._ask(key, token)
        finally:
            await shared.release(key)
        return answer

    async def _ask(self, key: bytes, token: str) -> Answer:
        answer: Answer
        try:
            answer = await self._inner.authenticate(token)
        except InvalidToken as exc:
            answer = exc.reason
        # An IdPUnavailable (or anything else) propagates to every waiter and leaves no entry behind.
        ttl = self._remember(key, answer)
        if self._shared is not None and ttl > 0:
            # Awaited (once per token, inside the shared call), so that another process asking next finds it.
            await self._shared.put(key, answer, ttl)
        return answer

    def _remember(self, key: bytes, answer: Answer) -> float:
        if isinstance(answer, Principal):
            ttl = positive_ttl(answer, self._config.ttl, self._wall())
        else:
            ttl = self._config.negative_ttl
        if ttl <= 0:
            return 0.0
        before = self._local.evictions
        self._local.put(key, answer, self._monotonic() + ttl)
        if self._local.evictions != before:
            self._evicted.inc(self._local.evictions - before)
        return ttl
