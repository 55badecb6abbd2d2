"""build_app(config): the aiohttp application, its sessions and its one catch-all handler."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from .cache import CachingAuthenticator, cache_key_prefix
from .config import Config
from .errors import error_middleware
from .introspection import Authenticator, Introspector
from .metrics import Metrics
from .pipeline import Runtime, handle
from .redis_store import RedisStore

log = logging.getLogger("gateway")


class RuntimeSlot:
    """The current Runtime. Requests read it once when they start, so a swap never mixes two configs."""

    __slots__ = ("current",)

    def __init__(self, current: Runtime) -> None:
        self.current = current


RUNTIME = web.AppKey("runtime", RuntimeSlot)
INTROSPECTOR = web.AppKey("introspector", Introspector)
CACHE = web.AppKey("cache", CachingAuthenticator)


def _upstream_session() -> aiohttp.ClientSession:
    # Pooled keep-alive connections; bodies relayed as they come (no decompression); the client's headers only.
    connector = aiohttp.TCPConnector(limit=1024, limit_per_host=0, keepalive_timeout=30, ttl_dns_cache=60)
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
        cookie_jar=aiohttp.DummyCookieJar(),
    )


def _idp_session() -> aiohttp.ClientSession:
    # A pool of its own, so slow upstream traffic never starves token checks (and the reverse).
    connector = aiohttp.TCPConnector(limit=64, keepalive_timeout=30, ttl_dns_cache=60)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())


METRICS = web.AppKey("metrics", Metrics)


def build_app(config: Config, metrics: Metrics | None = None) -> web.Application:
    app = web.Application(middlewares=[error_middleware], handler_args={"max_field_size": 16384})
    app[METRICS] = metrics = metrics or Metrics()

    async def sessions(app: web.Application) -> AsyncIterator[None]:
        upstream = _upstream_session()
        idp = _idp_session()
        introspector = Introspector(config.idp, idp, metrics) if config.idp is not None else None
        shared = None
        if config.cache.url:
            # A claim on a token lasts as long as one IdP call may (the other processes wait for its answer).
            claim = config.idp.timeout if config.idp is not None else 5.0
            shared = RedisStore(config.cache.url, metrics, timeout=config.cache.redis_timeout, claim_seconds=claim)
        authenticator: Authenticator | None = introspector
        if introspector is not None and config.idp is not None:
            app[CACHE] = authenticator = CachingAuthenticator(
                introspector,
                config.cache,
                metrics,
                key_prefix=cache_key_prefix(config.idp.issuer, config.idp.client_id, config.idp.project_id),
                shared=shared,
            )
        app[RUNTIME] = RuntimeSlot(
            Runtime(config=config, authenticator=authenticator, upstream_session=upstream, metrics=metrics)
        )
        discovery: asyncio.Task[None] | None = None
        if introspector is not None:
            app[INTROSPECTOR] = introspector
            # Serve at once (public routes need no IdP); protected routes answer 503 until discovery succeeds.
            discovery = asyncio.create_task(introspector.discover())
        yield
        if discovery is not None:
            discovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await discovery
        await upstream.close()
        await idp.close()
        if shared is not None:
            await shared.close()

    app.cleanup_ctx.append(sessions)

    async def entry(request: web.Request) -> web.StreamResponse:
        return await handle(request.app[RUNTIME].current, request)

    app.router.add_route("*", "/{tail:.*}", entry)
    return app
