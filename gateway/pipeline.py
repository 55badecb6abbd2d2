"""The one place that runs the stages in order and logs one line per decision:

canonical path -> match a route -> authenticate -> authorize -> mutate headers -> forward.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from .body import BodyGuard
from .config import Config, Limits
from .credentials import bearer_token, form_has_token, query_has_token, query_token
from .errors import (
    BadRequest,
    GatewayError,
    IdPUnavailable,
    InsufficientScope,
    InvalidRequestToken,
    NotFound,
    PayloadTooLarge,
    PreflightRejected,
    Unauthenticated,
)
from .headers import forwarded_for, identity_headers, upstream_request_headers
from .introspection import Authenticator, Principal
from .metrics import Metrics
from .proxy import forward, upstream_url
from .rules import Access, PathError, Route, canonical_path, missing_roles, resolve_route

access_log = logging.getLogger("gateway.access")

_FORM = "application/x-www-form-urlencoded"
_NO_BODY_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True, slots=True)
class Runtime:
    """Everything one config needs to serve; a reload swaps it whole, so a request sees one consistent set."""

    config: Config
    authenticator: Authenticator | None
    upstream_session: aiohttp.ClientSession
    metrics: Metrics


def split_target(raw_target: str) -> tuple[str, str | None]:
    path, sep, query = raw_target.partition("?")
    return path, (query if sep else None)


def route_for(runtime: Runtime, method: str, raw_target: str) -> tuple[str, str | None, Route | None]:
    """(canonical path, query, route) or BadRequest: the one path that is matched and forwarded."""
    raw_path, query = split_target(raw_target)
    try:
        if query is not None and "#" in query:
            raise PathError("a fragment in the request target")  # never sent by a browser; an attack if sent
        path = canonical_path(raw_path)
        return path, query, resolve_route(runtime.config.routes, method, path)
    except PathError as exc:
        raise BadRequest(f"the request path is not acceptable: {exc}") from exc


def guard_body(limits: Limits, route: Route, request: web.Request) -> BodyGuard | None:
    if not request.body_exists:
        return None
    # An upstream that ignores the body of a GET would read it as a second, unchecked request.
    if request.method in _NO_BODY_METHODS:
        raise BadRequest(f"a {request.method} request cannot carry a body")
    limit = route.max_body_bytes if route.max_body_bytes is not None else limits.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge()
    return BodyGuard(request.content, limit=limit, timeout=limits.body_timeout)


async def credentials(
    route: Route, limits: Limits, request: web.Request, query: str | None, body: BodyGuard | None
) -> tuple[str | None, str | None]:
    """(token or None, the query to forward). A token in two places is 400 invalid_request (RFC 6750 §2)."""
    header = bearer_token(request.headers.getall("Authorization", []), max_bytes=limits.max_token_bytes)
    if header is not None and query_has_token(query):
        raise InvalidRequestToken("the access token was sent in more than one place")
    token, forward_query = header, query
    if header is None and route.allow_query_token:
        token, forward_query = query_token(query, max_bytes=limits.max_token_bytes)
    if token is not None and body is not None and request.content_type == _FORM:
        if form_has_token(await body.read_all()):
            raise InvalidRequestToken("the access token was sent in more than one place")
    return token, forward_query


async def authenticate(runtime: Runtime, token: str | None) -> Principal:
    if token is None:
        raise Unauthenticated()
    if runtime.authenticator is None:  # config validation makes this unreachable; fail closed anyway
        raise IdPUnavailable()
    return await runtime.authenticator.authenticate(token)


def preflight(route: Route | None, request: web.Request) -> web.Response | None:
    """The answer to a genuine CORS preflight on a route that opted in; None for every other request."""
    if route is None or route.cors is None:
        return None
    headers = route.cors.preflight(
        request.headers["Origin"],
        request.headers["Access-Control-Request-Method"],
        request.headers.get("Access-Control-Request-Headers", ""),
    )
    if headers is None:
        raise PreflightRejected()
    return web.Response(status=204, headers=headers)


def is_preflight(request: web.Request) -> bool:
    return (
        request.method == "OPTIONS"
        and "Origin" in request.headers
        and ("Access-Control-Request-Method" in request.headers)
    )


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
    config = runtime.config
    if "Upgrade" in request.headers and request.protocol is not None:
        # Upgrades (WebSocket, h2c) are not proxied: `Upgrade` is dropped as hop-by-hop and the request is served
        # as plain HTTP. aiohttp's parser reads nothing more on such a connection, so close it after this answer
        # rather than leave it idle (whatever the client sent after the head is never read as a request).
        request.protocol.close()
    try:
        if is_preflight(request):
            # Matched as the method it asks about: a preflight is a question about that request.
            path, _, route = route_for(runtime, request.headers["Access-Control-Request-Method"], request.raw_path)
            answer = preflight(route, request)
            if answer is not None:
                _record(runtime, request, path, route, None, answer.status, "preflight", "ok", started)
                return answer
        path, query, route = route_for(runtime, request.method, request.raw_path)
        if route is None:
            raise NotFound()
        body = guard_body(config.limits, route, request)
        identity: dict[str, str] = {}
        token: str | None = None
        if route.policy.access is not Access.PUBLIC:
            token, query = await credentials(route, config.limits, request, query, body)
            principal = await authenticate(runtime, token)
            lacking = missing_roles(route.policy, principal.roles)
            if lacking is not None:
                raise InsufficientScope(f"this route requires the role {lacking}", required=lacking)
            identity = identity_headers(
                subject=principal.subject,
                username=principal.username,
                roles=principal.roles,
                client_id=principal.client_id,
                org_id=principal.org_id,
            )
        upstream = config.upstreams[route.upstream]
        peer = request.remote or ""
        headers = upstream_request_headers(
            request.headers,
            identity=identity,
            forwarded=forwarded_for(
                peer, request.scheme, request.headers.get("Host"), request.headers, config.trusted_proxies
            ),
            pass_authorization=route.pass_authorization,
        )
        if token is not None and route.pass_authorization:
            headers["Authorization"] = f"Bearer {token}"  # the token we checked, whichever way it came
        url = upstream_url(upstream, path, query)
        try:
            response = await forward(
                request,
                runtime.upstream_session,
                upstream,
                url,
                headers,
                runtime.metrics,
                body=body.chunks() if body is not None else None,
            )
        except GatewayError:
            if body is not None and body.error is not None:
                raise body.error from None  # the client's fault (413/408), not the upstream's
            raise
    except GatewayError as exc:
        decision = "deny" if exc.status < 500 else "error"
        _record(runtime, request, path, route, principal, exc.status, decision, exc.reason, started)
        raise
    _record(runtime, request, path, route, principal, response.status, "allow", "ok", started)
    return response


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
    route_label = route.id if route else "-"
    runtime.metrics.requests.labels(route_label, decision, str(status)).inc()
    runtime.metrics.request_seconds.labels(route_label).observe(time.perf_counter() - started)
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
