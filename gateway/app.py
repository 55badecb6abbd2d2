"""build_app(config): the gateway's state, its sessions and its one handler; GatewayRunner serves it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import http_parser, web

from gateway.answers import answer_for, error_response
from gateway.auth.cache import CachingAuthenticator
from gateway.auth.introspection import Introspector
from gateway.auth.redis_store import RedisStore
from gateway.config import Config, Limits
from gateway.errors import BadRequest
from gateway.forward.upstream import UpstreamClient
from gateway.forward.websocket import WEBSOCKETS, WebSocketHub, handle_websocket, wants_websocket
from gateway.forward_auth import handle_forward_auth
from gateway.ops.http_server import GatewayServer, connection_args
from gateway.ops.metrics import Metrics
from gateway.ops.reload import ConfigSource, Reloader, Sessions, build_runtime
from gateway.ops.tracing import Tracer
from gateway.pipeline import Runtime, echo_headers, handle

log = logging.getLogger("gateway")


class RuntimeSlot:
    """The current Runtime. Requests read it once when they start, so a swap never mixes two configs."""

    __slots__ = ("current",)

    def __init__(self, current: Runtime) -> None:
        self.current = current


RUNTIME = web.AppKey("runtime", RuntimeSlot)
INTROSPECTOR = web.AppKey("introspector", Introspector)  # the one built at start; a reload may replace it:
# the current one is RUNTIME.current.introspector
CACHE = web.AppKey("cache", CachingAuthenticator)  # likewise: the current one is RUNTIME.current.authenticator


async def _fetched(refresh: Awaitable[bool]) -> None:
    await refresh  # a failure is logged by the key set; the first token that needs a key tries again


def _upstream_client() -> UpstreamClient:
    # Pooled keep-alive connections; bodies relayed as they come (no decompression); the client's headers only.
    return UpstreamClient(limit=1024, keepalive=30.0)


def _idp_session() -> aiohttp.ClientSession:
    # A pool of its own, so slow upstream traffic never starves token checks (and the reverse).
    connector = aiohttp.TCPConnector(limit=64, keepalive_timeout=30, ttl_dns_cache=60)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())


METRICS = web.AppKey("metrics", Metrics)
RELOADER = web.AppKey("reloader", Reloader)


def native_parser() -> bool:
    """Whether aiohttp parses HTTP with its C (llhttp) parser, which carries the request-smuggling fixes."""
    return http_parser.HttpRequestParser is not http_parser.HttpRequestParserPy


def handler_args(limits: Limits) -> dict[str, Any]:
    """Per-connection settings of aiohttp's server (they take precedence over the runner's own arguments); the
    bounds from `limits:` are taken again for each new connection (GatewayServer)."""
    return {
        **connection_args(limits),
        # Bodies go upstream as the client framed them: inflating a gzip body would make it disagree with the
        # Content-Length that is forwarded (and a proxy has no business decoding content). Limits count wire bytes.
        "auto_decompress": False,
        # aiohttp's access log prints the request line, query string included (tokens, on query-token routes);
        # gateway.access logs one line per decision instead.
        "access_log": None,
        # A client that goes away cancels its request, upstream exchange included, as nginx aborts the upstream
        # request (proxy_ignore_client_abort off): one 499 line, and no task left draining a body nobody sends.
        # aiohttp's test server turns it on too, so the tests serve as production does.
        "handler_cancellation": True,
    }


def refuse_non_origin_form(request: web.BaseRequest) -> web.Response | None:
    """CONNECT and `OPTIONS *` are not for a reverse proxy: 400, and the connection is closed after the answer.

    After a CONNECT head aiohttp reads what follows as a new request whatever Content-Length said: closing keeps
    every hop's framing in step.
    """
    if request.method == "CONNECT" or request.raw_path == "*":
        if request.protocol is not None:
            request.protocol.close()
        return error_response(BadRequest("only origin-form request targets are accepted"))
    return None


Entry = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Listener:
    """What the proxy listener serves: the one handler, and the per-connection settings of aiohttp's server."""

    handler: Entry
    server_args: Mapping[str, Any]
    limits: Callable[[], Limits]  # the current config's, for each new connection


LISTENER = web.AppKey("listener", Listener)
FORWARD_AUTH = web.AppKey("forward_auth", Listener)  # present when `forward_auth:` is on


class GatewayRunner(web.BaseRunner):
    """Serves an app from build_app() on aiohttp's low-level server: one handler, no router, no middleware chain.

    A gateway has one catch-all handler, and web.Application's request path (the router, match info, the
    middleware chain) cost about 16 of ~140 µs per request (docs/benchmarks.md). The app keeps what it is good
    at: the startup and cleanup of the sessions, and the state that the admin listener and the tests read.
    """

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app = app

    async def shutdown(self) -> None:
        await self.app.shutdown()

    async def _make_server(self) -> web.Server:
        self.app.on_startup.freeze()
        await self.app.startup()
        self.app.freeze()
        listener = self.app[LISTENER]
        # The gateway's own settings win over the runner's, as web.Application's handler_args do.
        return GatewayServer(listener.handler, limits=listener.limits, **{**self._kwargs, **listener.server_args})

    async def _cleanup_server(self) -> None:
        await self.app.cleanup()


def forward_auth_runner(app: web.Application, shutdown_timeout: float) -> web.ServerRunner:
    """The forward-auth listener's runner, for an app that a GatewayRunner has started (it holds the sessions)."""
    listener = app[FORWARD_AUTH]
    server = GatewayServer(listener.handler, limits=listener.limits, **listener.server_args)
    return web.ServerRunner(server, handle_signals=False, shutdown_timeout=shutdown_timeout)


def build_app(
    config: Config,
    metrics: Metrics | None = None,
    *,
    source: ConfigSource | None = None,
    on_reload: Callable[[Config], None] | None = None,
) -> web.Application:
    """The gateway's state and lifecycle, served by a GatewayRunner (web.AppRunner would answer 404 to all).

    `source`: where `config` was read from; given, the app reloads it on change and on RELOADER.trigger()."""
    if not native_parser():
        log.warning("aiohttp runs its pure-Python HTTP parser: install a wheel with the C extension")
    app = web.Application()
    app[METRICS] = metrics = metrics or Metrics()

    async def sessions(app: web.Application) -> AsyncIterator[None]:
        shared = None
        if config.cache.url:
            # A claim on a token lasts as long as one IdP call may (the other processes wait for its answer).
            claim = config.idp.timeout if config.idp is not None else 5.0
            shared = RedisStore(config.cache.url, metrics, timeout=config.cache.redis_timeout, claim_seconds=claim)
        tracer = Tracer(config.tracing) if config.tracing is not None else None
        pools = Sessions(upstream=_upstream_client(), idp=_idp_session(), shared=shared, tracer=tracer)
        runtime = build_runtime(config, pools, metrics)
        app[RUNTIME] = slot = RuntimeSlot(runtime)
        if runtime.authenticator is not None:
            app[CACHE] = runtime.authenticator
        background: list[asyncio.Task[None]] = []
        if runtime.introspector is not None:
            app[INTROSPECTOR] = runtime.introspector
            # Serve at once (public routes need no IdP); protected routes answer 503 until discovery succeeds.
            if not runtime.introspector.ready:
                background.append(asyncio.create_task(runtime.introspector.discover()))
        if runtime.dispatch is not None:  # the signing keys, fetched at start so that a first JWT finds them
            background.append(asyncio.create_task(_fetched(runtime.dispatch.jwks.refresh())))
        if source is not None:
            app[RELOADER] = reloader = Reloader(source, slot, pools, metrics, on_reload)
            background.append(asyncio.create_task(reloader.run()))
        yield
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Runs after the server has drained (AppRunner.cleanup), so no request still uses a session.
        await pools.upstream.close()
        await pools.idp.close()
        if shared is not None:
            await shared.close()
        if tracer is not None:
            await tracer.close()  # the spans still queued are exported

    app.cleanup_ctx.append(sessions)
    app[WEBSOCKETS] = websockets = WebSocketHub(metrics, config.shutdown_grace).attach(app)

    async def entry(request: web.BaseRequest) -> web.StreamResponse:
        # Errors are rendered and the request id echoed here rather than in a middleware chain and the
        # on_response_prepare signal: the same answers for less CPU per request (docs/benchmarks.md). A streamed
        # answer went out from the pipeline already, with its echo applied before prepare().
        refused = refuse_non_origin_form(request)
        if refused is not None:
            return refused
        try:
            runtime = app[RUNTIME].current
            if "Upgrade" in request.headers and wants_websocket(runtime, request):
                response = await handle_websocket(app[RUNTIME], websockets, request)
            else:
                response = await handle(runtime, request)
        except web.HTTPException as exc:
            if exc.status < 400:  # aiohttp's own answer (a redirect and the like): aiohttp sends it
                echo_headers(request, exc)
                raise
            response = answer_for(request, exc)
        except Exception as exc:
            response = answer_for(request, exc)
        if not response.prepared:
            echo_headers(request, response)
            if "Expect" in request.headers and request.body_exists and not request.content.is_eof():
                # Answered before the body was wanted (a refusal): the client may still be holding it back, so
                # this connection's framing is not known any more. One answer, then it closes (RFC 9110 §10.1.1).
                response.force_close()
            elif "Upgrade" in request.headers:
                response.force_close()  # the pipeline closes it after this answer: say so, or a client reuses it
        return response

    def current_limits() -> Limits:
        return app[RUNTIME].current.config.limits

    app[LISTENER] = Listener(entry, handler_args(config.limits), current_limits)
    if config.forward_auth is not None:
        settings = config.forward_auth  # the listener's for its life: bound once, like `listen`

        async def decide(request: web.BaseRequest) -> web.StreamResponse:
            try:
                return await handle_forward_auth(app[RUNTIME].current, request, settings)
            except Exception as exc:
                return answer_for(request, exc)

        app[FORWARD_AUTH] = Listener(decide, handler_args(config.limits), current_limits)
    return app
