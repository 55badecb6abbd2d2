"""Forward an allowed request to its upstream and relay the answer.

Bodies stream both ways; small answers with a known length are relayed in one piece, which is cheaper than a
streamed response. Redirects are relayed, not followed; content is never decompressed. A failure before the
answer starts becomes 502/504; a failure in the middle of a streamed body aborts the client connection, so a
truncated body can never look complete.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from .config import Upstream
from .errors import UpstreamTimeout, UpstreamUnavailable
from .headers import downstream_response_headers
from .metrics import Metrics

log = logging.getLogger("gateway.proxy")

SMALL_BODY = 64 * 1024
_NO_BODY_STATUS = frozenset({204, 304})


def upstream_url(upstream: Upstream, path: str, query: str | None) -> URL:
    """The canonical path and the client's query string byte for byte; nothing is re-quoted."""
    target = upstream.url + path
    if query is not None:
        target += "?" + query
    return URL(target, encoded=True)


@functools.cache
def _timeout(upstream: Upstream) -> aiohttp.ClientTimeout:
    # `connect` bounds the wait for a pooled connection too, so a full pool answers 504 instead of hanging.
    return aiohttp.ClientTimeout(
        total=None,
        connect=upstream.connect_timeout,
        sock_connect=upstream.connect_timeout,
        sock_read=upstream.read_timeout,
    )


async def forward(
    request: web.Request,
    session: aiohttp.ClientSession,
    upstream: Upstream,
    url: URL,
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
        async with session.request(
            request.method,
            url,
            headers=headers,
            data=body,
            allow_redirects=False,
            timeout=_timeout(upstream),
        ) as upstream_response:
            metrics.upstream_done(upstream.name, time.perf_counter() - started)
            return await _relay(request, upstream_response, upstream.read_timeout, before_prepare)
    except TimeoutError as exc:
        raise UpstreamTimeout() from exc
    except aiohttp.ClientError as exc:
        log.warning("upstream %s: %s", upstream.name, type(exc).__name__)
        raise UpstreamUnavailable() from exc


async def _relay(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    stall: float,
    before_prepare: Callable[[web.StreamResponse], None] | None,
) -> web.StreamResponse:
    """`stall`: the longest a streamed write may wait for a client that stopped reading."""
    headers = downstream_response_headers(upstream.headers)
    length = upstream.content_length
    no_body = request.method == "HEAD" or upstream.status in _NO_BODY_STATUS
    if no_body or (length is not None and length <= SMALL_BODY):
        payload = b"" if no_body else await upstream.read()
        small = web.Response(status=upstream.status, reason=upstream.reason, headers=headers)
        if not no_body:
            small.body = payload
        return small

    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    if before_prepare is not None:
        before_prepare(response)
    await response.prepare(request)
    try:
        async for chunk in upstream.content.iter_any():
            # A client that stops reading would otherwise hold this upstream connection for ever.
            async with asyncio.timeout(stall):
                await response.write(chunk)
    except (aiohttp.ClientError, TimeoutError) as exc:
        # The status line is gone already: the only honest signal left is to cut the connection.
        log.warning("streamed body interrupted: %s", type(exc).__name__)
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError() from exc
    await response.write_eof()
    return response
