"""The one place that runs the stages in order and logs one line per decision:

canonical path -> match a route -> authenticate -> authorize -> mutate headers -> forward.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from aiohttp import HttpVersion, web

from .body import BodyGuard
from .cache import CachingAuthenticator
from .config import Config, Limits
from .credentials import bearer_token, form_has_token, query_has_token, query_token
from .errors import (
    BadRequest,
    ExpectationFailed,
    GatewayError,
    IdPUnavailable,
    InsufficientScope,
    InvalidRequestToken,
    NotFound,
    PayloadTooLarge,
    PreflightRejected,
    Unauthenticated,
)
from .headers import forwarded_for, identity_headers, upstream_request_headers, valid_host
from .introspection import Introspector, Principal
from .logs import log_access, request_id, token_hash
from .metrics import Metrics
from .proxy import forward, upstream_target
from .rules import Access, PathError, Route, canonical_path, missing_roles, resolve_route, split_target
from .upstream import UpstreamClient

access_log = logging.getLogger("gateway.access")
_ACCESS_MESSAGE = "%s %s %d %s"
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
        resolved = (path, resolve_route(self._routes, method, path))
        if len(raw_path) <= self.MAX_PATH:
            if len(self._memo) >= self.MAX_ENTRIES:
                self._memo.clear()
            self._memo[key] = resolved
        return resolved


REQUEST_ID = web.RequestKey("request_id", str)
CORS_ORIGIN = web.RequestKey("cors_origin", str)  # an allowed Origin, echoed on the answer by the app's hook
REQUEST_ID_HEADER = "X-Request-Id"

_FORM = "application/x-www-form-urlencoded"
_NO_BODY_METHODS = frozenset({"GET", "HEAD"})
_HTTP_11 = HttpVersion(1, 1)


@dataclass(frozen=True, slots=True)
class Runtime:
    """Everything one config needs to serve; a reload swaps it whole, so a request sees one consistent set."""

    config: Config
    authenticator: CachingAuthenticator | None
    upstream_client: UpstreamClient
    metrics: Metrics
    introspector: Introspector | None = None  # for readiness: has the IdP's discovery document been fetched?
    routing: RouteMemo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "routing", RouteMemo(self.config.routes))


@dataclass(slots=True)
class Trace:
    """What the decision log line needs beyond the decision itself; filled in as the stages run."""

    request_id: str
    token_hash: str = "-"
    upstream_seconds: float | None = None


def route_for(runtime: Runtime, method: str, raw_target: str) -> tuple[str, str | None, Route | None]:
    """(canonical path, query, route) or BadRequest: the one path that is matched and forwarded."""
    try:
        raw_path, query = split_target(raw_target)
        path, route = runtime.routing.resolve(method, raw_path)
        return path, query, route
    except PathError as exc:
        raise BadRequest(f"the request path is not acceptable: {exc}") from exc


def guard_body(limits: Limits, route: Route, request: web.BaseRequest) -> BodyGuard | None:
    expect = request.headers.get("Expect")
    send_continue = None
    if expect is not None and request.version == _HTTP_11:  # HTTP/1.0 has no expectations (RFC 9110 §10.1.1)
        if expect.lower() != "100-continue":
            raise ExpectationFailed()
        send_continue = request.writer
    if not request.body_exists:
        return None
    # An upstream that ignores the body of a GET would read it as a second, unchecked request.
    if request.method in _NO_BODY_METHODS:
        raise BadRequest(f"a {request.method} request cannot carry a body")
    limit = route.max_body_bytes if route.max_body_bytes is not None else limits.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge()
    return BodyGuard(request.content, limit=limit, timeout=limits.body_timeout, send_continue=send_continue)


def credentials(
    route: Route, limits: Limits, request: web.BaseRequest, query: str | None
) -> tuple[str | None, str | None]:
    """(token or None, the query to forward). A token in two places is 400 invalid_request (RFC 6750 §2)."""
    header = bearer_token(request.headers.getall("Authorization", []), max_bytes=limits.max_token_bytes)
    if header is not None and query_has_token(query):
        raise InvalidRequestToken("the access token was sent in more than one place")
    if header is None and route.allow_query_token:
        return query_token(query, max_bytes=limits.max_token_bytes)
    return header, query


async def refuse_form_token(request: web.BaseRequest, body: BodyGuard) -> None:
    """A token in a form body too (RFC 6750 §2.2) is 400. Run after authentication: only a client with a valid
    token can make the gateway buffer a body (within the route's limit) to look."""
    if request.content_type == _FORM and form_has_token(await body.read_all()):
        raise InvalidRequestToken("the access token was sent in more than one place")


def _checked_in(runtime: Runtime, token: str | None, trace: Trace) -> tuple[CachingAuthenticator, str]:
    """Who to ask about the token, and the token; 401 without one."""
    if token is None:
        raise Unauthenticated()
    trace.token_hash = token_hash(token)
    if runtime.authenticator is None:  # config validation makes this unreachable; fail closed anyway
        raise IdPUnavailable()
    return runtime.authenticator, token


def preflight(route: Route | None, request: web.BaseRequest) -> web.Response | None:
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


def is_preflight(request: web.BaseRequest) -> bool:
    return (
        request.method == "OPTIONS"
        and "Origin" in request.headers
        and ("Access-Control-Request-Method" in request.headers)
    )


def echo_headers(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """Before the headers go out, for streamed answers and error answers alike: our X-Request-Id, and the CORS
    origin of a route that allows it."""
    if REQUEST_ID in request:
        response.headers[REQUEST_ID_HEADER] = request[REQUEST_ID]
    if CORS_ORIGIN in request:
        # The route's CORS settings are the gateway's to apply; an upstream's own answer is replaced.
        response.headers["Access-Control-Allow-Origin"] = request[CORS_ORIGIN]
        response.headers.add("Vary", "Origin")


def _client_request_id(request: web.BaseRequest) -> str | None:
    sent = request.headers.getall(REQUEST_ID_HEADER, [])
    return sent[0] if len(sent) == 1 else None


async def handle(runtime: Runtime, request: web.BaseRequest) -> web.StreamResponse:
    started = time.perf_counter()
    trace = Trace(request_id(_client_request_id(request)))
    request[REQUEST_ID] = trace.request_id  # echoed to the client by echo_headers()
    route: Route | None = None
    principal: Principal | None = None
    path = "-"
    config = runtime.config
    if "Upgrade" in request.headers and request.protocol is not None:
        # Upgrades (WebSocket, h2c) are not proxied: `Upgrade` is dropped as hop-by-hop and the request is served
        # as plain HTTP. aiohttp's parser reads nothing more on such a connection, so close it after this answer
        # rather than leave it idle (whatever the client sent after the head is never read as a request).
        request.protocol.close()
    runtime.metrics.request_started()
    try:
        if is_preflight(request):
            # Matched as the method it asks about: a preflight is a question about that request.
            path, _, route = route_for(runtime, request.headers["Access-Control-Request-Method"], request.raw_path)
            answer = preflight(route, request)
            if answer is not None:
                _record(runtime, request, path, route, None, answer.status, "preflight", "ok", started, trace)
                return answer
        path, query, route = route_for(runtime, request.method, request.raw_path)
        host = request.headers.get("Host")
        if host is not None and not valid_host(host):
            # It reaches the upstream as X-Forwarded-Host, where links and redirects are built from it.
            raise BadRequest("the Host header is not a valid host[:port]")
        if route is None:
            raise NotFound()
        origin = request.headers.get("Origin")
        if route.cors is not None and origin is not None and route.cors.allows_origin(origin):
            request[CORS_ORIGIN] = origin  # also on 401/403, so the browser lets the page read why
        body = guard_body(config.limits, route, request)
        identity: Mapping[str, str] = _NO_IDENTITY
        token: str | None = None
        if route.policy.access is not Access.PUBLIC:
            token, query = credentials(route, config.limits, request, query)
            authenticator, token = _checked_in(runtime, token, trace)
            principal = authenticator.cached(token) or await authenticator.authenticate(token)
            lacking = missing_roles(route.policy, principal.roles)
            if lacking is not None:
                raise InsufficientScope(f"this route requires the role {lacking}", required=lacking)
            # Only for a caller already allowed in: nobody else can make the gateway read a body.
            if body is not None:
                await refuse_form_token(request, body)
            identity = _identity(principal)
        upstream = config.upstreams[route.upstream]
        headers = upstream_request_headers(
            request.headers,
            identity=identity,
            forwarded=forwarded_for(
                request.remote or "", request.scheme, host, request.headers, config.trusted_proxies
            ),
            pass_authorization=route.pass_authorization,
        )
        if token is not None and route.pass_authorization:
            headers["Authorization"] = f"Bearer {token}"  # the token we checked, whichever way it came
        headers[REQUEST_ID_HEADER] = trace.request_id
        forwarding = time.perf_counter()
        try:
            response = await forward(
                request,
                runtime.upstream_client,
                upstream,
                upstream_target(path, query),
                headers,
                runtime.metrics,
                body=body.chunks() if body is not None else None,
                before_prepare=functools.partial(echo_headers, request),
            )
        except GatewayError:
            if body is not None and body.error is not None:
                raise body.error from None  # the client's fault (413/408), not the upstream's
            raise
        finally:
            # The whole exchange with the upstream: to the last byte relayed when the body is streamed.
            trace.upstream_seconds = time.perf_counter() - forwarding
    except GatewayError as exc:
        decision = "deny" if exc.status < 499 else "error"  # 499: the client went away, nothing was decided
        _record(runtime, request, path, route, principal, exc.status, decision, exc.reason, started, trace)
        raise
    except asyncio.CancelledError:
        # The client went away, the upstream cut a streamed body, or the grace period ran out: still one line.
        _record(runtime, request, path, route, principal, 499, "error", "aborted", started, trace)
        raise
    else:
        _record(runtime, request, path, route, principal, response.status, "allow", "ok", started, trace)
        return response
    finally:
        runtime.metrics.request_ended()


def _milliseconds(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


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
    request: web.BaseRequest,
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
    runtime.metrics.request_done(route_label, decision, status, elapsed)
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
    if access_log.isEnabledFor(logging.INFO):
        log_access(access_log, _ACCESS_MESSAGE, (request.method, path, status, decision), fields)
