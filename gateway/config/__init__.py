"""Configuration as its own phase: read YAML, fill `${VAR}` from the environment, validate, build frozen values.

Every problem is collected and reported together as `file: key.path: message`. Nothing here does I/O after
the file is read, and nothing patches globals: `load_config` returns a new immutable `Config` or raises.
Secrets (the client secret) are read from the environment only, never from the YAML file.

Modules: model (the frozen values), checker (raw values and `${VAR}`), sections, routes, idp, load.
"""

from __future__ import annotations

from gateway.config.checker import ConfigError, read_environment
from gateway.config.load import load_config, parse_config
from gateway.config.model import (
    FORWARD_AUTH_ORIGINALS,
    LOG_FORMATS,
    LOG_LEVELS,
    Admin,
    CacheConfig,
    ClientKey,
    Config,
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

__all__ = [
    "FORWARD_AUTH_ORIGINALS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "Admin",
    "CacheConfig",
    "ClientKey",
    "Config",
    "ConfigError",
    "ForwardAuth",
    "IPNetwork",
    "IdPConfig",
    "Limits",
    "Listen",
    "LogSettings",
    "ReloadSettings",
    "TracingSettings",
    "Upstream",
    "WebSocketSettings",
    "load_config",
    "parse_config",
    "read_environment",
]
