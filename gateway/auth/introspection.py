"""Authenticate: bearer token -> Principal through ZITADEL's RFC 7662 introspection endpoint.

`parse_introspection` is pure and decides everything about an answer. `Introspector` does the I/O: discovery,
client authentication, one POST per call, and the mapping of every IdP failure to 503 (never 401, never a pass).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Collection
from typing import Any, Protocol

import aiohttp

from gateway.auth.breaker import CircuitBreaker
from gateway.auth.claims import BadClaim, ClaimSelection, MissingClaim, Principal, number, principal_from_claims
from gateway.auth.client_auth import ClientAuth, JwtProfile, SecretBasic, basic_authorization
from gateway.config import IdPConfig
from gateway.errors import IdPBusy, IdPUnavailable, InvalidToken
from gateway.ops.metrics import Metrics
from gateway.ops.tracing import end_call, start_call

log = logging.getLogger("gateway.introspection")

__all__ = ["Authenticator", "Introspector", "Principal", "basic_authorization", "parse_introspection"]


class MalformedAnswer(IdPUnavailable):
    """The IdP answered 200 with something RFC 7662 does not allow: an IdP fault, so 503.

    The detail goes to the log only; the client sees the generic 503 description.
    """

    def __init__(self, detail: str = "malformed introspection answer") -> None:
        super().__init__()
        self.detail = detail

    def __str__(self) -> str:
        return self.detail


class Authenticator(Protocol):
    async def authenticate(self, token: str) -> Principal: ...


def parse_introspection(
    body: Any,
    *,
    issuer: str,
    project_id: str | None,
    now: float,
    leeway: float,
    required: Collection[str] = (),
    keep: ClaimSelection | None = None,
) -> Principal:
    """Turn an introspection answer into a Principal, or raise InvalidToken / MalformedAnswer.

    Checked in order: active, exp, nbf, iss, then the claims (principal_from_claims). Only `active` is required
    (RFC 7662 §2.2); `required` names members the configuration requires as well.
    """
    if not isinstance(body, dict) or not isinstance(body.get("active"), bool):
        raise MalformedAnswer("introspection answer without a boolean 'active'")
    if not body["active"]:
        raise InvalidToken(reason="inactive")
    try:
        exp = number(body, "exp")
        if exp is not None and exp + leeway <= now:
            raise InvalidToken("the access token has expired", reason="expired")
        nbf = number(body, "nbf")
        if nbf is not None and nbf - leeway > now:
            raise InvalidToken("the access token is not valid yet", reason="not yet valid")
        iss = body.get("iss")
        if iss is not None and (not isinstance(iss, str) or iss.rstrip("/") != issuer.rstrip("/")):
            raise InvalidToken(reason="issuer mismatch")
        return principal_from_claims(body, project_id=project_id, required=required, keep=keep)
    except BadClaim as exc:
        raise MalformedAnswer(f"introspection {exc}") from exc
    except MissingClaim as exc:
        raise InvalidToken(reason="missing required claim") from exc


class ConnectionFailed(IdPUnavailable):
    """The connection to the IdP failed before an answer (refused, reset, a stale keep-alive): worth one retry."""


class Introspector:
    """Calls the introspection endpoint. One instance per app, sharing the app's IdP ClientSession.

    Calls are bounded (a semaphore). Waiting for a slot has a deadline of its own (`timeout`): a request that gets
    none in time is 503, but that says nothing about the IdP, so the breaker does not hear of it; otherwise anyone
    sending enough unknown tokens to a slow but healthy IdP could open it for everyone. The call (and its one
    quick retry on a connection error) has `timeout` too, and only its failures count: a circuit breaker answers
    503 at once while the IdP itself is failing.
    """

    def __init__(self, config: IdPConfig, session: aiohttp.ClientSession, metrics: Metrics) -> None:
        self._config = config
        self._metrics = metrics
        self._session = session
        self._endpoint: str | None = (
            config.connect(config.introspection_endpoint) if config.introspection_endpoint else None
        )
        self._client_auth: ClientAuth = (
            JwtProfile(config.client_key, config.issuer)
            if config.client_key is not None
            else SecretBasic(config.client_id, config.client_secret)
        )
        self._discovery_lock = asyncio.Lock()
        self._last_discovery = -math.inf
        self._timeout = aiohttp.ClientTimeout(total=config.timeout)
        self._calls = asyncio.Semaphore(config.max_concurrent_calls)
        self.breaker = CircuitBreaker(config.breaker_failures, config.breaker_cooldown)
        outcomes = ("active", "inactive", "error", "breaker_open", "no_slot")
        self._outcomes = {o: metrics.introspections.labels(o) for o in outcomes}

    @property
    def ready(self) -> bool:
        return self._endpoint is not None

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self._config.host_header:
            headers["Host"] = self._config.host_header
        return headers

    async def discover(self, attempts: int | None = None) -> None:
        """Fetch the introspection endpoint from the discovery document, retrying with backoff."""
        attempts = attempts or self._config.discovery_attempts
        url = self._config.connect(self._config.issuer + "/.well-known/openid-configuration")
        delay = 0.5
        for attempt in range(1, attempts + 1):
            self._last_discovery = time.monotonic()
            try:
                async with self._session.get(url, headers=self._headers(), timeout=self._timeout) as resp:
                    if resp.status != 200:
                        raise ValueError(f"HTTP {resp.status}")
                    document = json.loads(await resp.read())
                endpoint = document.get("introspection_endpoint") if isinstance(document, dict) else None
                if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
                    raise ValueError("no introspection_endpoint in the discovery document")
                self._endpoint = self._config.connect(endpoint)
                log.info("introspection endpoint %s (from %s)", self._endpoint, url)
                return
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.warning(
                    "discovery at %s failed (attempt %d/%d): %s",
                    url,
                    attempt,
                    attempts,
                    exc or type(exc).__name__,
                )
            if attempt < attempts:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _ensure_endpoint(self) -> str:
        if self._endpoint is None:
            async with self._discovery_lock:
                # A request may retry discovery, but not more than once a few seconds, however busy we are.
                if self._endpoint is None and time.monotonic() - self._last_discovery > 2.0:
                    await self.discover(attempts=1)
        if self._endpoint is None:
            raise IdPUnavailable("the identity provider's discovery document could not be fetched")
        return self._endpoint

    async def authenticate(self, token: str) -> Principal:
        if not self.breaker.allow():
            self._outcomes["breaker_open"].inc()
            raise IdPUnavailable()
        settled = False
        try:
            try:
                async with asyncio.timeout(self._config.timeout):
                    await self._calls.acquire()
            except TimeoutError as exc:  # no slot: the gateway is busy, the IdP has not been asked (abandon below)
                self._outcomes["no_slot"].inc()
                raise IdPBusy() from exc
            try:
                async with asyncio.timeout(self._config.timeout):
                    principal = await self._call(await self._ensure_endpoint(), token)
            except TimeoutError as exc:  # the IdP's own deadline: the call and its retry
                log.warning("introspection timed out after %.1fs", self._config.timeout)
                raise IdPUnavailable() from exc
            finally:
                self._calls.release()
        except IdPBusy:
            raise
        except InvalidToken:
            settled = True
            self.breaker.success()  # the IdP answered
            raise
        except IdPUnavailable:
            settled = True
            self.breaker.failure()
            if self.breaker.is_open:
                log.warning("introspection failing: answering 503 for %.0fs", self._config.breaker_cooldown)
            raise
        finally:
            if not settled:
                self.breaker.abandon()
        self.breaker.success()
        return principal

    async def _call(self, endpoint: str, token: str) -> Principal:
        """One call, and one quick retry when the connection failed before any answer."""
        try:
            return await self._timed(endpoint, token)
        except ConnectionFailed:
            if not self._config.retry_on_connection_error:
                raise
        return await self._timed(endpoint, token)

    async def _timed(self, endpoint: str, token: str) -> Principal:
        started = time.perf_counter()
        outcome = "error"
        call = start_call("idp introspection", "POST", endpoint)  # None unless the request's trace is sampled
        try:
            principal = await self._introspect(endpoint, token)
            outcome = "active"
            return principal
        except InvalidToken:
            outcome = "inactive"
            raise
        finally:
            self._outcomes[outcome].inc()
            self._metrics.introspection_seconds.observe(time.perf_counter() - started)
            end_call(call, outcome)

    async def _introspect(self, endpoint: str, token: str) -> Principal:
        form = {"token": token, "token_type_hint": "access_token"}
        headers = self._headers()
        self._client_auth.apply(form, headers)
        try:
            async with self._session.post(endpoint, data=form, headers=headers, timeout=self._timeout) as resp:
                status = resp.status
                content_type = resp.content_type
                raw = await resp.read()
        except TimeoutError as exc:
            log.warning("introspection timed out after %.1fs", self._config.timeout)
            raise IdPUnavailable() from exc
        except aiohttp.ClientConnectionError as exc:
            log.warning("introspection connection failed: %s", type(exc).__name__)
            raise ConnectionFailed() from exc
        except aiohttp.ClientError as exc:
            log.warning("introspection failed: %s", type(exc).__name__)
            raise IdPUnavailable() from exc
        if status != 200:
            if status in (400, 401):
                log.error(
                    "ZITADEL refused the gateway's client credentials (HTTP %d): check ZITADEL_CLIENT_ID and "
                    "ZITADEL_CLIENT_SECRET (an API application with authentication method Basic), or "
                    "ZITADEL_KEY_FILE (authentication method Private Key JWT)",
                    status,
                )
            else:
                log.warning("introspection answered HTTP %d", status)
            raise IdPUnavailable()
        if content_type != "application/json":
            log.warning("introspection answered %r instead of JSON", content_type)
            raise MalformedAnswer()
        try:
            body = json.loads(raw)
        except ValueError as exc:
            log.warning("introspection answered invalid JSON")
            raise MalformedAnswer() from exc
        try:
            return parse_introspection(
                body,
                issuer=self._config.issuer,
                project_id=self._config.project_id,
                now=time.time(),
                leeway=self._config.clock_leeway,
                required=self._config.tokens.required_claims,
                keep=self._config.keep,
            )
        except MalformedAnswer as exc:
            log.warning("%s", exc)
            raise
