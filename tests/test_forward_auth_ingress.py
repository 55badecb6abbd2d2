"""Forward-auth through real nginx (`auth_request`) and real Caddy (`forward_auth`), configured from the shipped
recipes, in front of the demo backend, with `python -m gateway` as their auth server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from demo_backend.app import PRIVATE, PRIVATE_SCOPED, PUBLIC

from .ingress import filesystem_type, ingress
from .security.raw import request, send
from .support import ENV, FakeIdP, RecordingUpstream, free_port, gateway_document, gateway_process

pytestmark = pytest.mark.usefixtures("upstream")
KINDS = ["nginx", "caddy", "nginx-cached"]
READER = {"Authorization": "Bearer demo-reader-token"}
NOROLES = {"Authorization": "Bearer demo-noroles-token"}
ROUTES: list[dict[str, Any]] = [
    {"path": "/api/public", "policy": "public"},
    {"path": "/api/private", "policy": "authenticated"},
    {"path": "/api/private-scoped", "roles": {"any_of": ["read:messages"]}},
    {"path": "/api/whoami", "policy": "authenticated"},
    {"path": "/echo/**", "methods": ["GET"], "policy": "authenticated"},
]


@dataclass
class Stack:
    url: str  # the ingress
    port: int
    log: Path  # the gateway's output: one JSON line per decision

    def decisions(self) -> list[dict[str, Any]]:
        lines = self.log.read_text(encoding="utf-8").splitlines()
        parsed = [json.loads(line) for line in lines if line.startswith("{")]
        return [p for p in parsed if p.get("mode") == "forward_auth"]


@contextlib.asynccontextmanager
async def stack(kind: str, idp: FakeIdP, upstream_url: str, tmp_path: Path, ttl: int = 60) -> AsyncIterator[Stack]:
    document = gateway_document(
        issuer=idp.issuer,
        upstream_url=upstream_url,
        routes=ROUTES,
        introspection_endpoint=idp.issuer + "/oauth/v2/introspect",
    )
    decisions = free_port()
    document["forward_auth"] = {"host": "127.0.0.1", "port": decisions, "original": "headers"}
    document["cache"] = {"ttl_seconds": ttl}
    backend = int(upstream_url.rsplit(":", 1)[1])
    async with gateway_process(document, tmp_path, ENV) as (url, _):
        gateway_port = int(url.rsplit(":", 1)[1])
        async with ingress(kind, tmp_path, gateway=decisions, backend=backend) as port:
            yield Stack(f"http://127.0.0.1:{port}", port, tmp_path / f"gateway-{gateway_port}.log")


async def _get(client: aiohttp.ClientSession, url: str, **headers: str) -> tuple[int, bytes, Any]:
    async with client.get(url, headers=headers) as resp:
        return resp.status, await resp.read(), resp.headers


@pytest.mark.parametrize("kind", KINDS)
async def test_the_seed_walk_through(kind: str, idp: FakeIdP, upstream_url: str, tmp_path: Path) -> None:
    async with stack(kind, idp, upstream_url, tmp_path) as s, aiohttp.ClientSession() as client:
        status, body, _ = await _get(client, s.url + "/api/public")
        assert (status, body) == (200, PUBLIC)
        status, body, headers = await _get(client, s.url + "/api/private")
        assert status == 401
        assert headers.getall("WWW-Authenticate") == ['Bearer realm="gateway"']
        assert json.loads(body)["error"] == "unauthorized"
        for _ in range(2):  # the second one may come from nginx's cache
            status, body, _ = await _get(client, s.url + "/api/private", **READER)
            assert (status, body) == (200, PRIVATE)
            status, body, _ = await _get(client, s.url + "/api/private-scoped", **READER)
            assert (status, body) == (200, PRIVATE_SCOPED)
        status, body, headers = await _get(client, s.url + "/api/private-scoped", **NOROLES)
        assert status == 403
        assert headers.getall("WWW-Authenticate") == ['Bearer realm="gateway", error="insufficient_scope"']
        assert json.loads(body) == {
            "error": "insufficient_scope",
            "error_description": "this route requires the role read:messages",
        }
        status, body, _ = await _get(client, s.url + "/api/private", Authorization="Bearer demo-expired-token")
        assert status == 401
        assert json.loads(body)["error"] == "invalid_token"


@pytest.mark.parametrize("kind", KINDS)
async def test_refusals_keep_the_gateways_statuses(kind: str, idp: FakeIdP, upstream_url: str, tmp_path: Path) -> None:
    """nginx would turn a 404, 400 or 503 from the auth server into 500: the recipe must not."""
    async with stack(kind, idp, upstream_url, tmp_path) as s, aiohttp.ClientSession() as client:
        status, body, _ = await _get(client, s.url + "/nowhere", **READER)
        assert status == 404
        assert json.loads(body)["error"] == "not_found"
        answer = await send(s.port, request("/api/./private", "Authorization: Bearer demo-reader-token"))
        assert answer.status == 400  # not canonical: the ingress would forward it as it is
        assert answer.json()["error"] == "invalid_request"
        status, body, _ = await _get(client, s.url + "/api/private", Authorization="Bearer a,b")
        assert status == 401
        assert json.loads(body)["error"] == "invalid_token"
        idp.mode = "status:500"
        status, body, headers = await _get(client, s.url + "/api/private", Authorization="Bearer never-seen-before")
        assert status == 503
        assert headers["Retry-After"]
        assert json.loads(body)["error"] == "idp_unavailable"


@pytest.mark.parametrize("kind", KINDS)
async def test_the_backend_gets_the_identity_and_never_a_forged_one(
    kind: str, idp: FakeIdP, upstream: RecordingUpstream, upstream_url: str, tmp_path: Path
) -> None:
    forged = {
        "X-Auth-Subject": "forged",
        "x-auth-roles": "forged",
        "X-AUTH-USERNAME": "forged",
        "X-Auth-Client-Id": "forged",
        "X-Auth-Org-Id": "forged",
    }
    async with stack(kind, idp, upstream_url, tmp_path) as s, aiohttp.ClientSession() as client:
        status, body, _ = await _get(client, s.url + "/api/whoami", **READER, **forged)
        assert status == 200
        seen = json.loads(body)
        assert seen["X-Auth-Subject"] == "259242039378444290"
        assert seen["X-Auth-Roles"] == "read:messages"
        assert seen["X-Auth-Client-Id"] == "reader"
        status, _, _ = await _get(client, s.url + "/api/public", **forged)
        assert status == 200
        # Names the ingress cannot overwrite (CGI and WSGI read `_` as `-`): refused, or dropped by nginx.
        answer = await send(
            s.port, request("/api/whoami", "Authorization: Bearer demo-reader-token", "X_Auth_Roles: x")
        )
        assert answer.status in (200, 400)
        if answer.status == 200:
            assert b"X_Auth" not in answer.raw
    for seen_request in upstream.seen:
        for name, value in seen_request.headers:
            if name.lower().replace("_", "-").startswith("x-auth-"):
                assert value not in ("forged", "x"), (kind, seen_request.raw_path, name)


TRICKS = [
    "/api/public/../private",
    "/api/public/%2e%2e/private",
    "/api/public/%2E%2E/private",
    "/api/public/.%2e/private",
    "/api/public%2f..%2fprivate",
    "/api/public/..%2fprivate",
    "/api/public/..;/private",
    "/api/private;x=1",
    "//api/private",
    "/api//private",
    "/./api/private",
    "/api/./private",
    "/api/%70rivate",
    "/api/private%2f",
    "/API/PRIVATE",
    "/api/Private",
    "/api/public?/../private",
    "/api/public#/../private",
    "/api/public/..%5cprivate",
    "/%2e/api/private",
    "/api/private/.",
    "/api/private%00",
    "/api/private%20",
    "/api/%70ublic",  # public once decoded: allowed, but the backend would get another string than was decided
    "/x/../api/public",
]


@pytest.mark.parametrize("kind", ["nginx", "caddy"])
async def test_path_tricks_never_reach_a_private_route_without_a_token(
    kind: str, idp: FakeIdP, upstream: RecordingUpstream, upstream_url: str, tmp_path: Path
) -> None:
    async with stack(kind, idp, upstream_url, tmp_path) as s:
        for target in TRICKS:
            before_backend = len(upstream.seen)
            before_decisions = len(s.decisions())
            answer = await send(s.port, request(target))
            assert PRIVATE not in answer.raw, (kind, target)
            await asyncio.sleep(0.05)  # the gateway writes its line at the end of its loop turn
            reached = upstream.seen[before_backend:]
            allowed = [d for d in s.decisions()[before_decisions:] if d["decision"] == "allow"]
            for seen in reached:
                # What the backend received is what the gateway authorised, to the byte.
                assert [seen.raw_path.partition("?")[0]] == [d["path"] for d in allowed], (kind, target)
                assert seen.raw_path.partition("?")[0] == "/api/public", (kind, target)
        # The road is open for the one canonical trick (a query that looks like a path), so the checks above ran.
        assert any(seen.raw_path == "/api/public?/../private" for seen in upstream.seen)


async def test_the_cached_recipe_keeps_allows_within_the_gateways_bound(
    idp: FakeIdP, upstream_url: str, tmp_path: Path
) -> None:
    async with stack("nginx-cached", idp, upstream_url, tmp_path, ttl=2) as s, aiohttp.ClientSession() as client:
        for _ in range(5):
            status, _, _ = await _get(client, s.url + "/api/private", **READER)
            assert status == 200
        await asyncio.sleep(0.05)
        assert len(s.decisions()) == 1  # the other four were nginx's cached allow
        # The key covers the credential, the method and the target.
        assert (await _get(client, s.url + "/api/private-scoped", **NOROLES))[0] == 403
        assert (await _get(client, s.url + "/echo/x", **NOROLES))[0] == 200
        async with client.delete(s.url + "/echo/x", headers=NOROLES) as resp:
            assert resp.status == 404  # GET /echo/x was allowed and cached; DELETE has no route
        # Refusals are never cached: the same request asks again.
        before = len(s.decisions())
        assert (await _get(client, s.url + "/api/private-scoped", **NOROLES))[0] == 403
        await asyncio.sleep(0.05)
        assert len(s.decisions()) > before
        # Revoked in ZITADEL: it stops working once the gateway's own cache would have let go (ttl 2 s).
        idp.tokens["demo-reader-token"] = None
        revoked_at = time.monotonic()
        while time.monotonic() - revoked_at < 3.5:
            await asyncio.sleep(0.25)
        status, _, _ = await _get(client, s.url + "/api/private", **READER)
        assert status == 401
    # The cache key holds the token: the cache is on tmpfs, and nothing on disk ever holds a token.
    assert filesystem_type(Path("/dev/shm")) == "tmpfs"
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"demo-reader-token" not in data, path
            assert b"demo-noroles-token" not in data, path
