"""Log output: one JSON object per line (or readable text), request ids, token fingerprints, the effective config.

Structured fields travel in `extra={"fields": {...}}` so that the JSON and the text formatter render the same data.
Nothing here ever sees a raw token except `token_hash`, which keeps only a short SHA-256 prefix.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import re
import sys
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .config import Config, LogSettings

# What we accept from a client as a request id: short, and harmless in a header, a log line or a URL.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
FIELDS = "fields"


def request_id(sent: str | None) -> str:
    """The client's X-Request-Id when it is 1-128 characters of [A-Za-z0-9._-], else a fresh random one."""
    if sent is not None and _REQUEST_ID.fullmatch(sent):
        return sent
    return uuid.uuid4().hex


def token_hash(token: str) -> str:
    """A fingerprint to correlate log lines of one token: the first 12 hex digits of its SHA-256."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def _timestamp(record: logging.LogRecord) -> str:
    when = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(getattr(record, FIELDS, None) or {})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, separators=(",", ":"), default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, FIELDS, None) or {}
        extra = " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in fields.items())
        return f"{text} {extra}" if extra else text


_handler: logging.Handler | None = None


def configure_logging(settings: LogSettings) -> None:
    """Install (or replace, at reload) the one handler on the root logger."""
    global _handler
    root = logging.getLogger()
    if _handler is None:
        _handler = logging.StreamHandler(sys.stderr)
        root.addHandler(_handler)
    _handler.setFormatter(JsonFormatter() if settings.format == "json" else TextFormatter())
    root.setLevel(settings.level.upper())


def _without_userinfo(url: str | None) -> str | None:
    if not url:
        return url
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host))


def effective_config(config: Config) -> dict[str, Any]:
    """The config as it will be used, for the startup log: no secret, no credential."""
    idp = config.idp
    return {
        "source": config.source,
        "listen": f"{config.listen.host}:{config.listen.port}",
        "admin": f"{config.admin.host}:{config.admin.port}",
        "idp": None
        if idp is None
        else {
            "issuer": _without_userinfo(idp.issuer),
            "connect_url": _without_userinfo(idp.connect_url),
            "introspection_endpoint": _without_userinfo(idp.introspection_endpoint),
            "project_id": idp.project_id,
            "client_secret": "(set)" if idp.client_secret else "(missing)",
        },
        "upstreams": {name: _without_userinfo(u.url) for name, u in config.upstreams.items()},
        "routes": [
            {
                "id": r.id,
                "path": r.pattern.source,
                "methods": sorted(r.methods) if r.methods is not None else "*",
                "policy": r.policy.describe(),
                "upstream": r.upstream,
            }
            for r in config.routes
        ],
        "logging": {"level": config.logging.level, "format": config.logging.format},
        "reload": {"watch": config.reload.watch, "poll_seconds": config.reload.poll_seconds},
        "shutdown_grace_seconds": config.shutdown_grace,
    }
