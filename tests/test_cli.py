"""`python -m gateway check` and `explain`: pure, no server, no IdP (the issuer below listens nowhere)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.__main__ import main

from .support import ENV, gateway_document

ROUTES: list[dict[str, Any]] = [
    {"id": "public", "path": "/api/public", "policy": "public"},
    {"id": "private", "path": "/api/private", "policy": "authenticated"},
    {"id": "scoped", "path": "/api/private-scoped", "roles": {"any_of": ["read:messages"]}},
    {"id": "docs", "path": "/docs/**", "methods": ["GET"], "policy": "public"},
    {"id": "docs-admin", "path": "/docs/admin", "methods": ["GET"], "policy": "authenticated"},
    {"id": "docs-edit", "path": "/docs/*", "roles": {"all_of": ["editor"]}},
]


def write_config(tmp_path: Path, routes: list[dict[str, Any]] = ROUTES, **top: Any) -> str:
    document = gateway_document(issuer="http://127.0.0.1:9", upstream_url="http://127.0.0.1:8081", routes=routes)
    document.update(top)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in ENV.items()))
    return str(path)


def test_check_prints_the_table_and_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--config", write_config(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("OK, 6 routes (first match wins; anything else is denied with 404)")
    assert out[1].split() == ["#", "path", "methods", "policy", "upstream"]
    assert out[4].split() == ["2", "/api/private-scoped", "*", "roles:", "any", "of", "read:messages", "default"]
    assert out[5].split() == ["3", "/docs/**", "GET,HEAD", "public", "default"]  # GET covers HEAD
    assert out[8:] == [
        (
            "warning: routes[4] (docs-admin) /docs/admin can never match: routes[3] (docs) /docs/** comes first "
            "and covers all its paths and methods"
        ),
        (
            "warning: routes[5] (docs-edit) /docs/* overlaps routes[3] (docs) /docs/** with a different policy: "
            "e.g. GET,HEAD /docs/x gets public (from docs), not roles: all of editor"
        ),
    ]


def test_check_strict_fails_on_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--strict", "--config", write_config(tmp_path)]) == 1
    assert main(["check", "--strict", "--config", write_config(tmp_path, ROUTES[:3])]) == 0
    assert "warning" not in capsys.readouterr().out.split("OK, 3 routes")[1]


def test_check_invalid_config_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--config", write_config(tmp_path, admin={"port": 5000})]) == 1
    assert "gateway.yaml: admin.port: must differ from listen.port (5000)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "lines"),
    [
        (["GET", "/api/public"], ["canonical  /api/public", "decision   allow"]),
        (["GET", "/api/private", "--anonymous"], ["route      #1 private: /api/private methods *, authenticated"]),
        (["GET", "/api/private", "--anonymous"], ["decision   401 no token"]),
        (["GET", "/api/private-scoped"], ["decision   403 missing role read:messages"]),
        (["get", "/api/x/../private-scoped", "--roles", "read:messages,other"], ["decision   allow"]),
        (["GET", "/api/x/../private-scoped", "--roles", "read:messages"], ["canonical  /api/private-scoped"]),
        (
            ["GET", "/api/private-scoped", "--roles", "read:messages"],
            ["forwards   http://127.0.0.1:8081/api/private-scoped"],
        ),
        (["GET", "/api/admin"], ["route      (none)", "decision   404 no route"]),
        (["GET", "/api/%2e%2e/%2e%2e/etc"], ["decision   400 bad path: '..' climbs above the root"]),
        (
            ["PUT", "/docs/admin", "--roles", "editor"],
            ["route      #5 docs-edit: /docs/* methods *, roles: all of editor"],
        ),
        # A rule that lists GET covers HEAD: not the docs-edit rule below it.
        (["HEAD", "/docs/x", "--anonymous"], ["route      #3 docs: /docs/** methods GET,HEAD, public"]),
    ],
)
def test_explain(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], lines: list[str]) -> None:
    assert main(["explain", "--config", write_config(tmp_path), *args]) == 0
    out = capsys.readouterr().out.splitlines()
    for line in lines:
        assert line in out


def test_explain_roles_and_anonymous_are_exclusive(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["explain", "--config", write_config(tmp_path), "GET", "/", "--roles", "a", "--anonymous"])
