"""The security settings are validated like every other key: each problem under its key path."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from gateway.config import ConfigError, Limits, parse_config
from tests.support import ENV, gateway_document


def _parse(**top: Any) -> Any:
    document = gateway_document(issuer="https://z.example", upstream_url="http://u.example")
    document.update(top)
    return parse_config(document, source="t.yaml", env=ENV)


def test_defaults() -> None:
    config = _parse()
    assert config.limits == Limits()
    assert config.trusted_proxies == ()
    assert all(r.cors is None and not r.allow_query_token and r.max_body_bytes is None for r in config.routes)


def test_security_keys_are_read() -> None:
    config = _parse(
        trusted_proxies=["10.0.0.0/8", "::1", "192.168.1.7"],
        limits={"max_body_bytes": 100, "max_connections": 7, "keepalive_timeout_seconds": 5},
        routes=[
            {
                "path": "/x",
                "policy": "authenticated",
                "allow_query_token": True,
                "max_body_bytes": 0,
                "cors": {"allowed_origins": ["https://a.example"], "allowed_methods": ["get"], "max_age_seconds": 5},
            }
        ],
    )
    assert config.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("192.168.1.7/32"),
    )
    assert (config.limits.max_body_bytes, config.limits.max_connections) == (100, 7)
    route = config.routes[0]
    assert route.allow_query_token and route.max_body_bytes == 0
    assert route.cors is not None and route.cors.methods == frozenset({"GET"})
    assert route.cors.headers == frozenset({"authorization"})


@pytest.mark.parametrize(
    ("top", "problem"),
    [
        ({"trusted_proxies": ["10.0.0.0/33"]}, "t.yaml: trusted_proxies[0]: '10.0.0.0/33' is not an IP address"),
        ({"trusted_proxies": "10.0.0.0/8"}, "t.yaml: trusted_proxies: expected a list"),
        ({"routes": [{"path": "/x", "policy": "public", "max_body_bytes": -5}]}, "t.yaml: routes[0].max_body_bytes"),
        ({"routes": [{"path": "/x", "policy": "public", "allow_query_token": "yes"}]}, "routes[0].allow_query_token"),
        ({"routes": [{"path": "/x", "policy": "public", "cors": {}}]}, "routes[0].cors.allowed_origins: needs"),
        (
            {"routes": [{"path": "/x", "policy": "public", "cors": {"allowed_origins": ["app.example"]}}]},
            "routes[0].cors.allowed_origins[0]",
        ),
        (
            {"routes": [{"path": "/x", "policy": "public", "cors": {"allowed_origins": ["*"], "credentials": 1}}]},
            "routes[0].cors.credentials: unknown key",
        ),
    ],
)
def test_bad_security_settings(top: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        _parse(**top)
    assert any(problem in p for p in err.value.problems), err.value.problems


def test_repository_config_states_the_defaults() -> None:
    from pathlib import Path

    from gateway.config import load_config

    env = {**ENV, "ZITADEL_DOMAIN": "https://z.example"}
    config = load_config(Path(__file__).resolve().parents[2] / "config.yaml", env=env)
    assert config.limits == Limits()
    assert config.trusted_proxies == ()
