"""Load and validate a config file: every problem reported together, or a new immutable Config."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from gateway.auth.claims import ClaimSelection
from gateway.config.checker import Checker, ConfigError, read_environment, read_error
from gateway.config.identity import (
    identity_section,
    with_names,
)
from gateway.config.model import Config
from gateway.config.routes import parse_routes
from gateway.config.sections import (
    TOP_KEYS,
    parse_admin,
    parse_cache,
    parse_forward_auth,
    parse_idp,
    parse_limits,
    parse_listen,
    parse_logging,
    parse_reload,
    parse_tracing,
    parse_trusted_proxies,
    parse_upstreams,
    parse_websocket,
)
from gateway.policy.rules import Access


def parse_config(document: Any, *, source: str, env: Mapping[str, str]) -> Config:
    """Validate an already-parsed YAML document; raise ConfigError listing every problem."""
    c = Checker(source, env)
    if not isinstance(document, dict):
        raise ConfigError([f"{source}: expected a mapping at the top level"])
    doc = c.expand(document, "")
    c.mapping(doc, "", TOP_KEYS)
    listen = parse_listen(c, doc.get("listen"))
    upstreams = parse_upstreams(c, doc.get("upstreams"))
    cache = parse_cache(c, doc.get("cache"))
    workers = c.integer(doc, "workers", "", 1, 1, 256)
    identity = identity_section(c, doc.get("identity"), workers=workers, cache_backend=cache.backend)
    routes = parse_routes(c, doc.get("routes"), upstreams, identity)
    identity = with_names(identity, [r.identity_headers for r in routes])
    needs_idp = any(r.policy.access is not Access.PUBLIC for r in routes)
    idp = parse_idp(c, doc.get("idp"), needs_idp)
    if idp is not None:
        # Only the claims some route maps are kept with a principal (and in the cache), in a stable order.
        paths = sorted({p for r in routes for p in r.identity_headers.paths} | set(identity.headers.paths))
        idp = dataclasses.replace(idp, keep=ClaimSelection(tuple(paths), identity.headers.max_bytes))
    admin = parse_admin(c, doc.get("admin"), listen)
    log_settings = parse_logging(c, doc.get("logging"))
    reload = parse_reload(c, doc.get("reload"))
    grace = c.number(doc, "shutdown_grace_seconds", "", 30.0) if isinstance(doc, dict) else 30.0
    limits = parse_limits(c, doc.get("limits"))
    trusted = parse_trusted_proxies(c, doc.get("trusted_proxies"))
    forward_auth = parse_forward_auth(c, doc.get("forward_auth"), listen, admin)
    websocket = parse_websocket(c, doc.get("websocket"))
    tracing = parse_tracing(c, doc.get("tracing"))
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
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {read_error(exc)}"]) from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f"line {where.line + 1}" if where is not None else "YAML"
        raise ConfigError([f"{path}: {at}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from exc
    return parse_config(document, source=str(path), env=env)
