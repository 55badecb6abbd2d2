"""aiohttp's web.Server with two gateway rules applied where aiohttp handles a connection, before our handler runs.

1. A request aiohttp's parser refuses gets the gateway's JSON 400 and one short log line with no request bytes in
   it. aiohttp itself logs such a request at ERROR with a traceback that quotes the offending line, a token
   included, about 1.5 KB of log per 40-byte request.
2. A request line whose version is not HTTP/1.x (none at all, which llhttp reads as HTTP/0.9, or HTTP/2.0) is
   marked for refusal (gateway/ops/request_shape.py) and answered as HTTP/1.1, never as `HTTP/0.9 200`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from gateway.answers import error_response
from gateway.config import Limits
from gateway.errors import BadRequest, GatewayError
from gateway.ops.head_limit import BoundedRequestHandler
from gateway.ops.logs import log_access
from gateway.ops.request_shape import HTTP_10, HTTP_11, UNSUPPORTED_VERSION, UnsupportedVersionRequest

access_log = logging.getLogger("gateway.access")
_MALFORMED = BadRequest("the request could not be parsed")


class QuietRequestHandler(BoundedRequestHandler):
    """aiohttp's connection handler with the whole head bounded (gateway/ops/head_limit.py), minus the traceback
    (and the request's bytes) in the log for a parse error."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)  # not a parse error: aiohttp's own way
        refusal = refusal_for(exc)
        # The exception's text quotes the request; only its class name is logged.
        fields = {
            "decision": "deny",
            "reason": "malformed request",
            "status": refusal.status,
            "error": type(exc).__name__,
        }
        if access_log.isEnabledFor(logging.INFO):
            log_access(access_log, "malformed request %d %s", (refusal.status, "deny"), fields)
        response = error_response(refusal)
        response.force_close()
        return response


def refusal_for(exc: HttpProcessingError) -> GatewayError:
    """400, or the parser's own 4xx (a 431 for an oversized head, say), with a description that quotes nothing."""
    if exc.code == 400 or not 400 <= exc.code < 500:
        return _MALFORMED
    refusal = BadRequest(_MALFORMED.description)
    refusal.status = exc.code
    return refusal


def connection_args(limits: Limits) -> dict[str, Any]:
    """aiohttp's per-connection bounds from `limits:`; read for each new connection, so a reload applies to the
    connections opened after it."""
    return {
        "max_line_size": limits.max_request_line_bytes,
        "max_field_size": limits.max_header_bytes,
        "max_headers": limits.max_headers,
        # Also bounds a slow request head: the timer runs until a whole request has arrived.
        "keepalive_timeout": limits.keepalive_timeout,
        # After an early answer (413, 408, 401 on a POST) aiohttp drains the unread body this long, no longer.
        "lingering_time": min(limits.body_timeout, 10.0),
    }


class GatewayServer(web.Server):
    """web.Server that makes QuietRequestHandler connections, with the current config's limits, and marks requests of
    a version it will refuse."""

    def __init__(self, handler: Any, *, limits: Callable[[], Limits], **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._limits = limits

    def __call__(self) -> RequestHandler:
        current = self._limits()
        args = {**self._kwargs, **connection_args(current)}
        return QuietRequestHandler(self, max_head_bytes=current.max_head_bytes, loop=self._loop, **args)

    def _make_request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        version = message.version
        if version == HTTP_11 or version == HTTP_10:
            return super()._make_request(message, payload, protocol, writer, task)
        # The answer's status line takes the request's version: make it HTTP/1.1, and close after it.
        message = message._replace(version=HTTP_11, should_close=True)
        request = UnsupportedVersionRequest(message, payload, protocol, writer, task, self._loop)
        request[UNSUPPORTED_VERSION] = f"{version.major}.{version.minor}"
        return request
