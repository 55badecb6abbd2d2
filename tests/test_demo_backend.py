"""The demo backend serves the seed example's messages byte for byte."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pytest_aiohttp import AiohttpClient

from demo_backend.app import PRIVATE, PRIVATE_SCOPED, PUBLIC, AssertionCheck, build_app

SEED = Path(__file__).resolve().parents[2] / "shared" / "seed-example-README.md"


@pytest.mark.skipif(not SEED.exists(), reason="the seed README lives in ../shared beside the repository")
def test_messages_are_the_seed_readmes_byte_for_byte() -> None:
    quoted = re.findall(r"^`(\{\"message\":.*\})`$", SEED.read_text(), flags=re.MULTILINE)
    assert [q.encode() for q in quoted] == [PUBLIC, PRIVATE, PRIVATE_SCOPED]


async def test_routes_and_whoami(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(build_app())
    for path, body in (("/api/public", PUBLIC), ("/api/private", PRIVATE), ("/api/private-scoped", PRIVATE_SCOPED)):
        resp = await client.get(path)
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert await resp.read() == body
    resp = await client.get("/api/whoami", headers={"X-Auth-Subject": "s", "X-Other": "o"})
    assert await resp.read() == b'{"X-Auth-Subject":"s"}'


async def test_whoami_never_echoes_the_assertion_and_says_when_it_is_missing(aiohttp_client: AiohttpClient) -> None:
    plain = await aiohttp_client(build_app())
    resp = await plain.get("/api/whoami", headers={"X-Auth-Subject": "s", "X-Auth-Assertion": "a.b.c"})
    assert await resp.json() == {"X-Auth-Subject": "s"}  # a credential for backends, not for the client
    check = AssertionCheck("http://127.0.0.1:1/.well-known/jwks.json", "gateway.test", "default")
    checking = await aiohttp_client(build_app(assertion=check))
    resp = await checking.get("/api/whoami", headers={"X-Auth-Subject": "s"})
    assert await resp.json() == {"X-Auth-Subject": "s", "assertion": "missing"}
