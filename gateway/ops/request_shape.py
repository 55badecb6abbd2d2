"""What a request must look like before any rule is matched: its version, its framing, its Host, and whether its
method may carry a body. Each refusal closes the connection: after a request the gateway cannot read as the next
hop would, nothing else on that connection is trusted.

aiohttp's llhttp parser runs first. It refuses some of this itself (HTTP/1.2, `Transfer-Encoding: gzip` alone, a
Transfer-Encoding with a Content-Length, two Hosts) and accepts the rest, which is refused here.
"""

from __future__ import annotations

from aiohttp import HttpVersion, web

from gateway.errors import BadRequest, GatewayError, NotImplementedCoding, VersionNotSupported
from gateway.forward.headers import valid_host
from gateway.policy.rules import Route

UNSUPPORTED_VERSION = web.RequestKey("unsupported_version", str)  # "major.minor" as sent (0.9: none at all)
HTTP_10 = HttpVersion(1, 0)
HTTP_11 = HttpVersion(1, 1)

# llhttp takes these methods only on an `RTSP/1.x` request line, and then reports the version as 1.x: whatever
# carries one is RTSP, not HTTP. (An RTSP line with GET, POST or OPTIONS cannot be told from HTTP/1.x here.)
RTSP_ONLY_METHODS = frozenset(
    {
        "DESCRIBE",
        "ANNOUNCE",
        "SETUP",
        "PLAY",
        "PAUSE",
        "TEARDOWN",
        "GET_PARAMETER",
        "SET_PARAMETER",
        "REDIRECT",
        "RECORD",
        "FLUSH",
    }
)

# RFC 9110 §9.3: these have no defined meaning for a body (TRACE must not have one, §9.3.8). An upstream that does
# not expect one may read it as the next request on a kept-alive connection: a second, unchecked request.
NO_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


class UnsupportedVersionRequest(web.BaseRequest):
    """A request whose version is not HTTP/1.x, made by gateway/ops/http_server.py: its own type, so that the check
    for it costs one type comparison on every other request (looking up a key it lacks would raise and catch)."""


def refuse_malformed(request: web.BaseRequest) -> None:
    """Raise for a request whose version, framing or Host the gateway will not relay."""
    try:
        _check(request)
    except GatewayError:
        if request.protocol is not None:
            request.protocol.close()  # this answer, then the connection closes
        raise


def _check(request: web.BaseRequest) -> None:
    if type(request) is UnsupportedVersionRequest:  # not isinstance(): an ABC check on every request
        if request[UNSUPPORTED_VERSION].startswith("0."):  # a request line without a version reads as HTTP/0.9
            raise BadRequest("the request line has no HTTP/1.0 or HTTP/1.1 version")
        raise VersionNotSupported()
    if request.method in RTSP_ONLY_METHODS:
        raise BadRequest("an RTSP request line")
    headers = request.headers
    if "Transfer-Encoding" in headers:
        codings = headers.getall("Transfer-Encoding")
        if request.version == HTTP_10:
            # RFC 9112 §6.1: HTTP/1.0 has no transfer codings; such framing is faulty.
            raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")
        if [c.strip().lower() for v in codings for c in v.split(",")] != ["chunked"]:
            # RFC 9112 §6.1: 501 for a coding the server does not understand; the only one relayed is `chunked`.
            raise NotImplementedCoding()
    host = headers.get("Host")  # llhttp refuses a second Host
    if host is None:
        if request.version == HTTP_11:
            raise BadRequest("an HTTP/1.1 request without Host")  # RFC 9112 §3.2
    elif not valid_host(host):
        # It reaches the upstream as X-Forwarded-Host, where links and redirects are built from it.
        raise BadRequest("the Host header is not a valid host[:port]")


def refuse_body(route: Route, method: str) -> None:
    """A body on a method that has none (above), or on DELETE unless the route says `delete_body: true`."""
    if method in NO_BODY_METHODS:
        raise BadRequest(f"a {method} request cannot carry a body")
    if method == "DELETE" and not route.delete_body:
        raise BadRequest("this route takes no body with DELETE")
