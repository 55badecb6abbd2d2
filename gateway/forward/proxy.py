"""Forward an allowed request to its upstream and relay the answer.

Bodies stream both ways; small answers with a known length are relayed in one piece, which is cheaper than a
streamed response. Redirects are relayed, not followed; content is never decompressed. A failure before the
answer starts becomes 502/504; a failure in the middle of a streamed body aborts the client connection, so a
truncated body can never look complete.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from multidict import CIMultiDict

from gateway.config import Upstream
from gateway.errors import GatewayError, UpstreamTimeout, UpstreamUnavailable
from gateway.forward.headers import downstream_response_headers
from gateway.forward.upstream import UpstreamClient, UpstreamError, UpstreamResponse
from gateway.ops.metrics import Metrics

log = logging.getLogger("gateway.proxy")

SMALL_BODY = 64 * 1024
_NO_BODY_STATUS = frozenset({204, 304})


def upstream_failure(upstream: Upstream, exc: BaseException) -> GatewayError:
    """An upstream failure while nothing has gone to the client yet: 504 for a timeout, 502 for anything else; the
    client's own failure (a body too large, stalled or cut off) as itself, without blaming the upstream."""
    if isinstance(exc.__cause__, GatewayError):
        return exc.__cause__
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout()
    log.warning("upstream %s: %s", upstream.name, exc)
    return UpstreamUnavailable()


async def forward(
    request: web.BaseRequest,
    client: UpstreamClient,
    upstream: Upstream,
    target: str,
    headers: CIMultiDict[str],
    metrics: Metrics,
    body: AsyncIterator[bytes] | None = None,
    before_prepare: Callable[[web.StreamResponse], None] | None = None,
) -> web.StreamResponse:
    """`body`: what to send as the request body (the pipeline's size- and time-bounded view of the client's).
    `before_prepare`: applied to a streamed answer just before its headers go out (a small one is returned
    unsent, for the caller to finish)."""
    started = time.perf_counter()
    try:
        answer = await client.send(
            upstream.url,
            request.method,
            target,
            headers,
            body=body,
            connect_timeout=upstream.connect_timeout,
            read_timeout=upstream.read_timeout,
            reuse_after_body=upstream.reuse_after_body,
        )
    except (TimeoutError, UpstreamError) as exc:
        raise upstream_failure(upstream, exc) from exc
    metrics.upstream_done(upstream.name, time.perf_counter() - started)
    try:
        # The answer is taken here rather than in a coroutine of its own: measurably less CPU per request.
        relayed = downstream_response_headers(answer.headers)
        length = answer.content_length
        status, reason = answer.status, answer.reason or None
        no_body = request.method == "HEAD" or status in _NO_BODY_STATUS
        if not no_body and (length is None or length > SMALL_BODY):
            return await _stream(request, answer, upstream, status, reason, relayed, before_prepare)
        small = web.Response(status=status, reason=reason)
        small.headers.extend(relayed)  # into the answer's own set: passing them to Response() would copy them
        if not no_body:
            content = answer.body_if_complete()
            if content is None:
                try:
                    content = await answer.read()
                except (TimeoutError, UpstreamError) as exc:  # nothing has gone to the client yet
                    raise upstream_failure(upstream, exc) from exc
            small.body = content
        return small
    finally:
        answer.release()


async def _stream(
    request: web.BaseRequest,
    upstream_answer: UpstreamResponse,
    upstream: Upstream,
    status: int,
    reason: str | None,
    headers: list[tuple[str, str]],
    before_prepare: Callable[[web.StreamResponse], None] | None,
) -> web.StreamResponse:
    """A large answer, or one of unknown length, relayed as it arrives."""
    response = web.StreamResponse(status=status, reason=reason)
    response.headers.extend(headers)
    if before_prepare is not None:
        before_prepare(response)
    await response.prepare(request)
    try:
        while chunk := await upstream_answer.read_chunk():
            # A client that stops reading would otherwise hold this upstream connection for ever.
            async with asyncio.timeout(upstream.read_timeout):
                await response.write(chunk)
    except (UpstreamError, TimeoutError, ConnectionError) as exc:
        # Either side failed (or the client went away). The status line is gone already: the only honest signal
        # left is to cut the connection.
        log.warning("streamed body interrupted: %s", type(exc).__name__)
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError() from exc
    await response.write_eof()
    return response
