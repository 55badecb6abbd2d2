"""The upstream hop: one small interface to a lean HTTP/1.1 client.

`UpstreamClient.send()` returns an `UpstreamResponse` (its head at once, its body as it arrives) or raises
`UpstreamError`/`TimeoutError`; `origin()` says where an upstream URL points. Modules, each importing only those
before it: errors, origin, framing (the checks llhttp leaves to us), answer (one answer, parsed by llhttp),
connection (one socket, what we write), client (the pool).
"""

from .answer import UpstreamResponse
from .client import UpstreamClient
from .errors import UpstreamError
from .origin import Origin, origin

__all__ = ["Origin", "UpstreamClient", "UpstreamError", "UpstreamResponse", "origin"]
