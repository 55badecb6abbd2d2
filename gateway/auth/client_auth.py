"""How the gateway authenticates itself to ZITADEL's introspection endpoint.

client_secret_basic: RFC 6749 §2.3.1, id and secret form-urlencoded before base64 (ZITADEL client ids hold '@').
private_key_jwt (ZITADEL's "JWT profile"): an RS256 assertion signed with the application key ZITADEL lets you
download, `iss = sub = clientId`, `aud` = the issuer, at most an hour long. Signing costs far more than the call
around it, so one assertion is re-used until shortly before it expires.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Protocol
from urllib.parse import quote_plus

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from gateway.config import ClientKey

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class ClientAuth(Protocol):
    def apply(self, form: dict[str, str], headers: dict[str, str]) -> None:
        """Add the gateway's credentials to an introspection request."""


def basic_authorization(client_id: str, secret: str) -> str:
    """RFC 6749 §2.3.1: form-urlencode both parts before base64 (aiohttp.BasicAuth does not)."""
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


class SecretBasic:
    __slots__ = ("_authorization",)

    def __init__(self, client_id: str, secret: str) -> None:
        self._authorization = basic_authorization(client_id, secret)

    def apply(self, form: dict[str, str], headers: dict[str, str]) -> None:
        headers["Authorization"] = self._authorization


class JwtProfile:
    """private_key_jwt with ZITADEL's application key; the assertion is signed once per `lifetime`."""

    def __init__(
        self,
        key: ClientKey,
        audience: str,
        *,
        lifetime: float = 1800.0,
        renew_before: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = key
        private_key = load_pem_private_key(key.private_key.encode(), password=None)
        if not isinstance(private_key, RSAPrivateKey):  # config validation checked it already
            raise ValueError("ZITADEL application keys are RSA keys")
        self._private_key = private_key
        self._audience = audience
        self._lifetime = int(lifetime)
        self._renew_before = renew_before
        self._clock = clock
        self._assertion = ""
        self._expires = 0.0

    def assertion(self) -> str:
        now = self._clock()
        if now >= self._expires - self._renew_before:
            issued = int(now)
            claims = {
                "iss": self._key.client_id,
                "sub": self._key.client_id,
                "aud": self._audience,
                "iat": issued,
                "exp": issued + self._lifetime,
            }
            self._assertion = jwt.encode(
                claims, self._private_key, algorithm="RS256", headers={"kid": self._key.key_id}
            )
            self._expires = issued + self._lifetime
        return self._assertion

    def apply(self, form: dict[str, str], headers: dict[str, str]) -> None:
        form["client_assertion_type"] = ASSERTION_TYPE
        form["client_assertion"] = self.assertion()
