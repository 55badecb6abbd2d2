"""Identity headers: nothing a client sends can forge, remove or outrank what the gateway injects."""

from __future__ import annotations

import ipaddress

import pytest
from multidict import CIMultiDict

from gateway.forward.headers import forwarded_for, valid_host
from tests.conftest import GatewayFactory
from tests.support import RecordingUpstream

from .raw import request, send

FORGED = (
    "X-Auth-Subject: admin",
    "x-auth-roles: admin",
    "X_Auth_Subject: admin",
    "X-AUTH-ORG-ID: 1",
    "x_auth_username: root",
    "X-Auth-Anything-New: 1",
)


def _sent(upstream: RecordingUpstream, name: str) -> list[str]:
    return [v for k, v in upstream.last.headers if k.lower().replace("_", "-") == name]


def _identity(upstream: RecordingUpstream) -> list[tuple[str, str]]:
    return [(k, v) for k, v in upstream.last.headers if k.lower().replace("_", "-").startswith("x-auth-")]


async def test_client_identity_headers_never_reach_a_public_route(
    make_gateway: GatewayFactory, upstream: RecordingUpstream
) -> None:
    gateway = await make_gateway()
    answer = await send(gateway.port, request("/open/x", *FORGED))
    assert answer.status == 200
    assert _identity(upstream) == []


async def test_on_a_protected_route_only_ours_arrive(make_gateway: GatewayFactory, upstream: RecordingUpstream) -> None:
    gateway = await make_gateway()
    answer = await send(gateway.port, request("/api/whoami", "Authorization: Bearer demo-reader-token", *FORGED))
    assert answer.status == 200
    names = sorted(k.lower() for k, _ in _identity(upstream))
    assert names == sorted(set(names))  # one of each, none repeated
    assert _sent(upstream, "x-auth-subject") != ["admin"]
    assert "admin" not in _sent(upstream, "x-auth-roles")[0].split(",")
    assert _sent(upstream, "x-auth-anything-new") == []


@pytest.mark.parametrize(
    "connection", ["X-Auth-Subject", "x-auth-subject, x-auth-roles", "close, X_Auth_Subject", "X-Forwarded-For"]
)
async def test_connection_header_cannot_remove_what_the_gateway_injects(
    make_gateway: GatewayFactory, upstream: RecordingUpstream, connection: str
) -> None:
    gateway = await make_gateway()
    resp = await gateway.get(
        "/api/whoami", headers={"Authorization": "Bearer demo-reader-token", "Connection": connection}
    )
    assert resp.status == 200
    assert len(_sent(upstream, "x-auth-subject")) == 1
    assert len(_sent(upstream, "x-auth-roles")) == 1
    assert _sent(upstream, "x-forwarded-for") == ["127.0.0.1"]
    assert _sent(upstream, "connection") == []


SPOOF = (
    "X-Forwarded-For: 6.6.6.6",
    "X-Forwarded-For: 7.7.7.7",
    "X_Forwarded_For: 8.8.8.8",
    "X-Forwarded-Proto: https",
    "X-Forwarded-Host: evil.test",
    "Forwarded: for=6.6.6.6;proto=https",
    "X-Real-IP: 6.6.6.6",
)


async def test_untrusted_peer_forwarding_headers_are_replaced(
    make_gateway: GatewayFactory, upstream: RecordingUpstream
) -> None:
    gateway = await make_gateway(trusted_proxies=["10.0.0.0/8"])  # the test client (127.0.0.1) is not in it
    answer = await send(gateway.port, request("/open/x", *SPOOF))
    assert answer.status == 200
    assert _sent(upstream, "x-forwarded-for") == ["127.0.0.1"]
    assert _sent(upstream, "x-forwarded-proto") == ["http"]
    assert _sent(upstream, "x-forwarded-host") == ["gateway.test"]
    assert _sent(upstream, "forwarded") == []
    assert _sent(upstream, "x-real-ip") == []


async def test_trusted_peer_is_believed_right_to_left(
    make_gateway: GatewayFactory, upstream: RecordingUpstream
) -> None:
    gateway = await make_gateway(trusted_proxies=["127.0.0.1/32", "10.0.0.0/8"])
    answer = await send(
        gateway.port,
        request(
            "/open/x",
            "X-Forwarded-For: 6.6.6.6, 203.0.113.9",  # the left part is what the client claimed
            "X-Forwarded-For: 10.1.2.3",
            "X-Forwarded-Proto: https",
            "X-Forwarded-Host: api.example",
            "Forwarded: for=6.6.6.6",
        ),
    )
    assert answer.status == 200
    assert _sent(upstream, "x-forwarded-for") == ["203.0.113.9, 10.1.2.3, 127.0.0.1"]
    assert _sent(upstream, "x-forwarded-proto") == ["https"]
    assert _sent(upstream, "x-forwarded-host") == ["api.example"]
    assert _sent(upstream, "forwarded") == []


def _net(*cidrs: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(c) for c in cidrs]


@pytest.mark.parametrize(
    ("peer", "xff", "trusted", "client", "chain"),
    [
        ("1.2.3.4", ["6.6.6.6"], ["10.0.0.0/8"], "1.2.3.4", "1.2.3.4"),  # untrusted peer: itself
        ("10.0.0.1", [], ["10.0.0.0/8"], "10.0.0.1", "10.0.0.1"),  # trusted but says nothing
        ("10.0.0.1", ["6.6.6.6, 1.2.3.4"], ["10.0.0.0/8"], "1.2.3.4", "1.2.3.4, 10.0.0.1"),
        ("10.0.0.1", ["1.2.3.4, 10.0.0.2"], ["10.0.0.0/8"], "1.2.3.4", "1.2.3.4, 10.0.0.2, 10.0.0.1"),
        ("10.0.0.1", ["10.0.0.3, 10.0.0.2"], ["10.0.0.0/8"], "10.0.0.3", "10.0.0.3, 10.0.0.2, 10.0.0.1"),
        ("10.0.0.1", ["1.2.3.4, garbage"], ["10.0.0.0/8"], "10.0.0.1", "10.0.0.1"),  # stop at garbage
        ("::1", ["2001:db8::7"], ["::1/128"], "2001:db8::7", "2001:db8::7, ::1"),
        ("::ffff:10.0.0.1", ["1.2.3.4"], ["10.0.0.0/8"], "1.2.3.4", "1.2.3.4, ::ffff:10.0.0.1"),  # dual stack
        ("10.0.0.1", ["[2001:db8::9]"], ["10.0.0.0/8"], "[2001:db8::9]", "[2001:db8::9], 10.0.0.1"),
    ],
)
def test_forwarded_for_parses_right_to_left(
    peer: str, xff: list[str], trusted: list[str], client: str, chain: str
) -> None:
    headers: CIMultiDict[str] = CIMultiDict()
    for value in xff:
        headers.add("X-Forwarded-For", value)
    result = forwarded_for(peer, "http", "h", headers, _net(*trusted))
    assert result.client_ip == client
    assert result.x_forwarded_for() == chain


def test_untrusted_peer_proto_and_host_are_ours() -> None:
    headers = CIMultiDict({"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil"})
    result = forwarded_for("1.2.3.4", "http", "h", headers, _net("10.0.0.0/8"))
    assert (result.proto, result.host) == ("http", "h")


def test_trusted_peer_proto_must_be_http_or_https() -> None:
    headers = CIMultiDict({"X-Forwarded-Proto": "javascript"})
    assert forwarded_for("10.0.0.1", "http", "h", headers, _net("10.0.0.0/8")).proto == "http"


@pytest.mark.parametrize("host", ["a b", "a/b", "evil.test@good.test", "good.test/..", "x:y:z", "h\tx", ""])
async def test_invalid_host_is_400(make_gateway: GatewayFactory, upstream: RecordingUpstream, host: str) -> None:
    gateway = await make_gateway()
    raw = f"GET /open/x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    answer = await send(gateway.port, raw)
    assert answer.status == 400
    assert upstream.seen == []


@pytest.mark.parametrize(
    "host", ["api.example", "api.example:8443", "127.0.0.1:5000", "[::1]:5000", "xn--bcher-kva.example"]
)
def test_valid_hosts(host: str) -> None:
    assert valid_host(host)


def test_trusted_peer_cannot_pass_an_invalid_forwarded_host() -> None:
    headers = CIMultiDict({"X-Forwarded-Host": "evil.test/reset?x="})
    assert forwarded_for("10.0.0.1", "http", "h", headers, _net("10.0.0.0/8")).host == "h"
