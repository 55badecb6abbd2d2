"""Traces, end to end: the gateway against the test IdP and upstream, exporting to a real OTLP/HTTP receiver.

Checked on what the receiver decodes: the spans, their names and parent links, their HTTP attributes; on what the
upstream receives: the continued `traceparent` and `tracestate`; and on everything exported: no token, no query.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from gateway.app import RUNTIME, build_app
from gateway.config import parse_config
from gateway.ops.logs import JsonFormatter
from gateway.testing import GatewayTestServer

from .conftest import GatewayFactory
from .otlp_receiver import ReceivedSpan, Receiver, otlp_receiver
from .signing_idp import PROJECT_ID, ROLES_CLAIM, SigningIdP
from .support import ENV, FakeIdP, RecordingUpstream, free_port, gateway_document, gateway_process

Client = TestClient[Any, Any]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
SAMPLED = f"00-{TRACE_ID}-{PARENT_ID}-01"
UNSAMPLED = f"00-{TRACE_ID}-{PARENT_ID}-00"
READER = "demo-reader-token"
ROUTES: list[dict[str, Any]] = [
    {"id": "public", "path": "/api/public", "policy": "public"},
    {"id": "scoped", "path": "/api/private-scoped", "roles": {"any_of": ["read:messages"]}},
    {"id": "feeds", "path": "/feeds/**", "policy": "authenticated", "allow_query_token": True},
]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with otlp_receiver() as found:
        yield found


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("gateway.access")
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


def access_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def tracing(receiver: Receiver, ratio: float = 1.0) -> dict[str, Any]:
    return {
        "enabled": True,
        "endpoint": receiver.url + "/v1/traces",
        "service_name": "gw-test",
        "sampling_ratio": ratio,
    }


async def flush(gateway: Client) -> None:
    tracer = gateway.app[RUNTIME].current.tracer
    assert tracer is not None
    assert await asyncio.get_running_loop().run_in_executor(None, tracer.force_flush)


def seen_header(upstream: RecordingUpstream, name: str) -> list[str]:
    return [value for key, value in upstream.last.headers if key.lower() == name]


def one(spans: list[ReceivedSpan]) -> ReceivedSpan:
    assert len(spans) == 1, spans
    return spans[0]


async def test_spans_parents_propagation_and_no_token(
    make_gateway: GatewayFactory, receiver: Receiver, upstream: RecordingUpstream, idp: FakeIdP, captured: io.StringIO
) -> None:
    gateway = await make_gateway(ROUTES, tracing=tracing(receiver))
    headers = {"Authorization": f"Bearer {READER}", "traceparent": SAMPLED, "tracestate": "vendor=abc,other=1"}

    resp = await gateway.get("/api/private-scoped?secret=s3cr3t-query", headers=headers)
    assert resp.status == 200
    sent_upstream = seen_header(upstream, "traceparent"), seen_header(upstream, "tracestate")
    resp = await gateway.get("/api/private-scoped", headers={"Authorization": f"Bearer {READER}"})  # cache hit
    assert resp.status == 200
    resp = await gateway.get(f"/feeds/x?access_token={READER}&since=s3cr3t-query")
    assert resp.status == 200
    await flush(gateway)

    # One server span per request, named by the route id; the first continues the client's trace.
    first, second = receiver.named("scoped")
    assert (first.kind, first.trace_id, first.parent_span_id) == ("server", TRACE_ID, PARENT_ID)
    assert first.attributes["http.request.method"] == "GET"
    assert first.attributes["http.route"] == "/api/private-scoped"
    assert first.attributes["url.path"] == "/api/private-scoped"
    assert first.attributes["http.response.status_code"] == 200
    assert first.resource["service.name"] == "gw-test"
    assert second.trace_id != TRACE_ID and second.parent_span_id == ""  # a trace that starts here

    # Children: the token check (miss, then the IdP call under it), and the upstream exchange.
    checks = {s.trace_id: s for s in receiver.named("introspection")}
    miss, hit = checks[TRACE_ID], checks[second.trace_id]
    assert (miss.parent_span_id, miss.attributes["gateway.cache"]) == (first.span_id, "miss")
    assert (hit.parent_span_id, hit.attributes["gateway.cache"]) == (second.span_id, "hit")
    call = one(receiver.named("idp introspection"))  # one IdP call: the second request was a cache hit
    assert (call.kind, call.trace_id, call.parent_span_id) == ("client", TRACE_ID, miss.span_id)
    assert call.attributes["url.full"] == f"{idp.issuer}/oauth/v2/introspect"
    assert call.attributes["gateway.outcome"] == "active"
    exchanges = {s.trace_id: s for s in receiver.named("upstream GET")}
    exchange = exchanges[TRACE_ID]
    assert (exchange.kind, exchange.parent_span_id) == ("client", first.span_id)
    assert exchange.attributes["http.response.status_code"] == 200
    assert "?" not in exchange.attributes["url.full"]

    # The upstream continues the same trace, as a child of the exchange; the client's tracestate goes on.
    assert sent_upstream == ([f"00-{TRACE_ID}-{exchange.span_id}-01"], ["vendor=abc,other=1"])

    # Never a token, never a query string; not in attributes, not anywhere in what was exported.
    exported = receiver.raw()
    for secret in (READER.encode(), b"s3cr3t-query", b"Bearer", b"access_token", b"secret="):
        assert secret not in exported
    for span in receiver.spans:
        assert "url.query" not in span.attributes

    # The trace id is in the access-log line.
    lines = access_lines(captured)
    assert [line["trace_id"] for line in lines[:2]] == [TRACE_ID, second.trace_id]


async def test_an_upstream_failure_marks_the_exchange(
    make_gateway: GatewayFactory, receiver: Receiver, captured: io.StringIO
) -> None:
    routes = [{"id": "gone", "path": "/gone", "policy": "public", "upstream": "dead"}]
    dead = {"dead": {"url": f"http://127.0.0.1:{free_port()}", "connect_timeout_seconds": 2}}
    gateway = await make_gateway(routes, tracing=tracing(receiver), upstreams=dead)
    resp = await gateway.get("/gone", headers={"traceparent": SAMPLED})
    assert resp.status == 502
    await flush(gateway)
    server, exchange = one(receiver.named("gone")), one(receiver.named("upstream GET"))
    assert server.error and server.attributes["http.response.status_code"] == 502
    assert exchange.error and exchange.parent_span_id == server.span_id
    assert exchange.attributes["error.type"]


async def test_ratio_zero_exports_nothing_but_still_propagates(
    make_gateway: GatewayFactory, receiver: Receiver, upstream: RecordingUpstream, captured: io.StringIO
) -> None:
    gateway = await make_gateway(ROUTES, tracing=tracing(receiver, ratio=0))
    assert (await gateway.get("/api/public")).status == 200
    [traceparent] = seen_header(upstream, "traceparent")
    version, trace_id, span_id, flags = traceparent.split("-")
    assert (version, flags, len(trace_id), len(span_id)) == ("00", "00", 32, 16)  # not sampled, but continued
    assert access_lines(captured)[-1]["trace_id"] == trace_id

    # A client's decision is followed: unsampled stays unsampled, sampled is sampled whatever the ratio.
    assert (await gateway.get("/api/public", headers={"traceparent": UNSAMPLED})).status == 200
    assert seen_header(upstream, "traceparent")[0].startswith(f"00-{TRACE_ID}-")
    assert seen_header(upstream, "traceparent")[0].endswith("-00")
    await flush(gateway)
    assert receiver.spans == []

    assert (await gateway.get("/api/public", headers={"traceparent": SAMPLED})).status == 200
    await flush(gateway)
    assert one(receiver.named("public")).trace_id == TRACE_ID


async def test_off_means_off(make_gateway: GatewayFactory, upstream: RecordingUpstream, captured: io.StringIO) -> None:
    gateway = await make_gateway(ROUTES)
    assert gateway.app[RUNTIME].current.tracer is None
    resp = await gateway.get("/api/public", headers={"traceparent": SAMPLED, "tracestate": "vendor=abc"})
    assert resp.status == 200
    # Relayed as any end-to-end header: the upstream may still join the client's trace.
    assert seen_header(upstream, "traceparent") == [SAMPLED]
    assert "trace_id" not in access_lines(captured)[-1]


async def test_the_gateway_process_exports_with_the_otel_variables(
    tmp_path: Path, receiver: Receiver, idp: FakeIdP, upstream_url: str
) -> None:
    """`python -m gateway` with `tracing: {enabled: true}` and the standard variables; SIGTERM exports the rest."""
    document = gateway_document(issuer=idp.issuer, upstream_url=upstream_url, routes=ROUTES)
    decide_port = free_port()
    document.update(tracing={"enabled": True}, forward_auth={"host": "127.0.0.1", "port": decide_port})
    env = {**ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_SERVICE_NAME": "from-env"}
    async with gateway_process(document, tmp_path, env) as (base, proc), aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {READER}", "traceparent": SAMPLED}
        for _ in range(200):  # until discovery is done (a deadline, not a timing assertion)
            async with session.get(base + "/api/private-scoped", headers=headers) as resp:
                if resp.status != 503:
                    break
            await asyncio.sleep(0.05)
        assert resp.status == 200
        original = {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/api/public", "traceparent": SAMPLED}
        async with session.get(f"http://127.0.0.1:{decide_port}/", headers=original) as resp:
            assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.get_running_loop().run_in_executor(None, proc.wait) == 0
    assert receiver.paths and set(receiver.paths) == {"/v1/traces"}
    scoped = [s for s in receiver.named("scoped") if s.attributes["http.response.status_code"] == 200]
    assert scoped and scoped[-1].resource["service.name"] == "from-env"
    decision = one(receiver.named("public"))
    assert decision.attributes["gateway.mode"] == "forward_auth" and decision.parent_span_id == PARENT_ID
    assert READER.encode() not in receiver.raw()
    assert os.environ.get("OTEL_SERVICE_NAME") != "from-env"  # set for the process only


async def test_a_jwks_fetch_for_a_new_key_is_a_child_of_the_request_that_needed_it(
    aiohttp_server: Any, aiohttp_client: Any, receiver: Receiver, upstream_url: str
) -> None:
    port = free_port()
    signing = SigningIdP(issuer=f"http://127.0.0.1:{port}")
    await aiohttp_server(signing.build_app(), port=port)
    document = gateway_document(
        issuer=signing.issuer,
        upstream_url=upstream_url,
        routes=ROUTES,
        access_tokens="jwt",
        project_id=PROJECT_ID,
        jwks_refresh_seconds=0,  # the unknown kid may refetch at once, right after the fetch at start
    )
    document["tracing"] = tracing(receiver)
    gateway: Client = await aiohttp_client(GatewayTestServer(build_app(parse_config(document, source="t", env=ENV))))
    dispatch = gateway.app[RUNTIME].current.dispatch
    assert dispatch is not None
    for _ in range(100):  # the key set fetched at start: a root span of its own, or none
        if dispatch.jwks.ready:
            break
        await asyncio.sleep(0.02)
    token = signing.sign(signing.rotate(), extra={ROLES_CLAIM: {"read:messages": {"1": "a"}}})
    resp = await gateway.get(
        "/api/private-scoped", headers={"Authorization": f"Bearer {token}", "traceparent": SAMPLED}
    )
    assert resp.status == 200
    await flush(gateway)
    fetch = next(s for s in receiver.named("jwks fetch") if s.trace_id == TRACE_ID)
    check = one([s for s in receiver.named("introspection") if s.trace_id == TRACE_ID])
    assert (fetch.kind, fetch.parent_span_id) == ("client", check.span_id)
    assert fetch.attributes["url.full"] == signing.issuer + "/oauth/v2/keys"
    assert fetch.attributes["gateway.outcome"] == "ok"
    assert token.encode() not in receiver.raw()
