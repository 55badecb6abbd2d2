"""Pure header transforms between the client, the gateway and the upstream.

Order matters and is fixed here: hop-by-hop headers (including those a client names in `Connection`) go first,
then every client-sent identity header, and only then are the gateway's own headers added, so nothing a client
sends can remove or forge what the gateway injects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Set by the gateway (or aiohttp's client) for the upstream hop; a client's values are never relayed.
_REPLACED_ON_REQUEST = frozenset(
    {"host", "expect", "forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-real-ip"}
)
# aiohttp's server sets its own on every response.
_REPLACED_ON_RESPONSE = frozenset({"server", "date"})

IDENTITY_PREFIX = "x-auth-"

AnyHeaders = CIMultiDictProxy[str] | CIMultiDict[str]


def normalised_name(name: str) -> str:
    """How a server behind us may read a header name: any case, `_` taken for `-` (as CGI, WSGI and PHP do)."""
    return name.lower().replace("_", "-")


def is_identity_header(name: str) -> bool:
    return normalised_name(name).startswith(IDENTITY_PREFIX)


def connection_tokens(headers: AnyHeaders) -> frozenset[str]:
    """The hop-by-hop set for this message: the fixed list plus every name listed in `Connection`."""
    named = {
        normalised_name(token.strip())
        for value in headers.getall("Connection", [])
        for token in value.split(",")
        if token.strip()
    }
    return HOP_BY_HOP | named


@dataclass(frozen=True, slots=True)
class ForwardedFor:
    client_ip: str
    proto: str
    host: str | None


def upstream_request_headers(
    client: AnyHeaders,
    *,
    identity: Mapping[str, str],
    forwarded: ForwardedFor,
    pass_authorization: bool,
) -> CIMultiDict[str]:
    drop = connection_tokens(client) | _REPLACED_ON_REQUEST
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in client.items():
        norm = normalised_name(name)
        if norm in drop or norm.startswith(IDENTITY_PREFIX):
            continue
        if norm == "authorization" and not pass_authorization:
            continue
        out.add(name, value)
    out["X-Forwarded-For"] = forwarded.client_ip
    out["X-Forwarded-Proto"] = forwarded.proto
    if forwarded.host:
        out["X-Forwarded-Host"] = forwarded.host
    for name, value in identity.items():
        out[name] = value
    return out


def downstream_response_headers(upstream: AnyHeaders) -> CIMultiDict[str]:
    """Relay every end-to-end header, repeated ones (Set-Cookie) included, in order."""
    drop = connection_tokens(upstream) | _REPLACED_ON_RESPONSE
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        if normalised_name(name) not in drop:
            out.add(name, value)
    return out


def header_value(value: str) -> str:
    """A claim value safe for a header: printable ASCII as is, anything else percent-encoded as UTF-8."""
    if value.isascii() and value.isprintable():
        return value
    return quote(value, safe=" !#$&'()*+,/:;=?@[]^`{|}~\"<>\\")


def identity_headers(
    *, subject: str, username: str | None, roles: Iterable[str], client_id: str | None, org_id: str | None
) -> dict[str, str]:
    headers = {
        "X-Auth-Subject": header_value(subject),
        "X-Auth-Roles": ",".join(sorted(header_value(r) for r in roles)),
    }
    if username:
        headers["X-Auth-Username"] = header_value(username)
    if client_id:
        headers["X-Auth-Client-Id"] = header_value(client_id)
    if org_id:
        headers["X-Auth-Org-Id"] = header_value(org_id)
    return headers
