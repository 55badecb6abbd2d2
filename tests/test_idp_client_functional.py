"""Talking to ZITADEL: JWT-profile client authentication, bounded concurrency, retry, timeout, circuit breaker."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.auth.client_auth import ASSERTION_TYPE, JwtProfile
from gateway.config import ClientKey, ConfigError, parse_config

from .conftest import GatewayFactory
from .support import FakeIdP, gateway_document

Client = TestClient[Any, Any]
READER = {"authorization": "Bearer demo-reader-token"}
KEY_ID = "251234567890123456"
CLIENT = "251234567890123457@gateway"  # the key file's clientId, as ZITADEL writes it


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pkcs1(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()


def public_pem(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def key_file(directory: Path, key: rsa.RSAPrivateKey) -> Path:
    path = directory / "gateway-key.json"
    document = {"type": "application", "keyId": KEY_ID, "key": pkcs1(key), "appId": "251234567890", "clientId": CLIENT}
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def app_key() -> rsa.RSAPrivateKey:
    return rsa_key()


def trust(idp: FakeIdP, key: rsa.RSAPrivateKey) -> None:
    assert idp.settings is not None
    idp.settings.client_id = CLIENT
    idp.settings.client_public_key = public_pem(key)
    idp.settings.client_key_id = KEY_ID


async def test_jwt_profile_is_accepted_by_an_idp_that_holds_the_public_key(
    make_gateway: GatewayFactory, idp: FakeIdP, app_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    trust(idp, app_key)
    gateway = await make_gateway(env={"ZITADEL_KEY_FILE": str(key_file(tmp_path, app_key))})
    assert (await gateway.get("/api/private-scoped", headers=READER)).status == 200
    assert (await gateway.get("/api/private", headers={"authorization": "Bearer demo-noroles-token"})).status == 200
    first, second = idp.seen_forms[-2:]
    assert first["client_assertion_type"] == ASSERTION_TYPE
    assert first["client_assertion"] == second["client_assertion"]  # signed once, re-used
    assert jwt.get_unverified_header(first["client_assertion"])["kid"] == KEY_ID
    claims = jwt.decode(first["client_assertion"], options={"verify_signature": False})
    assert claims["iss"] == claims["sub"] == CLIENT
    assert claims["aud"] == idp.issuer
    assert 0 < claims["exp"] - claims["iat"] <= 3600


async def test_an_assertion_signed_with_another_key_is_refused_and_the_gateway_answers_503(
    make_gateway: GatewayFactory, idp: FakeIdP, app_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    trust(idp, rsa_key())
    gateway = await make_gateway(env={"ZITADEL_KEY_FILE": str(key_file(tmp_path, app_key))})
    assert (await gateway.get("/api/private", headers=READER)).status == 503


def test_the_assertion_is_renewed_shortly_before_it_expires(app_key: rsa.RSAPrivateKey) -> None:
    now = [time.time() - 600]  # a made-up clock, in the past so that the real one accepts iat
    profile = JwtProfile(
        ClientKey(KEY_ID, CLIENT, pkcs1(app_key)),
        "https://idp.test",
        lifetime=600,
        renew_before=60,
        clock=lambda: now[0],
    )
    first = profile.assertion()
    now[0] += 539
    assert profile.assertion() == first
    now[0] += 1
    renewed = profile.assertion()
    assert renewed != first
    public = app_key.public_key()
    claims = jwt.decode(
        renewed, public, algorithms=["RS256"], audience="https://idp.test", options={"verify_exp": False}
    )
    assert claims["iat"] == int(now[0]) and claims["exp"] == int(now[0]) + 600


def test_key_file_problems_are_reported(tmp_path: Path, app_key: rsa.RSAPrivateKey) -> None:
    document = gateway_document(issuer="http://idp.test", upstream_url="http://up.test")
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"type": "application", "keyId": "1", "clientId": "c", "key": "nope"}))
    with pytest.raises(ConfigError) as error:
        parse_config(document, source="t.yaml", env={"ZITADEL_KEY_FILE": str(broken)})
    assert any("not an unencrypted PEM RSA private key" in p for p in error.value.problems)
    env = {"ZITADEL_KEY_FILE": str(key_file(tmp_path, app_key))}
    config = parse_config(document, source="t.yaml", env=env)
    assert config.idp is not None and config.idp.client_key is not None
    assert config.idp.client_id == CLIENT and config.idp.client_secret == ""
    assert pkcs1(app_key) not in repr(config)


async def test_calls_to_the_idp_are_bounded(make_gateway: GatewayFactory, idp: FakeIdP) -> None:
    gateway = await make_gateway(idp={"max_concurrent_calls": 2, "timeout_seconds": 10})
    idp.delay = 0.1
    tokens = [f"bogus-{i}" for i in range(8)]
    responses = await asyncio.gather(
        *(gateway.get("/api/private", headers={"authorization": f"Bearer {t}"}) for t in tokens)
    )
    assert [r.status for r in responses] == [401] * 8
    assert idp.introspections == 8
    assert idp.max_in_flight == 2


async def test_one_quick_retry_on_a_dropped_connection(make_gateway: GatewayFactory, idp: FakeIdP) -> None:
    gateway = await make_gateway()
    idp.drops = 1
    assert (await gateway.get("/api/private", headers=READER)).status == 200
    assert idp.introspections == 2


async def test_at_most_one_retry(make_gateway: GatewayFactory, idp: FakeIdP) -> None:
    gateway = await make_gateway()
    idp.drops = 5
    assert (await gateway.get("/api/private", headers=READER)).status == 503
    assert idp.introspections == 2


async def test_retry_can_be_turned_off(make_gateway: GatewayFactory, idp: FakeIdP) -> None:
    gateway = await make_gateway(idp={"retry_on_connection_error": False})
    idp.drops = 1
    assert (await gateway.get("/api/private", headers=READER)).status == 503
    assert idp.introspections == 1


async def test_a_hanging_idp_is_cut_at_the_total_timeout(make_gateway: GatewayFactory, idp: FakeIdP) -> None:
    gateway = await make_gateway(idp={"timeout_seconds": 0.3})
    idp.mode = "hang"
    assert (await gateway.get("/api/private", headers=READER)).status == 503
    assert (await gateway.get("/api/public")).status == 200


async def test_the_breaker_opens_after_n_failures_then_probes(make_gateway: GatewayFactory, idp: FakeIdP) -> None:
    gateway = await make_gateway(idp={"breaker_failures": 2, "breaker_cooldown_seconds": 0.5})
    idp.mode = "status:500"
    for i in range(2):
        assert (await gateway.get("/api/private", headers={"authorization": f"Bearer t{i}"})).status == 503
    assert idp.introspections == 2
    refused = await gateway.get("/api/private", headers=READER)
    assert refused.status == 503  # at once, without asking the IdP
    assert refused.headers["Retry-After"]
    assert idp.introspections == 2
    assert (await gateway.get("/api/public")).status == 200
    idp.mode = "ok"
    await asyncio.sleep(0.6)  # the cool-down
    assert (await gateway.get("/api/private", headers=READER)).status == 200  # the probe closes it
    assert (await gateway.get("/api/private", headers={"authorization": "Bearer demo-noroles-token"})).status == 200
    assert idp.introspections == 4


async def test_the_breaker_can_be_turned_off(make_gateway: GatewayFactory, idp: FakeIdP) -> None:
    gateway = await make_gateway(idp={"breaker_failures": 0})
    idp.mode = "status:500"
    for i in range(8):
        assert (await gateway.get("/api/private", headers={"authorization": f"Bearer t{i}"})).status == 503
    assert idp.introspections == 8
