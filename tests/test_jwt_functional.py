"""JWT access tokens verified locally, against a real JWKS server on 127.0.0.1: rotation, unknown kid, the attacks
on JWT verification (alg none, HS256 with the public key, a jku of the token's choosing), aud/exp/nbf, outages."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from multidict import CIMultiDict
from pytest_aiohttp import AiohttpClient, AiohttpServer

from gateway.app import RELOADER, RUNTIME, build_app
from gateway.auth.jwks import MIN_MAX_AGE, Jwks, max_age
from gateway.config import parse_config
from gateway.ops.admin import readiness
from gateway.ops.reload import ConfigSource
from gateway.testing import GatewayTestServer

from .signing_idp import PROJECT_ID, ROLES_CLAIM, SigningIdP, new_key
from .support import ENV, RecordingUpstream, free_port, gateway_document, gateway_process

Client = TestClient[Any, Any]
Factory = Callable[..., Awaitable[Client]]
ROUTES: list[dict[str, Any]] = [
    {"path": "/api/private", "policy": "authenticated"},
    {"path": "/api/whoami", "policy": "authenticated"},
    {"path": "/api/admin", "roles": {"any_of": ["admin"]}},
    {"path": "/orgs/{org}/**", "roles": {"any_of": ["admin"], "in_org": "{org}"}},
    {"path": "/api/money", "policy": "authenticated", "introspect": "always"},
]


@pytest.fixture
async def signing(aiohttp_server: AiohttpServer) -> SigningIdP:
    port = free_port()
    idp = SigningIdP(issuer=f"http://127.0.0.1:{port}")
    await aiohttp_server(idp.build_app(), port=port)
    return idp


@pytest.fixture
def make_jwt_gateway(signing: SigningIdP, upstream_url: str, aiohttp_client: AiohttpClient) -> Factory:
    async def make(mode: str = "jwt", cache: dict[str, Any] | None = None, **idp: Any) -> Client:
        settings = {"access_tokens": mode, "project_id": PROJECT_ID, **idp}
        document = gateway_document(issuer=signing.issuer, upstream_url=upstream_url, routes=ROUTES, **settings)
        if cache is not None:
            document["cache"] = cache
        client: Client = await aiohttp_client(
            GatewayTestServer(build_app(parse_config(document, source="t.yaml", env=ENV)))
        )
        dispatch = client.app[RUNTIME].current.dispatch
        assert dispatch is not None
        for _ in range(100):
            if dispatch.jwks.ready or signing.down:
                break
            await asyncio.sleep(0.02)
        return client

    return make


async def call(client: Client, token: str, path: str = "/api/private") -> tuple[int, dict[str, Any]]:
    resp = await client.get(path, headers={"Authorization": f"Bearer {token}"})
    body = await resp.read()
    return resp.status, (json.loads(body) if resp.content_type == "application/json" else {})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_a_signed_jwt_needs_no_idp_call(
    make_jwt_gateway: Factory, signing: SigningIdP, upstream: RecordingUpstream
) -> None:
    gateway = await make_jwt_gateway()
    assert signing.key_fetches == 1  # at start, before any token needed a key
    token = signing.sign(extra={ROLES_CLAIM: {"admin": {"7": "o.example"}}})
    for _ in range(3):
        assert (await call(gateway, token, "/api/admin"))[0] == 200
    seen = CIMultiDict(upstream.last.headers)
    assert (seen["X-Auth-Subject"], seen["X-Auth-Roles"]) == ("user-1", "admin")
    assert signing.introspections == 0
    assert signing.key_fetches == 1  # at start; never again for this kid


async def test_a_rotated_key_is_fetched_once(make_jwt_gateway: Factory, signing: SigningIdP) -> None:
    gateway = await make_jwt_gateway(jwks_refresh_seconds=0)  # the start's fetch does not hold this one back
    assert (await call(gateway, signing.sign()))[0] == 200
    new = signing.rotate()
    assert (await call(gateway, signing.sign(new)))[0] == 200
    assert (await call(gateway, signing.sign(new, sub="user-2")))[0] == 200
    assert signing.key_fetches == 2


async def test_concurrent_first_uses_of_a_new_kid_cause_one_fetch(
    make_jwt_gateway: Factory, signing: SigningIdP
) -> None:
    gateway = await make_jwt_gateway(jwks_refresh_seconds=0)  # no cool-down: only the sharing keeps it at one
    new = signing.rotate()
    tokens = [signing.sign(new, sub=f"user-{i}") for i in range(20)]
    statuses = await asyncio.gather(*(call(gateway, t) for t in tokens))
    assert [s for s, _ in statuses] == [200] * 20
    assert signing.key_fetches == 2


async def test_an_unknown_kid_is_refetched_at_most_once_per_refresh_period(
    make_jwt_gateway: Factory, signing: SigningIdP
) -> None:
    gateway = await make_jwt_gateway(jwks_refresh_seconds=0)
    stranger = new_key("ES256")  # never published
    assert (await call(gateway, signing.sign(stranger)))[0] == 401
    assert signing.key_fetches == 2  # the start, then one refetch for the unknown kid
    gateway = await make_jwt_gateway(jwks_refresh_seconds=3600)
    signing.key_fetches = 0
    for i in range(3):
        status, body = await call(gateway, signing.sign(stranger, sub=f"u{i}"))
        assert (status, body["error"]) == (401, "invalid_token")
    assert signing.key_fetches == 0  # after the start: every refetch falls within jwks_refresh_seconds


async def test_jwks_refresh_seconds_zero_refetches_each_time(make_jwt_gateway: Factory, signing: SigningIdP) -> None:
    gateway = await make_jwt_gateway(jwks_refresh_seconds=0)
    stranger = new_key("ES256")
    for i in range(3):
        assert (await call(gateway, signing.sign(stranger, sub=f"u{i}")))[0] == 401
    assert signing.key_fetches == 4


@pytest.mark.parametrize("alg", ["ES256", "ES384", "EdDSA", "PS256"])
async def test_every_allowed_algorithm_verifies(make_jwt_gateway: Factory, signing: SigningIdP, alg: str) -> None:
    key = new_key(alg)
    signing.keys.append(key)
    gateway = await make_jwt_gateway()
    assert (await call(gateway, signing.sign(key)))[0] == 200


async def test_alg_none_is_refused(make_jwt_gateway: Factory, signing: SigningIdP) -> None:
    gateway = await make_jwt_gateway()
    claims = json.loads(base64.urlsafe_b64decode(signing.sign().split(".")[1] + "=="))
    for header in ({"alg": "none", "kid": signing.keys[0].kid}, {"alg": "none"}, {"alg": "None"}):
        token = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}."
        assert (await call(gateway, token))[0] == 401


async def test_hs256_signed_with_the_public_key_is_refused(make_jwt_gateway: Factory, signing: SigningIdP) -> None:
    # The classic confusion: a verifier that lets the token pick HMAC uses the public key as the shared secret.
    gateway = await make_jwt_gateway()
    public = signing.keys[0].private.public_key()
    for secret in (
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        json.dumps(signing.keys[0].jwk()).encode(),
    ):
        header = b64(json.dumps({"alg": "HS256", "kid": signing.keys[0].kid, "typ": "JWT"}).encode())
        payload = signing.sign().split(".")[1]
        mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        assert (await call(gateway, f"{header}.{payload}.{b64(mac)}"))[0] == 401


async def test_a_key_of_the_tokens_choosing_is_never_used(
    make_jwt_gateway: Factory, signing: SigningIdP, aiohttp_server: AiohttpServer
) -> None:
    # An attacker's JWKS, named by the token's `jku`: it must never be fetched, and the token is refused even
    # when it is signed by a published key (the header itself is the attack).
    attacker = SigningIdP(issuer="http://attacker.invalid", keys=[new_key("ES256")])
    elsewhere = await aiohttp_server(attacker.build_app())
    gateway = await make_jwt_gateway()
    jku = str(elsewhere.make_url("/oauth/v2/keys"))
    forged = signing.sign(attacker.keys[0], headers={"jku": jku})
    signed = signing.sign(headers={"jku": jku})
    embedded = signing.sign(attacker.keys[0], headers={"jwk": attacker.keys[0].jwk()})
    for token in (forged, signed, embedded):
        assert (await call(gateway, token))[0] == 401
    assert attacker.key_fetches == 0


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"aud": ["another-project"]}, "audience"),
        ({"aud": None}, "no audience"),
        ({"iss": "http://127.0.0.1:1"}, "issuer"),
        ({"exp": 1_600_000_000}, "expired"),
        ({"exp": None}, "no exp"),
        ({"nbf": 4_000_000_000}, "not yet valid"),
        ({"iat": 4_000_000_000}, "issued in the future"),
    ],
)
async def test_refused_claims(
    make_jwt_gateway: Factory, signing: SigningIdP, claims: dict[str, Any], reason: str
) -> None:
    gateway = await make_jwt_gateway()
    status, body = await call(gateway, signing.sign(**claims))
    assert (status, body["error"]) == (401, "invalid_token"), reason


async def test_a_configured_audience_is_accepted(make_jwt_gateway: Factory, signing: SigningIdP) -> None:
    gateway = await make_jwt_gateway(project_id=None, audience=["api://orders"])
    assert (await call(gateway, signing.sign(aud="api://orders")))[0] == 200
    assert (await call(gateway, signing.sign()))[0] == 401  # the project id is not an audience here


async def test_an_opaque_token_is_refused_in_jwt_mode_without_an_idp_call(
    make_jwt_gateway: Factory, signing: SigningIdP
) -> None:
    signing.opaque["opaque-token"] = {"sub": "u"}
    gateway = await make_jwt_gateway()
    assert (await call(gateway, "opaque-token"))[0] == 401
    assert (await call(gateway, "opaque-token", "/api/money"))[0] == 401
    assert signing.introspections == 0


async def test_an_unreachable_jwks_is_503_then_recovers(make_jwt_gateway: Factory, signing: SigningIdP) -> None:
    signing.down = True
    gateway = await make_jwt_gateway(jwks_refresh_seconds=0)
    token = signing.sign()
    status, body = await call(gateway, token)
    assert (status, body["error"]) == (503, "idp_unavailable")
    signing.down = False
    assert (await call(gateway, token))[0] == 200


async def test_not_ready_until_the_signing_keys_are_fetched(make_jwt_gateway: Factory, signing: SigningIdP) -> None:
    signing.down = True
    endpoint = signing.issuer + "/oauth/v2/introspect"  # no discovery needed for introspection
    gateway = await make_jwt_gateway(jwks_refresh_seconds=0, introspection_endpoint=endpoint)
    assert readiness(gateway.app, stopping=False) == (False, "signing keys pending")
    signing.down = False
    assert (await call(gateway, signing.sign()))[0] == 200
    assert readiness(gateway.app, stopping=False) == (True, "ready")


async def test_the_key_set_is_fetched_again_after_its_max_age(
    signing: SigningIdP, upstream_url: str, aiohttp_client: AiohttpClient
) -> None:
    signing.cache_control = "public, max-age=120"
    document = gateway_document(issuer=signing.issuer, upstream_url=upstream_url, access_tokens="jwt", project_id="42")
    idp = parse_config(document, source="t.yaml", env=ENV).idp
    assert idp is not None
    now = [1000.0]
    async with aiohttp.ClientSession() as session:
        jwks = Jwks(idp, session, monotonic=lambda: now[0])
        assert await jwks.refresh()
        kid = signing.keys[0].kid
        await jwks.key(kid, "RS256")
        now[0] += 119
        await jwks.key(kid, "RS256")
        assert signing.key_fetches == 1  # within max-age
        now[0] += 2
        await jwks.key(kid, "RS256")
        assert signing.key_fetches == 2  # past it: fetched again when a key was next needed


async def test_a_verified_token_is_cached_until_exp(make_jwt_gateway: Factory, signing: SigningIdP) -> None:
    gateway = await make_jwt_gateway(jwks_refresh_seconds=0)
    token = signing.sign()
    assert (await call(gateway, token))[0] == 200
    signing.rotate(keep_old=False)  # the key is gone and the IdP is down: the token was verified, it stays valid
    signing.down = True
    assert (await call(gateway, token))[0] == 200
    local = gateway.app[RUNTIME].current.dispatch.local
    assert local.cached(token) is not None


async def test_org_scoped_rules_over_both_claim_forms(make_jwt_gateway: Factory, signing: SigningIdP) -> None:
    gateway = await make_jwt_gateway()
    for claim in (ROLES_CLAIM, f"urn:zitadel:iam:org:project:{PROJECT_ID}:roles"):
        token = signing.sign(extra={claim: {"admin": {"123": "a.example"}}})
        assert (await call(gateway, token, "/orgs/123/x"))[0] == 200
        status, body = await call(gateway, token, "/orgs/456/x")
        assert status == 403 and "123" not in body["error_description"]


async def test_introspect_always_sees_a_revocation_at_once(make_jwt_gateway: Factory, signing: SigningIdP) -> None:
    gateway = await make_jwt_gateway(cache={"ttl_seconds": 0})  # introspection answers are not reused
    token = signing.sign()
    assert (await call(gateway, token, "/api/money"))[0] == 200
    assert signing.introspections == 1
    signing.revoked.add(token)
    assert (await call(gateway, token, "/api/money"))[0] == 401
    assert (await call(gateway, token))[0] == 200  # verified locally: valid until its exp (the README says so)


async def test_auto_verifies_our_jwts_and_introspects_the_rest(make_jwt_gateway: Factory, signing: SigningIdP) -> None:
    signing.opaque["opaque-token"] = {"sub": "svc", "iss": signing.issuer}
    gateway = await make_jwt_gateway("auto")
    assert (await call(gateway, signing.sign()))[0] == 200
    assert signing.introspections == 0
    assert (await call(gateway, "opaque-token"))[0] == 200
    assert signing.introspections == 1
    foreign = signing.sign(iss="https://someone.else")  # not ours to verify: ZITADEL says what it is
    assert (await call(gateway, foreign))[0] == 401
    assert signing.introspections == 2


def test_cache_control_max_age_is_kept_within_bounds() -> None:
    assert max_age("public, max-age=300") == 300
    assert max_age("max-age=5") == MIN_MAX_AGE
    assert max_age("max-age=999999") == 3600
    assert max_age("no-cache") == MIN_MAX_AGE
    assert max_age("no-store, max-age=600") == MIN_MAX_AGE
    assert max_age(None) == MIN_MAX_AGE
    assert max_age("s-maxage=600") == MIN_MAX_AGE


async def test_a_gateway_process_verifies_jwts_locally(tmp_path: Path, signing: SigningIdP, upstream_url: str) -> None:
    settings = {"access_tokens": "jwt", "project_id": PROJECT_ID, "jwks_refresh_seconds": 0}
    document = gateway_document(issuer=signing.issuer, upstream_url=upstream_url, routes=ROUTES, **settings)
    token = signing.sign(extra={ROLES_CLAIM: {"admin": {"7": "o.example"}}})
    async with gateway_process(document, tmp_path, ENV) as (base, _), aiohttp.ClientSession() as session:

        async def status(token: str, path: str = "/api/admin") -> int:
            async with session.get(base + path, headers={"Authorization": f"Bearer {token}"}) as resp:
                return resp.status

        for _ in range(100):  # 503 until the process has fetched the keys
            if await status(token) != 503:
                break
            await asyncio.sleep(0.05)
        assert await status(token) == 200
        assert await status(signing.sign(aud="someone-else")) == 401
        assert await status(signing.sign(), "/api/admin") == 403  # verified, without the role
        new = signing.rotate()
        assert await status(signing.sign(new, extra={ROLES_CLAIM: {"admin": {"7": "o"}}})) == 200  # refetched
    assert signing.introspections == 0
    assert signing.key_fetches == 2


async def test_a_reload_into_jwt_mode_fetches_the_keys_before_taking_traffic(
    tmp_path: Path, signing: SigningIdP, upstream_url: str, aiohttp_client: AiohttpClient
) -> None:
    path = tmp_path / "gateway.yaml"
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in ENV.items()))

    def write(**idp: Any) -> None:
        document = gateway_document(issuer=signing.issuer, upstream_url=upstream_url, routes=ROUTES, **idp)
        document["reload"] = {"watch": False}
        path.write_text(yaml.safe_dump(document))

    write()
    source = ConfigSource(path)
    gateway: Client = await aiohttp_client(GatewayTestServer(build_app(source.load(), source=source)))
    token = signing.sign()
    assert gateway.app[RUNTIME].current.dispatch is None
    assert signing.key_fetches == 0
    write(access_tokens="jwt", project_id=PROJECT_ID, jwks_refresh_seconds=3600)
    assert await gateway.app[RELOADER].reload()
    assert signing.key_fetches == 1  # fetched by the reload itself, not by the request below
    assert (await call(gateway, token))[0] == 200
    assert signing.introspections == 0
    write(access_tokens="jwt", project_id=PROJECT_ID, jwks_refresh_seconds=3600, timeout_seconds=3)
    assert await gateway.app[RELOADER].reload()  # another idp section: another key set, fetched again
    assert signing.key_fetches == 2
