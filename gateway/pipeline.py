"""The one place that runs the stages in order and logs one line per decision:

canonical path -> match a route -> authenticate -> authorize -> mutate headers -> forward.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import time
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.auth.cache import CachingAuthenticator
from gateway.auth.client_budget import ClientBudget
from gateway.auth.credentials import form_has_token
from gateway.auth.introspection import Introspector
from gateway.auth.jwt_tokens import TokenDispatch
from gateway.config import Config, Limits
from gateway.errors import ExpectationFailed, GatewayError, InvalidRequestToken, PayloadTooLarge
from gateway.forward.assertion import Signer
from gateway.forward.body import BodyGuard
from gateway.forward.headers import ForwardedFor, dropped_request_headers, forwarded_for, upstream_request_headers
from gateway.forward.method_override import body_scanner
from gateway.forward.proxy import forward
from gateway.forward.upstream import UpstreamClient
from gateway.ops.logs import log_access, request_id
from gateway.ops.metrics import Metrics
from gateway.ops.request_shape import HTTP_11, refuse_body, refuse_malformed
from gateway.ops.tracing import Tracer, end_exchange
from gateway.policy.decision import Decider, Decision, Inbound, Trace, upstream_target
from gateway.policy.rules import Route

access_log = logging.getLogger("gateway.access")
_ACCESS_MESSAGE = "%s %s %d %s"


REQUEST_ID = web.RequestKey("request_id", str)
# Set on a route with `cors:`: the CORS headers of its answers (none but Vary for an origin it does not allow).
CORS_HEADERS = web.RequestKey("cors_headers", tuple[tuple[str, str], ...])
REQUEST_ID_HEADER = "X-Request-Id"

_FORM = "application/x-www-form-urlencoded"


@dataclass(frozen=True, slots=True)
class Runtime:
    """Everything one config needs to serve; a reload swaps it whole, so a request sees one consistent set."""

    config: Config
    authenticator: CachingAuthenticator | None
    upstream_client: UpstreamClient
    metrics: Metrics
    introspector: Introspector | None = None  # for readiness: has the IdP's discovery document been fetched?
    dispatch: TokenDispatch | None = None  # idp.access_tokens jwt/auto: which check answers for a token
    tracer: Tracer | None = None  # None: tracing off
    signer: Signer | None = None  # identity.assertion: signs what the upstream may check
    decider: Decider = field(init=False, repr=False, compare=False)
    dropped: frozenset[str] = field(init=False, repr=False, compare=False)  # never relayed from a client

    def __post_init__(self) -> None:
        idp = self.config.idp
        budget = ClientBudget(idp.max_concurrent_calls_per_client if idp else 0)
        decider = Decider(self.config.routes, self.config.limits, self.authenticator, budget, self.dispatch)
        object.__setattr__(self, "decider", decider)
        object.__setattr__(self, "dropped", dropped_request_headers(self.config.identity.names))


def guard_body(limits: Limits, route: Route, request: web.BaseRequest) -> BodyGuard | None:
    expect = request.headers.get("Expect")
    send_continue = None
    if expect is not None and request.version == HTTP_11:  # HTTP/1.0 has no expectations (RFC 9110 §10.1.1)
        if expect.lower() != "100-continue":
            raise ExpectationFailed()
        send_continue = request.writer
    if not request.body_exists:
        return None
    refuse_body(route, request.method)
    limit = route.max_body_bytes if route.max_body_bytes is not None else limits.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge()
    return BodyGuard(
        request.content,
        limit=limit,
        timeout=limits.body_timeout,
        send_continue=send_continue,
        scanner=body_scanner(request.content_type),
    )


async def refuse_form_token(request: web.BaseRequest, body: BodyGuard) -> None:
    """A token in a form body too (RFC 6750 §2.2) is 400. Run after authentication: only a client with a valid
    token can make the gateway buffer a body (within the route's limit) to look."""
    if request.content_type == _FORM and form_has_token(await body.read_all()):
        raise InvalidRequestToken("the access token was sent in more than one place")


def echo_headers(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """Before the headers go out, for streamed answers and error answers alike: our X-Request-Id, and the CORS
    origin of a route that allows it."""
    if REQUEST_ID in request:
        response.headers[REQUEST_ID_HEADER] = request[REQUEST_ID]
    cors = request.get(CORS_HEADERS)
    if cors is not None:
        # The route's CORS settings are the gateway's to apply: every Access-Control-* of the upstream's goes, or
        # its own Allow-Origin / Allow-Credentials would let origins the route does not allow read the answer.
        headers = response.headers
        for name in [name for name in headers if name.lower().startswith("access-control-")]:
            headers.popall(name, None)
        for name, value in cors:
            headers.add(name, value)


JWKS_HEADERS = {"Content-Type": "application/json", "Cache-Control": "public, max-age=300"}


def published_keys(signer: Signer, request: web.BaseRequest) -> bool:
    """A GET (or HEAD) of `identity.assertion.jwks_path` on the proxy listener: the JWKS, for backends that cannot
    reach the admin listener. It is the gateway's, never an upstream's, whatever the routes say."""
    path = signer.settings.jwks_path
    return path is not None and request.path == path and request.method in ("GET", "HEAD")


def client_request_id(request: web.BaseRequest) -> str | None:
    sent = request.headers.getall(REQUEST_ID_HEADER, [])
    return sent[0] if len(sent) == 1 else None


def upstream_headers(
    runtime: Runtime, client: CIMultiDictProxy[str], decision: Decision, forwarded: ForwardedFor, rid: str
) -> CIMultiDict[str]:
    """What an allowed request carries upstream, whichever transport sends it (a plain request, a WebSocket
    upgrade): the client's headers less everything the gateway owns, the identity, the assertion, the request id."""
    route = decision.route
    headers = upstream_request_headers(
        client,
        identity=decision.identity,
        forwarded=forwarded,
        pass_authorization=route.pass_authorization and decision.relay_authorization,
        dropped=runtime.dropped,
    )
    if runtime.signer is not None and decision.principal is not None:
        headers[runtime.signer.header] = runtime.signer.assertion(
            decision.principal, route.identity_headers, route.upstream, rid
        )
    if decision.token is not None and route.pass_authorization:
        headers["Authorization"] = f"Bearer {decision.token}"  # the token we checked, whichever way it came
    headers[REQUEST_ID_HEADER] = rid
    return headers


async def handle(runtime: Runtime, request: web.BaseRequest) -> web.StreamResponse:
    started = time.perf_counter()
    trace = Trace(request_id(client_request_id(request)))
    request[REQUEST_ID] = trace.request_id  # echoed to the client by echo_headers()
    config = runtime.config
    if "Upgrade" in request.headers and request.protocol is not None:
        # Upgrades (WebSocket, h2c) are not proxied: `Upgrade` is dropped as hop-by-hop and the request is served
        # as plain HTTP. aiohttp's parser reads nothing more on such a connection, so close it after this answer
        # rather than leave it idle (whatever the client sent after the head is never read as a request).
        request.protocol.close()
    if runtime.signer is not None and published_keys(runtime.signer, request):
        return web.Response(body=runtime.signer.jwks, headers=JWKS_HEADERS)
    runtime.metrics.request_started()
    body: BodyGuard | None = None

    def guard(route: Route) -> None:
        nonlocal body
        body = guard_body(config.limits, route, request)

    host = request.headers.get("Host")
    # Who the client is (the peer, or what trusted proxies say): for the upstream, and for its token budget.
    forwarded = forwarded_for(request.remote or "", request.scheme, host, request.headers, config.trusted_proxies)
    if runtime.tracer is not None:
        trace.span = runtime.tracer.server_span(request.method, request.headers, request.scheme, forwarded.client_ip)
    try:
        try:
            refuse_malformed(request)  # the request line's version, the framing, Host: before anything is decided
            inbound = Inbound(request.method, request.raw_path, request.headers, host, forwarded.client_ip)
            decision = await runtime.decider.decide(inbound, trace, before_auth=guard)
        finally:
            if trace.cors_headers is not None:
                request[CORS_HEADERS] = trace.cors_headers
        if decision.preflight is not None:
            record(runtime, request.method, trace, 204, "preflight", "ok", started)
            return web.Response(status=204, headers=decision.preflight)
        # Only for a caller already allowed in: nobody else can make the gateway read a body.
        if body is not None and decision.principal is not None:
            await refuse_form_token(request, body)
        upstream = config.upstreams[decision.route.upstream]
        headers = upstream_headers(runtime, request.headers, decision, forwarded, trace.request_id)
        exchange = trace.span.upstream(request.method, upstream.url, decision.path, headers) if trace.span else None
        forwarding = time.perf_counter()
        try:
            response = await forward(
                request,
                runtime.upstream_client,
                upstream,
                upstream_target(decision.path, decision.query),
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
            if exchange is not None:
                failure = sys.exc_info()[1]
                end_exchange(exchange, None if failure else response.status, failure)
    except GatewayError as exc:
        decision_label = "deny" if exc.status < 499 else "error"  # 499: the client went away, nothing was decided
        record(runtime, request.method, trace, exc.status, decision_label, exc.reason, started)
        raise
    except asyncio.CancelledError:
        # The client went away, the upstream cut a streamed body, or the grace period ran out: still one line.
        record(runtime, request.method, trace, 499, "error", "aborted", started)
        raise
    else:
        record(runtime, request.method, trace, response.status, "allow", "ok", started)
        return response
    finally:
        runtime.metrics.request_ended()


def _milliseconds(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def record(
    runtime: Runtime,
    method: str,
    trace: Trace,
    status: int,
    decision: str,
    reason: str,
    started: float,
    mode: str = "proxy",
) -> None:
    """The one decision log line (JSON or text, per `logging.format`) and the request metrics. Never the token."""
    elapsed = time.perf_counter() - started
    route = trace.route
    principal = trace.principal
    route_label = route.id if route else "-"
    runtime.metrics.request_done(route_label, decision, status, elapsed)
    fields = {
        "request_id": trace.request_id,
        "mode": mode,
        "method": method,
        "path": trace.path,
        "route": route_label,
        "decision": decision,
        "reason": reason,
        "status": status,
        "subject": (principal.subject or "-") if principal else "-",
        "principal": principal.kind if principal else "-",  # `client`: no `sub`, the client is the principal
        "client_id": (principal.client_id or "-") if principal else "-",
        "token": trace.token_hash,
        "upstream_ms": _milliseconds(trace.upstream_seconds),
        "total_ms": _milliseconds(elapsed),
    }
    if trace.span is not None:
        fields["trace_id"] = trace.span.finish(route, trace.path, status, decision, reason, mode)
    if access_log.isEnabledFor(logging.INFO):
        log_access(access_log, _ACCESS_MESSAGE, (method, trace.path, status, decision), fields)
