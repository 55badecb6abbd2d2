"""Configuration as its own phase: read YAML, fill `${VAR}` from the environment, validate, build frozen values.

Every problem is collected and reported together as `file: key.path: message`. Nothing here does I/O after
the file is read, and nothing patches globals: `load_config` returns a new immutable `Config` or raises.
Secrets (the client secret) are read from the environment only, never from the YAML file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from dotenv import dotenv_values

from .claims import NO_CLAIMS, ClaimSelection
from .config_identity import NO_IDENTITY_SETTINGS, IdentitySettings, identity_section, route_header_map, with_names
from .config_idp import TOKEN_KEYS, TokenSettings, token_settings
from .rules import Access, Cors, PathPattern, Policy, Route, org_scope_problem, valid_method

T = TypeVar("T")


class ConfigError(Exception):
    """One or more problems, each already formatted as `file: key: message`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Listen:
    host: str = "0.0.0.0"
    port: int = 5000


@dataclass(frozen=True, slots=True)
class Admin:
    """The admin listener (/healthz, /readyz, /metrics): loopback by default, never the proxy port."""

    host: str = "127.0.0.1"
    port: int = 9091


FORWARD_AUTH_ORIGINALS = ("headers", "request")


@dataclass(frozen=True, slots=True)
class ForwardAuth:
    """The forward-auth listener: an ingress asks it "may this pass, and who is it?". A port of its own, never the
    proxy's; loopback by default. `original`: where the request to decide is read from, set here and never guessed
    (`headers`: X-Forwarded-Method/-Uri/-Host/-Proto, as nginx, Traefik and Caddy send them; `request`: the
    request's own method and target, as Envoy's ext_authz HTTP service sends them)."""

    host: str = "127.0.0.1"
    port: int = 9092
    original: str = "headers"


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """OpenTelemetry traces, exported over OTLP/HTTP (gateway/tracing.py). Present only when tracing is on."""

    endpoint: str = "http://localhost:4318/v1/traces"  # the OTLP/HTTP traces URL
    service_name: str = "zitadel-gateway"
    sampling_ratio: float = 1.0  # of the traces that start here; a client's sampled flag is followed (parent-based)


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "text")


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str = "info"
    format: str = "json"


@dataclass(frozen=True, slots=True)
class ReloadSettings:
    """Hot reload: the file (and the .env beside it) is polled; SIGHUP reloads at once either way."""

    watch: bool = True
    poll_seconds: float = 1.0


@dataclass(frozen=True, slots=True)
class ClientKey:
    """ZITADEL's downloaded application key (JWT profile, private_key_jwt), read from ZITADEL_KEY_FILE as is."""

    key_id: str
    client_id: str
    private_key: str = field(repr=False)  # PEM (PKCS#1 as ZITADEL writes it)


@dataclass(frozen=True, slots=True)
class IdPConfig:
    issuer: str
    client_id: str
    client_secret: str = field(repr=False)  # empty when `client_key` authenticates the gateway
    introspection_endpoint: str | None = None  # None: taken from the discovery document
    connect_url: str | None = None  # connect here while presenting the issuer's host (docker networks)
    project_id: str | None = None
    clock_leeway: float = 30.0
    timeout: float = 5.0
    discovery_attempts: int = 5
    client_key: ClientKey | None = None  # set: private_key_jwt instead of client_secret_basic
    max_concurrent_calls: int = 64  # introspection calls in flight at once; more wait (within `timeout`)
    max_concurrent_calls_per_client: int = 16  # uncached token checks one client address may have waiting (0: any)
    retry_on_connection_error: bool = True  # one quick retry when the connection fails (stale keep-alive)
    breaker_failures: int = 5  # consecutive failures that open the circuit breaker (0: never)
    breaker_cooldown: float = 5.0  # seconds of instant 503s before one probe call is let through
    tokens: TokenSettings = field(default_factory=TokenSettings)  # token modes, JWT audience, JWKS, claims
    keep: ClaimSelection = NO_CLAIMS  # the claims `identity.headers` maps: kept (and cached) with a principal

    @property
    def host_header(self) -> str | None:
        """The Host ZITADEL must see when we connect through `connect_url` (it picks the instance by Host)."""
        return urlsplit(self.issuer).netloc if self.connect_url else None

    def connect(self, url: str) -> str:
        """Rewrite an issuer-based URL to go through `connect_url`."""
        if not self.connect_url or not url.startswith(self.issuer):
            return url
        return self.connect_url + url[len(self.issuer) :]


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    url: str
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    # After a request with a body the connection is closed unless this is set: an upstream that answered without
    # reading the whole body would take its rest for the next request (docs/security.md).
    reuse_after_body: bool = False


@dataclass(frozen=True, slots=True)
class Limits:
    """What one client may cost. Defaults suit an API gateway; each is a `limits:` key (docs/security.md)."""

    max_request_line_bytes: int = 8190  # aiohttp max_line_size
    max_header_bytes: int = 16384  # aiohttp max_field_size: one header line
    max_headers: int = 100
    max_head_bytes: int = 32768  # the request line and every header together, as nginx's default: 431
    max_token_bytes: int = 4096
    max_body_bytes: int = 10 * 1024 * 1024  # a route's max_body_bytes overrides it
    keepalive_timeout: float = 75.0  # idle connections, and a request head that takes longer to arrive
    body_timeout: float = 30.0  # the longest wait for the next piece of a request body
    max_connections: int = 1024
    backlog: int = 128


@dataclass(frozen=True, slots=True)
class WebSocketSettings:
    """The `websocket:` section: how long a relayed WebSocket may live (routes opt in with `websocket: true`)."""

    recheck: float = 60.0  # seconds between checks of the token through the cache (and of the route)
    idle_timeout: float = 300.0  # no data message either way this long: closed 1001 (0: never)
    max_message_bytes: int = 1 << 20  # a larger message either way: closed 1009
    max_lifetime: float = 0.0  # seconds; 0: only the token's exp bounds a socket


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """The introspection-answer cache. `ttl` 0 turns positive caching off (every request asks the IdP)."""

    backend: str = "memory"  # memory | redis (redis: shared between processes, with a local cache in front)
    ttl: float = 60.0
    negative_ttl: float = 10.0
    max_entries: int = 100_000
    url: str | None = field(default=None, repr=False)  # redis://...; may carry a password
    redis_timeout: float = 0.25


@dataclass(frozen=True, slots=True)
class Config:
    source: str
    listen: Listen
    idp: IdPConfig | None
    upstreams: Mapping[str, Upstream]
    routes: tuple[Route, ...]
    admin: Admin = Admin()
    logging: LogSettings = LogSettings()
    reload: ReloadSettings = ReloadSettings()
    shutdown_grace: float = 30.0  # seconds in-flight requests get to finish after SIGTERM/SIGINT
    limits: Limits = field(default_factory=Limits)
    # Peers whose X-Forwarded-* headers are believed; everyone else's are replaced.
    trusted_proxies: tuple[IPNetwork, ...] = ()
    cache: CacheConfig = CacheConfig()
    workers: int = 1
    forward_auth: ForwardAuth | None = None  # None: off
    websocket: WebSocketSettings = WebSocketSettings()
    tracing: TracingSettings | None = None  # None: off
    identity: IdentitySettings = NO_IDENTITY_SETTINGS  # claims to headers, and the signed assertion

    def __post_init__(self) -> None:
        # Frozen all the way down: a plain dict here could be changed by anyone holding the config.
        object.__setattr__(self, "upstreams", _FrozenMapping(self.upstreams))


class _FrozenMapping(Mapping[str, Upstream]):
    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Upstream]) -> None:
        self._data = dict(data)

    def __getitem__(self, key: str) -> Upstream:
        return self._data[key]

    def __iter__(self) -> Any:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return repr(self._data)


# ----------------------------------------------------------------------------------------------------------------
# Environment


def read_environment(env_file: str | Path | None) -> dict[str, str]:
    """The process environment over the dotenv file: what is set for real wins over `.env`."""
    merged: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    merged.update(os.environ)
    return merged


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(value: str, env: Mapping[str, str], problem: Callable[[str], None]) -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        got = env.get(name)
        if got is None or (got == "" and default is not None):
            if default is None:
                problem(f"environment variable {name} is not set")
                return ""
            return default
        return got

    return _VAR.sub(sub, value)


# ----------------------------------------------------------------------------------------------------------------
# Validation helpers: each records a problem under its key path and returns a usable placeholder.


class _Checker:
    def __init__(self, file: str, env: Mapping[str, str]) -> None:
        self.file = file
        self.env = env
        self.problems: list[str] = []
        self._failed: set[str] = set()

    def fail(self, path: str, message: str) -> None:
        self._failed.add(path)
        self.problems.append(f"{self.file}: {path}: {message}" if path else f"{self.file}: {message}")

    def failed_under(self, path: str) -> bool:
        return any(p == path or p.startswith((path + ".", path + "[")) for p in self._failed)

    def expand(self, node: Any, path: str) -> Any:
        if isinstance(node, str):
            return _interpolate(node, self.env, lambda msg: self.fail(path, msg))
        if isinstance(node, dict):
            return {k: self.expand(v, _join(path, str(k))) for k, v in node.items()}
        if isinstance(node, list):
            return [self.expand(v, f"{path}[{i}]") for i, v in enumerate(node)]
        return node

    def mapping(self, node: Any, path: str, allowed: frozenset[str]) -> dict[str, Any]:
        if node is None:
            return {}
        if not isinstance(node, dict):
            self.fail(path, "expected a mapping")
            return {}
        for key in node:
            if key not in allowed:
                hint = ", ".join(sorted(allowed))
                self.fail(_join(path, str(key)), f"unknown key (expected one of: {hint})")
        return node

    def string(self, node: dict[str, Any], key: str, path: str, default: str | None = None) -> str | None:
        value = node.get(key, default)
        if value is None or value == "":
            return default
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            self.fail(_join(path, key), "expected a string")
            return default
        return str(value)

    def required_string(self, node: dict[str, Any], key: str, path: str) -> str:
        value = self.string(node, key, path)
        if value is None:
            if _join(path, key) not in self._failed:  # an unset ${VAR} was reported already
                self.fail(_join(path, key), "is required")
            return ""
        return value

    def number(self, node: dict[str, Any], key: str, path: str, default: float, minimum: float = 0) -> float:
        value = node.get(key, default)
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(_join(path, key), f"expected a number, got {value!r}")
            return default
        if isinstance(value, bool) or number < minimum:
            self.fail(_join(path, key), f"expected a number >= {minimum:g}, got {value!r}")
            return default
        return number

    def integer(self, node: dict[str, Any], key: str, path: str, default: int, lo: int, hi: int) -> int:
        value = node.get(key, default)
        try:
            number = int(str(value), 10)
        except ValueError:
            self.fail(_join(path, key), f"expected a whole number, got {value!r}")
            return default
        if isinstance(value, bool) or not lo <= number <= hi:
            self.fail(_join(path, key), f"expected a whole number from {lo} to {hi}, got {value!r}")
            return default
        return number

    def boolean(self, node: dict[str, Any], key: str, path: str, default: bool) -> bool:
        value = node.get(key, default)
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        self.fail(_join(path, key), f"expected true or false, got {value!r}")
        return default

    def string_list(self, node: dict[str, Any], key: str, path: str) -> list[str] | None:
        if key not in node:
            return None
        value = node[key]
        if not isinstance(value, list):
            self.fail(_join(path, key), "expected a list")
            return []
        out: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                self.fail(f"{_join(path, key)}[{i}]", "expected a non-empty string")
            else:
                out.append(item.strip())
        return out

    def url(self, value: str | None, path: str) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            self.fail(path, f"expected an http(s) URL with a host, got {value!r}")
            return None
        return value.rstrip("/")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# ----------------------------------------------------------------------------------------------------------------
# Sections

_TOP = frozenset(
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
_ROUTE = frozenset(
    {
        "id",
        "path",
        "methods",
        "policy",
        "roles",
        "upstream",
        "pass_authorization",
        "max_body_bytes",
        "allow_query_token",
        "cors",
        "forward_unchecked_credentials",
        "introspect",
        "delete_body",
        "websocket",
        "identity_headers",
    }
)
_CORS = frozenset(
    {"allowed_origins", "allowed_methods", "allowed_headers", "max_age_seconds", "allow_credentials", "expose_headers"}
)
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
_MAX_BYTES = 1 << 40
_ROLES = frozenset({"any_of", "all_of", "in_org"})
_SECRET_KEYS = frozenset({"client_secret", "secret", "client_id"})


def _listen(c: _Checker, node: Any) -> Listen:
    m = c.mapping(node, "listen", _LISTEN)
    return Listen(
        host=c.string(m, "host", "listen", "0.0.0.0") or "0.0.0.0",
        port=c.integer(m, "port", "listen", 5000, 1, 65535),
    )


def _admin(c: _Checker, node: Any, listen: Listen) -> Admin:
    m = c.mapping(node, "admin", _LISTEN)
    admin = Admin(
        host=c.string(m, "host", "admin", "127.0.0.1") or "127.0.0.1",
        port=c.integer(m, "port", "admin", 9091, 1, 65535),
    )
    if admin.port == listen.port:
        # Health and metrics must never be reachable through the proxy's address.
        c.fail("admin.port", f"must differ from listen.port ({listen.port})")
    return admin


def _forward_auth(c: _Checker, node: Any, listen: Listen, admin: Admin) -> ForwardAuth | None:
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


def _tracing(c: _Checker, node: Any) -> TracingSettings | None:
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


def _one_of(c: _Checker, m: dict[str, Any], key: str, path: str, choices: tuple[str, ...], default: str) -> str:
    value = (c.string(m, key, path, default) or default).lower()
    if value not in choices:
        c.fail(_join(path, key), f"expected one of {', '.join(choices)}, got {value!r}")
        return default
    return value


def _logging(c: _Checker, node: Any) -> LogSettings:
    m = c.mapping(node, "logging", _LOGGING)
    return LogSettings(
        level=_one_of(c, m, "level", "logging", LOG_LEVELS, "info"),
        format=_one_of(c, m, "format", "logging", LOG_FORMATS, "json"),
    )


def _reload(c: _Checker, node: Any) -> ReloadSettings:
    m = c.mapping(node, "reload", _RELOAD)
    return ReloadSettings(
        watch=c.boolean(m, "watch", "reload", True),
        poll_seconds=c.number(m, "poll_seconds", "reload", 1.0, minimum=0.05),
    )


def _idp(c: _Checker, node: Any, needed: bool) -> IdPConfig | None:
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


def _client_key(c: _Checker, path: str | None) -> ClientKey | None:
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


def _cache(c: _Checker, node: Any) -> CacheConfig:
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


def _upstreams(c: _Checker, node: Any) -> dict[str, Upstream]:
    if not isinstance(node, dict) or not node:
        c.fail("upstreams", "expected a mapping of name to URL with at least one upstream")
        return {}
    out: dict[str, Upstream] = {}
    for name, spec in node.items():
        path = f"upstreams.{name}"
        m = {"url": spec} if isinstance(spec, str) else c.mapping(spec, path, _UPSTREAM)
        url = c.url(c.required_string(m, "url", path) or None, _join(path, "url"))
        if url is not None:
            parts = urlsplit(url)
            if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
                # Every request's path is appended to it; credentials would be silently dropped.
                c.fail(_join(path, "url"), "expected scheme://host[:port][/base-path], without credentials or query")
        out[str(name)] = Upstream(
            name=str(name),
            url=url or "",
            connect_timeout=c.number(m, "connect_timeout_seconds", path, 5.0, minimum=0.1),
            read_timeout=c.number(m, "read_timeout_seconds", path, 60.0, minimum=0.1),
            reuse_after_body=c.boolean(m, "reuse_after_body", path, False),
        )
    return out


def _limits(c: _Checker, node: Any) -> Limits:
    m = c.mapping(node, "limits", _LIMITS)
    d = Limits()
    return Limits(
        max_request_line_bytes=c.integer(m, "max_request_line_bytes", "limits", d.max_request_line_bytes, 256, 1 << 20),
        max_header_bytes=c.integer(m, "max_header_bytes", "limits", d.max_header_bytes, 256, 1 << 20),
        max_headers=c.integer(m, "max_headers", "limits", d.max_headers, 8, 10_000),
        max_head_bytes=c.integer(m, "max_head_bytes", "limits", d.max_head_bytes, 1024, 1 << 26),
        max_token_bytes=c.integer(m, "max_token_bytes", "limits", d.max_token_bytes, 16, 1 << 20),
        max_body_bytes=c.integer(m, "max_body_bytes", "limits", d.max_body_bytes, 0, _MAX_BYTES),
        keepalive_timeout=c.number(m, "keepalive_timeout_seconds", "limits", d.keepalive_timeout, minimum=0.1),
        body_timeout=c.number(m, "body_timeout_seconds", "limits", d.body_timeout, minimum=0.1),
        max_connections=c.integer(m, "max_connections", "limits", d.max_connections, 1, 1_000_000),
        backlog=c.integer(m, "backlog", "limits", d.backlog, 1, 65535),
    )


def _websocket(c: _Checker, node: Any) -> WebSocketSettings:
    m = c.mapping(node, "websocket", _WEBSOCKET)
    d = WebSocketSettings()
    return WebSocketSettings(
        recheck=c.number(m, "recheck_seconds", "websocket", d.recheck, minimum=0.05),
        idle_timeout=c.number(m, "idle_timeout_seconds", "websocket", d.idle_timeout),
        max_message_bytes=c.integer(m, "max_message_bytes", "websocket", d.max_message_bytes, 1, 1 << 30),
        max_lifetime=c.number(m, "max_lifetime_seconds", "websocket", d.max_lifetime),
    )


def _trusted_proxies(c: _Checker, node: Any) -> tuple[IPNetwork, ...]:
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


def _cors(c: _Checker, node: Any, path: str, route_methods: frozenset[str] | None) -> Cors | None:
    if node is None:
        return None
    m = c.mapping(node, path, _CORS)
    origins = c.string_list(m, "allowed_origins", path) or []
    if not origins:
        c.fail(_join(path, "allowed_origins"), "needs at least one origin (or '*')")
    for j, origin in enumerate(origins):
        parts = urlsplit(origin)
        if origin != "*" and (parts.scheme not in ("http", "https") or not parts.netloc or parts.path):
            c.fail(f"{path}.allowed_origins[{j}]", f"expected '*' or an origin like https://app.example: {origin!r}")
    credentials = c.boolean(m, "allow_credentials", path, False)
    if credentials and "*" in origins:
        # Any site could then read a signed-in user's answers: list the origins instead.
        c.fail(_join(path, "allow_credentials"), "cannot be combined with allowed_origins '*'")
    methods = c.string_list(m, "allowed_methods", path)
    if methods is None:
        methods = sorted(route_methods) if route_methods is not None else ["GET", "POST"]
    return Cors(
        origins=frozenset(origins),
        methods=frozenset(x.upper() for x in methods),
        headers=frozenset(h.lower() for h in (c.string_list(m, "allowed_headers", path) or ["authorization"])),
        max_age=c.integer(m, "max_age_seconds", path, 600, 0, 86400),
        allow_credentials=credentials,
        expose_headers=tuple(c.string_list(m, "expose_headers", path) or ()),
    )


def _policy(c: _Checker, m: dict[str, Any], path: str) -> Policy:
    has_roles = "roles" in m
    policy = m.get("policy")
    if has_roles:
        if policy not in (None, "roles"):
            c.fail(_join(path, "policy"), f"'{policy}' cannot be combined with roles")
        roles = c.mapping(m["roles"], _join(path, "roles"), _ROLES)
        any_of = c.string_list(roles, "any_of", _join(path, "roles")) or []
        all_of = c.string_list(roles, "all_of", _join(path, "roles")) or []
        if not any_of and not all_of and not c.failed_under(_join(path, "roles")):
            c.fail(_join(path, "roles"), "needs a non-empty any_of or all_of")
        in_org = c.string(roles, "in_org", _join(path, "roles"))
        return Policy(Access.ROLES, frozenset(any_of), frozenset(all_of), in_org)
    if policy in ("public", "authenticated"):
        return Policy(Access(policy))
    if policy is None:
        c.fail(path, "needs a policy: public, authenticated, or roles with any_of / all_of")
    else:
        c.fail(_join(path, "policy"), f"expected public or authenticated (or a roles mapping), got {policy!r}")
    return Policy(Access.AUTHENTICATED)


def _delete_body(c: _Checker, m: dict[str, Any], path: str, methods: frozenset[str] | None) -> bool:
    allowed = c.boolean(m, "delete_body", path, False)
    if allowed and methods is not None and "DELETE" not in methods:
        c.fail(_join(path, "delete_body"), "the route's methods do not include DELETE")
    return allowed


def _routes(
    c: _Checker, node: Any, upstreams: Mapping[str, Upstream], identity: IdentitySettings = NO_IDENTITY_SETTINGS
) -> list[Route]:
    if not isinstance(node, list) or not node:
        c.fail("routes", "expected a non-empty list of routes")
        return []
    default_upstream = "default" if "default" in upstreams else (next(iter(upstreams)) if len(upstreams) == 1 else None)
    routes: list[Route] = []
    for i, raw in enumerate(node):
        path = f"routes[{i}]"
        m = c.mapping(raw, path, _ROUTE)
        source = c.required_string(m, "path", path)
        try:
            pattern = PathPattern.compile(source)
        except ValueError as exc:
            if source:
                c.fail(_join(path, "path"), f"{source!r}: {exc}")
            pattern = PathPattern(source, (), False)
        methods_list = c.string_list(m, "methods", path)
        methods = None
        if methods_list is not None:
            methods = frozenset(x.upper() for x in methods_list)
            for j, meth in enumerate(methods_list):
                if not valid_method(meth.upper()):
                    c.fail(f"{path}.methods[{j}]", f"{meth!r} is not an HTTP method")
            if not methods_list:
                c.fail(
                    _join(path, "methods"),
                    "an empty list matches nothing; leave it out to allow every method",
                )
        policy = _policy(c, m, path)
        forward_unchecked = c.boolean(m, "forward_unchecked_credentials", path, False)
        if forward_unchecked and policy.access is not Access.PUBLIC:
            # A protected route forwards the token it checked (pass_authorization); nothing else is unchecked.
            c.fail(_join(path, "forward_unchecked_credentials"), "only a public route forwards unchecked credentials")
        websocket = c.boolean(m, "websocket", path, False)
        if websocket and methods is not None and "GET" not in methods:
            c.fail(_join(path, "websocket"), "a WebSocket opens with a GET, which the route's methods leave out")
        upstream = c.string(m, "upstream", path) or default_upstream
        if upstream is None:
            c.fail(
                _join(path, "upstream"),
                "is required when there are several upstreams and none named 'default'",
            )
        elif upstream not in upstreams and upstreams:
            c.fail(_join(path, "upstream"), f"no upstream named {upstream!r}")
        scope_problem = org_scope_problem(pattern, policy.in_org) if policy.in_org is not None else None
        if scope_problem is not None and not c.failed_under(_join(path, "path")):
            c.fail(_join(path, "roles.in_org"), scope_problem)
        routes.append(
            Route(
                id=c.string(m, "id", path) or source,
                pattern=pattern,
                policy=policy,
                upstream=upstream or "",
                methods=methods,
                pass_authorization=c.boolean(m, "pass_authorization", path, True),
                max_body_bytes=(
                    c.integer(m, "max_body_bytes", path, 0, 0, _MAX_BYTES) if "max_body_bytes" in m else None
                ),
                allow_query_token=c.boolean(m, "allow_query_token", path, False),
                cors=_cors(c, m.get("cors"), _join(path, "cors"), methods),
                forward_unchecked_credentials=forward_unchecked,
                introspect_always=_introspect(c, m, path),
                delete_body=_delete_body(c, m, path, methods),
                websocket=websocket,
                identity_headers=route_header_map(c, m, path, identity),
            )
        )
    return routes


def _introspect(c: _Checker, m: dict[str, Any], path: str) -> bool:
    value = c.string(m, "introspect", path)
    if value not in (None, "always"):
        c.fail(_join(path, "introspect"), f"expected always, got {value!r}")
    return value == "always"


def parse_config(document: Any, *, source: str, env: Mapping[str, str]) -> Config:
    """Validate an already-parsed YAML document; raise ConfigError listing every problem."""
    c = _Checker(source, env)
    if not isinstance(document, dict):
        raise ConfigError([f"{source}: expected a mapping at the top level"])
    doc = c.expand(document, "")
    c.mapping(doc, "", _TOP)
    listen = _listen(c, doc.get("listen"))
    upstreams = _upstreams(c, doc.get("upstreams"))
    cache = _cache(c, doc.get("cache"))
    workers = c.integer(doc, "workers", "", 1, 1, 256)
    identity = identity_section(c, doc.get("identity"), workers=workers, cache_backend=cache.backend)
    routes = _routes(c, doc.get("routes"), upstreams, identity)
    identity = with_names(identity, [r.identity_headers for r in routes])
    needs_idp = any(r.policy.access is not Access.PUBLIC for r in routes)
    idp = _idp(c, doc.get("idp"), needs_idp)
    if idp is not None:
        # Only the claims some route maps are kept with a principal (and in the cache), in a stable order.
        paths = sorted({p for r in routes for p in r.identity_headers.paths} | set(identity.headers.paths))
        idp = dataclasses.replace(idp, keep=ClaimSelection(tuple(paths), identity.headers.max_bytes))
    admin = _admin(c, doc.get("admin"), listen)
    log_settings = _logging(c, doc.get("logging"))
    reload = _reload(c, doc.get("reload"))
    grace = c.number(doc, "shutdown_grace_seconds", "", 30.0) if isinstance(doc, dict) else 30.0
    limits = _limits(c, doc.get("limits"))
    trusted = _trusted_proxies(c, doc.get("trusted_proxies"))
    forward_auth = _forward_auth(c, doc.get("forward_auth"), listen, admin)
    websocket = _websocket(c, doc.get("websocket"))
    tracing = _tracing(c, doc.get("tracing"))
    if c.problems:
        raise ConfigError(c.problems)
    return Config(
        source=source,
        listen=listen,
        idp=idp,
        upstreams=upstreams,
        routes=tuple(routes),
        admin=admin,
        logging=log_settings,
        reload=reload,
        shutdown_grace=grace,
        limits=limits,
        trusted_proxies=trusted,
        cache=cache,
        workers=workers,
        forward_auth=forward_auth,
        websocket=websocket,
        tracing=tracing,
        identity=identity,
    )


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file. `env` defaults to the process environment over `.env` beside the file."""
    path = Path(path)
    if env is None:
        env = read_environment(path.parent / ".env")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f"line {where.line + 1}" if where is not None else "YAML"
        raise ConfigError([f"{path}: {at}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from exc
    return parse_config(document, source=str(path), env=env)
