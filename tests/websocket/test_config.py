"""The `websocket:` section and the route key `websocket: true`: defaults, checks naming file and key, `explain`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.__main__ import main
from gateway.config import ConfigError, WebSocketSettings, parse_config
from gateway.ops.logs import effective_config

from ..support import ENV, gateway_document

ROUTES: list[dict[str, Any]] = [
    {"id": "live", "path": "/live/**", "policy": "authenticated", "websocket": True},
    {"id": "api", "path": "/api/**", "policy": "authenticated"},
]


def document(routes: list[dict[str, Any]] = ROUTES, **top: Any) -> dict[str, Any]:
    doc = gateway_document(issuer="https://z.example", upstream_url="http://u.example", routes=routes)
    doc.update(top)
    return doc


def test_defaults_and_the_route_key() -> None:
    config = parse_config(document(), source="t.yaml", env=ENV)
    assert config.websocket == WebSocketSettings(
        recheck=60.0, idle_timeout=300.0, max_message_bytes=1 << 20, max_lifetime=0.0
    )
    assert [r.websocket for r in config.routes] == [True, False]


def test_the_section_is_read() -> None:
    section = {
        "recheck_seconds": 5,
        "idle_timeout_seconds": 30,
        "max_message_bytes": 4096,
        "max_lifetime_seconds": 3600,
    }
    config = parse_config(document(websocket=section), source="t.yaml", env=ENV)
    assert config.websocket == WebSocketSettings(5.0, 30.0, 4096, 3600.0)
    started = effective_config(config)  # what the start-up line says
    assert started["websocket"] == section
    assert [r["websocket"] for r in started["routes"]] == [True, False]


@pytest.mark.parametrize(
    ("top", "routes", "problem"),
    [
        ({"websocket": {"recheck_seconds": 0}}, ROUTES, "t.yaml: websocket.recheck_seconds: expected a number >= 0.05"),
        ({"websocket": {"max_message_bytes": 0}}, ROUTES, "t.yaml: websocket.max_message_bytes: expected a whole"),
        ({"websocket": {"idle_timeout_seconds": -1}}, ROUTES, "t.yaml: websocket.idle_timeout_seconds: expected"),
        ({"websocket": {"recheck": 5}}, ROUTES, "t.yaml: websocket.recheck: unknown key"),
        ({}, [{"path": "/a", "policy": "public", "websocket": "maybe"}], "t.yaml: routes[0].websocket: expected true"),
        (
            {},
            [{"path": "/a", "policy": "public", "methods": ["POST"], "websocket": True}],
            "t.yaml: routes[0].websocket: a WebSocket opens with a GET",
        ),
    ],
)
def test_problems_name_the_file_and_key(top: dict[str, Any], routes: list[dict[str, Any]], problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(document(routes, **top), source="t.yaml", env=ENV)
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems


def test_explain_says_whether_a_route_takes_websockets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(document()))
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in ENV.items()))
    assert main(["explain", "--config", str(path), "GET", "/live/feed", "--roles", "x"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "websocket  yes: a GET with Upgrade: websocket is relayed as a WebSocket, on the same decision" in out
    assert "decision   allow" in out
    assert main(["explain", "--config", str(path), "GET", "/api/x", "--anonymous"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert not any(line.startswith("websocket") for line in out)  # said only for routes that take them
