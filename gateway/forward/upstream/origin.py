"""Where an upstream URL points: host, port, TLS, the Host header and the path prefix."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an upstream URL points: the connection's key and what its requests carry."""

    host: str
    port: int
    tls: bool
    host_header: str  # host[:port], the port only when it is not the scheme's default
    base_path: str  # prefixed to every forwarded path, without a trailing slash


@functools.cache
def origin(url: str) -> Origin:
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    default = 443 if tls else 80
    host = parts.hostname or ""
    if not host.isascii():
        host = host.encode("idna").decode("ascii")  # an internationalised name, as DNS and Host carry it
    port = parts.port or default
    shown = f"[{host}]" if ":" in host else host
    return Origin(
        host=host,
        port=port,
        tls=tls,
        host_header=shown if port == default else f"{shown}:{port}",
        base_path=parts.path.rstrip("/"),
    )
