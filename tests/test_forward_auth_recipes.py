"""The recipes that cannot run here (Traefik, Envoy: not packaged for Debian 12) checked against their documented
contracts, and every recipe against the gateway's own header set. nginx and Caddy also run for real
(tests/test_forward_auth_ingress.py)."""

from __future__ import annotations

import re
from typing import Any

import yaml

from bench.recipes import RECIPES
from gateway.forward.headers import IDENTITY_HEADERS
from gateway.forward_auth import HOST_HEADER, METHOD_HEADER, URI_HEADER


def _load(name: str) -> Any:
    return yaml.safe_load((RECIPES / name).read_text(encoding="utf-8"))


def test_traefik_copies_every_identity_header_and_never_trusts_a_clients_forwarded_headers() -> None:
    middleware = _load("traefik.yml")["http"]["middlewares"]["zitadel-gateway"]["forwardAuth"]
    # Traefik's forwardAuth sends X-Forwarded-Method/-Uri/-Host/-Proto itself; with trustForwardHeader a client's
    # own X-Forwarded-Uri would be relayed, and the client would choose which request is authorised.
    assert middleware["trustForwardHeader"] is False
    assert middleware["authResponseHeaders"] == list(IDENTITY_HEADERS)
    assert middleware["address"] == "http://127.0.0.1:9092/"


def _patterns(node: dict[str, Any]) -> list[str]:
    return [p["exact"] for p in node["patterns"]]


def test_envoy_copies_every_identity_header_and_fails_closed() -> None:
    listener = _load("envoy.yaml")["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    ext_authz = manager["http_filters"][0]["typed_config"]
    assert ext_authz["@type"].endswith("ext_authz.v3.ExtAuthz")
    assert ext_authz["failure_mode_allow"] is False  # the gateway unreachable: refuse, never pass
    service = ext_authz["http_service"]
    assert "path_prefix" not in service  # it would be prepended to the path the gateway decides on
    response = service["authorization_response"]
    assert _patterns(response["allowed_upstream_headers"]) == [h.lower() for h in IDENTITY_HEADERS]
    assert {"www-authenticate", "retry-after", "content-type"} <= set(_patterns(response["allowed_client_headers"]))
    # Envoy forwards the path it checked: normalised, and encoded slashes refused.
    assert manager["normalize_path"] is True and manager["merge_slashes"] is True
    assert "original: request" in (RECIPES / "envoy.yaml").read_text()


def test_caddy_copies_every_identity_header() -> None:
    text = (RECIPES / "Caddyfile").read_text()
    copied = re.search(r"^\s+copy_headers (.+)$", text, re.MULTILINE)
    assert copied is not None
    assert copied.group(1).split() == list(IDENTITY_HEADERS)


def test_nginx_recipes_copy_every_identity_header_and_send_the_original_request() -> None:
    for name in ("nginx.conf", "nginx-cached.conf"):
        text = (RECIPES / name).read_text()
        for header in IDENTITY_HEADERS:
            variable = "$upstream_http_" + header.lower().replace("-", "_")
            assert re.search(rf"auth_request_set \$(\w+) {re.escape(variable)};", text), (name, header)
            assert re.search(rf"proxy_set_header {header} \$\w+;", text), (name, header)
        for header, value in (
            (METHOD_HEADER, "$request_method"),
            (URI_HEADER, "$request_uri"),
            (HOST_HEADER, "$http_host"),
        ):
            assert f"proxy_set_header {header} {value};" in text, (name, header)
        assert "proxy_pass_request_body off;" in text
