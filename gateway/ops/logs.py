"""Log output: one JSON object per line (or readable text), request ids, token fingerprints, the effective config.

Structured fields travel in `extra={"fields": {...}}` so that the JSON and the text formatter render the same data.
Nothing here ever sees a raw token except `token_hash`, which keeps only a short SHA-256 prefix.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import logging
import re
import secrets
import sys
import time
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

import orjson

from gateway.config import Config, LogSettings

# What we accept from a client as a request id: short, and harmless in a header, a log line or a URL.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
FIELDS = "fields"


def request_id(sent: str | None) -> str:
    """The client's X-Request-Id when it is 1-128 characters of [A-Za-z0-9._-], else a fresh random one."""
    if sent is not None and _REQUEST_ID.fullmatch(sent):
        return sent
    return secrets.token_hex(16)  # 128 random bits, as a uuid4 carries, without building a UUID


def token_hash(token: str) -> str:
    """A fingerprint to correlate log lines of one token: the first 12 hex digits of its SHA-256."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


_second: tuple[int, str] = (-1, "")  # (a whole second, its ISO form): one datetime per second, not per line
_milli: tuple[int, str] = (-1, "")  # (a millisecond, its timestamp): lines in the same millisecond share one


def _timestamp(created: float) -> str:
    global _second, _milli
    milli = int(created * 1000)
    last, text = _milli  # read once: another thread may replace it
    if milli == last:
        return text
    whole, fraction = divmod(milli, 1000)
    second, prefix = _second
    if whole != second:
        prefix = datetime.datetime.fromtimestamp(whole, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second = (whole, prefix)
    text = f"{prefix}.{fraction:03d}Z"
    _milli = (milli, text)
    return text


_STARTED = time.time()


class AccessRecord(logging.LogRecord):
    """The record of the one access line per request, made without LogRecord.__init__.

    That constructor looks up, for every record, what no formatter here prints (the caller's file and module,
    thread, process); on the access line it cost about 7 % of the gateway's CPU per request (docs/benchmarks.md).
    Every attribute a LogRecord has is still set, so any handler or formatter can take this one.
    """

    def __init__(self, name: str, msg: str, args: tuple[object, ...], fields: dict[str, Any]) -> None:
        # super().__init__ is skipped on purpose: see above.
        now = time.time()
        self.name = name
        self.msg = msg
        self.args = args
        self.levelname = "INFO"
        self.levelno = logging.INFO
        self.pathname = self.filename = self.module = ""
        self.lineno = 0
        self.funcName = ""
        self.exc_info = None
        self.exc_text = None
        self.stack_info = None
        self.created = now
        self.msecs = (now - int(now)) * 1000
        self.relativeCreated = (now - _STARTED) * 1000
        self.thread = self.threadName = self.processName = self.process = None
        self.__dict__[FIELDS] = fields  # where the formatters (and `extra={FIELDS: ...}`) put them


# The fallback for what orjson refuses (integers beyond 64 bits); built once, as json.dumps with arguments builds
# a new encoder per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)


def _json(line: dict[str, Any]) -> str:
    """Compact JSON: orjson, a tenth of the json module's cost on the one line per request."""
    try:
        return orjson.dumps(line, default=str).decode()
    except orjson.JSONEncodeError:
        return _ENCODER.encode(line)


def _json_line(created: float, level: str, logger: str, message: str, fields: dict[str, Any] | None) -> dict[str, Any]:
    line: dict[str, Any] = {"time": _timestamp(created), "level": level, "logger": logger, "message": message}
    if fields:
        line.update(fields)
    return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = _json_line(
            record.created, record.levelname.lower(), record.name, record.getMessage(), getattr(record, FIELDS, None)
        )
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _json(line)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, FIELDS, None) or {}
        extra = " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in fields.items())
        return f"{text} {extra}" if extra else text


class BatchingStreamHandler(logging.StreamHandler[TextIO]):
    """Lines logged during one turn of the event loop go out in one write and one flush, at the end of that turn.

    A write and a flush per line cost about a tenth of the gateway's CPU under load. Nothing waits longer than
    the current loop turn (or MAX_LINES lines); outside an event loop every line is written at once; serve()
    flushes on the way out, since a forked worker exits without running logging's atexit hook.
    """

    MAX_LINES = 512

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._scheduled_on: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.add_line(line)

    def add_line(self, line: str) -> None:
        """A formatted line into the batch (the caller holds the handler's lock)."""
        self._pending.append(line)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or len(self._pending) >= self.MAX_LINES:
            self.flush()
        elif self._scheduled_on is not loop:
            self._scheduled_on = loop
            loop.call_soon(self.flush)

    def flush(self) -> None:
        self.acquire()
        try:
            self._scheduled_on = None
            lines, self._pending = self._pending, []
            if lines:
                self.stream.write("\n".join(lines) + "\n")
                self.stream.flush()
        except Exception:
            # Like logging's own handlers: a broken log stream must not break serving (nor log about itself
            # through this very handler, in a loop).
            pass
        finally:
            self.release()


_handler: BatchingStreamHandler | None = None


def log_access(logger: logging.Logger, message: str, args: tuple[object, ...], fields: dict[str, Any]) -> None:
    """`logger.info(message, *args, extra={FIELDS: fields})`, for the one access line per request.

    When the line would reach only our handler, with the JSON formatter and no filter on the way, it is formatted
    and batched straight away: the same bytes as through logging's handler chain, without the chain (about 2 of
    ~105 µs per request, docs/benchmarks.md). Anything else (the text format, a handler or filter someone added,
    pytest's capture) gets the ordinary LogRecord.
    """
    handler = _handler
    if handler is not None and not logger.filters and not handler.filters and _only_handler(logger) is handler:
        formatter = handler.formatter
        if type(formatter) is JsonFormatter and logging.INFO >= handler.level:
            line = _json(_json_line(time.time(), "info", logger.name, message % args, fields))
            handler.acquire()
            try:
                handler.add_line(line)
            finally:
                handler.release()
            return
    logger.handle(AccessRecord(logger.name, message, args, fields))


def _only_handler(logger: logging.Logger) -> logging.Handler | None:
    """The one handler a record of `logger` reaches (as Logger.callHandlers walks), or None if not exactly one."""
    found: logging.Handler | None = None
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if found is not None:
                return None
            found = handler
        current = current.parent if current.propagate else None
    return found


def flush_logs() -> None:
    if _handler is not None:
        _handler.flush()


def configure_logging(settings: LogSettings) -> None:
    """Install (or replace, at reload) the one handler on the root logger."""
    global _handler
    root = logging.getLogger()
    if _handler is None:
        _handler = BatchingStreamHandler(sys.stderr)
        root.addHandler(_handler)
    _handler.setFormatter(JsonFormatter() if settings.format == "json" else TextFormatter())
    # Neither formatter prints the thread or the process; don't look them up for every record.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
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
                "websocket": r.websocket,
            }
            for r in config.routes
        ],
        "websocket": {
            "recheck_seconds": config.websocket.recheck,
            "idle_timeout_seconds": config.websocket.idle_timeout,
            "max_message_bytes": config.websocket.max_message_bytes,
            "max_lifetime_seconds": config.websocket.max_lifetime,
        },
        "logging": {"level": config.logging.level, "format": config.logging.format},
        "reload": {"watch": config.reload.watch, "poll_seconds": config.reload.poll_seconds},
        "shutdown_grace_seconds": config.shutdown_grace,
        "forward_auth": None
        if config.forward_auth is None
        else {
            "listen": f"{config.forward_auth.host}:{config.forward_auth.port}",
            "original": config.forward_auth.original,
        },
        "tracing": None
        if config.tracing is None
        else {
            "endpoint": _without_userinfo(config.tracing.endpoint),
            "service_name": config.tracing.service_name,
            "sampling_ratio": config.tracing.sampling_ratio,
        },
    }
