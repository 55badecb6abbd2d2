"""The forward-auth listener: an ingress asks "may this pass, and who is it?", and the decision core answers.

nginx `auth_request`, Traefik `forwardAuth`, Caddy `forward_auth` and Envoy's ext_authz HTTP service each send the
gateway a request that describes the client's; nothing is forwarded from here. Where the original request is read
from is configuration (`forward_auth.original`), never a guess from what arrived: a client that gets a header
through the proxy must not choose which request is authorised.

The ingress forwards the target as the client sent it, and the gateway cannot change that. So the target must
already be canonical: the path authorised and the path forwarded are then the same string.
"""

from __future__ import annotations

import asyncio
import math
import time

import jwt
from aiohttp import web
from multidict import CIMultiDict

from gateway.answers import answer_for
from gateway.config import Config, ForwardAuth
from gateway.errors import BadRequest, ForwardAuthOff, GatewayError
from gateway.forward.headers import IDENTITY_HEADERS, IDENTITY_PREFIX, REWRITES, forwarded_for, normalised_name
from gateway.ops.logs import request_id
from gateway.pipeline import REQUEST_ID_HEADER, Runtime, client_request_id, record
from gateway.policy.decision import Decision, Inbound, Trace
from gateway.policy.rules import valid_method

METHOD_HEADER = "X-Forwarded-Method"
URI_HEADER = "X-Forwarded-Uri"
HOST_HEADER = "X-Forwarded-Host"
_NO_STORE = "no-store"


def _one(request: web.BaseRequest, name: str) -> str:
    values = request.headers.getall(name, [])
    if len(values) != 1:
        raise BadRequest(f"forward-auth needs exactly one {name} header")
    return values[0]


def original_request(settings: ForwardAuth, config: Config, request: web.BaseRequest) -> Inbound:
    """The request to decide on, from where `settings` (the listener's, fixed at start) say it is. The client (for
    its token-check budget) is the ingress itself unless the ingress is in `trusted_proxies` and says who it
    forwards for."""
    host = request.headers.get("Host")
    client = forwarded_for(request.remote or "", request.scheme, host, request.headers, config.trusted_proxies)
    if settings.original == "request":
        # Envoy ext_authz (HTTP service): the client's method, path and Host, on the request itself.
        return Inbound(request.method, request.raw_path, request.headers, host, client.client_ip)
    method = _one(request, METHOD_HEADER)
    target = _one(request, URI_HEADER)
    hosts = request.headers.getall(HOST_HEADER, [])
    if len(hosts) > 1:
        raise BadRequest(f"forward-auth takes at most one {HOST_HEADER} header")
    if not valid_method(method) or method == "CONNECT":
        raise BadRequest(f"{METHOD_HEADER} is not a method this gateway forwards")
    # Without X-Forwarded-Host there is no client Host to check: the request's own names the gateway, as the
    # ingress calls it (nginx: the upstream block's name).
    return Inbound(method, target, request.headers, hosts[0] if hosts else None, client.client_ip)


def _refuse_what_it_cannot_strip(request: web.BaseRequest) -> None:
    """The proxy mode drops what frameworks act on and closes upgrades it does not relay; an ingress relays the
    client's headers and upgrades as they are, and the gateway can only refuse them.

    - `Upgrade`: an allowed request would become a tunnel (h2c) or a WebSocket whose lifetime nobody polices; every
      later request on it is never decided. WebSockets go through the proxy mode, which checks them for their life.
    - Method-override and URL-rewrite headers: the backend would act on another method or path than was decided.
    """
    if "Upgrade" in request.headers:
        raise BadRequest("forward-auth does not authorise upgrades: WebSockets go through the gateway's proxy")
    for name in request.headers:
        if normalised_name(name) in REWRITES:
            raise BadRequest(f"the request carries {name}, which would change what the backend acts on")


def _refuse_forged_identity(runtime: Runtime, request: web.BaseRequest) -> None:
    """An identity header spelled with `_` cannot be overwritten by the ingress (Caddy, Traefik and Envoy pass such
    names through; WSGI and CGI backends read `X_Auth_Subject` as `X-Auth-Subject`). No client has a reason to
    send one, so the request is refused. Names spelled with `-` are overwritten by every recipe."""
    underscored = [normalised_name(name) for name in request.headers if "_" in name]
    if not underscored:
        return
    mapped = {normalised_name(n) for n in runtime.config.identity.names}
    if any(name.startswith(IDENTITY_PREFIX) or name in mapped for name in underscored):
        raise BadRequest("the request carries an identity header the gateway sets itself")


def allow_headers(runtime: Runtime, decision: Decision, request_id: str = "-") -> CIMultiDict[str]:
    """Every identity header name, empty where the principal has no value: an ingress copies each name it is told
    to, and an empty value replaces (nginx: removes) whatever the client sent under that name."""
    names = (*IDENTITY_HEADERS, *runtime.config.identity.names)  # the mapped ones and the assertion's too
    headers: CIMultiDict[str] = CIMultiDict((name, decision.identity.get(name, "")) for name in names)
    seconds = _keep_for(runtime, decision)
    signer = runtime.signer
    if signer is not None and decision.principal is not None:
        assertion = signer.assertion(
            decision.principal, decision.route.identity_headers, decision.route.upstream, request_id
        )
        headers[signer.header] = assertion
        # A kept allow hands its assertion to the backend again: never after the assertion's own exp.
        seconds = min(seconds, max(0, math.floor(_expires_at(assertion) - time.time())))
    if seconds > 0:
        # nginx's cache honours X-Accel-Expires (Cache-Control `private` alone would stop it); a shared cache that
        # follows the standard may not store a private answer.
        headers["Cache-Control"] = f"private, max-age={seconds}"
        headers["X-Accel-Expires"] = str(seconds)
    else:
        headers["Cache-Control"] = _NO_STORE
        headers["X-Accel-Expires"] = "0"
    return headers


def _keep_for(runtime: Runtime, decision: Decision) -> int:
    """How long an ingress may keep this allow: never longer than `cache.ttl_seconds` nor than the gateway itself
    keeps the token's answer (so a revoked token, and a reload's new rules, take effect within the same bound as
    through the proxy), nor past the token's `exp`. 0 for public routes (a reload then applies to them at once) and
    when nothing is cached. A JWT verified here is kept until its `exp`; its allow, still only `ttl_seconds`."""
    if decision.token is None:
        return 0
    checked_by = runtime.decider.authenticator_for(decision.token, decision.route)
    return max(0, math.floor(min(checked_by.remaining(decision.token), runtime.config.cache.ttl)))


def _expires_at(assertion: str) -> float:
    """The `exp` of an assertion the gateway has just signed (its own token: read, not verified)."""
    claims = jwt.decode(assertion, options={"verify_signature": False})
    return float(claims["exp"])


async def handle_forward_auth(runtime: Runtime, request: web.BaseRequest, settings: ForwardAuth) -> web.StreamResponse:
    """`settings`: the listener's, as it was opened at start. Where the original request is read from never
    changes while the listener lives (a reload that changed it is logged, and applies at the next restart); a
    reload that removed `forward_auth:` makes it refuse everything (503), never fall back to another mode."""
    started = time.perf_counter()
    trace = Trace(request_id(client_request_id(request)))
    method = request.method
    if runtime.tracer is not None:
        trace.span = runtime.tracer.server_span(method, request.headers, request.scheme, request.remote or "")
    runtime.metrics.request_started()
    try:
        if runtime.config.forward_auth is None:
            raise ForwardAuthOff()
        inbound = original_request(settings, runtime.config, request)
        method = inbound.method
        _refuse_forged_identity(runtime, request)
        _refuse_what_it_cannot_strip(request)
        decision = await runtime.decider.decide(inbound, trace, exact=True)
    except asyncio.CancelledError:
        record(runtime, method, trace, 499, "error", "aborted", started, mode="forward_auth")
        raise
    except GatewayError as exc:
        record(runtime, method, trace, exc.status, "deny", exc.reason, started, mode="forward_auth")
        response = answer_for(request, exc)
        for name, value in trace.cors_headers or ():
            response.headers.add(name, value)
    else:
        # A CORS preflight the route allows is allowed through: the ingress forwards it and the backend answers it.
        label = "preflight" if decision.preflight is not None else "allow"
        record(runtime, method, trace, 200, label, "ok", started, mode="forward_auth")
        response = web.Response(status=200, headers=allow_headers(runtime, decision, trace.request_id))
    finally:
        runtime.metrics.request_ended()
    response.headers[REQUEST_ID_HEADER] = trace.request_id
    return response
