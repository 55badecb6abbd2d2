"""The top-level sections other than routes, each validated into its frozen value."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from gateway.config.checker import Checker, join_key
from gateway.config.idp import TOKEN_KEYS, token_settings
from gateway.config.model import (
    FORWARD_AUTH_ORIGINALS,
    LOG_FORMATS,
    LOG_LEVELS,
    Admin,
    CacheConfig,
    ClientKey,
    ForwardAuth,
    IdPConfig,
    IPNetwork,
    Limits,
    Listen,
    LogSettings,
    ReloadSettings,
    TracingSettings,
    Upstream,
    WebSocketSettings,
)

TOP_KEYS = frozenset(
    {
        "listen",
        "idp",
        "upstreams",
        "routes",
        "admin",
        "logging",
        "reload",
        "shutdown_grace_seconds",
        "limits",
        "trusted_proxies",
        "cache",
        "workers",
        "forward_auth",
        "websocket",
        "tracing",
        "identity",
    }
)


_WEBSOCKET = frozenset({"recheck_seconds", "idle_timeout_seconds", "max_message_bytes", "max_lifetime_seconds"})


_TRACING = frozenset({"enabled", "endpoint", "service_name", "sampling_ratio"})


_LISTEN = frozenset({"host", "port"})


_FORWARD_AUTH = frozenset({"host", "port", "original"})


_LOGGING = frozenset({"level", "format"})


_RELOAD = frozenset({"watch", "poll_seconds"})


_IDP = frozenset(
    {
        "issuer",
        "introspection_endpoint",
        "connect_url",
        "project_id",
        "clock_leeway_seconds",
        "timeout_seconds",
        "discovery_attempts",
        "max_concurrent_calls",
        "max_concurrent_calls_per_client",
        "retry_on_connection_error",
        "breaker_failures",
        "breaker_cooldown_seconds",
    }
    | TOKEN_KEYS
)


_CACHE = frozenset({"backend", "ttl_seconds", "negative_ttl_seconds", "max_entries", "url", "redis_timeout_seconds"})


_UPSTREAM = frozenset({"url", "connect_timeout_seconds", "read_timeout_seconds", "reuse_after_body"})


_LIMITS = frozenset(
    {
        "max_request_line_bytes",
        "max_header_bytes",
        "max_headers",
        "max_head_bytes",
        "max_token_bytes",
        "max_body_bytes",
        "keepalive_timeout_seconds",
        "body_timeout_seconds",
        "max_connections",
        "backlog",
    }
)


MAX_BYTES = 1 << 40


_SECRET_KEYS = frozenset({"client_secret", "secret", "client_id"})


def parse_listen(c: Checker, node: Any) -> Listen:
    m = c.mapping(node, "listen", _LISTEN)
    return Listen(
        host=c.string(m, "host", "listen", "0.0.0.0") or "0.0.0.0",
        port=c.integer(m, "port", "listen", 5000, 1, 65535),
    )


def parse_admin(c: Checker, node: Any, listen: Listen) -> Admin:
    m = c.mapping(node, "admin", _LISTEN)
    admin = Admin(
        host=c.string(m, "host", "admin", "127.0.0.1") or "127.0.0.1",
        port=c.integer(m, "port", "admin", 9091, 1, 65535),
    )
    if admin.port == listen.port:
        # Health and metrics must never be reachable through the proxy's address.
        c.fail("admin.port", f"must differ from listen.port ({listen.port})")
    return admin


def parse_forward_auth(c: Checker, node: Any, listen: Listen, admin: Admin) -> ForwardAuth | None:
    """Off when the section is absent or its port is empty (the shipped config: `${FORWARD_AUTH_PORT:-}`)."""
    if node is None:
        return None
    m = c.mapping(node, "forward_auth", _FORWARD_AUTH)
    if m.get("port") in (None, ""):
        return None
    forward_auth = ForwardAuth(
        host=c.string(m, "host", "forward_auth", "127.0.0.1") or "127.0.0.1",
        port=c.integer(m, "port", "forward_auth", 9092, 1, 65535),
        original=_one_of(c, m, "original", "forward_auth", FORWARD_AUTH_ORIGINALS, "headers"),
    )
    for other, port in (("listen.port", listen.port), ("admin.port", admin.port)):
        if forward_auth.port == port:
            c.fail("forward_auth.port", f"must differ from {other} ({port})")
    return forward_auth


def parse_tracing(c: Checker, node: Any) -> TracingSettings | None:
    """Off unless `enabled`. Unset keys come from the standard variables (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else
    OTEL_EXPORTER_OTLP_ENDPOINT + /v1/traces; OTEL_SERVICE_NAME; OTEL_TRACES_SAMPLER_ARG with a ratio sampler);
    OTEL_SDK_DISABLED=true turns tracing off. The SDK reads the others itself (OTEL_EXPORTER_OTLP_HEADERS, ...)."""
    m = c.mapping(node, "tracing", _TRACING)
    env = c.env
    if not c.boolean(m, "enabled", "tracing", False) or env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    default = TracingSettings()
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or (
        env["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + "/v1/traces"
        if env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        else default.endpoint
    )
    ratio = default.sampling_ratio
    if env.get("OTEL_TRACES_SAMPLER", "") in ("traceidratio", "parentbased_traceidratio"):
        ratio = c.number({"ratio": env.get("OTEL_TRACES_SAMPLER_ARG", "1")}, "ratio", "OTEL_TRACES_SAMPLER_ARG", 1.0)
    ratio = c.number(m, "sampling_ratio", "tracing", ratio)
    if ratio > 1:
        c.fail("tracing.sampling_ratio", f"expected a number from 0 to 1, got {ratio:g}")
    return TracingSettings(
        endpoint=c.url(c.string(m, "endpoint", "tracing", endpoint), "tracing.endpoint") or endpoint,
        service_name=c.string(m, "service_name", "tracing") or env.get("OTEL_SERVICE_NAME") or default.service_name,
        sampling_ratio=min(ratio, 1.0),
    )


def _one_of(c: Checker, m: dict[str, Any], key: str, path: str, choices: tuple[str, ...], default: str) -> str:
    value = (c.string(m, key, path, default) or default).lower()
    if value not in choices:
        c.fail(join_key(path, key), f"expected one of {', '.join(choices)}, got {value!r}")
        return default
    return value


def parse_logging(c: Checker, node: Any) -> LogSettings:
    m = c.mapping(node, "logging", _LOGGING)
    return LogSettings(
        level=_one_of(c, m, "level", "logging", LOG_LEVELS, "info"),
        format=_one_of(c, m, "format", "logging", LOG_FORMATS, "json"),
    )


def parse_reload(c: Checker, node: Any) -> ReloadSettings:
    m = c.mapping(node, "reload", _RELOAD)
    return ReloadSettings(
        watch=c.boolean(m, "watch", "reload", True),
        poll_seconds=c.number(m, "poll_seconds", "reload", 1.0, minimum=0.05),
    )


def parse_idp(c: Checker, node: Any, needed: bool) -> IdPConfig | None:
    if node is None and not needed:
        return None
    if isinstance(node, dict):
        for key in _SECRET_KEYS & node.keys():
            c.fail(
                f"idp.{key}",
                "credentials come from the environment (ZITADEL_CLIENT_ID, ZITADEL_CLIENT_SECRET)",
            )
        node = {k: v for k, v in node.items() if k not in _SECRET_KEYS}
    m = c.mapping(node, "idp", _IDP)
    if node is None:
        c.fail("idp", "is required because a route needs authentication")
    issuer = c.url(c.required_string(m, "issuer", "idp") or None, "idp.issuer")
    client_key = _client_key(c, c.env.get("ZITADEL_KEY_FILE"))
    client_id = c.env.get("ZITADEL_CLIENT_ID") or c.env.get("CLIENT_ID") or (client_key.client_id if client_key else "")
    secret = "" if client_key else c.env.get("ZITADEL_CLIENT_SECRET") or c.env.get("CLIENT_SECRET") or ""
    if not client_id:
        c.fail("idp", "ZITADEL_CLIENT_ID is not set in the environment or the .env file")
    if not secret and client_key is None:
        c.fail("idp", "ZITADEL_CLIENT_SECRET (or ZITADEL_KEY_FILE) is not set in the environment or the .env file")
    if client_key is not None and client_id != client_key.client_id:
        c.fail("idp", "ZITADEL_CLIENT_ID differs from the clientId in ZITADEL_KEY_FILE")
    project_id = c.string(m, "project_id", "idp")
    return IdPConfig(
        issuer=issuer or "",
        tokens=token_settings(c, m, project_id),
        client_id=client_id,
        client_secret=secret,
        client_key=client_key,
        max_concurrent_calls=c.integer(m, "max_concurrent_calls", "idp", 64, 1, 10_000),
        max_concurrent_calls_per_client=c.integer(m, "max_concurrent_calls_per_client", "idp", 16, 0, 10_000),
        retry_on_connection_error=c.boolean(m, "retry_on_connection_error", "idp", True),
        breaker_failures=c.integer(m, "breaker_failures", "idp", 5, 0, 1_000_000),
        breaker_cooldown=c.number(m, "breaker_cooldown_seconds", "idp", 5.0),
        introspection_endpoint=c.url(c.string(m, "introspection_endpoint", "idp"), "idp.introspection_endpoint"),
        connect_url=c.url(c.string(m, "connect_url", "idp"), "idp.connect_url"),
        project_id=project_id,
        clock_leeway=c.number(m, "clock_leeway_seconds", "idp", 30.0),
        timeout=c.number(m, "timeout_seconds", "idp", 5.0, minimum=0.1),
        discovery_attempts=c.integer(m, "discovery_attempts", "idp", 5, 1, 100),
    )


def _client_key(c: Checker, path: str | None) -> ClientKey | None:
    """Read ZITADEL's application key file (`{"type":"application","keyId","key","appId","clientId"}`)."""
    if not path:
        return None
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        c.fail("idp", f"ZITADEL_KEY_FILE {path}: cannot read: {exc.strerror}")
        return None
    except ValueError:
        c.fail("idp", f"ZITADEL_KEY_FILE {path}: not JSON")
        return None
    fields = [document.get(k) if isinstance(document, dict) else None for k in ("keyId", "clientId", "key")]
    if not all(isinstance(v, str) and v for v in fields):
        c.fail("idp", f"ZITADEL_KEY_FILE {path}: expected ZITADEL's application key with keyId, clientId and key")
        return None
    key_id, client_id, pem = (str(v) for v in fields)
    try:
        usable = isinstance(load_pem_private_key(pem.encode(), password=None), RSAPrivateKey)
    except (ValueError, TypeError):
        usable = False
    if not usable:
        c.fail("idp", f"ZITADEL_KEY_FILE {path}: 'key' is not an unencrypted PEM RSA private key")
        return None
    return ClientKey(key_id=key_id, client_id=client_id, private_key=pem)


def parse_cache(c: Checker, node: Any) -> CacheConfig:
    m = c.mapping(node, "cache", _CACHE)
    backend = c.string(m, "backend", "cache", "memory") or "memory"
    if backend not in ("memory", "redis"):
        c.fail("cache.backend", f"expected memory or redis, got {backend!r}")
    url = c.string(m, "url", "cache")
    if backend == "redis":
        if not url:
            c.fail("cache.url", "is required with backend redis (e.g. redis://127.0.0.1:6379/0)")
        elif urlsplit(url).scheme not in ("redis", "rediss", "unix"):
            c.fail("cache.url", "expected a redis://, rediss:// or unix:// URL")
    return CacheConfig(
        backend=backend,
        ttl=c.number(m, "ttl_seconds", "cache", 60.0),
        negative_ttl=c.number(m, "negative_ttl_seconds", "cache", 10.0),
        max_entries=c.integer(m, "max_entries", "cache", 100_000, 1, 100_000_000),
        url=url if backend == "redis" else None,
        redis_timeout=c.number(m, "redis_timeout_seconds", "cache", 0.25, minimum=0.01),
    )


def parse_upstreams(c: Checker, node: Any) -> dict[str, Upstream]:
    if not isinstance(node, dict) or not node:
        c.fail("upstreams", "expected a mapping of name to URL with at least one upstream")
        return {}
    out: dict[str, Upstream] = {}
    for name, spec in node.items():
        path = f"upstreams.{name}"
        m = {"url": spec} if isinstance(spec, str) else c.mapping(spec, path, _UPSTREAM)
        url = c.url(c.required_string(m, "url", path) or None, join_key(path, "url"))
        if url is not None:
            parts = urlsplit(url)
            if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
                # Every request's path is appended to it; credentials would be silently dropped.
                c.fail(join_key(path, "url"), "expected scheme://host[:port][/base-path], without credentials or query")
        out[str(name)] = Upstream(
            name=str(name),
            url=url or "",
            connect_timeout=c.number(m, "connect_timeout_seconds", path, 5.0, minimum=0.1),
            read_timeout=c.number(m, "read_timeout_seconds", path, 60.0, minimum=0.1),
            reuse_after_body=c.boolean(m, "reuse_after_body", path, False),
        )
    return out


def parse_limits(c: Checker, node: Any) -> Limits:
    m = c.mapping(node, "limits", _LIMITS)
    d = Limits()
    return Limits(
        max_request_line_bytes=c.integer(m, "max_request_line_bytes", "limits", d.max_request_line_bytes, 256, 1 << 20),
        max_header_bytes=c.integer(m, "max_header_bytes", "limits", d.max_header_bytes, 256, 1 << 20),
        max_headers=c.integer(m, "max_headers", "limits", d.max_headers, 8, 10_000),
        max_head_bytes=c.integer(m, "max_head_bytes", "limits", d.max_head_bytes, 1024, 1 << 26),
        max_token_bytes=c.integer(m, "max_token_bytes", "limits", d.max_token_bytes, 16, 1 << 20),
        max_body_bytes=c.integer(m, "max_body_bytes", "limits", d.max_body_bytes, 0, MAX_BYTES),
        keepalive_timeout=c.number(m, "keepalive_timeout_seconds", "limits", d.keepalive_timeout, minimum=0.1),
        body_timeout=c.number(m, "body_timeout_seconds", "limits", d.body_timeout, minimum=0.1),
        max_connections=c.integer(m, "max_connections", "limits", d.max_connections, 1, 1_000_000),
        backlog=c.integer(m, "backlog", "limits", d.backlog, 1, 65535),
    )


def parse_websocket(c: Checker, node: Any) -> WebSocketSettings:
    m = c.mapping(node, "websocket", _WEBSOCKET)
    d = WebSocketSettings()
    return WebSocketSettings(
        recheck=c.number(m, "recheck_seconds", "websocket", d.recheck, minimum=0.05),
        idle_timeout=c.number(m, "idle_timeout_seconds", "websocket", d.idle_timeout),
        max_message_bytes=c.integer(m, "max_message_bytes", "websocket", d.max_message_bytes, 1, 1 << 30),
        max_lifetime=c.number(m, "max_lifetime_seconds", "websocket", d.max_lifetime),
    )


def parse_trusted_proxies(c: Checker, node: Any) -> tuple[IPNetwork, ...]:
    if node is None:
        return ()
    if not isinstance(node, list):
        c.fail("trusted_proxies", "expected a list of addresses or CIDR networks")
        return ()
    out: list[IPNetwork] = []
    for i, item in enumerate(node):
        try:
            out.append(ipaddress.ip_network(str(item).strip(), strict=False))
        except ValueError:
            c.fail(f"trusted_proxies[{i}]", f"{item!r} is not an IP address or CIDR network")
    return tuple(out)
