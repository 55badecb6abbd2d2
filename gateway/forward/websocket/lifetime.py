"""How long a relayed WebSocket may live, and why it ends.

The token's `exp` ends it on time. Every `websocket.recheck_seconds` the upgrade is decided again by the current
config's decision core, through the introspection cache: an inactive token, a lost role, or a route that no longer
takes WebSockets ends it with 1008. An IdP that cannot answer a recheck is tolerated for
MAX_FAILED_RECHECKS - 1 rechecks in a row (a blip never drops a socket); at the MAX_FAILED_RECHECKS-th the socket is
closed 1013 (try again later), since nothing vouches for the token any more. `exp` still applies meanwhile.
No data message either way for `idle_timeout_seconds` ends it with 1001; `max_lifetime_seconds`, when set, with
1008. The settings are read from the current config at every turn, so a reload applies at the next recheck.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from gateway.auth.introspection import Principal
from gateway.config import WebSocketSettings
from gateway.errors import GatewayError, IdPUnavailable, InsufficientScope, InvalidToken, TooManyRequests
from gateway.forward.websocket.guard import upgrade_guard
from gateway.ops.reload import Slot
from gateway.policy.decision import Inbound, Trace

log = logging.getLogger("gateway.websocket")

MAX_FAILED_RECHECKS = 3


@dataclass(frozen=True, slots=True)
class Ending:
    """Why a socket ends: the reason (the access log's and the metric's label), the close code it ends with, and
    the close frame's text. A side that failed on its own gets `to_client` / `to_upstream` instead of `code`."""

    reason: str
    code: int
    message: str = ""
    to_client: int | None = None
    to_upstream: int | None = None

    @property
    def client_code(self) -> int:
        return self.code if self.to_client is None else self.to_client

    @property
    def upstream_code(self) -> int:
        return self.code if self.to_upstream is None else self.to_upstream


POLICY_VIOLATION = 1008
GOING_AWAY = 1001
TRY_AGAIN_LATER = 1013

EXPIRED = Ending("expired", POLICY_VIOLATION, "the access token has expired")
REVOKED = Ending("revoked", POLICY_VIOLATION, "the access token is no longer active")
ROLES = Ending("roles", POLICY_VIOLATION, "the access token lacks a role this route requires")
ROUTE = Ending("route", POLICY_VIOLATION, "this route no longer takes this WebSocket")
LIFETIME = Ending("lifetime", POLICY_VIOLATION, "the WebSocket reached its maximum lifetime")
IDP_UNAVAILABLE = Ending("idp_unavailable", TRY_AGAIN_LATER, "the access token cannot be checked now")
IDLE = Ending("idle", GOING_AWAY, "idle")
SHUTDOWN = Ending("shutdown", GOING_AWAY, "the gateway is shutting down")


class Lifetime:
    """Watches one socket. `touch()` on every data message (pings and pongs are not activity)."""

    __slots__ = ("_expires_at", "_inbound", "_opened", "_request_id", "_slot", "failed_rechecks", "last_data")

    def __init__(self, slot: Slot, inbound: Inbound, request_id: str, principal: Principal | None) -> None:
        self._slot = slot
        self._inbound = inbound
        self._request_id = request_id
        self._expires_at = principal.expires_at if principal is not None else None
        self._opened = self.last_data = asyncio.get_running_loop().time()
        self.failed_rechecks = 0

    def touch(self, now: float) -> None:
        self.last_data = now

    async def watch(self) -> Ending:
        """Returns when the socket must end, with why."""
        loop = asyncio.get_running_loop()
        next_check = self._opened + self._slot.current.config.websocket.recheck
        while True:
            settings = self._slot.current.config.websocket
            now = loop.time()
            ending, wake = self._due(settings, now)
            if ending is not None:
                return ending
            if next_check <= now:
                ending = await self.recheck()
                if ending is not None:
                    return ending
                next_check = loop.time() + settings.recheck
                continue
            await asyncio.sleep(min(wake, next_check) - now)

    def _due(self, settings: WebSocketSettings, now: float) -> tuple[Ending | None, float]:
        """An ending that is due at `now` (loop time), or None and when the next one could be."""
        wake = float("inf")
        if self._expires_at is not None:
            left = self._expires_at - time.time()
            if left <= 0:
                return EXPIRED, now
            wake = now + left
        if settings.max_lifetime > 0:
            end = self._opened + settings.max_lifetime
            if end <= now:
                return LIFETIME, now
            wake = min(wake, end)
        if settings.idle_timeout > 0:
            end = self.last_data + settings.idle_timeout
            if end <= now:
                return IDLE, now
            wake = min(wake, end)
        return None, wake

    async def recheck(self) -> Ending | None:
        """The upgrade decided again, by the current config, through the cache: None while it is still allowed."""
        inbound = self._inbound
        try:
            decision = await self._slot.current.decider.decide(
                inbound, Trace(self._request_id), before_auth=upgrade_guard(inbound.headers)
            )
        except InvalidToken as exc:
            return EXPIRED if exc.reason == "expired" else REVOKED
        except InsufficientScope:
            return ROLES
        except (IdPUnavailable, TooManyRequests) as exc:
            self.failed_rechecks += 1
            log.warning("websocket %s: recheck %d failed (%s)", self._request_id, self.failed_rechecks, exc.reason)
            return IDP_UNAVAILABLE if self.failed_rechecks >= MAX_FAILED_RECHECKS else None
        except GatewayError:
            return ROUTE  # no route any more, the route takes no WebSockets, or no longer from this Origin
        self.failed_rechecks = 0
        if decision.principal is not None:
            self._expires_at = decision.principal.expires_at
        return None
