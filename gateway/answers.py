"""The one renderer of refusals: a GatewayError (or aiohttp's own HTTP error) as the JSON answer every way in sends."""

from __future__ import annotations

import json
import logging

from aiohttp import web

from gateway.errors import GatewayError

log = logging.getLogger("gateway")


def error_response(exc: GatewayError) -> web.Response:
    body = json.dumps({"error": exc.error, "error_description": exc.description}, separators=(",", ":"))
    return web.Response(
        status=exc.status,
        body=body.encode(),
        content_type="application/json",
        # nosniff: a browser must not read the JSON as HTML or script, whatever a client put in the request.
        headers={**exc.headers(), "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


def answer_for(request: web.BaseRequest, exc: Exception) -> web.Response:
    """The JSON answer for a request that failed with `exc` (call it in the `except` block: an unexpected error is
    logged with its traceback). aiohttp's own HTTP errors (e.g. 413 from client_max_size) get the same shape."""
    if isinstance(exc, GatewayError):
        return error_response(exc)
    if isinstance(exc, web.HTTPException) and exc.status >= 400:
        return error_response(_http_exception_as_gateway_error(exc))
    log.exception("unhandled error while serving %s", request.method)
    return error_response(GatewayError())


def _http_exception_as_gateway_error(exc: web.HTTPException) -> GatewayError:
    err = GatewayError(exc.reason)
    err.status = exc.status
    err.error = "payload_too_large" if exc.status == 413 else "http_error"
    return err
