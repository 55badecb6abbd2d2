"""The upstream hop: one small interface to a lean HTTP/1.1 client.

`UpstreamClient.send()` returns an `UpstreamResponse` (its head at once, its body as it arrives) or raises
`UpstreamError`/`TimeoutError`; `origin()` says where an upstream URL points. Modules, each importing only those
before it: errors, origin, framing (the checks llhttp leaves to us), answer (one answer, parsed by llhttp),
connection (one socket, what we write), client (the pool).
"""

from gateway.forward.upstream.answer import UpstreamResponse
from gateway.forward.upstream.client import UpstreamClient
from gateway.forward.upstream.errors import UpstreamError
from gateway.forward.upstream.origin import Origin, origin

__all__ = ["Origin", "UpstreamClient", "UpstreamError", "UpstreamResponse", "origin"]
