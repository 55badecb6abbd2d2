"""Pure header transforms between the client, the gateway and the upstream.

Order matters and is fixed here: hop-by-hop headers (including those a client names in `Connection`) go first,
then every client-sent identity header, and only then are the gateway's own headers added, so nothing a client
sends can remove or forge what the gateway injects.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
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
# Set by the gateway for the upstream hop (Host by the upstream client); a client's values are never relayed.
_REPLACED_ON_REQUEST = frozenset({"host", "expect", "forwarded"})
# Every client-sent X-Forwarded-* (Prefix, Port, Scheme, Server, Ssl...: Spring and Werkzeug rebuild URLs from
# them) goes; the gateway sets For, Proto and Host itself.
_FORWARDED_PREFIX = "x-forwarded-"
# Headers that make many frameworks act on another method, path or host than the one the gateway matched (method
# override: Express, Laravel, Symfony; URL rewrite: IIS, older Symfony and Zend). A client never gets to set them: the
# proxy drops them, forward-auth (which cannot drop anything) refuses the request.
REWRITES = frozenset(
    {
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-original-method",
        "x-original-url",
        "x-original-uri",
        "x-rewrite-url",
        "x-original-host",
        "x-host",
        "x-http-host-override",
        "x-original-path",
        "x-envoy-original-path",
    }
)
# Headers that IP allow-lists trust as the client's address: dropped too.
_CLIENT_IPS = frozenset(
    {
        "x-real-ip",
        "true-client-ip",
        "x-client-ip",
        "x-cluster-client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
        # httpoxy: CGI turns `Proxy` into HTTP_PROXY, which many HTTP clients take as their outgoing proxy.
        "proxy",
        "client-ip",
        "x-originating-ip",
        "x-remote-ip",
        "x-remote-addr",
        "x-proxyuser-ip",
        "fly-client-ip",
        "x-azure-clientip",
        "x-appengine-user-ip",
        "x-envoy-external-address",
        "x-forwarded",
        "forwarded-for",
    }
)
_REWRITES_AND_CLIENT_IPS = REWRITES | _CLIENT_IPS
# Query parameters and form fields that frameworks read as the method to dispatch (Rails, Laravel and Symfony
# `_method`; some read the override headers' names as parameters too), compared as method_override_name() spells
# them. The gateway refuses a request that carries one (gateway/forward/method_override.py).
METHOD_OVERRIDE_FIELDS = frozenset({"-method", "x-http-method-override", "x-http-method", "x-method-override"})
# aiohttp's server sets its own on every response.
_REPLACED_ON_RESPONSE = frozenset({"server", "date"})

IDENTITY_PREFIX = "x-auth-"
_DROPPED_FROM_REQUEST = HOP_BY_HOP | _REPLACED_ON_REQUEST | _REWRITES_AND_CLIENT_IPS
_DROPPED_FROM_RESPONSE = HOP_BY_HOP | _REPLACED_ON_RESPONSE

AnyHeaders = CIMultiDictProxy[str] | CIMultiDict[str]


def normalised_name(name: str) -> str:
    """How a server behind us may read a header name: any case, `_` taken for `-` (as CGI, WSGI and PHP do)."""
    return name.lower().replace("_", "-")


_PHP_NAME_FOLD = str.maketrans({" ": "-", ".": "-", "_": "-", "[": "-"})


def method_override_name(name: str) -> bool:
    """Whether a decoded parameter name is one a framework reads as the method: any case, `_` as `-`, and PHP's
    reading of names (leading spaces dropped; ' ', '.' and '[' folded into '_', so `.method` is `_method`), with or
    without an array suffix."""
    # PHP drops leading spaces from a name (` _method`, sent `+_method`, is `_method` to it); others may fold them.
    spellings = {name, name.lstrip(" ")}
    spellings |= {n.partition("[")[0] for n in spellings}
    return any(n.lower().translate(_PHP_NAME_FOLD) in METHOD_OVERRIDE_FIELDS for n in spellings)


# Headers a claim mapping may not name: the gateway sets or removes them itself, or they frame the message.
_NOT_MAPPABLE = frozenset({"authorization", "cookie", "content-length", "content-type", "content-encoding"})


def gateway_owned(norm: str) -> bool:
    """Whether a (normalised) header name is one the gateway sets or removes, so no claim may be mapped to it."""
    return (
        norm in _DROPPED_FROM_REQUEST
        or norm in _NOT_MAPPABLE
        or norm == "x-request-id"
        or norm.startswith(_FORWARDED_PREFIX)
    )


def dropped_request_headers(names: Iterable[str]) -> frozenset[str]:
    """The request headers never relayed from a client, with these too (the mapped names: built once per config)."""
    return _DROPPED_FROM_REQUEST | {normalised_name(name) for name in names}


def is_identity_header(name: str) -> bool:
    return normalised_name(name).startswith(IDENTITY_PREFIX)


def connection_tokens(headers: AnyHeaders, fixed: frozenset[str] = HOP_BY_HOP) -> frozenset[str]:
    """The hop-by-hop set for this message: `fixed` (the hop-by-hop list and more) plus every name in `Connection`."""
    if "Connection" not in headers:
        return fixed  # the common case, and no set to build
    named = {
        normalised_name(token.strip())
        for value in headers.getall("Connection", [])
        for token in value.split(",")
        if token.strip()
    }
    return fixed | named


@dataclass(frozen=True, slots=True)
class ForwardedFor:
    client_ip: str
    proto: str
    host: str | None
    via: tuple[str, ...] = ()  # trusted proxies between the client and us, nearest last

    def x_forwarded_for(self) -> str:
        return ", ".join((self.client_ip, *self.via))


Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# A DNS name or IPv4 address, or an IPv6 literal, then an optional port. Narrower than RFC 3986's reg-name on
# purpose: its sub-delims (',', ';', '!', '$'...) and '%' name no real host, and a comma splits X-Forwarded-Host.
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_](?:[A-Za-z0-9\-._]*[A-Za-z0-9_])?\.?)(?::[0-9]{1,5})?")


@functools.lru_cache(maxsize=1024)  # a pure function of the text; a client sends the same Host on every request
def valid_host(value: str) -> bool:
    """A Host (or X-Forwarded-Host) an upstream can safely build URLs from: no '/', '@', spaces or the like."""
    return bool(_HOST.fullmatch(value))


@functools.lru_cache(maxsize=1024)  # a pure function of the text; peers repeat (keep-alive, a few proxies)
def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d; match them against IPv4 networks.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _trusted(address: str, trusted: Sequence[Network]) -> bool:
    if not trusted:
        return False  # the default: no address to parse, per request
    ip = _address(address)
    return ip is not None and any(ip in net for net in trusted)


def _last(client: AnyHeaders, name: str) -> str | None:
    values = [v.strip() for value in client.getall(name, []) for v in value.split(",") if v.strip()]
    return values[-1] if values else None


def forwarded_for(
    peer: str, scheme: str, host: str | None, client: AnyHeaders, trusted: Sequence[Network]
) -> ForwardedFor:
    """Who the client is. Only a peer in `trusted` may tell us, through X-Forwarded-*; anyone else is the client.

    X-Forwarded-For is read right to left, skipping trusted proxies: the first address not trusted is the client
    (the left part of the list is whatever that client claimed, and is dropped). Proto and host come from the
    nearest proxy's value. `Forwarded` (RFC 7239) from anyone is dropped, never read: one syntax to trust is
    enough, and upstreams get the X-Forwarded-* set that we write.
    """
    if not _trusted(peer, trusted):
        return ForwardedFor(peer, scheme, host)
    hops = [h.strip() for value in client.getall("X-Forwarded-For", []) for h in value.split(",") if h.strip()]
    chain = [*hops, peer]
    idx = len(chain) - 1
    while idx > 0:
        if _address(chain[idx - 1]) is None:
            break  # garbage: the client is the last address a trusted proxy vouched for
        idx -= 1
        if not _trusted(chain[idx], trusted):
            break
    client_ip, via = chain[idx], chain[idx + 1 :]
    proto = _last(client, "X-Forwarded-Proto")
    forwarded_host = _last(client, "X-Forwarded-Host")
    return ForwardedFor(
        client_ip,
        proto if proto in ("http", "https") else scheme,
        forwarded_host if forwarded_host and valid_host(forwarded_host) else host,
        tuple(via),
    )


def upstream_request_headers(
    client: AnyHeaders,
    *,
    identity: Mapping[str, str],
    forwarded: ForwardedFor,
    pass_authorization: bool,
    dropped: frozenset[str] = _DROPPED_FROM_REQUEST,
) -> CIMultiDict[str]:
    """`dropped`: dropped_request_headers() of the names claim mappings and the assertion set."""
    drop = connection_tokens(client, dropped)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in client.items():
        norm = normalised_name(name)
        if norm in drop or norm.startswith((IDENTITY_PREFIX, _FORWARDED_PREFIX)):
            continue
        if "_" in name:
            # CGI, WSGI and PHP read `X_Request_Id` as X-Request-Id: a second spelling of a header the gateway
            # sets or drops. Dropped, as nginx does by default (underscores_in_headers off).
            continue
        if norm == "authorization" and not pass_authorization:
            continue
        out.add(name, value)
    out["X-Forwarded-For"] = forwarded.x_forwarded_for()
    out["X-Forwarded-Proto"] = forwarded.proto
    if forwarded.host:
        out["X-Forwarded-Host"] = forwarded.host
    for name, value in identity.items():
        out[name] = value
    return out


def downstream_response_headers(upstream: AnyHeaders) -> list[tuple[str, str]]:
    """Every end-to-end header, repeated ones (Set-Cookie) included, in order; for the answer's own header set."""
    drop = connection_tokens(upstream, _DROPPED_FROM_RESPONSE)
    return [(name, value) for name, value in upstream.items() if normalised_name(name) not in drop]


def header_value(value: str) -> str:
    """A claim value safe for a header: printable ASCII as is, anything else percent-encoded as UTF-8.

    `%` and `,` are encoded too, so that a decoded value is unambiguous and a role can never split X-Auth-Roles.
    """
    if value != value.strip(" "):
        # HTTP drops a value's outer whitespace, which would make ` admin ` read as `admin`: encoded, it stays.
        return quote(value, safe="!#$&'()*+/:;=?@[]^`{|}~\"<>\\")
    if value.isascii() and value.isprintable() and "%" not in value and "," not in value:
        return value
    return quote(value, safe=" !#$&'()*+/:;=?@[]^`{|}~\"<>\\")


# Every header identity_headers() can set, in one place: the forward-auth answer sends each of them.
IDENTITY_HEADERS = ("X-Auth-Subject", "X-Auth-Username", "X-Auth-Roles", "X-Auth-Client-Id", "X-Auth-Org-Id")


def identity_headers(
    *, subject: str | None, username: str | None, roles: Iterable[str], client_id: str | None, org_id: str | None
) -> dict[str, str]:
    """No subject (a token without `sub`): no X-Auth-Subject, and X-Auth-Client-Id names the principal."""
    headers = {"X-Auth-Roles": ",".join(sorted(header_value(r) for r in roles))}
    if subject is not None:
        headers["X-Auth-Subject"] = header_value(subject)
    if username:
        headers["X-Auth-Username"] = header_value(username)
    if client_id:
        headers["X-Auth-Client-Id"] = header_value(client_id)
    if org_id:
        headers["X-Auth-Org-Id"] = header_value(org_id)
    return headers
