"""The shared introspection cache in Redis, so several gateway processes make one IdP call per token per TTL.

Entries live under `gateway:introspection:<hex SHA-256 key>` with Redis's own expiry (PX = the entry's TTL); the
value is the answer as JSON. Redis is an optimisation, never a gate: when it fails or is down we log, stop asking
it for a moment, and fall back to the local cache and the IdP. Slower, never open.
Whoever can write to this Redis can forge principals: give the gateway a Redis of its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.auth.cache import Answer, Clock
from gateway.auth.claims import KeptClaims, Principal
from gateway.ops.metrics import Metrics

log = logging.getLogger("gateway.cache")

KEY_PREFIX = b"gateway:introspection:"
CLAIM_PREFIX = b"gateway:introspecting:"  # "a process is asking the IdP for this key right now"
_FORMAT = 2  # 2: `sub` may be null, and `grants` says in which organisation each role is held
_FORMAT_CLAIMS = 3  # 3: and `claims`, the mapped claims a principal keeps ([[key, ...], JSON text] pairs)


def dump_answer(answer: Answer) -> bytes:
    if isinstance(answer, str):
        document: dict[str, Any] = {"v": _FORMAT, "inactive": answer}
    else:
        document = {
            "v": _FORMAT,
            "sub": answer.subject,
            "roles": sorted(answer.roles),
            "username": answer.username,
            "client_id": answer.client_id,
            "org_id": answer.org_id,
            "scope": answer.scope,
            "exp": answer.expires_at,
            "grants": sorted(answer.grants),
        }
        if answer.claims:  # only then a format 3 entry: with nothing mapped, processes of before share entries
            document["v"] = _FORMAT_CLAIMS
            document["claims"] = [[list(path), value] for path, value in answer.claims]
    return json.dumps(document, separators=(",", ":")).encode()


def _optional_text(document: dict[str, Any], name: str) -> str | None:
    value = document.get(name)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name} is not a string")
    return value


def load_answer(raw: bytes) -> Answer:
    """The inverse of dump_answer; anything else raises ValueError (and is then treated as a miss)."""
    document = json.loads(raw)
    if not isinstance(document, dict) or document.get("v") not in (_FORMAT, _FORMAT_CLAIMS):
        raise ValueError("unknown entry format")
    if "inactive" in document:
        reason = document["inactive"]
        if not isinstance(reason, str) or not reason:
            raise ValueError("inactive without a reason")
        return reason
    subject, roles, scope, exp = document.get("sub"), document.get("roles"), document.get("scope"), document.get("exp")
    if subject is not None and (not isinstance(subject, str) or not subject):
        raise ValueError("subject is not a non-empty string")
    grants = document.get("grants")
    if not isinstance(grants, list) or not all(
        isinstance(g, list) and len(g) == 2 and all(isinstance(x, str) for x in g) for g in grants
    ):
        raise ValueError("grants is not a list of [role, organisation] pairs")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise ValueError("roles is not a list of strings")
    if not isinstance(scope, str):
        raise ValueError("scope is not a string")
    if exp is not None and (isinstance(exp, bool) or not isinstance(exp, int | float)):
        raise ValueError("exp is not a number")
    return Principal(
        subject=subject,
        roles=frozenset(roles),
        username=_optional_text(document, "username"),
        client_id=_optional_text(document, "client_id"),
        org_id=_optional_text(document, "org_id"),
        scope=scope,
        expires_at=float(exp) if exp is not None else None,
        grants=frozenset((role, org) for role, org in grants),
        claims=_claims(document.get("claims", [])) if document["v"] == _FORMAT_CLAIMS else (),
    )


def _claims(entries: Any) -> KeptClaims:
    if not isinstance(entries, list) or not all(
        isinstance(e, list)
        and len(e) == 2
        and isinstance(e[0], list)
        and e[0]
        and all(isinstance(k, str) for k in e[0])
        and isinstance(e[1], str)
        for e in entries
    ):
        raise ValueError("claims is not a list of [[key, ...], JSON text] pairs")
    return tuple((tuple(path), value) for path, value in entries)


class RedisStore:
    """SharedStore over redis-py asyncio. Every failure is swallowed here (logged), and counted."""

    def __init__(
        self,
        url: str,
        metrics: Metrics,
        *,
        timeout: float,
        claim_seconds: float = 5.0,
        poll: float = 0.01,
        pause: float = 2.0,
        monotonic: Clock = time.monotonic,
    ) -> None:
        # No retries and short timeouts: a slow Redis must not make the request slower than asking the IdP.
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )
        self._pause = pause
        self._claim_ms = max(1, int(claim_seconds * 1000))  # a claim outlives no IdP call (the IdP timeout)
        self._poll = poll
        self._monotonic = monotonic
        self._down_until = -1.0
        self._errors = metrics.cache.labels("shared_error")

    async def close(self) -> None:
        await self._redis.aclose()

    @property
    def available(self) -> bool:
        return self._monotonic() >= self._down_until

    def _failed(self, what: str, exc: BaseException) -> None:
        self._errors.inc()
        if self.available:  # one line per pause, not one per request
            log.warning("redis %s failed (%s): using the local cache and the IdP for %.0fs", what, exc, self._pause)
        self._down_until = self._monotonic() + self._pause

    async def get(self, key: bytes) -> Answer | None:
        if not self.available:
            return None
        try:
            raw = await self._redis.get(KEY_PREFIX + key.hex().encode())
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("read", exc)
            return None
        return None if raw is None else self._decode(raw)

    async def put(self, key: bytes, answer: Answer, ttl: float) -> None:
        if not self.available:
            return
        try:
            await self._redis.set(KEY_PREFIX + key.hex().encode(), dump_answer(answer), px=max(1, int(ttl * 1000)))
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("write", exc)

    async def claim(self, key: bytes) -> bool:
        if not self.available:
            return True
        try:
            return bool(await self._redis.set(CLAIM_PREFIX + key.hex().encode(), b"1", nx=True, px=self._claim_ms))
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("claim", exc)
            return True

    async def wait(self, key: bytes) -> Answer | None:
        """Poll for the answer while the claim stands; None once it is gone without one (the call failed)."""
        name, claim = KEY_PREFIX + key.hex().encode(), CLAIM_PREFIX + key.hex().encode()
        deadline = self._monotonic() + self._claim_ms / 1000
        while self._monotonic() < deadline and self.available:
            await asyncio.sleep(self._poll)
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.get(name)
                    pipe.exists(claim)
                    raw, claimed = await pipe.execute()
            except (RedisError, OSError, TimeoutError) as exc:
                self._failed("read", exc)
                return None
            if raw is not None:
                return self._decode(raw)
            if not claimed:
                return None
        return None

    async def release(self, key: bytes) -> None:
        if not self.available:
            return
        try:
            await self._redis.delete(CLAIM_PREFIX + key.hex().encode())
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("release", exc)

    def _decode(self, raw: bytes | str) -> Answer | None:
        try:
            return load_answer(raw if isinstance(raw, bytes) else raw.encode())
        except ValueError as exc:
            log.warning("ignoring an unreadable shared cache entry: %s", exc)
            return None
