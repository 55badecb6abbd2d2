"""JWT access tokens verified locally (PyJWT), and the choice between that and introspection for each token.

`verify_jwt` is synchronous and decides everything about a token and its key: the signature with an allowed
asymmetric algorithm only (never `none`, never HMAC, never a key the token carries in `jwk`/`jku`/`x5u`/`x5c`), `iss`
exactly, `aud` containing the project id or a configured audience, `exp`/`nbf`/`iat` within the clock leeway, then
the same claims as introspection (claims.principal_from_claims). JwtVerifier adds the key look-up.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import jwt

from gateway.auth.cache import CachingAuthenticator
from gateway.auth.claims import NO_CLAIMS, BadClaim, ClaimSelection, MissingClaim, Principal, principal_from_claims
from gateway.auth.jwks import ALLOWED_ALGORITHMS, Jwks
from gateway.config import CacheConfig, Config, IdPConfig
from gateway.errors import InvalidToken
from gateway.ops.metrics import Metrics

# Header members that carry or point to a key of the token's own choosing: a token never picks its key.

KEY_BEARING_HEADERS = frozenset({"jwk", "jku", "x5u", "x5c"})


@dataclass(frozen=True, slots=True)
class JwtRules:
    issuer: str
    audiences: tuple[str, ...]  # `aud` must contain one of these
    leeway: float
    project_id: str | None
    required: tuple[str, ...] = ()
    keep: ClaimSelection = NO_CLAIMS

    @classmethod
    def of(cls, idp: IdPConfig) -> JwtRules:
        audiences = set(idp.tokens.audience) | ({idp.project_id} if idp.project_id else set())
        return cls(
            idp.issuer, tuple(sorted(audiences)), idp.clock_leeway, idp.project_id, idp.tokens.required_claims, idp.keep
        )


# Claims only an OpenID Connect ID token carries (OIDC Core 2, 3.1.3.6, 3.3.2.11); an access token never does.
ID_TOKEN_CLAIMS = frozenset({"nonce", "at_hash", "c_hash", "s_hash"})
# `typ` of an access token: absent, plain JWT, or RFC 9068's `at+jwt`.
ACCESS_TOKEN_TYPES = frozenset({"jwt", "at+jwt", "application/at+jwt"})


def jws_header(token: str) -> Mapping[str, Any]:
    """The header of a compact JWS whose form we accept (allowed `alg`, a `kid`, no key of its own), or 401."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as exc:
        raise InvalidToken(reason="not a JWT") from exc
    if KEY_BEARING_HEADERS & header.keys():
        raise InvalidToken(reason="a key in the token header")
    if header.get("alg") not in ALLOWED_ALGORITHMS:
        raise InvalidToken(reason="algorithm not allowed")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidToken(reason="no kid")
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.lower() not in ACCESS_TOKEN_TYPES):
        raise InvalidToken(reason="not an access token")  # an ID token, a logout token, a nested JWT...
    return header


_REASONS: tuple[tuple[type[jwt.InvalidTokenError], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not yet valid"),
    (jwt.InvalidAudienceError, "audience mismatch"),
    (jwt.InvalidIssuerError, "issuer mismatch"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.MissingRequiredClaimError, "missing required claim"),
)


def verify_jwt(token: str, key: jwt.PyJWK, alg: str, rules: JwtRules) -> Principal:
    """The principal of a token signed by `key` with `alg` (checked by jws_header), or InvalidToken."""
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[alg],
            audience=list(rules.audiences),
            issuer=rules.issuer,
            leeway=rules.leeway,
            options={"require": ["exp", "iss", "aud"]},  # exp: a verified token is cached until then
        )
    except jwt.InvalidTokenError as exc:
        reason = next((r for kind, r in _REASONS if isinstance(exc, kind)), "invalid_token")
        description = "the access token has expired" if reason == "expired" else None
        raise InvalidToken(description, reason=reason) from exc
    if ID_TOKEN_CLAIMS & claims.keys():
        # An ID token says who logged in to a client, not what may be done with an API; it leaks more easily (browser
        # storage, `id_token_hint` in logout URLs), and ZITADEL's introspection refuses it too.
        raise InvalidToken("an ID token is not an access token", reason="id token")
    try:
        return principal_from_claims(claims, project_id=rules.project_id, required=rules.required, keep=rules.keep)
    except (BadClaim, MissingClaim) as exc:
        raise InvalidToken(reason="missing required claim" if isinstance(exc, MissingClaim) else "bad claim") from exc


class KeySource(Protocol):
    async def key(self, kid: str, alg: str) -> jwt.PyJWK: ...


class JwtVerifier:
    """An Authenticator that needs no IdP call per token: only the key set, fetched now and then."""

    def __init__(self, rules: JwtRules, keys: KeySource) -> None:
        self._rules = rules
        self._keys = keys

    async def authenticate(self, token: str) -> Principal:
        header = jws_header(token)
        alg, kid = header["alg"], header["kid"]
        return verify_jwt(token, await self._keys.key(kid, alg), alg, self._rules)


def unverified_issuer(token: str) -> str | None:
    """The `iss` a compact JWS claims (unverified: only to choose how to check it), or None if it is no JWS."""
    parts = token.split(".")
    if len(parts) != 3 or not parts[1]:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    iss = payload.get("iss") if isinstance(payload, dict) else None
    return iss if isinstance(iss, str) else None


class TokenDispatch:
    """Which cache (and behind it, which check) answers for a token on a route, per `idp.access_tokens`.

    jwt: every token is verified locally, and must be a JWS even where the route says `introspect: always`.
    auto: a JWS claiming our issuer is verified locally; anything else is introspected.
    A route with `introspect: always` introspects, so that a revocation in ZITADEL is seen at once.
    """

    __slots__ = ("_issuer", "introspection", "jwks", "local", "mode")

    def __init__(
        self, mode: str, issuer: str, introspection: CachingAuthenticator, local: CachingAuthenticator, jwks: Jwks
    ) -> None:
        self.mode = mode
        self._issuer = issuer
        self.introspection = introspection
        self.local = local
        self.jwks = jwks

    def pick(self, token: str, introspect_always: bool) -> CachingAuthenticator:
        if self.mode == "jwt":
            if introspect_always:
                jws_header(token)  # still a JWS, whoever checks it
                return self.introspection
            return self.local
        if introspect_always:
            return self.introspection
        return self.local if unverified_issuer(token) == self._issuer else self.introspection


def token_dispatch(
    config: Config,
    introspection: CachingAuthenticator | None,
    session: aiohttp.ClientSession,
    metrics: Metrics,
    previous: tuple[Config, TokenDispatch | None] | None = None,
) -> TokenDispatch | None:
    """The dispatch for `idp.access_tokens` jwt/auto (None for introspect), keeping the previous key set and cache
    of verified tokens when the `idp` and `cache` sections are unchanged. `previous`: the config and dispatch this
    one replaces, on a reload."""
    idp = config.idp
    if idp is None or introspection is None or not idp.tokens.local:
        return None
    old_config, old = previous if previous is not None else (None, None)
    if old is not None and old_config is not None and old_config.idp == idp and old_config.cache == config.cache:
        jwks, local = old.jwks, old.local
    else:
        jwks = Jwks(idp, session)
        # A verified token stays valid until its `exp` whatever happens in ZITADEL, so it is kept until then
        # (bounded by the LRU); a refused one for the negative TTL. Never in Redis: verifying is cheaper.
        settings = CacheConfig(
            ttl=math.inf, negative_ttl=config.cache.negative_ttl, max_entries=config.cache.max_entries
        )
        prefix = hashlib.sha256(
            f"jwt\0{idp.issuer}\0{idp.project_id or ''}\0{sorted(idp.tokens.audience)}\0{idp.keep}\0".encode()
        )
        local = CachingAuthenticator(JwtVerifier(JwtRules.of(idp), jwks), settings, metrics, key_prefix=prefix)
    return TokenDispatch(idp.tokens.mode, idp.issuer, introspection, local, jwks)
