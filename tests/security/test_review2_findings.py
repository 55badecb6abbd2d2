"""Second independent review: defects confirmed against real servers on 127.0.0.1 (each test fails until fixed)."""

from __future__ import annotations

import asyncio
import base64
import signal
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aiohttp
import jwt
import pytest
import yaml
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict
from pytest_aiohttp import AiohttpClient

from gateway.app import RELOADER, RUNTIME, build_app
from gateway.auth.jwt_tokens import jws_header
from gateway.config import parse_config
from gateway.errors import InvalidToken
from gateway.testing import GatewayTestServer
from tests.conftest import GatewayFactory
from tests.security.raw import request, send
from tests.signing_idp import PROJECT_ID, ROLES_CLAIM, SigningIdP, new_key
from tests.support import ENV, FakeIdP, RecordingUpstream, free_port, gateway_document, gateway_process
from tests.test_jwt_functional import signing  # noqa: F401  (the JWKS-serving IdP fixture)
from tests.test_reload_functional import Files, start

ROUTES = [{"path": "/open/**", "policy": "public"}]


async def _exchange(port: int | None, *writes: bytes) -> bytes:
    """Each write sent on its own (so each is one read at the gateway), then read until the server closes."""
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for data in writes:
            writer.write(data)
            await writer.drain()
            await asyncio.sleep(0.1)
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_reload_that_turns_forward_auth_off_leaves_it_deciding_from_the_clients_headers(
    tmp_path: Path, idp: FakeIdP, upstream_url: str
) -> None:
    # Envoy ext_authz (`original: request`) relays the client's own headers. After a SIGHUP with `forward_auth:`
    # removed, the listener (started at boot) keeps answering, with ForwardAuth()'s default `original: headers`:
    # the client's X-Forwarded-Method/-Uri now choose what is authorised. No warning is logged either.
    fa_port = free_port()
    routes: list[dict[str, Any]] = [
        {"path": "/public/**", "policy": "public"},
        {"path": "/admin/**", "roles": {"any_of": ["admin"]}},
    ]
    document = gateway_document(issuer=idp.issuer, upstream_url=upstream_url, routes=routes)
    document["forward_auth"] = {"host": "127.0.0.1", "port": fa_port, "original": "request"}
    forged = {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/public/x", "Host": "app.test"}
    async with gateway_process(document, tmp_path, ENV) as (url, proc), aiohttp.ClientSession() as http:
        decisions = f"http://127.0.0.1:{fa_port}/admin/x"
        for _ in range(200):  # a deadline, not a timing assertion
            try:
                async with http.get(decisions, headers=forged) as resp:
                    assert resp.status == 401  # the request's own target decides
                break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
        config = tmp_path / f"gateway-{url.rsplit(':', 1)[1]}.yaml"
        off = yaml.safe_load(config.read_text())
        del off["forward_auth"]
        off["routes"] = [*routes, {"path": "/marker", "policy": "public"}]
        config.write_text(yaml.safe_dump(off))
        proc.send_signal(signal.SIGHUP)
        for _ in range(200):
            async with http.get(url + "/marker") as resp:
                if resp.status == 200:
                    break
            await asyncio.sleep(0.05)
        assert resp.status == 200  # the reload was applied
        try:
            async with http.get(decisions, headers=forged) as resp:
                status = resp.status
        except aiohttp.ClientConnectionError:
            status = None  # the listener is gone: nothing decides any more
        assert status != 200, "forward-auth, turned off, allowed /admin/x on a forged X-Forwarded-Uri"


async def test_a_foreign_request_line_in_the_read_that_ends_a_body_reaches_the_upstream(
    make_gateway: GatewayFactory, upstream: RecordingUpstream
) -> None:
    # The raw request-line check (head_limit._not_http) skips the head that starts in the same read as the end of
    # the previous request's body; the pipelined _FOREIGN_LINE check only runs when one read completes two heads.
    gw = await make_gateway(ROUTES)
    post = b"POST /open/a HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 5\r\n\r\n"
    rtsp = b"GET /open/rtsp RTSP/1.0\r\nHost: gateway.test\r\nConnection: close\r\n\r\n"
    await _exchange(gw.port, post, b"hello" + rtsp)
    chunked = b"POST /open/b HTTP/1.1\r\nHost: gateway.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    await _exchange(gw.port, chunked, b"5\r\nhello\r\n0\r\n\r\n" + rtsp)
    assert "/open/rtsp" not in [seen.raw_path for seen in upstream.seen]


async def test_a_config_file_that_is_not_utf8_stops_every_later_reload(
    tmp_path: Path, idp: FakeIdP, upstream_url: str, aiohttp_client: AiohttpClient
) -> None:
    # load_config catches OSError and YAML errors only: a UnicodeDecodeError escapes Reloader.reload and ends the
    # Reloader.run task, so SIGHUP and the file watch are dead from then on (and no failed reload is counted).
    files = Files(tmp_path, idp, upstream_url)
    client = await start(files, aiohttp_client, reload={"watch": False})
    files.path.write_bytes(files.path.read_bytes() + b"\n# caf\xe9 (saved as latin-1)\n")
    client.app[RELOADER].trigger()  # what SIGHUP does
    await asyncio.sleep(0.3)
    files.write([{"path": "/fixed", "policy": "public"}], reload={"watch": False})
    client.app[RELOADER].trigger()
    for _ in range(100):  # a deadline, not a timing assertion
        if client.app[RUNTIME].current.config.routes[0].id == "/fixed":
            break
        await asyncio.sleep(0.02)
    assert client.app[RUNTIME].current.config.routes[0].id == "/fixed"


async def test_a_mapped_value_with_outer_spaces_reaches_the_upstream_as_another_value(
    signing: SigningIdP,  # noqa: F811
    upstream_url: str,
    upstream: RecordingUpstream,
    aiohttp_client: AiohttpClient,
) -> None:
    # identity.header_text keeps printable ASCII "as is", outer spaces included; HTTP drops them (RFC 9110 5.5), so
    # the header says `admin` where the claim (and the signed assertion) say `  admin  `. Control characters are
    # left out, non-ASCII is percent-encoded; outer whitespace should be encoded or left out as well.
    routes = [{"path": "/p", "policy": "authenticated"}]
    document = gateway_document(
        issuer=signing.issuer, upstream_url=upstream_url, routes=routes, access_tokens="jwt", project_id=PROJECT_ID
    )
    metadata = "urn:zitadel:iam:user:metadata"
    document["identity"] = {"headers": {"X-User-Dept": {"claim": [metadata, "dept"], "decode": "base64"}}}
    client: TestClient[Any, Any] = await aiohttp_client(
        GatewayTestServer(build_app(parse_config(document, source="t.yaml", env=ENV)))
    )
    dispatch = client.app[RUNTIME].current.dispatch
    assert dispatch is not None
    for _ in range(100):  # a deadline, not a timing assertion
        if dispatch.jwks.ready:
            break
        await asyncio.sleep(0.02)
    token = signing.sign(extra={metadata: {"dept": base64.b64encode(b"  admin  ").decode()}})
    resp = await client.get("/p", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200
    seen = CIMultiDict(upstream.last.headers).get("X-User-Dept")
    assert seen is None or unquote(seen) == "  admin  ", f"the upstream read {seen!r}"


async def test_a_reload_that_lowers_the_head_limits_reports_them_applied_but_never_applies_them(
    tmp_path: Path, idp: FakeIdP, upstream_url: str, aiohttp_client: AiohttpClient
) -> None:
    # The README: a valid change replaces the whole config; only listen, admin and shutdown_grace_seconds wait for
    # the next start. The parser limits and max_head_bytes are fixed in the Listener at start: after the reload the
    # runtime config says 4096 / 512, the listener still takes 9 KiB heads of 900-byte lines, and nothing is logged.
    files = Files(tmp_path, idp, upstream_url)
    client = await start(files, aiohttp_client, reload={"watch": False})
    big = request("/api/public", *(f"X-Pad-{i}: {'a' * 900}" for i in range(10)))
    assert (await send(client.port, big)).status == 200
    files.write(None, reload={"watch": False}, limits={"max_head_bytes": 4096, "max_header_bytes": 512})
    assert await client.app[RELOADER].reload()
    assert client.app[RUNTIME].current.config.limits.max_head_bytes == 4096
    assert (await send(client.port, big)).status in (400, 431)


async def test_an_id_token_is_taken_for_an_access_token_in_jwt_mode(
    signing: SigningIdP,  # noqa: F811
    upstream_url: str,
    aiohttp_client: AiohttpClient,
) -> None:
    # An OIDC ID token is for the client (kept in browsers, sent as `id_token_hint` in logout URLs), never a bearer
    # credential; ZITADEL's introspection does not accept one. ZITADEL's ID tokens come from the same issuer and
    # keys and carry the project id in `aud` (with amr, auth_time, nonce, at_hash; no jti). verify_jwt checks iss,
    # aud and times only, so in `jwt`/`auto` mode an ID token opens every route its roles allow.
    routes = [{"path": "/api/admin", "roles": {"any_of": ["admin"]}}]
    document = gateway_document(
        issuer=signing.issuer, upstream_url=upstream_url, routes=routes, access_tokens="jwt", project_id=PROJECT_ID
    )
    client: TestClient[Any, Any] = await aiohttp_client(
        GatewayTestServer(build_app(parse_config(document, source="t.yaml", env=ENV)))
    )
    dispatch = client.app[RUNTIME].current.dispatch
    assert dispatch is not None
    for _ in range(100):  # a deadline, not a timing assertion
        if dispatch.jwks.ready:
            break
        await asyncio.sleep(0.02)
    id_token = signing.sign(
        aud=["client@project", PROJECT_ID],
        client_id=None,
        azp="client@project",
        amr=["pwd"],
        auth_time=0,
        nonce="n-0S6_WzA2Mj",
        at_hash="77QmUPtjPfzWtF2AnpK9RQ",
        extra={ROLES_CLAIM: {"admin": {"7": "o.example"}}},
    )
    resp = await client.get("/api/admin", headers={"Authorization": f"Bearer {id_token}"})
    assert resp.status == 401


def test_a_jws_typed_as_anything_but_an_access_token_is_refused() -> None:
    """An ID token, a logout token or a nested JWT says so in `typ`; only absent, `JWT` and RFC 9068's `at+jwt`
    pass (found with the ID-token finding above)."""
    key = new_key()
    for typ in ("id_token+jwt", "logout+jwt", "JOSE", 7):
        token = jwt.encode({"sub": "x"}, key.private, algorithm=key.alg, headers={"kid": key.kid, "typ": typ})
        with pytest.raises(InvalidToken):
            jws_header(token)
    for typ in ("JWT", "at+jwt", "application/at+JWT"):
        token = jwt.encode({"sub": "x"}, key.private, algorithm=key.alg, headers={"kid": key.kid, "typ": typ})
        assert jws_header(token)["kid"] == key.kid
