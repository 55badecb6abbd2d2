"""Config: every problem reported at once, with the file and the key path; env interpolation; frozen values."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, load_config, parse_config, read_environment
from gateway.policy.rules import Access

ENV = {"ZITADEL_CLIENT_ID": "id@project", "ZITADEL_CLIENT_SECRET": "secret", "ZITADEL_DOMAIN": "https://z.example"}


def doc(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "idp": {"issuer": "${ZITADEL_DOMAIN}"},
        "upstreams": {"default": "http://127.0.0.1:8081"},
        "routes": [
            {"path": "/api/public", "policy": "public"},
            {"path": "/api/private", "policy": "authenticated"},
            {"path": "/api/private-scoped", "roles": {"any_of": ["read:messages"]}},
        ],
    }
    base.update(overrides)
    return base


def problems(document: Any, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(document, source="c.yaml", env=ENV if env is None else env)
    return info.value.problems


def test_valid_config() -> None:
    config = parse_config(doc(), source="c.yaml", env=ENV)
    assert config.idp is not None
    assert config.idp.issuer == "https://z.example"
    assert config.idp.client_id == "id@project"
    assert [r.policy.access for r in config.routes] == [Access.PUBLIC, Access.AUTHENTICATED, Access.ROLES]
    assert config.routes[2].policy.any_of == frozenset({"read:messages"})
    assert config.routes[0].upstream == "default"
    assert config.listen.port == 5000


def test_config_is_frozen() -> None:
    config = parse_config(doc(), source="c.yaml", env=ENV)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.routes = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.upstreams["x"] = config.upstreams["default"]  # type: ignore[index]


def test_secret_is_not_in_repr() -> None:
    config = parse_config(doc(), source="c.yaml", env=ENV)
    assert "secret" not in repr(config.idp).replace("client_secret", "")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"routes": [{"path": "/a", "roles": {"any_of": "read"}}]}, "c.yaml: routes[0].roles.any_of: expected a list"),
        ({"routes": [{"path": "/a"}]}, "c.yaml: routes[0]: needs a policy"),
        ({"routes": [{"path": "/a", "policy": "open"}]}, "c.yaml: routes[0].policy: expected public or authenticated"),
        ({"routes": [{"path": "a", "policy": "public"}]}, "c.yaml: routes[0].path: 'a': must start with '/'"),
        ({"routes": [{"path": "/a/**/b", "policy": "public"}]}, "c.yaml: routes[0].path:"),
        ({"routes": [{"path": "/a", "policy": "public", "methods": ["G ET"]}]}, "c.yaml: routes[0].methods[0]:"),
        (
            {"routes": [{"path": "/a", "policy": "public", "upstream": "nope"}]},
            "c.yaml: routes[0].upstream: no upstream",
        ),
        ({"routes": [{"path": "/a", "policy": "public", "color": "red"}]}, "c.yaml: routes[0].color: unknown key"),
        ({"routes": [{"path": "/a", "roles": {}}]}, "c.yaml: routes[0].roles: needs a non-empty any_of or all_of"),
        ({"routes": [{"path": "/a", "policy": "public", "roles": {"any_of": ["x"]}}]}, "routes[0].policy: 'public'"),
        ({"routes": []}, "c.yaml: routes: expected a non-empty list"),
        ({"upstreams": {"default": "ftp://x"}}, "c.yaml: upstreams.default.url: expected an http(s) URL"),
        ({"listen": {"port": "http"}}, "c.yaml: listen.port: expected a whole number"),
        ({"listen": {"port": 70000}}, "c.yaml: listen.port: expected a whole number from 1 to 65535"),
        ({"idp": {"issuer": "z.example"}}, "c.yaml: idp.issuer: expected an http(s) URL"),
        ({"idp": {"issuer": "https://z", "client_secret": "x"}}, "c.yaml: idp.client_secret: credentials come from"),
        ({"idp": {"issuer": "https://z", "timeout_seconds": "soon"}}, "c.yaml: idp.timeout_seconds: expected a number"),
        ({"idp": {"issuer": "${NOPE}"}}, "c.yaml: idp.issuer: environment variable NOPE is not set"),
        ({"idp": None}, "c.yaml: idp: is required because a route needs authentication"),
        ({"extra": 1}, "c.yaml: extra: unknown key"),
        (
            {"routes": [{"path": "/a", "policy": "public", "delete_body": "yes"}]},
            "c.yaml: routes[0].delete_body: expected true or false",
        ),
        (
            {"routes": [{"path": "/a", "policy": "public", "methods": ["POST"], "delete_body": True}]},
            "c.yaml: routes[0].delete_body: the route's methods do not include DELETE",
        ),
    ],
)
def test_config_errors_name_file_and_key(change: dict[str, Any], expected: str) -> None:
    found = problems(doc(**change))
    assert any(p.startswith(expected) or expected in p for p in found), found


def test_every_problem_is_reported_at_once() -> None:
    document = doc(
        listen={"port": "x"},
        routes=[{"path": "/a", "roles": {"any_of": "r"}}, {"path": "b", "policy": "public"}],
    )
    found = problems(document)
    assert len(found) == 3
    assert [p.split(": ")[1] for p in found] == ["listen.port", "routes[0].roles.any_of", "routes[1].path"]


def test_missing_credentials_are_named() -> None:
    found = problems(doc(), env={"ZITADEL_DOMAIN": "https://z"})
    assert "c.yaml: idp: ZITADEL_CLIENT_ID is not set in the environment or the .env file" in found
    assert (
        "c.yaml: idp: ZITADEL_CLIENT_SECRET (or ZITADEL_KEY_FILE) is not set in the environment or the .env file"
        in found
    )


def test_seed_names_are_fallbacks() -> None:
    env = {"CLIENT_ID": "seed@p", "CLIENT_SECRET": "s", "ZITADEL_DOMAIN": "https://z"}
    config = parse_config(doc(), source="c.yaml", env=env)
    assert config.idp is not None and config.idp.client_id == "seed@p"


def test_interpolation_defaults_and_escapes() -> None:
    document = doc(listen={"host": "${H:-127.0.0.1}", "port": "${P:-5001}"})
    document["routes"][0]["id"] = "$${literal}"
    config = parse_config(document, source="c.yaml", env={**ENV, "P": "6000"})
    assert config.listen.host == "127.0.0.1"
    assert config.listen.port == 6000
    assert config.routes[0].id == "${literal}"


def test_empty_default_means_unset() -> None:
    config = parse_config(doc(idp={"issuer": "https://z", "project_id": "${PID:-}"}), source="c.yaml", env=ENV)
    assert config.idp is not None and config.idp.project_id is None


def test_public_only_config_needs_no_idp() -> None:
    config = parse_config(
        {"upstreams": {"default": "http://u"}, "routes": [{"path": "/**", "policy": "public"}]}, source="c", env={}
    )
    assert config.idp is None


def test_reuse_after_body_is_off_unless_an_upstream_turns_it_on() -> None:
    document = doc(upstreams={"default": "http://a", "b": {"url": "http://b", "reuse_after_body": True}})
    document["routes"] = [{"path": "/a", "policy": "public"}]
    config = parse_config(document, source="c.yaml", env=ENV)
    assert not config.upstreams["default"].reuse_after_body  # the plain URL form still works, with the default
    assert config.upstreams["b"].reuse_after_body
    bad = doc(upstreams={"default": {"url": "http://a", "reuse_after_body": "sometimes"}})
    assert "c.yaml: upstreams.default.reuse_after_body: expected true or false, got 'sometimes'" in problems(bad)


def test_several_upstreams_need_a_default_or_a_name() -> None:
    document = doc(upstreams={"a": "http://a", "b": "http://b"})
    assert any("routes[0].upstream: is required" in p for p in problems(document))


def test_connect_url_rewrites_and_host_header() -> None:
    config = parse_config(
        doc(idp={"issuer": "http://localhost:8080", "connect_url": "http://zitadel:8080"}), source="c", env=ENV
    )
    assert config.idp is not None
    assert config.idp.connect("http://localhost:8080/oauth/v2/introspect") == "http://zitadel:8080/oauth/v2/introspect"
    assert config.idp.host_header == "localhost:8080"
    assert config.idp.connect("https://elsewhere/x") == "https://elsewhere/x"


def test_load_config_reads_dotenv_beside_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ZITADEL_CLIENT_ID", "ZITADEL_CLIENT_SECRET", "ZITADEL_DOMAIN", "CLIENT_ID", "CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / ".env").write_text(
        'ZITADEL_DOMAIN = "https://from-dotenv.example"\nCLIENT_ID = "x@y"\nCLIENT_SECRET = "z"\n'
    )
    (tmp_path / "config.yaml").write_text(
        "idp: {issuer: '${ZITADEL_DOMAIN}'}\nupstreams: {default: 'http://u'}\n"
        "routes: [{path: /a, policy: authenticated}]\n"
    )
    monkeypatch.setenv("ZITADEL_DOMAIN", "https://from-env.example")  # the real environment wins
    config = load_config(tmp_path / "config.yaml")
    assert config.idp is not None
    assert config.idp.issuer == "https://from-env.example"
    assert config.idp.client_id == "x@y"


def test_read_environment_without_file() -> None:
    assert "PATH" in read_environment(None)


def test_yaml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("routes:\n  - path: /a\n   policy: public\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env=ENV)
    assert info.value.problems[0].startswith(f"{path}: line ")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml", env=ENV)
    assert "cannot read" in info.value.problems[0]


def test_repository_config_is_valid() -> None:
    root = Path(__file__).resolve().parent.parent
    config = load_config(root / "config.yaml", env={**ENV, "UPSTREAM_URL": "http://127.0.0.1:1"})
    ids = [r.id for r in config.routes]
    assert ids[:3] == ["public", "private", "private-scoped"]
    assert config.listen == type(config.listen)(host="0.0.0.0", port=5000)


def test_delete_body_is_off_unless_a_route_says_so() -> None:
    document = doc(routes=[{"path": "/a", "policy": "public", "delete_body": True}, {"path": "/b", "policy": "public"}])
    config = parse_config(document, source="c.yaml", env=ENV)
    assert [route.delete_body for route in config.routes] == [True, False]
