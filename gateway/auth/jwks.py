"""The issuer's signing keys (JWKS): fetched at start, kept for their Cache-Control max-age, and fetched again when
a token names a `kid` we do not know, at most once per `idp.jwks_refresh_seconds`.

ZITADEL rotates its signing keys (every few hours by default); a gateway that fetched them once breaks at the first
rotation (envoyproxy/gateway #4180). Concurrent requests that need a fetch share one. Only public keys of the
allowed asymmetric algorithms are kept: an `oct` (HMAC) key or a key for encryption never verifies a token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import jwt

from gateway.config import IdPConfig
from gateway.errors import IdPUnavailable, InvalidToken
from gateway.ops.tracing import end_call, start_call

log = logging.getLogger("gateway.jwks")

ALLOWED_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"})
# The key an algorithm needs: (kty, the curves allowed; empty: no curve).
_KEY_TYPES: dict[str, tuple[str, frozenset[str]]] = {
    **{alg: ("RSA", frozenset()) for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}
# How long a fetched key set is used before it is fetched again (when a token next needs a key): the answer's
# `max-age`, kept within these bounds; `no-cache`, `no-store` or no `max-age`: the lower bound.
MIN_MAX_AGE = 60.0
MAX_MAX_AGE = 3600.0
MAX_JWKS_BYTES = 1 << 20
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)


def max_age(cache_control: str | None) -> float:
    """Seconds to keep a key set, from its Cache-Control, within [MIN_MAX_AGE, MAX_MAX_AGE]."""
    if not cache_control:
        return MIN_MAX_AGE
    lowered = cache_control.lower()
    if "no-cache" in lowered or "no-store" in lowered:
        return MIN_MAX_AGE
    found = _MAX_AGE.search(cache_control)
    if found is None:
        return MIN_MAX_AGE
    return min(MAX_MAX_AGE, max(MIN_MAX_AGE, float(found.group(1))))


def usable_keys(document: Any) -> dict[str, dict[str, Any]]:
    """kid -> JWK for the signing keys of a JWKS document that an allowed algorithm can use."""
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise ValueError("not a JWKS document (no 'keys' list)")
    usable: dict[str, dict[str, Any]] = {}
    for jwk in keys:
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str) or not jwk["kid"]:
            continue
        if jwk.get("use", "sig") != "sig" or jwk.get("kty") not in ("RSA", "EC", "OKP"):
            continue  # an encryption key, or an `oct` secret: never for verifying a token
        if "alg" in jwk and jwk["alg"] not in ALLOWED_ALGORITHMS:
            continue
        usable[jwk["kid"]] = jwk
    return usable


def prepare_key(jwk: dict[str, Any], alg: str) -> jwt.PyJWK:
    """The key to verify a token signed with `alg`, or InvalidToken when this key cannot have signed it."""
    kty, curves = _KEY_TYPES[alg]
    if jwk.get("kty") != kty or (curves and jwk.get("crv") not in curves) or jwk.get("alg", alg) != alg:
        raise InvalidToken(reason="algorithm does not fit the key")
    try:
        return jwt.PyJWK(jwk, algorithm=alg)
    except (jwt.PyJWKError, ValueError, TypeError) as exc:
        raise InvalidToken(reason="unusable key") from exc


class Jwks:
    """The key set of one issuer. `key(kid, alg)` is all a verifier needs; `refresh()` runs at start."""

    def __init__(
        self, config: IdPConfig, session: aiohttp.ClientSession, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._config = config
        self._session = session
        self._monotonic = monotonic
        self._uri = config.connect(config.tokens.jwks_uri) if config.tokens.jwks_uri else None
        self._keys: dict[str, dict[str, Any]] = {}
        self._prepared: dict[tuple[str, str], jwt.PyJWK] = {}
        self._fresh_until = -math.inf
        self._last_attempt = -math.inf
        self._last_failed = False
        self._loaded = False
        self._inflight: asyncio.Future[bool] | None = None
        self._timeout = aiohttp.ClientTimeout(total=config.timeout)
        self.fetches = 0  # key-set fetches attempted (tests and the bench count them)

    @property
    def ready(self) -> bool:
        return self._loaded

    async def key(self, kid: str, alg: str) -> jwt.PyJWK:
        """The key `kid` for `alg`. Unknown kid: one refetch (shared, rate-limited), then 401; no key set: 503."""
        now = self._monotonic()
        if kid not in self._keys or now >= self._fresh_until:
            if self._inflight is not None or now - self._last_attempt >= self._config.tokens.jwks_refresh_seconds:
                await self.refresh()
        jwk = self._keys.get(kid)
        if jwk is None:
            if not self._loaded or self._last_failed:
                raise IdPUnavailable("the identity provider's signing keys could not be fetched")
            raise InvalidToken(reason="unknown kid")
        prepared = self._prepared.get((kid, alg))
        if prepared is None:
            prepared = self._prepared[(kid, alg)] = prepare_key(jwk, alg)
        return prepared

    async def refresh(self) -> bool:
        """Fetch the key set, or join the fetch under way: one request to the IdP however many ask."""
        if self._inflight is None:
            self._last_attempt = self._monotonic()
            self._inflight = asyncio.ensure_future(self._fetch())
            self._inflight.add_done_callback(self._settled)
        # shield: a client that goes away must not cancel the fetch the others wait for.
        return await asyncio.shield(self._inflight)

    def _settled(self, done: asyncio.Future[bool]) -> None:
        self._inflight = None

    async def _fetch(self) -> bool:
        # A child of the request that asked for an unknown `kid` when its trace is sampled (the fetch runs in that
        # request's context); none for the fetch at start.
        call = start_call("jwks fetch", "GET", self._uri or self._config.issuer)
        fetched = False
        try:
            fetched = await self._fetch_keys()
            return fetched
        finally:
            end_call(call, "ok" if fetched else "error")

    async def _fetch_keys(self) -> bool:
        self.fetches += 1
        try:
            uri = self._uri or await self._discover()
            async with self._session.get(uri, headers=self._headers(), timeout=self._timeout) as resp:
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}")
                body = bytearray()
                async for chunk in resp.content.iter_chunked(65536):
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise ValueError("the key set is larger than 1 MiB")
                keys = usable_keys(json.loads(body))
                lifetime = max_age(resp.headers.get("Cache-Control"))
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self._last_failed = True
            log.warning("fetching the signing keys failed: %s", exc or type(exc).__name__)
            return False
        if not keys:
            self._last_failed = True
            log.warning("the key set at %s has no usable signing key", uri)
            return False
        added = sorted(keys.keys() - self._keys.keys())
        self._keys, self._prepared = keys, {}
        self._fresh_until = self._monotonic() + lifetime
        self._loaded, self._last_failed = True, False
        log.info("signing keys from %s: %d usable, new: %s", uri, len(keys), ", ".join(added) or "none")
        return True

    async def _discover(self) -> str:
        url = self._config.connect(self._config.issuer + "/.well-known/openid-configuration")
        async with self._session.get(url, headers=self._headers(), timeout=self._timeout) as resp:
            if resp.status != 200:
                raise ValueError(f"discovery answered HTTP {resp.status}")
            document = json.loads(await resp.read())
        uri = document.get("jwks_uri") if isinstance(document, dict) else None
        if not isinstance(uri, str) or not uri.startswith(("http://", "https://")):
            raise ValueError("no jwks_uri in the discovery document")
        self._uri = self._config.connect(uri)
        return self._uri

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self._config.host_header:
            headers["Host"] = self._config.host_header
        return headers
