"""What an upgrade must pass, besides the token and the roles, at the upgrade and at every recheck: the route must
take WebSockets, and a browser's `Origin` must be one the route's CORS allows (cross-site WebSocket hijacking)."""

from __future__ import annotations

from gateway.errors import GatewayError, PreflightRejected
from gateway.policy.decision import BeforeAuth, Headers
from gateway.policy.rules import Route


class RouteGone(GatewayError):
    """The route no longer takes WebSockets (a reload changed it): found only at a recheck."""

    status = 404
    error = "not_found"
    description = "this route does not take WebSockets"

    @property
    def reason(self) -> str:
        return "route"


def upgrade_guard(headers: Headers) -> BeforeAuth:
    """The decision core's `before_auth` for an upgrade: runs once the route is known, before any IdP call."""
    origin = headers.get("Origin")

    def guard(route: Route) -> None:
        if not route.websocket:
            raise RouteGone()
        # Browsers send Origin on every WebSocket and let any page open one to any host; only the server can
        # refuse. Clients that are not browsers send none, and cannot be made to by another site.
        if route.cors is not None and origin is not None and route.cors.allow_origin(origin) is None:
            raise PreflightRejected("this origin may not open a WebSocket on this route")

    return guard
