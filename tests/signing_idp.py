"""A ZITADEL stand-in that issues JWT access tokens: discovery with `jwks_uri`, a JWKS endpoint with key rotation,
and introspection of the tokens it signed (and of opaque ones it knows). Counts every call, can go down."""

from __future__ import annotations

import functools
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

Private = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PROJECT_ID = "42"
ROLES_CLAIM = "urn:zitadel:iam:org:project:roles"


@functools.cache
def rsa_key(index: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)  # once per index and run: it is slow


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Private

    def jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        public = self.private.public_key()
        document: dict[str, Any] = json.loads(algorithm.to_jwk(public))
        return {**document, "kid": self.kid, "alg": self.alg, "use": "sig"}


def new_key(alg: str = "RS256", index: int = 0) -> SigningKey:
    private: Private
    if alg.startswith(("RS", "PS")):
        private = rsa_key(index)
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif alg == "ES384":
        private = ec.generate_private_key(ec.SECP384R1())
    else:
        private = ed25519.Ed25519PrivateKey.generate()
    return SigningKey(uuid.uuid4().hex, alg, private)


@dataclass
class SigningIdP:
    issuer: str = ""
    keys: list[SigningKey] = field(default_factory=lambda: [new_key()])  # published, in this order
    cache_control: str | None = "max-age=300"
    down: bool = False  # discovery and keys answer 500
    opaque: dict[str, dict[str, Any]] = field(default_factory=dict)  # opaque token -> claims, for introspection
    revoked: set[str] = field(default_factory=set)  # tokens introspection calls inactive
    key_fetches: int = 0
    discoveries: int = 0
    introspections: int = 0

    def sign(
        self,
        key: SigningKey | None = None,
        *,
        headers: dict[str, Any] | None = None,
        lifetime: float = 3600,
        extra: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A token as ZITADEL issues it (iss, aud with the project id, iat, nbf, exp); claims override."""
        key = key or self.keys[0]
        now = int(time.time())
        body = {
            "iss": self.issuer,
            "sub": "user-1",
            "aud": [PROJECT_ID, "client@project"],
            "client_id": "client@project",
            "iat": now,
            "nbf": now,
            "exp": now + int(lifetime),
            **claims,
            **(extra or {}),
        }
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, key.private, algorithm=key.alg, headers={"kid": key.kid, **(headers or {})})

    def rotate(self, *, keep_old: bool = True) -> SigningKey:
        key = new_key(self.keys[0].alg, index=len(self.keys) + 1)
        self.keys = [key, *self.keys] if keep_old else [key]
        return key

    def build_app(self) -> web.Application:
        async def discovery(_: web.Request) -> web.Response:
            self.discoveries += 1
            if self.down:
                return web.json_response({"error": "down"}, status=500)
            return web.json_response(
                {
                    "issuer": self.issuer,
                    "jwks_uri": self.issuer + "/oauth/v2/keys",
                    "introspection_endpoint": self.issuer + "/oauth/v2/introspect",
                }
            )

        async def keys(_: web.Request) -> web.Response:
            self.key_fetches += 1
            if self.down:
                return web.json_response({"error": "down"}, status=500)
            headers = {"Cache-Control": self.cache_control} if self.cache_control else {}
            return web.json_response({"keys": [k.jwk() for k in self.keys]}, headers=headers)

        async def introspect(request: web.Request) -> web.Response:
            self.introspections += 1
            token = str((await request.post()).get("token", ""))
            claims = self.opaque.get(token) or self._verified(token)
            if claims is None or token in self.revoked:
                return web.json_response({"active": False})
            return web.json_response({"active": True, **claims})

        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", discovery)
        app.router.add_get("/oauth/v2/keys", keys)
        app.router.add_post("/oauth/v2/introspect", introspect)
        return app

    def _verified(self, token: str) -> dict[str, Any] | None:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = next(k for k in self.keys if k.kid == kid)
            public = key.private.public_key()
            claims: dict[str, Any] = jwt.decode(token, public, algorithms=[key.alg], options={"verify_aud": False})
            return claims
        except (jwt.InvalidTokenError, StopIteration):
            return None
