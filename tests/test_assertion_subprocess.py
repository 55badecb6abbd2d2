"""`python -m gateway --config FILE` as a real process with mapped headers and the signed assertion, in front of
the demo backend, which checks the assertion against the gateway's JWKS (PyJWT's PyJWKClient) as a backend would."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import aiohttp
from pytest_aiohttp import AiohttpServer

from demo_backend.app import AssertionCheck
from demo_backend.app import build_app as build_demo_app

from .support import ENV, FakeIdP, free_ports, gateway_document, gateway_process
from .test_assertion import pem_file

METADATA = "urn:zitadel:iam:user:metadata"


async def test_the_demo_backend_verifies_what_a_gateway_process_signs(
    idp: FakeIdP, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    reader = dict(idp.tokens["demo-reader-token"] or {})
    reader[METADATA] = {"department": base64.b64encode(b"sales").decode()}
    idp.tokens["demo-reader-token"] = reader
    admin_port = free_ports(1)
    check = AssertionCheck(f"http://127.0.0.1:{admin_port}/.well-known/jwks.json", "gateway.test", "default")
    backend = await aiohttp_server(build_demo_app(assertion=check))
    document: dict[str, Any] = gateway_document(issuer=idp.issuer, upstream_url=str(backend.make_url("")).rstrip("/"))
    document["admin"] = {"host": "127.0.0.1", "port": admin_port}
    document["identity"] = {
        "headers": {"X-Auth-Department": {"claim": [METADATA, "department"], "decode": "base64"}},
        "assertion": {"issuer": "gateway.test", "key_files": [pem_file(tmp_path, "signing")]},
    }
    async with gateway_process(document, tmp_path, ENV) as (base, _), aiohttp.ClientSession() as session:
        reader_headers = {"Authorization": "Bearer demo-reader-token", "X-Auth-Assertion": "forged"}
        async with session.get(f"{base}/api/whoami", headers=reader_headers) as resp:
            assert resp.status == 200
            seen = await resp.json()
        assert seen["assertion"] == {"verified": True, "sub": "259242039378444290", "roles": ["read:messages"]}
        assert seen["X-Auth-Department"] == "sales"
        assert "X-Auth-Assertion" not in seen  # a credential for backends, never echoed to the client
        async with session.get(f"{base}/.well-known/gateway-jwks.json") as resp:  # on the proxy listener too
            assert resp.status == 200
            published = await resp.json()
        async with session.get(f"http://127.0.0.1:{admin_port}/.well-known/jwks.json") as resp:
            assert await resp.json() == published
        # Straight to the backend, past the gateway: a forged assertion does not verify.
        async with session.get(backend.make_url("/api/whoami"), headers={"X-Auth-Assertion": "e30.e30.e30"}) as resp:
            assert (await resp.json())["assertion"]["verified"] is False
