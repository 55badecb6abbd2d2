"""An offline stand-in of ZITADEL's discovery and introspection endpoints, for `make demo` and the tests.

Demo only: it knows a fixed table of tokens. It authenticates its caller the way ZITADEL does for an API
application with Basic auth (client_secret_basic, id and secret form-urlencoded), or, when given the public half
of an application key, with a JWT-profile assertion (private_key_jwt) only; and answers in ZITADEL's shapes,
including `{"active": false}` and nothing else for any token it does not know.

Run: `python -m demo_backend.idp --host 127.0.0.1 --port 8082`.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

import jwt
from aiohttp import web

ROLES_CLAIM = "urn:zitadel:iam:org:project:roles"
DEMO_ORG_ID = "170086305978381234"
DEMO_CLIENT_ID = "demo-gateway@demo"
DEMO_CLIENT_SECRET = "demo-secret"


def _roles(*keys: str) -> dict[str, dict[str, str]]:
    return {key: {DEMO_ORG_ID: "demo.localhost"} for key in keys}


# token -> the claims ZITADEL would return for it (exp/iat/iss are added per answer). None: inactive.
DEMO_TOKENS: dict[str, dict[str, Any] | None] = {
    "demo-reader-token": {
        "sub": "259242039378444290",
        "username": "reader",
        "client_id": "reader",
        "scope": "openid",
        "urn:zitadel:iam:user:resourceowner:id": DEMO_ORG_ID,
        ROLES_CLAIM: _roles("read:messages"),
    },
    "demo-noroles-token": {
        "sub": "259242039378444291",
        "username": "noroles",
        "client_id": "noroles",
        "scope": "openid",
        "urn:zitadel:iam:user:resourceowner:id": DEMO_ORG_ID,
    },
    "demo-expired-token": None,
}


@dataclass
class IdPSettings:
    issuer: str
    client_id: str = DEMO_CLIENT_ID
    client_secret: str = DEMO_CLIENT_SECRET
    tokens: Mapping[str, dict[str, Any] | None] = field(default_factory=lambda: dict(DEMO_TOKENS))
    lifetime: int = 3600
    client_public_key: str | None = None  # PEM: accept private_key_jwt signed by its private half, nothing else
    client_key_id: str | None = None


ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def _assertion_ok(form: Mapping[str, Any], settings: IdPSettings) -> bool:
    """ZITADEL's checks of a JWT-profile client assertion: RS256 by the registered key, iss = sub = client id,
    aud = the issuer, issued at most an hour ago, valid for at most an hour."""
    assertion, public_key = form.get("client_assertion"), settings.client_public_key
    if form.get("client_assertion_type") != ASSERTION_TYPE or not isinstance(assertion, str) or public_key is None:
        return False
    try:
        if jwt.get_unverified_header(assertion).get("kid") != settings.client_key_id:
            return False
        claims = jwt.decode(
            assertion,
            public_key,
            algorithms=["RS256"],
            audience=settings.issuer,
            issuer=settings.client_id,
            options={"require": ["iss", "sub", "aud", "iat", "exp"]},
        )
    except jwt.InvalidTokenError:
        return False
    now = time.time()
    return bool(claims["sub"] == settings.client_id and claims["iat"] >= now - 3600 and claims["exp"] <= now + 3660)


def _client_ok(header: str | None, settings: IdPSettings) -> bool:
    if not header or not header.startswith("Basic "):
        return False
    try:
        raw = base64.b64decode(header[6:], validate=True).decode()
    except ValueError:
        return False
    user, sep, password = raw.partition(":")
    if not sep:
        return False
    id_ok = hmac.compare_digest(unquote_plus(user).encode(), settings.client_id.encode())
    secret_ok = hmac.compare_digest(unquote_plus(password).encode(), settings.client_secret.encode())
    return id_ok and secret_ok


def build_idp_app(settings: IdPSettings) -> web.Application:
    async def discovery(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": settings.issuer,
                "introspection_endpoint": settings.issuer + "/oauth/v2/introspect",
                "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"],
            }
        )

    async def introspect(request: web.Request) -> web.Response:
        form = await request.post()
        if settings.client_public_key is not None:
            # Two client-authentication methods at once are refused, as ZITADEL does.
            client_ok = "Authorization" not in request.headers and _assertion_ok(form, settings)
        else:
            client_ok = _client_ok(request.headers.get("Authorization"), settings)
        if not client_ok:
            return web.json_response({"error": "unauthorized_client"}, status=400)
        token = form.get("token")
        claims = settings.tokens.get(token) if isinstance(token, str) else None
        if claims is None:
            return web.json_response({"active": False})
        now = int(time.time())
        answer = {
            "active": True,
            "token_type": "Bearer",
            "iss": settings.issuer,
            "aud": [settings.client_id],
            "iat": now,
            "nbf": now,
            "exp": now + settings.lifetime,
            **claims,
        }
        return web.Response(body=json.dumps(answer).encode(), content_type="application/json")

    app = web.Application()
    app.router.add_get("/.well-known/openid-configuration", discovery)
    app.router.add_post("/oauth/v2/introspect", introspect)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo_backend.idp", description="Offline ZITADEL stand-in")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8082)
    parser.add_argument("--issuer", default=None, help="default: http://HOST:PORT")
    args = parser.parse_args(argv)
    issuer = args.issuer or f"http://{args.host}:{args.port}"
    web.run_app(build_idp_app(IdPSettings(issuer=issuer)), host=args.host, port=args.port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
