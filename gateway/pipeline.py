"""The one place that runs the stages in order and logs one line per decision:

canonical path -> match a route -> authenticate -> authorize -> mutate headers -> forward.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from .config import Config
from .credentials import bearer_token
from .errors import BadRequest, GatewayError, IdPUnavailable, InsufficientScope, NotFound, Unauthenticated
from .headers import ForwardedFor, identity_headers, upstream_request_headers
from .introspection import Authenticator, Introspector, Principal
from .logs import FIELDS, request_id, token_hash
from .metrics import Metrics
from .proxy import forward, upstream_url
from .rules import Access, PathError, Route, canonical_path, match_route, missing_roles

access_log = logging.getLogger("gateway.access")

REQUEST_ID = web.RequestKey("request_id", str)
REQUEST_ID_HEADER = "X-Request-Id"


@dataclass(frozen=True, slots=True)
class Runtime:
    """Everything one config needs to serve; a reload swaps it whole, so a request sees one consistent set."""

    config: Config
    authenticator: Authenticator | None
    upstream_session: aiohttp.ClientSession
    metrics: Metrics
    introspector: Introspector | None = None  # for readiness: has the IdP's discovery document been fetched?


@dataclass(slots=True)
class Trace:
    """What the decision log line needs beyond the decision itself; filled in as the stages run."""

    request_id: str
    token_hash: str = "-"
    upstream_seconds: float | None = None


def split_target(raw_target: str) -> tuple[str, str | None]:
    path, sep, query = raw_target.partition("?")
    return path, (query if sep else None)


async def authenticate(runtime: Runtime, request: web.Request, trace: Trace | None = None) -> Principal:
    token = bearer_token(request.headers.getall("Authorization", []))
    if token is None:
        raise Unauthenticated()
    if trace is not None:
        trace.token_hash = token_hash(token)
    if runtime.authenticator is None:  # config validation makes this unreachable; fail closed anyway
        raise IdPUnavailable()
    return await runtime.authenticator.authenticate(token)


def _client_request_id(request: web.Request) -> str | None:
    sent = request.headers.getall(REQUEST_ID_HEADER, [])
    return sent[0] if len(sent) == 1 else None


async def handle(runtime: Runtime, request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    trace = Trace(request_id(_client_request_id(request)))
    request[REQUEST_ID] = trace.request_id  # echoed to the client by the app's on_response_prepare hook
    runtime.metrics.in_flight.inc()
    try:
        return await _handle(runtime, request, started, trace)
    finally:
        runtime.metrics.in_flight.dec()


async def _handle(runtime: Runtime, request: web.Request, started: float, trace: Trace) -> web.StreamResponse:
    route: Route | None = None
    principal: Principal | None = None
    path = "-"
    try:
        raw_path, query = split_target(request.raw_path)
        try:
            path = canonical_path(raw_path)
        except PathError as exc:
            raise BadRequest(f"the request path is not acceptable: {exc}") from exc
        route = match_route(runtime.config.routes, request.method, path)
        if route is None:
            raise NotFound()
        identity: dict[str, str] = {}
        if route.policy.access is not Access.PUBLIC:
            principal = await authenticate(runtime, request, trace)
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
        upstream = runtime.config.upstreams[route.upstream]
        headers = upstream_request_headers(
            request.headers,
            identity=identity,
            forwarded=ForwardedFor(request.remote or "", request.scheme, request.headers.get("Host")),
            pass_authorization=route.pass_authorization,
        )
        headers[REQUEST_ID_HEADER] = trace.request_id
        url = upstream_url(upstream, path, query)
        forwarding = time.perf_counter()
        try:
            response = await forward(request, runtime.upstream_session, upstream, url, headers, runtime.metrics)
        finally:
            # The whole exchange with the upstream: to the last byte relayed when the body is streamed.
            trace.upstream_seconds = time.perf_counter() - forwarding
    except GatewayError as exc:
        decision = "deny" if exc.status < 500 else "error"
        _record(runtime, request, path, route, principal, exc.status, decision, exc.reason, started, trace)
        raise
    except asyncio.CancelledError:
        # The client went away, the upstream cut a streamed body, or the grace period ran out: still one line.
        _record(runtime, request, path, route, principal, 499, "error", "aborted", started, trace)
        raise
    _record(runtime, request, path, route, principal, response.status, "allow", "ok", started, trace)
    return response


def _milliseconds(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


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
    trace: Trace,
) -> None:
    """The one decision log line (JSON or text, per `logging.format`) and the request metrics. Never the token."""
    elapsed = time.perf_counter() - started
    route_label = route.id if route else "-"
    runtime.metrics.requests.labels(route_label, decision, str(status)).inc()
    runtime.metrics.request_seconds.labels(route_label).observe(elapsed)
    fields = {
        "request_id": trace.request_id,
        "method": request.method,
        "path": path,
        "route": route_label,
        "decision": decision,
        "reason": reason,
        "status": status,
        "subject": principal.subject if principal else "-",
        "token": trace.token_hash,
        "upstream_ms": _milliseconds(trace.upstream_seconds),
        "total_ms": _milliseconds(elapsed),
    }
    access_log.info("%s %s %d %s", request.method, path, status, decision, extra={FIELDS: fields})
