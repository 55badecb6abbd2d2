"""The WebSocket transport: an upgrade is decided by the decision core like any GET, then relayed.

A `GET` with `Upgrade: websocket` on a route with `websocket: true`: the same decision as any GET (canonical path,
token, roles, identity headers) plus the upgrade guard (the route takes WebSockets; a browser's Origin is one the
route's CORS allows), then the client's handshake is checked, the upstream's WebSocket opened with the canonical
path, the query (less a token the gateway took), the identity and forwarded headers and the client's
subprotocols, and the client gets 101 with the upstream's choice. A refusal is the usual JSON answer, an upstream
that answers anything but 101 has its answer relayed; either way the connection closes after that one answer.

Two access lines per socket: the upgrade (101, or the refusal) and the close, with its duration, the messages and
bytes each way, and the close code and reason.
"""

from __future__ import annotations

import asyncio
import functools
import time

from aiohttp import web
from multidict import CIMultiDict

from gateway.answers import answer_for
from gateway.errors import BadRequest, GatewayError
from gateway.forward.headers import ForwardedFor, forwarded_for
from gateway.forward.websocket.guard import upgrade_guard
from gateway.forward.websocket.hub import WebSocketHub
from gateway.forward.websocket.lifetime import Ending, Lifetime
from gateway.forward.websocket.relay import ClientSide, Relay
from gateway.forward.websocket.upstream import Refused, connect
from gateway.ops.logs import log_access, request_id
from gateway.ops.reload import Slot
from gateway.pipeline import (
    CORS_HEADERS,
    REQUEST_ID,
    REQUEST_ID_HEADER,
    Runtime,
    access_log,
    client_request_id,
    record,
    upstream_headers,
)
from gateway.policy.decision import Decision, Inbound, Trace, upstream_target

_MODE = "websocket"
_CLOSE_MESSAGE = "%s %s close %s"
# Sent by aiohttp's client for its own handshake with the upstream; the client's are for the client's handshake.
_HANDSHAKE = ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions", "Sec-WebSocket-Protocol")


def wants_websocket(runtime: Runtime, request: web.BaseRequest) -> bool:
    """A GET asking for a WebSocket on a route that takes them. Anything else (another method, another upgrade,
    a route without `websocket: true`, a path refused) is the proxy's, which serves it as plain HTTP and closes."""
    if request.method != "GET" or request.headers.get("Upgrade", "").strip().lower() != "websocket":
        return False
    try:
        route = runtime.decider.route_for("GET", request.raw_path)[2]
    except GatewayError:
        return False
    return route is not None and route.websocket


def offered_protocols(request: web.BaseRequest) -> tuple[str, ...]:
    values = request.headers.getall("Sec-WebSocket-Protocol", [])
    return tuple(p.strip() for value in values for p in value.split(",") if p.strip())


def _upstream_headers(
    runtime: Runtime, request: web.BaseRequest, decision: Decision, forwarded: ForwardedFor, rid: str
) -> CIMultiDict[str]:
    """The proxy's upstream headers (gateway/pipeline.py), less the client's own handshake: aiohttp makes ours."""
    headers = upstream_headers(runtime, request.headers, decision, forwarded, rid)
    for name in _HANDSHAKE:
        headers.popall(name, None)
    return headers


async def handle_websocket(slot: Slot, hub: WebSocketHub, request: web.BaseRequest) -> web.StreamResponse:
    started = time.perf_counter()
    runtime = slot.current
    config = runtime.config
    trace = Trace(request_id(client_request_id(request)))
    request[REQUEST_ID] = trace.request_id
    host = request.headers.get("Host")
    forwarded = forwarded_for(request.remote or "", request.scheme, host, request.headers, config.trusted_proxies)
    inbound = Inbound(request.method, request.raw_path, request.headers, host, forwarded.client_ip)
    runtime.metrics.request_started()
    try:
        try:
            decision = await runtime.decider.decide(inbound, trace, before_auth=upgrade_guard(request.headers))
        finally:
            if trace.cors_headers is not None:
                request[CORS_HEADERS] = trace.cors_headers
        offered = offered_protocols(request)
        if not web.WebSocketResponse(protocols=offered).can_prepare(request).ok:
            raise BadRequest("not a valid WebSocket handshake")
        settings = config.websocket
        # aiohttp refuses a frame as long as its limit (`>=`): one more, so that `max_message_bytes` itself passes.
        max_message = settings.max_message_bytes + 1
        forwarding = time.perf_counter()
        try:
            upstream = await connect(
                hub.session(),
                config.upstreams[decision.route.upstream],
                upstream_target(decision.path, decision.query),
                _upstream_headers(runtime, request, decision, forwarded, trace.request_id),
                offered,
                max_message,
                hub.close_timeout,
            )
        finally:
            trace.upstream_seconds = time.perf_counter() - forwarding
        client: ClientSide = web.WebSocketResponse(
            protocols=(upstream.protocol,) if upstream.protocol else (),
            max_msg_size=max_message,
            autoclose=False,  # a close goes across first; the relay answers it
            autoping=False,  # pings and pongs go across: the far side answers
            compress=False,
            decode_text=False,  # text is relayed as the bytes it came as
            timeout=hub.close_timeout,
        )
        client.headers[REQUEST_ID_HEADER] = trace.request_id
        try:
            await client.prepare(request)
        except BaseException:
            await asyncio.shield(upstream.close())
            raise
    except Refused as refused:
        _close_after_answer(request)
        record(runtime, "GET", trace, refused.status, "allow", "upgrade refused", started, mode=_MODE)
        return refused.answer
    except GatewayError as exc:
        _close_after_answer(request)
        decision_label = "deny" if exc.status < 499 else "error"
        record(runtime, "GET", trace, exc.status, decision_label, exc.reason, started, mode=_MODE)
        answer = answer_for(request, exc)
        answer.force_close()  # says `Connection: close`, so that no client sends another request on it
        return answer
    except asyncio.CancelledError:
        record(runtime, "GET", trace, 499, "error", "aborted", started, mode=_MODE)
        raise
    finally:
        runtime.metrics.request_ended()
    record(runtime, "GET", trace, 101, "allow", "ok", started, mode=_MODE)
    relay = Relay(client, upstream, Lifetime(slot, inbound, trace.request_id, decision.principal))
    done = functools.partial(_record_close, runtime, trace, relay, time.monotonic())
    await hub.run(relay, decision.route.id, done)
    return client


def _close_after_answer(request: web.BaseRequest) -> None:
    """After an upgrade head aiohttp's parser reads nothing more: one answer, then the connection closes."""
    if request.protocol is not None:
        request.protocol.close()


def _record_close(runtime: Runtime, trace: Trace, relay: Relay, opened: float, ending: Ending) -> None:
    """The close line (never a peer's close text: only its code) and the close counter."""
    runtime.metrics.websocket_closes.labels(ending.reason).inc()
    route = trace.route.id if trace.route is not None else "-"
    fields = {
        "request_id": trace.request_id,
        "mode": _MODE,
        "event": "close",
        "method": "GET",
        "path": trace.path,
        "route": route,
        "subject": trace.principal.subject if trace.principal is not None else "-",
        "token": trace.token_hash,
        "duration_ms": round((time.monotonic() - opened) * 1000, 3),
        "messages_from_client": relay.from_client.messages,
        "bytes_from_client": relay.from_client.bytes,
        "messages_from_upstream": relay.from_upstream.messages,
        "bytes_from_upstream": relay.from_upstream.bytes,
        "close_code": ending.code,
        "close_reason": ending.reason,
    }
    log_access(access_log, _CLOSE_MESSAGE, ("GET", trace.path, ending.reason), fields)
