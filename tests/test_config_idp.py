"""The `idp` keys about tokens (gateway/config/idp.py): modes, audiences, JWKS refresh, required claims."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import ConfigError, parse_config

from .test_config import ENV, doc


def idp(**keys: Any) -> dict[str, Any]:
    return doc(idp={"issuer": "${ZITADEL_DOMAIN}", **keys})


def problems(document: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(document, source="c.yaml", env=ENV)
    return info.value.problems


def test_defaults_introspect_every_token_and_require_no_optional_claim() -> None:
    config = parse_config(idp(), source="c.yaml", env=ENV)
    assert config.idp is not None
    tokens = config.idp.tokens
    assert (tokens.mode, tokens.local, tokens.required_claims, tokens.jwks_refresh_seconds) == (
        "introspect",
        False,
        (),
        10.0,
    )


def test_required_claims_are_the_optional_members_only() -> None:
    config = parse_config(idp(required_claims=["sub", "iss"]), source="c.yaml", env=ENV)
    assert config.idp is not None and config.idp.tokens.required_claims == ("sub", "iss")
    assert problems(idp(required_claims=["sub", "roles"])) == [
        "c.yaml: idp.required_claims[1]: expected one of sub, iss, exp, client_id, username, scope, got 'roles'"
    ]


@pytest.mark.parametrize("mode", ["jwt", "auto"])
def test_local_verification_needs_an_audience(mode: str) -> None:
    assert problems(idp(access_tokens=mode)) == [
        f"c.yaml: idp.access_tokens: {mode} needs idp.project_id or idp.audience: the audience a JWT must carry"
    ]
    for keys in ({"project_id": "42"}, {"audience": "api"}, {"audience": ["a", "b"]}):
        config = parse_config(idp(access_tokens=mode, **keys), source="c.yaml", env=ENV)
        assert config.idp is not None and config.idp.tokens.mode == mode and config.idp.tokens.local


def test_an_unknown_mode_is_refused() -> None:
    assert problems(idp(access_tokens="both")) == [
        "c.yaml: idp.access_tokens: expected one of introspect, jwt, auto, got 'both'"
    ]


def test_a_route_may_always_introspect() -> None:
    routes = [{"path": "/money", "policy": "authenticated", "introspect": "always"}, {"path": "/x", "policy": "public"}]
    config = parse_config(doc(routes=routes), source="c.yaml", env=ENV)
    assert [r.introspect_always for r in config.routes] == [True, False]
    bad = [{"path": "/money", "policy": "authenticated", "introspect": "sometimes"}]
    assert problems(doc(routes=bad)) == ["c.yaml: routes[0].introspect: expected always, got 'sometimes'"]


def test_jwks_settings() -> None:
    config = parse_config(
        idp(access_tokens="auto", project_id="42", jwks_uri="https://keys.example/jwks/", jwks_refresh_seconds=30),
        source="c.yaml",
        env=ENV,
    )
    assert config.idp is not None
    assert (config.idp.tokens.jwks_uri, config.idp.tokens.jwks_refresh_seconds) == ("https://keys.example/jwks", 30.0)
    assert problems(idp(jwks_refresh_seconds=-1)) == [
        "c.yaml: idp.jwks_refresh_seconds: expected a number >= 0, got -1"
    ]
