"""The configuration's values: frozen dataclasses, built once by the loader and never patched."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from gateway.auth.claims import NO_CLAIMS, ClaimSelection
from gateway.config.identity import (
    NO_IDENTITY_SETTINGS,
    IdentitySettings,
)
from gateway.config.idp import TokenSettings
from gateway.policy.rules import Route

T = TypeVar("T")


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
    """OpenTelemetry traces, exported over OTLP/HTTP (gateway/ops/tracing.py). Present only when tracing is on."""

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
