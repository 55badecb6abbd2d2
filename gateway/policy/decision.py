"""The one decision core: may this request pass, and who is it?

Every way in asks it the same question with the same inputs (the method, the raw target, the headers, the host):
the proxy, the forward-auth listener and `explain`. It runs the stages in order and either returns a Decision or
raises the refusal (a GatewayError, carrying its status). What a transport does with the answer (forward the
request, answer 200 to an ingress, print a line) is the transport's business, kept apart from this.

canonical path -> match a route -> (CORS preflight) -> Host -> authenticate -> authorize -> identity headers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from multidict import CIMultiDictProxy, MultiMapping

from gateway.auth.claims import Principal
from gateway.auth.client_budget import ClientBudget
from gateway.auth.credentials import bearer_token, query_has_token, query_token, without_query_token
from gateway.config import Limits
from gateway.errors import (
    BadRequest,
    IdPUnavailable,
    InsufficientScope,
    InvalidRequestToken,
    NotFound,
    PreflightRejected,
    Unauthenticated,
)
from gateway.forward.headers import valid_host
from gateway.forward.identity import identity_of
from gateway.forward.method_override import query_overrides_method
from gateway.ops.logs import token_hash
from gateway.ops.tracing import RequestSpan, introspection
from gateway.policy.paths import PathError, canonical_path, split_target
from gateway.policy.rules import Access, Route, missing_roles, resolve_route

Headers = CIMultiDictProxy[str] | MultiMapping[str]
NO_IDENTITY: Mapping[str, str] = MappingProxyType({})


class Authenticator(Protocol):
    """What the core asks about a token: an answer at hand (no coroutine), or one fetched."""

    def cached(self, token: str) -> Principal | None: ...

    def pending(self, token: str) -> bool: ...

    def remaining(self, token: str) -> float: ...

    async def authenticate(self, token: str) -> Principal: ...


class Picker(Protocol):
    """Which check answers for a token on a route (`idp.access_tokens` jwt/auto; `introspect: always`)."""

    def pick(self, token: str, introspect_always: bool) -> Authenticator: ...


class RouteMemo:
    """(method, raw path) -> (canonical path, route), remembered: both are pure functions of one config.

    Bounded (cleared when full; long paths and long methods are never kept), so random paths cannot grow memory:
    a preflight's Access-Control-Request-Method is a method key too, and any client can make it 16 KB. Refused
    paths (PathError) are not remembered: they raise every time.
    """

    __slots__ = ("_memo", "_routes")

    MAX_ENTRIES = 4096
    MAX_PATH = 256
    MAX_METHOD = 32  # the longest registered method (UPDATEREDIRECTREF) has 17 letters

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
        if len(raw_path) <= self.MAX_PATH and len(method) <= self.MAX_METHOD:
            if len(self._memo) >= self.MAX_ENTRIES:
                self._memo.clear()
            self._memo[key] = resolved
        return resolved


@dataclass(slots=True)
class Trace:
    """What the decision log line needs, filled in as the stages run, so that a refusal is logged with the path,
    the route and the principal it got as far as."""

    request_id: str
    path: str = "-"
    route: Route | None = None
    principal: Principal | None = None
    token_hash: str = "-"
    # On a route with `cors:`, the CORS headers of its answers, refusals included (only Vary for an origin it does
    # not allow): the gateway owns them, and an upstream's own never pass.
    cors_headers: tuple[tuple[str, str], ...] | None = None
    upstream_seconds: float | None = None
    span: RequestSpan | None = None  # the request's place in its trace, when tracing is on


@dataclass(frozen=True, slots=True)
class Decision:
    """An allowed request: what to forward, and who sent it. `preflight` set: a CORS preflight the route answers
    itself with these headers (204), nothing to forward."""

    path: str  # canonical: the one path that was matched, and the one that may be forwarded
    query: str | None  # as sent, less an `access_token` the gateway took or did not check
    route: Route
    principal: Principal | None = None
    token: str | None = None  # the token that was checked (to pass upstream when the route says so)
    # Whether the client's Authorization may go upstream: never one nobody checked, unless the route says so.
    relay_authorization: bool = True
    identity: Mapping[str, str] = field(default_factory=lambda: NO_IDENTITY)
    preflight: Mapping[str, str] | None = None


BeforeAuth = Callable[[Route], None]


@dataclass(frozen=True, slots=True)
class Inbound:
    """The request as the core sees it, wherever it came from."""

    method: str
    target: str  # the raw request target: path and query as sent
    headers: Headers
    host: str | None = None  # the Host the client asked for (a proxy's X-Forwarded-Host in forward-auth)
    client: str = ""  # the client's address (the peer, or what trusted proxies say): its token-check budget


@dataclass(slots=True)
class Decider:
    """The core for one config: a reload builds a new one, so a request sees one consistent set of rules."""

    routes: tuple[Route, ...]
    limits: Limits
    authenticator: Authenticator | None
    budget: ClientBudget = field(default_factory=lambda: ClientBudget(0))
    dispatch: Picker | None = None
    routing: RouteMemo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.routing = RouteMemo(self.routes)

    def route_for(self, method: str, raw_target: str) -> tuple[str, str | None, Route | None]:
        """(canonical path, query, route) or BadRequest: the one path that is matched and forwarded."""
        try:
            raw_path, query = split_target(raw_target)
            path, route = self.routing.resolve(method, raw_path)
            return path, query, route
        except PathError as exc:
            raise BadRequest(f"the request path is not acceptable: {exc}") from exc

    async def decide(
        self, inbound: Inbound, trace: Trace, *, exact: bool = False, before_auth: BeforeAuth | None = None
    ) -> Decision:
        """The decision, or the refusal raised.

        `exact`: the target must already be canonical (forward-auth: the proxy in front forwards the target as it
        came, so the path authorised and the path forwarded could otherwise differ). `before_auth`: the
        transport's own checks once the route is known and before any IdP call (the proxy's body limits)."""
        headers = inbound.headers
        method = inbound.method
        if method == "OPTIONS" and "Origin" in headers and "Access-Control-Request-Method" in headers:
            # Matched as the method it asks about: a preflight is a question about that request.
            asked = headers["Access-Control-Request-Method"]
            path, query, route = self.route_for(asked, inbound.target)
            if route is not None and route.cors is not None:
                trace.path, trace.route = path, route
                self._plain(path, query, inbound, exact)
                answer = route.cors.preflight(
                    headers["Origin"], asked, headers.get("Access-Control-Request-Headers", "")
                )
                if answer is None:
                    raise PreflightRejected()
                return Decision(path, query, route, preflight=answer)
        path, query, route = self.route_for(method, inbound.target)
        trace.path, trace.route = path, route
        self._plain(path, query, inbound, exact)
        if inbound.host is not None and not valid_host(inbound.host):
            # It reaches the upstream as X-Forwarded-Host, where links and redirects are built from it.
            raise BadRequest("the Host header is not a valid host[:port]")
        if route is None:
            raise NotFound()
        if route.cors is not None:  # also on 401/403, so that the browser lets the page read why
            trace.cors_headers = route.cors.answer_headers(headers.get("Origin"))
        if before_auth is not None:
            before_auth(route)
        if route.policy.access is Access.PUBLIC:
            if route.forward_unchecked_credentials:
                return Decision(path, query, route)
            # Nobody checked them here: an upstream that trusts the gateway must not be handed a forged JWT, and a
            # query token must not land in its access log.
            return Decision(path, without_query_token(query), route, relay_authorization=False)
        token, query = self.credentials(route, headers, query)
        if token is None:
            raise Unauthenticated()
        trace.token_hash = token_hash(token)
        authenticator = self.authenticator_for(token, route)
        principal = authenticator.cached(token)
        if principal is None:
            # Only a new IdP call counts against the client's budget; sharing one under way, or a JWT verified
            # here, costs the IdP nothing.
            shared = authenticator.pending(token)
            asks_idp = authenticator is self.authenticator and not shared
            admit = self.budget.checking(inbound.client) if asks_idp else contextlib.nullcontext()
            with admit, introspection(trace.span, "coalesced" if shared else "miss"):
                principal = await authenticator.authenticate(token)
        elif trace.span is not None:
            trace.span.instant("introspection", {"gateway.cache": "hit"})
        trace.principal = principal
        org = route.org_of(path)  # roles per organisation: only those granted in the one the path names
        lacking = missing_roles(route.policy, principal.roles_in(org))
        if lacking is not None:
            where = " in this organisation" if org is not None else ""  # never the ones the token has
            raise InsufficientScope(f"this route requires the role {lacking}{where}", required=lacking)
        return Decision(path, query, route, principal, token, identity=identity_of(principal, route.identity_headers))

    @staticmethod
    def _plain(path: str, query: str | None, inbound: Inbound, exact: bool) -> None:
        """What every request must be, a preflight included: no method override in the query, and (forward-auth)
        a target that is already canonical."""
        if query_overrides_method(query):
            # Laravel, Symfony and Rails would act on another method than the one the rules matched.
            raise BadRequest("a method override in the query string")
        if exact and upstream_target(path, query) != inbound.target:
            raise BadRequest("the request target is not in canonical form")

    def authenticator_for(self, token: str, route: Route) -> Authenticator:
        """Who checks this token on this route: the JWT verifier or introspection (both behind a cache)."""
        if self.dispatch is not None:
            return self.dispatch.pick(token, route.introspect_always)
        if self.authenticator is None:  # config validation makes this unreachable; fail closed anyway
            raise IdPUnavailable()
        return self.authenticator

    def credentials(self, route: Route, headers: Headers, query: str | None) -> tuple[str | None, str | None]:
        """(token or None, the query to forward). A token in two places is 400 invalid_request (RFC 6750 §2)."""
        limit = self.limits.max_token_bytes
        header = bearer_token(headers.getall("Authorization", []), max_bytes=limit)
        if header is not None and query_has_token(query):
            raise InvalidRequestToken("the access token was sent in more than one place")
        if header is None and route.allow_query_token:
            return query_token(query, max_bytes=limit)
        return header, query


def upstream_target(path: str, query: str | None) -> str:
    """The canonical path and the client's query string byte for byte; nothing is re-quoted."""
    return path if query is None else f"{path}?{query}"
