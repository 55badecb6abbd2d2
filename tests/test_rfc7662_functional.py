"""Any RFC 7662 server: an active answer without `sub` (client credentials) is a client principal, not a 503."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDict

from .conftest import GatewayFactory
from .support import ENV, FakeIdP, RecordingUpstream, gateway_document, gateway_process
from .test_logs_functional import access_lines, captured

__all__ = ["captured"]  # the fixture, shared with the decision-log tests

CLIENT_TOKEN = "client-credentials-token"


@pytest.fixture
def client_token(idp: FakeIdP) -> Iterator[str]:
    # What a standards-conformant server answers for a client-credentials token: no `sub`, no `username`.
    idp.tokens[CLIENT_TOKEN] = {"client_id": "svc-billing", "scope": "api"}
    yield CLIENT_TOKEN


async def test_a_token_without_sub_is_its_client(
    make_gateway: GatewayFactory, client_token: str, upstream: RecordingUpstream, captured: io.StringIO
) -> None:
    gateway = await make_gateway()
    resp = await gateway.get("/api/whoami", headers={"Authorization": f"Bearer {client_token}"})
    assert resp.status == 200
    seen = CIMultiDict(upstream.last.headers)
    assert seen["X-Auth-Client-Id"] == "svc-billing"
    assert "X-Auth-Subject" not in seen
    (line,) = access_lines(captured)
    assert (line["subject"], line["principal"], line["client_id"]) == ("-", "client", "svc-billing")


async def test_a_subject_stays_the_principal(make_gateway: GatewayFactory, captured: io.StringIO) -> None:
    gateway = await make_gateway()
    resp = await gateway.get("/api/whoami", headers={"Authorization": "Bearer demo-reader-token"})
    assert resp.status == 200
    (line,) = access_lines(captured)
    assert (line["subject"], line["principal"]) == ("259242039378444290", "subject")


async def test_the_config_may_require_sub(make_gateway: GatewayFactory, client_token: str) -> None:
    gateway = await make_gateway(idp={"required_claims": ["sub"]})
    resp = await gateway.get("/api/private", headers={"Authorization": f"Bearer {client_token}"})
    assert resp.status == 401
    assert (await resp.json())["error"] == "invalid_token"
    ok = await gateway.get("/api/private", headers={"Authorization": "Bearer demo-reader-token"})
    assert ok.status == 200


async def test_a_gateway_process_accepts_a_client_credentials_token(
    tmp_path: Path, idp: FakeIdP, client_token: str, upstream_url: str
) -> None:
    document = gateway_document(issuer=idp.issuer, upstream_url=upstream_url)
    async with gateway_process(document, tmp_path, ENV) as (base, _), aiohttp.ClientSession() as session:
        for _ in range(100):  # until discovery has run: 503 before
            async with session.get(f"{base}/api/whoami", headers={"Authorization": f"Bearer {client_token}"}) as r:
                status, body = r.status, await r.read()
            if status != 503:
                break
            await asyncio.sleep(0.05)
        assert status == 200
        echoed = json.loads(body)
        assert echoed["X-Auth-Client-Id"] == "svc-billing"
        assert "X-Auth-Subject" not in echoed
