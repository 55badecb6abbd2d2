"""`python -m gateway` as a real process: the request-side bounds of issue 12 hold in the shipped server too."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import aiohttp

from .security.raw import request, send
from .support import ENV, FakeIdP, RecordingUpstream, gateway_document, gateway_process

ROUTES: list[dict[str, Any]] = [
    {"path": "/open/cors", "policy": "public", "cors": {"allowed_origins": ["*"]}},
    {"path": "/open/**", "policy": "public"},
    {"path": "/api/private", "policy": "authenticated"},
]
WAIT = 30.0  # a bound against hanging, never a timing assertion


async def test_the_shipped_server_holds_the_request_side_bounds(
    tmp_path: Path, idp: FakeIdP, upstream: RecordingUpstream, upstream_url: str
) -> None:
    document = gateway_document(
        issuer=idp.issuer, upstream_url=upstream_url, routes=ROUTES, max_concurrent_calls_per_client=1
    )
    async with gateway_process(document, tmp_path, ENV) as (base, _), aiohttp.ClientSession() as session:
        port = int(base.rsplit(":", 1)[1])
        # A head over 32 KiB in total, every line within the per-line bound: 431 from the listener itself.
        answer = await send(port, request("/open/x", *(f"X-Pad-{i}: {'a' * 8000}" for i in range(5))))
        assert answer.statuses == [431] and answer.json()["error"] == "request_header_fields_too_large"
        assert upstream.seen == []

        # A public route relays no credential the gateway did not check.
        async with session.get(
            f"{base}/open/x?access_token=forged&a=1", headers={"Authorization": "Bearer forged"}
        ) as resp:
            assert resp.status == 200
        assert upstream.last.raw_path == "/open/x?a=1"
        assert "authorization" not in {name.lower() for name, _ in upstream.last.headers}

        # CORS: `*` is answered as `*`; the upstream's own echo-with-credentials never passes.
        async with session.get(f"{base}/open/cors", headers={"Origin": "https://any.example"}) as resp:
            assert resp.headers.getall("Access-Control-Allow-Origin") == ["*"]
            assert "Access-Control-Allow-Credentials" not in resp.headers

        # One client, one new token under check at a time: the next is 429, the IdP never hears of it.
        for _ in range(int(WAIT / 0.01)):  # the gateway has found the introspection endpoint
            async with session.get(f"{base}/api/private", headers={"Authorization": "Bearer demo-reader-token"}) as r:
                if r.status == 200:
                    break
            await asyncio.sleep(0.01)
        idp.delay = 1.0
        headers = {"Authorization": f"Bearer {secrets.token_urlsafe(16)}"}
        held = asyncio.ensure_future(session.get(f"{base}/api/private", headers=headers))
        for _ in range(int(WAIT / 0.01)):
            if idp.in_flight:
                break
            await asyncio.sleep(0.01)
        headers = {"Authorization": f"Bearer {secrets.token_urlsafe(16)}"}
        async with session.get(f"{base}/api/private", headers=headers) as resp:
            assert resp.status == 429 and resp.headers["Retry-After"] == "1"
        async with await held as resp:
            assert resp.status == 401
        assert idp.introspections == 2  # the reader's token, and the one held
