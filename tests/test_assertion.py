"""The signed identity assertion: checked as a backend checks it, with PyJWT's PyJWKClient against the JWKS the
gateway publishes; rotation, expiry, `aud`, reuse, and the refusal of a generated key where processes would
disagree."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key as rsa_key
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from pytest_aiohttp import AiohttpClient

from gateway.auth.claims import Principal
from gateway.config import ConfigError, parse_config
from gateway.config.identity import AssertionSettings
from gateway.forward.assertion import Signer, signer_for
from gateway.forward.identity_map import ClaimMapping, HeaderMap
from gateway.ops.admin import build_admin_app
from tests.conftest import GatewayFactory
from tests.support import ENV, FakeIdP, RecordingUpstream, gateway_document

JWKS_PATH = "/.well-known/gateway-jwks.json"
READER = {"Authorization": "Bearer demo-reader-token"}
METADATA = "urn:zitadel:iam:user:metadata"


def pem_file(directory: Path, name: str, kind: str = "ec") -> str:
    key: Any = {"ec": lambda: generate_private_key(SECP256R1()), "ed": Ed25519PrivateKey.generate}.get(
        kind, lambda: rsa_key(public_exponent=65537, key_size=2048)
    )()
    path = directory / f"{name}.pem"
    path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return str(path)


def assertion_config(key_files: list[str], **more: Any) -> dict[str, Any]:
    return {
        "headers": {"X-User-Department": {"claim": [METADATA, "department"], "decode": "base64"}},
        "assertion": {"issuer": "gateway.test", "key_files": key_files, **more},
    }


def seen(upstream: RecordingUpstream, name: str) -> str:
    values = [v for k, v in upstream.last.headers if k.lower() == name.lower()]
    assert len(values) == 1, values
    return values[0]


async def verify(gateway: TestClient[Any, Any], token: str, audience: str = "default") -> dict[str, Any]:
    """A backend's check: the key by `kid` from the published JWKS (fetched by PyJWKClient, off the loop)."""
    keys = jwt.PyJWKClient(str(gateway.make_url(JWKS_PATH)), cache_keys=False, cache_jwk_set=False)

    def check() -> dict[str, Any]:
        key = keys.get_signing_key_from_jwt(token)
        claims: dict[str, Any] = jwt.decode(
            token, key, algorithms=["ES256", "EdDSA"], audience=audience, issuer="gateway.test"
        )
        return claims

    return await asyncio.to_thread(check)


@pytest.fixture(autouse=True)
def department(idp: FakeIdP) -> None:
    reader = dict(idp.tokens["demo-reader-token"] or {})
    reader[METADATA] = {"department": base64.b64encode(b"sales").decode()}
    idp.tokens["demo-reader-token"] = reader


async def test_the_upstream_gets_an_assertion_a_jwks_client_verifies(
    make_gateway: GatewayFactory, upstream: RecordingUpstream, tmp_path: Path
) -> None:
    gateway = await make_gateway(identity=assertion_config([pem_file(tmp_path, "a")]))
    resp = await gateway.get("/api/whoami", headers={**READER, "X-Auth-Assertion": "forged"})
    assert resp.status == 200
    token = seen(upstream, "X-Auth-Assertion")
    claims = await verify(gateway, token)
    assert claims["sub"] == "259242039378444290"
    assert claims["roles"] == ["read:messages"]
    assert claims["client_id"] == "reader"
    assert claims["org_id"] == "170086305978381234"
    assert claims[METADATA] == {"department": "sales"}  # the mapped claims, decoded, in the IdP's shape
    assert claims["request_id"] == resp.headers["X-Request-Id"]
    assert claims["exp"] - claims["iat"] == 60
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    with pytest.raises(jwt.InvalidAudienceError):
        await verify(gateway, token, audience="another-service")
    public = await gateway.get("/open/x", headers={"X-Auth-Assertion": "forged"})
    assert public.status == 200
    assert [k for k, _ in upstream.last.headers if k.lower() == "x-auth-assertion"] == []


async def test_a_configured_audience_and_header_and_eddsa(
    make_gateway: GatewayFactory, upstream: RecordingUpstream, tmp_path: Path
) -> None:
    identity = assertion_config([pem_file(tmp_path, "ed", "ed")], audience="orders-api", header="X-Identity")
    gateway = await make_gateway(identity=identity)
    resp = await gateway.get("/api/whoami", headers={**READER, "x-identity": "forged", "X_Identity": "forged"})
    assert resp.status == 200
    token = seen(upstream, "X-Identity")
    assert jwt.get_unverified_header(token)["alg"] == "EdDSA"
    assert (await verify(gateway, token, audience="orders-api"))["sub"] == "259242039378444290"


async def test_rotation_an_old_key_verifies_while_it_is_listed(
    make_gateway: GatewayFactory, upstream: RecordingUpstream, tmp_path: Path
) -> None:
    old, new = pem_file(tmp_path, "old"), pem_file(tmp_path, "new", "ed")
    before = await make_gateway(identity=assertion_config([old]))
    assert (await before.get("/api/whoami", headers=READER)).status == 200
    signed_by_old = seen(upstream, "X-Auth-Assertion")

    during = await make_gateway(identity=assertion_config([new, old]))  # the new key signs, both are published
    assert (await during.get("/api/whoami", headers=READER)).status == 200
    signed_by_new = seen(upstream, "X-Auth-Assertion")
    assert jwt.get_unverified_header(signed_by_new)["kid"] != jwt.get_unverified_header(signed_by_old)["kid"]
    assert (await verify(during, signed_by_old))["sub"] == (await verify(during, signed_by_new))["sub"]

    after = await make_gateway(identity=assertion_config([new]))  # the old key is gone: so are its assertions
    with pytest.raises(jwt.PyJWKClientError):
        await verify(after, signed_by_old)
    assert (await verify(after, signed_by_new))["aud"] == "default"


async def test_the_admin_listener_publishes_the_same_keys(
    make_gateway: GatewayFactory, aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    gateway = await make_gateway(identity=assertion_config([pem_file(tmp_path, "a"), pem_file(tmp_path, "b", "ed")]))
    admin = await aiohttp_client(build_admin_app(gateway.app))
    resp = await admin.get("/.well-known/jwks.json")
    assert resp.status == 200
    document = await resp.json()
    assert [k["alg"] for k in document["keys"]] == ["ES256", "EdDSA"]
    assert all("d" not in k for k in document["keys"])  # public halves only
    assert await (await gateway.get(JWKS_PATH)).json() == document
    plain = await make_gateway()
    assert (await (await aiohttp_client(build_admin_app(plain.app))).get("/.well-known/jwks.json")).status == 404


def _principal(expires_at: float | None = None) -> Principal:
    return Principal(subject="s", roles=frozenset({"r"}), client_id="c", expires_at=expires_at)


def test_reuse_while_more_than_half_the_lifetime_is_left_and_expiry() -> None:
    now = [1_000_000.0]
    settings = AssertionSettings(issuer="gateway.test")
    first = signer_for(settings, None)
    assert first is not None
    signer = Signer(settings, first.keys, wall=lambda: now[0])
    token = signer.assertion(_principal(), HeaderMap(), "default", "r1")
    now[0] += 29
    assert signer.assertion(_principal(), HeaderMap(), "default", "r2") == token  # same principal and upstream
    assert signer.assertion(_principal(), HeaderMap(), "other", "r2") != token  # another audience: its own
    now[0] += 2  # less than half of 60 s left
    fresh = signer.assertion(_principal(), HeaderMap(), "default", "r3")
    assert fresh != token
    public = jwt.PyJWK(first.keys[0].public_jwk)
    with pytest.raises(jwt.ExpiredSignatureError):  # signed a fortnight ago by this clock: long expired
        jwt.decode(token, public, algorithms=["ES256"], audience="default")
    claims = jwt.decode(fresh, public, algorithms=["ES256"], audience="default", options={"verify_exp": False})
    assert claims["request_id"] == "r3"
    capped = signer.assertion(_principal(expires_at=now[0] + 10), HeaderMap(), "default", "r4")
    capped_claims = jwt.decode(capped, public, algorithms=["ES256"], audience="default", options={"verify_exp": False})
    assert capped_claims["exp"] == int(now[0] + 10)  # never outlives the token it vouches for


def test_mapped_claims_never_replace_the_gateways_own() -> None:
    signer = signer_for(AssertionSettings(issuer="gateway.test"), None)
    assert signer is not None
    principal = Principal(subject="s", roles=frozenset(), claims=((("iss",), '"evil"'), (("email",), '"a@b.c"')))
    header_map = HeaderMap((ClaimMapping("X-Iss", ("iss",)), ClaimMapping("X-Email", ("email",))))
    claims = signer.claims(principal, header_map, "default", "r", 0.0, 60.0)
    assert claims["iss"] == "gateway.test"
    assert claims["email"] == "a@b.c"


def test_a_reload_keeps_a_generated_key() -> None:
    settings = AssertionSettings(issuer="gateway.test")
    first = signer_for(settings, None)
    assert first is not None and first.generated
    again = signer_for(AssertionSettings(issuer="gateway.test", lifetime=30), first)
    assert again is not None and again.keys == first.keys


def _document(identity: dict[str, Any], **more: Any) -> dict[str, Any]:
    document = gateway_document(issuer="https://z.example", upstream_url="http://127.0.0.1:1")
    return {**document, "identity": identity, **more}


@pytest.mark.parametrize(
    ("more", "expected"),
    [
        ({"workers": 2}, "c.yaml: identity.assertion.key_files: required with workers: 2"),
        ({"cache": {"backend": "redis", "url": "redis://127.0.0.1:6379/0"}}, "required with cache.backend: redis"),
    ],
)
def test_a_generated_key_is_refused_where_processes_would_disagree(more: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(_document({"assertion": {"issuer": "g"}}, **more), source="c.yaml", env=ENV)
    assert expected in str(caught.value)


def test_no_mapping_may_take_the_assertions_header() -> None:
    routes = [{"path": "/x", "policy": "authenticated", "identity_headers": {"x-auth-assertion": "email"}}]
    identity = {"headers": {"X-Identity": "email"}, "assertion": {"issuer": "g", "header": "X-Identity"}}
    document = {**_document(identity), "routes": routes}
    with pytest.raises(ConfigError) as caught:
        parse_config(document, source="c.yaml", env=ENV)
    assert "identity.headers.X-Identity: is the assertion's header" in str(caught.value)
    identity = {"assertion": {"issuer": "g"}}
    with pytest.raises(ConfigError) as caught:
        parse_config({**_document(identity), "routes": routes}, source="c.yaml", env=ENV)
    assert "routes[0].identity_headers.x-auth-assertion: is the assertion's header" in str(caught.value)


def test_one_process_may_generate_its_key() -> None:
    config = parse_config(_document({"assertion": {"issuer": "g"}}), source="c.yaml", env=ENV)
    assert config.identity.assertion is not None and config.identity.assertion.keys == ()
    assert "X-Auth-Assertion" in config.identity.names


def test_key_file_problems_name_the_key(tmp_path: Path) -> None:
    rsa, missing = pem_file(tmp_path, "rsa", "rsa"), str(tmp_path / "nope.pem")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    identity = {"assertion": {"issuer": "g", "key_files": [rsa, missing, str(garbage)], "colour": 1}}
    with pytest.raises(ConfigError) as caught:
        parse_config(_document(identity), source="c.yaml", env=ENV)
    text = str(caught.value)
    assert "identity.assertion.key_files[0]: " in text and "expected an EC P-256 (ES256) or Ed25519" in text
    assert "identity.assertion.key_files[1]: " in text and "cannot read" in text
    assert "identity.assertion.key_files[2]: " in text and "not an unencrypted PEM private key" in text
    assert "identity.assertion.colour: unknown key" in text
    with pytest.raises(ConfigError) as caught:
        parse_config(_document({"assertion": {"key_files": [rsa]}}), source="c.yaml", env=ENV)
    assert "identity.assertion.issuer: is required" in str(caught.value)
