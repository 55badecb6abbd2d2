"""The signed identity assertion (`identity.assertion`): a short JWT that tells an upstream who sent a request,
which it can check against the gateway's published keys instead of trusting headers blindly.

Signed with PyJWT (ES256 for EC P-256 keys, EdDSA for Ed25519). The first key signs; every key is published as a
JWKS (the admin listener's /.well-known/jwks.json, and `jwks_path` on the proxy listener), so that a key about to
sign, or one that just stopped, is known to backends. Signing is the dearest step on the hot path: an assertion is
reused for the same principal, route map and audience while more than half of its lifetime is left.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, EllipticCurvePrivateKey, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

from gateway.auth.claims import Principal
from gateway.config.identity import AssertionSettings
from gateway.forward.identity import mapped_claims
from gateway.forward.identity_map import HeaderMap

PrivateKey = EllipticCurvePrivateKey | Ed25519PrivateKey
Clock = Callable[[], float]
# The members the gateway sets; a mapped claim of the same name never replaces them.
RESERVED = frozenset({"iss", "sub", "aud", "iat", "exp", "nbf", "jti", "roles", "client_id", "org_id", "request_id"})
# The JWK members RFC 7638 hashes for the thumbprint of each key type.
_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}


@dataclass(frozen=True, slots=True)
class SigningKey:
    private: PrivateKey
    alg: str  # ES256 | EdDSA
    kid: str  # the RFC 7638 thumbprint of the public key
    public_jwk: dict[str, str]


def signing_key(private: PrivateKey) -> SigningKey:
    if isinstance(private, Ed25519PrivateKey):
        alg, jwk = "EdDSA", OKPAlgorithm.to_jwk(private.public_key(), as_dict=True)
    elif isinstance(private.curve, SECP256R1):
        alg, jwk = "ES256", ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    else:  # config validation refuses other curves
        raise ValueError("expected an EC P-256 or Ed25519 key")
    members = {k: jwk[k] for k in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    kid = jwt.utils.base64url_encode(hashlib.sha256(canonical).digest()).decode()
    public = {**{k: str(v) for k, v in jwk.items()}, "kid": kid, "alg": alg, "use": "sig"}
    return SigningKey(private, alg, kid, public)


def load_keys(settings: AssertionSettings) -> tuple[SigningKey, ...]:
    keys = []
    for pem in settings.keys:
        private = load_pem_private_key(pem, password=None)
        if not isinstance(private, EllipticCurvePrivateKey | Ed25519PrivateKey):
            raise ValueError("expected an EC P-256 or Ed25519 key")  # config validation refuses these
        keys.append(signing_key(private))
    return tuple(keys)


def generated_key() -> SigningKey:
    """A fresh P-256 key, for a gateway of one process without `key_files` (it changes at every start)."""
    return signing_key(generate_private_key(SECP256R1()))


class Signer:
    """Signs assertions with the first key and publishes all of them. One per config; a reload with the same
    settings keeps it (and its reused assertions)."""

    MAX_REUSED = 4096  # assertions kept for reuse; cleared when full, as the route memo is

    def __init__(self, settings: AssertionSettings, keys: tuple[SigningKey, ...], wall: Clock = time.time) -> None:
        if not keys:
            raise ValueError("no signing key")
        self.settings = settings
        self.keys = keys
        self.header = settings.header
        self.jwks = json.dumps({"keys": [k.public_jwk for k in keys]}, separators=(",", ":")).encode()
        self._wall = wall
        # (principal, route map, audience) -> (reuse until, the assertion)
        self._reused: dict[tuple[Principal, HeaderMap, str], tuple[float, str]] = {}

    @property
    def generated(self) -> bool:
        return not self.settings.keys

    def audience(self, upstream: str) -> str:
        return self.settings.audience or upstream

    def assertion(self, principal: Principal, header_map: HeaderMap, upstream: str, request_id: str) -> str:
        """The assertion for this principal on a route with this map, to `upstream`: reused while more than half
        of its lifetime is left, so its `request_id` names the request it was signed for."""
        audience = self.audience(upstream)
        key = (principal, header_map, audience)
        now = self._wall()
        reused = self._reused.get(key)
        if reused is not None and now < reused[0]:
            return reused[1]
        exp = now + self.settings.lifetime
        if principal.expires_at is not None:
            exp = min(exp, principal.expires_at)  # never outlives the token it vouches for
        token = self.sign(self.claims(principal, header_map, audience, request_id, now, exp))
        if len(self._reused) >= self.MAX_REUSED:
            self._reused.clear()
        self._reused[key] = (now + (exp - now) / 2, token)
        return token

    def claims(
        self, principal: Principal, header_map: HeaderMap, audience: str, request_id: str, now: float, exp: float
    ) -> dict[str, Any]:
        claims = {k: v for k, v in mapped_claims(principal, header_map).items() if k not in RESERVED}
        own: dict[str, Any] = {
            "iss": self.settings.issuer,
            "sub": principal.subject,
            "aud": audience,
            "iat": int(now),
            "exp": int(exp),
            "roles": sorted(principal.roles),
            "client_id": principal.client_id,
            "org_id": principal.org_id,
            "request_id": request_id,
        }
        claims.update({k: v for k, v in own.items() if v is not None})  # no `sub`: the client is the principal
        return claims

    def sign(self, claims: dict[str, Any]) -> str:
        first = self.keys[0]
        return jwt.encode(claims, first.private, algorithm=first.alg, headers={"kid": first.kid, "typ": "JWT"})


def signer_for(settings: AssertionSettings | None, previous: Signer | None) -> Signer | None:
    """The Signer for a config: the previous one when nothing changed, and a generated key kept across reloads."""
    if settings is None:
        return None
    if previous is not None and previous.settings == settings:
        return previous
    if settings.keys:
        return Signer(settings, load_keys(settings))
    if previous is not None and previous.generated:
        return Signer(settings, previous.keys)
    return Signer(settings, (generated_key(),))
