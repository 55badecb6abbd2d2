"""Config sections for operations (admin, logging, reload, grace) and the pure log helpers."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from gateway.config import Admin, ConfigError, LogSettings, ReloadSettings, parse_config
from gateway.ops.logs import (
    AccessRecord,
    JsonFormatter,
    TextFormatter,
    _timestamp,
    effective_config,
    request_id,
    token_hash,
)

from .support import CLIENT_SECRET, ENV, gateway_document


def document(**top: Any) -> dict[str, Any]:
    doc = gateway_document(issuer="http://127.0.0.1:1", upstream_url="http://127.0.0.1:2")
    doc.update(top)
    return doc


def problems(**top: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(document(**top), source="g.yaml", env=ENV)
    return info.value.problems


def test_defaults() -> None:
    config = parse_config(document(), source="g.yaml", env=ENV)
    assert config.admin == Admin("127.0.0.1", 9091)
    assert config.logging == LogSettings("info", "json")
    assert config.reload == ReloadSettings(True, 1.0)
    assert config.shutdown_grace == 30.0


def test_sections_are_read() -> None:
    config = parse_config(
        document(
            admin={"host": "0.0.0.0", "port": "9100"},
            logging={"level": "DEBUG", "format": "text"},
            reload={"watch": False, "poll_seconds": 0.2},
            shutdown_grace_seconds=5,
        ),
        source="g.yaml",
        env=ENV,
    )
    assert config.admin == Admin("0.0.0.0", 9100)
    assert config.logging == LogSettings("debug", "text")
    assert config.reload == ReloadSettings(False, 0.2)
    assert config.shutdown_grace == 5.0


@pytest.mark.parametrize(
    ("top", "problem"),
    [
        ({"admin": {"port": 5000}}, "g.yaml: admin.port: must differ from listen.port (5000)"),
        ({"admin": {"port": 0}}, "g.yaml: admin.port: expected a whole number from 1 to 65535, got 0"),
        ({"admin": {"bind": "x"}}, "g.yaml: admin.bind: unknown key"),
        ({"logging": {"format": "xml"}}, "g.yaml: logging.format: expected one of json, text, got 'xml'"),
        ({"logging": {"level": "loud"}}, "g.yaml: logging.level: expected one of debug, info, warning, error"),
        ({"reload": {"poll_seconds": 0}}, "g.yaml: reload.poll_seconds: expected a number >= 0.05"),
        ({"shutdown_grace_seconds": -1}, "g.yaml: shutdown_grace_seconds: expected a number >= 0"),
        ({"workerz": 2}, "g.yaml: workerz: unknown key"),
    ],
)
def test_invalid_sections(top: dict[str, Any], problem: str) -> None:
    assert any(p.startswith(problem) for p in problems(**top)), problems(**top)


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("abc-123_X.y", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("", False),
        ("has space", False),
        ("inject\r\nx: y", False),
        ("ü", False),
        (None, False),
    ],
)
def test_request_id(sent: str | None, kept: bool) -> None:
    got = request_id(sent)
    assert (got == sent) is kept
    assert 1 <= len(got) <= 128


def test_token_hash_is_short_and_stable() -> None:
    assert token_hash("demo-reader-token") == token_hash("demo-reader-token")
    assert len(token_hash("demo-reader-token")) == 12
    assert "demo" not in token_hash("demo-reader-token")


def test_effective_config_has_no_secret() -> None:
    doc = document()
    doc["idp"]["connect_url"] = "http://user:pw@127.0.0.1:3"
    config = parse_config(doc, source="g.yaml", env=ENV)
    rendered = json.dumps(effective_config(config))
    assert CLIENT_SECRET not in rendered
    assert "pw@" not in rendered  # credentials in a URL are dropped too
    assert effective_config(config)["idp"]["connect_url"] == "http://127.0.0.1:3"
    assert effective_config(config)["upstreams"] == {"default": "http://127.0.0.1:2"}
    assert effective_config(config)["admin"] == "127.0.0.1:9091"
    assert effective_config(config)["forward_auth"] is None


def test_effective_config_says_where_forward_auth_listens() -> None:
    doc = document()
    doc["forward_auth"] = {"host": "127.0.0.1", "port": 9092, "original": "request"}
    shown = effective_config(parse_config(doc, source="g.yaml", env=ENV))["forward_auth"]
    assert shown == {"listen": "127.0.0.1:9092", "original": "request"}


@pytest.mark.parametrize(
    "url", ["http://user:pw@127.0.0.1:2", "http://127.0.0.1:2/base?x=1", "http://127.0.0.1:2/#f", "http://:pw@h"]
)
def test_upstream_url_is_scheme_host_port_and_path_only(url: str) -> None:
    doc = document()
    doc["upstreams"]["default"]["url"] = url
    with pytest.raises(ConfigError) as caught:
        parse_config(doc, source="g.yaml", env=ENV)
    assert "g.yaml: upstreams.default.url: expected scheme://host[:port][/base-path]" in str(caught.value)


def _record(fields: dict[str, Any] | None) -> logging.LogRecord:
    record = logging.LogRecord("gateway.access", logging.INFO, __file__, 1, "GET %s", ("/x",), None)
    if fields is not None:
        record.fields = fields
    return record


def test_formatters() -> None:
    line = json.loads(JsonFormatter().format(_record({"status": 200, "route": "r"})))
    assert line["message"] == "GET /x" and line["status"] == 200 and line["route"] == "r"
    assert line["level"] == "info" and line["logger"] == "gateway.access" and line["time"].endswith("Z")
    assert TextFormatter().format(_record({"status": 200})).endswith("GET /x status=200")
    assert json.loads(JsonFormatter().format(_record(None)))["message"] == "GET /x"


def test_access_record_renders_like_a_log_record() -> None:
    fields = {"status": 200, "route": "r", "subject": "søren"}
    fast = AccessRecord("gateway.access", "GET %s", ("/x",), fields)
    slow = _record(fields)
    fast.created = slow.created = 1_800_000_000.25  # the one field the two take from the clock
    assert JsonFormatter().format(fast) == JsonFormatter().format(slow)
    assert TextFormatter().format(fast).split(" ", 2)[2] == TextFormatter().format(slow).split(" ", 2)[2]
    # Every attribute logging's own formatter may ask for exists, so any handler a user adds can take it.
    everything = " ".join(f"%({name})s" for name in vars(slow) if name not in ("fields", "exc_info", "args", "msg"))
    assert logging.Formatter(everything).format(fast)
    assert logging.Formatter("%(taskName)s", defaults={"taskName": "-"}).format(fast) == "-"


def test_json_lines_take_what_orjson_refuses() -> None:
    line = json.loads(JsonFormatter().format(_record({"big": 2**70, "other": ValueError("x")})))
    assert line["big"] == 2**70 and line["other"] == "x"  # what orjson cannot encode, str() of it


def test_timestamps_are_utc_milliseconds_whatever_was_formatted_before() -> None:
    # One string per millisecond is kept: the next line in the same millisecond gets it, any other a fresh one.
    moments = [1_800_000_000.25, 1_800_000_000.2509, 1_800_000_000.251, 1_800_000_001.0005, 1_700_000_000.25]
    assert [_timestamp(m) for m in moments] == [
        "2027-01-15T08:00:00.250Z",
        "2027-01-15T08:00:00.250Z",
        "2027-01-15T08:00:00.251Z",
        "2027-01-15T08:00:01.000Z",
        "2023-11-14T22:13:20.250Z",
    ]
