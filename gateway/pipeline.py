"""The one place that runs the stages in order and logs one line per decision:

canonical path -> match a route -> authenticate -> authorize -> mutate headers -> forward.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import aiohttp
from aiohttp import web

from .config import Config
from .credentials import bearer_token
from .errors import BadRequest, GatewayError, IdPUnavailable, InsufficientScope, NotFound, Unauthenticated
from .headers import ForwardedFor, identity_headers, upstream_request_headers
from .introspection import Authenticator, Principal
from .metrics import Metrics
from .proxy import forward, upstream_url
from .rules import Access, PathError, Route, canonical_path, match_route, missing_roles

access_log = logging.getLogger("gateway.access")
_NO_IDENTITY: Mapping[str, str] = MappingProxyType({})


class RouteMemo:
    """(method, raw path) -> (canonical path, route), remembered: both are pure functions of one config.

    Bounded (cleared when full; long paths are never kept), so random paths cannot grow memory. Refused paths
    (PathError) are not remembered: they raise every time.
    """

    __slots__ = ("_memo", "_routes")

    MAX_ENTRIES = 4096
    MAX_PATH = 256

    def __init__(self, routes: tuple[Route, ...]) -> None:
        self._routes = routes
        self._memo: dict[tuple[str, str], tuple[str, Route | None]] = {}

    def resolve(self, method: str, raw_path: str) -> tuple[str, Route | None]:
        key = (method, raw_path)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        path = canonical_path(raw_path)
        resolved = (path, match_route(self._routes, method, path))
        if len(raw_path) <= self.MAX_PATH:
            if len(self._memo) >= self.MAX_ENTRIES:
                self._memo.clear()
            self._memo[key] = resolved
        return resolved


@dataclass(frozen=True, slots=True)
class Runtime:
    """Everything one config needs to serve; a reload swaps it whole, so a request sees one consistent set."""

    config: Config
    authenticator: Authenticator | None
    upstream_session: aiohttp.ClientSession
    metrics: Metrics
    routing: RouteMemo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "routing", RouteMemo(self.config.routes))


def split_target(raw_target: str) -> tuple[str, str | None]:
    path, sep, query = raw_target.partition("?")
    return path, (query if sep else None)


async def authenticate(runtime: Runtime, request: web.Request) -> Principal:
    token = bearer_token(request.headers.getall("Authorization", []))
    if token is None:
        raise Unauthenticated()
    if runtime.authenticator is None:  # config validation makes this unreachable; fail closed anyway
        raise IdPUnavailable()
    return await runtime.authenticator.authenticate(token)


async def handle(runtime: Runtime, request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    runtime.metrics.in_flight.inc()
    try:
        return await _handle(runtime, request, started)
    finally:
        runtime.metrics.in_flight.dec()


async def _handle(runtime: Runtime, request: web.Request, started: float) -> web.StreamResponse:
    route: Route | None = None
    principal: Principal | None = None
    path = "-"
    try:
        raw_path, query = split_target(request.raw_path)
        try:
            path, route = runtime.routing.resolve(request.method, raw_path)
        except PathError as exc:
            raise BadRequest(f"the request path is not acceptable: {exc}") from exc
        if route is None:
            raise NotFound()
        identity: Mapping[str, str] = _NO_IDENTITY
        if route.policy.access is not Access.PUBLIC:
            principal = await authenticate(runtime, request)
            lacking = missing_roles(route.policy, principal.roles)
            if lacking is not None:
                raise InsufficientScope(f"this route requires the role {lacking}", required=lacking)
            identity = _identity(principal)
        upstream = runtime.config.upstreams[route.upstream]
        headers = upstream_request_headers(
            request.headers,
            identity=identity,
            forwarded=ForwardedFor(request.remote or "", request.scheme, request.headers.get("Host")),
            pass_authorization=route.pass_authorization,
        )
        url = upstream_url(upstream, path, query)
        response = await forward(request, runtime.upstream_session, upstream, url, headers, runtime.metrics)
    except GatewayError as exc:
        decision = "deny" if exc.status < 500 else "error"
        _record(runtime, request, path, route, principal, exc.status, decision, exc.reason, started)
        raise
    _record(runtime, request, path, route, principal, response.status, "allow", "ok", started)
    return response


@functools.lru_cache(maxsize=4096)
def _identity(principal: Principal) -> Mapping[str, str]:
    """The identity headers of a principal, built once per cached principal; read-only, as it is shared."""
    return MappingProxyType(
        identity_headers(
            subject=principal.subject,
            username=principal.username,
            roles=principal.roles,
            client_id=principal.client_id,
            org_id=principal.org_id,
        )
    )


def _record(
    runtime: Runtime,
    request: web.Request,
    path: str,
    route: Route | None,
    principal: Principal | None,
    status: int,
    decision: str,
    reason: str,
    started: float,
) -> None:
    runtime.metrics.request_done(route.id if route else "-", decision, status, time.perf_counter() - started)
    access_log.info(
        "%s %s route=%s decision=%s reason=%r status=%d subject=%s",
        request.method,
        path,
        route.id if route else "-",
        decision,
        reason,
        status,
        principal.subject if principal else "-",
    )
