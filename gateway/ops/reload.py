"""Hot reload: watch the config file (and its .env), reload on change or SIGHUP, swap the Runtime atomically.

A valid file becomes a new Runtime that replaces the current one in one assignment; requests read the slot once
when they start, so those in flight finish under the config they began with. An invalid file is refused with the
same `file: key.path: message` problems as at start-up, logged, counted, and the last good config keeps serving.

The environment is read again at every reload: the process environment (unchanged, it cannot change from outside)
over the `.env` file, so a rotated client secret in `.env` is picked up by a reload. Listener addresses (`listen`,
`admin`) and `shutdown_grace_seconds` apply at the next start only, since sockets are bound once.

Resources: the upstream client and the IdP ClientSession belong to the app, not to a config (timeouts are set per
request), so a reload never opens or closes a session; they are closed once, at shutdown, after the server has drained.
An Introspector is rebuilt only when the `idp` section changed; it owns nothing but a reference to the shared
session, so the old one is simply dropped once the last request holding the old Runtime lets go of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiohttp

from gateway.auth.cache import CachingAuthenticator, SharedStore, cache_key_prefix
from gateway.auth.introspection import Introspector
from gateway.auth.jwt_tokens import token_dispatch
from gateway.config import Config, ConfigError, load_config, read_environment
from gateway.forward.assertion import signer_for
from gateway.forward.upstream import UpstreamClient
from gateway.ops.metrics import Metrics
from gateway.ops.tracing import Tracer
from gateway.pipeline import Runtime

log = logging.getLogger("gateway.reload")


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """Where the config comes from, so that it can be read again."""

    path: Path
    env_file: Path | None = None  # None: `.env` beside the config file

    @property
    def env_path(self) -> Path:
        return self.env_file if self.env_file is not None else self.path.parent / ".env"

    def load(self) -> Config:
        return load_config(self.path, read_environment(self.env_path))

    def fingerprint(self) -> tuple[str | None, str | None]:
        """Content hashes of the config and the .env (None: unreadable). Content, not mtime: an editor that saves
        twice in one second, or a `cp -p`, still counts as a change, and a touch does not."""
        return _digest(self.path), _digest(self.env_path)


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


@dataclass(frozen=True, slots=True)
class Sessions:
    """The app's pools, shared by every config the app ever serves: sessions, and the shared cache (Redis)."""

    upstream: UpstreamClient
    idp: aiohttp.ClientSession
    shared: SharedStore | None = None
    tracer: Tracer | None = None  # made at start from `tracing`: it applies at the next start, like `listen`


def build_runtime(config: Config, sessions: Sessions, metrics: Metrics, previous: Runtime | None = None) -> Runtime:
    """A Runtime for `config`, keeping the previous Introspector (and what it discovered) if `idp` is unchanged,
    and the previous cache (warm) if neither `idp` nor `cache` changed: a cached answer belongs to one IdP."""
    introspector: Introspector | None
    authenticator: CachingAuthenticator | None
    if config.idp is None:
        introspector = authenticator = None
    elif previous is not None and previous.introspector is not None and previous.config.idp == config.idp:
        introspector = previous.introspector
        if previous.config.cache == config.cache:
            authenticator = previous.authenticator
        else:
            authenticator = _cached(introspector, config, sessions, metrics)
    else:
        introspector = Introspector(config.idp, sessions.idp, metrics)
        authenticator = _cached(introspector, config, sessions, metrics)
    return Runtime(
        config=config,
        authenticator=authenticator,
        upstream_client=sessions.upstream,
        metrics=metrics,
        introspector=introspector,
        dispatch=token_dispatch(
            config,
            authenticator,
            sessions.idp,
            metrics,
            (previous.config, previous.dispatch) if previous is not None else None,
        ),
        tracer=sessions.tracer,
        signer=signer_for(config.identity.assertion, previous.signer if previous is not None else None),
    )


def _cached(introspector: Introspector, config: Config, sessions: Sessions, metrics: Metrics) -> CachingAuthenticator:
    assert config.idp is not None
    keep = config.idp.keep if config.idp.keep.paths else ()
    prefix = cache_key_prefix(config.idp.issuer, config.idp.client_id, config.idp.project_id, keep)
    return CachingAuthenticator(introspector, config.cache, metrics, key_prefix=prefix, shared=sessions.shared)


class Slot(Protocol):
    current: Runtime


class Reloader:
    """Reloads on `trigger()` (SIGHUP) and, when the config asks for it, whenever the files' content changes."""

    def __init__(
        self,
        source: ConfigSource,
        slot: Slot,
        sessions: Sessions,
        metrics: Metrics,
        on_applied: Callable[[Config], None] | None = None,
    ) -> None:
        self._source = source
        self._slot = slot
        self._sessions = sessions
        self._metrics = metrics
        self._on_applied = on_applied
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._tried = source.fingerprint()  # what the running config was loaded from (near enough: at start)

    def trigger(self) -> None:
        """Reload now (safe to call from a signal handler installed with loop.add_signal_handler)."""
        self._wake.set()

    async def reload(self) -> bool:
        """Load, validate and apply the file; False (and the old config keeps serving) when it is refused."""
        async with self._lock:  # one reload at a time; a trigger during a reload runs another one after it
            self._tried = self._source.fingerprint()
            try:
                config = await asyncio.to_thread(self._source.load)
            except ConfigError as exc:
                self._metrics.reloads.labels("failed").inc()
                log.error("config reload refused, the last good config keeps serving:\n  %s", "\n  ".join(exc.problems))
                return False
            except Exception:
                # Whatever else goes wrong reading a file must not end the reloader: refused, logged, counted.
                self._metrics.reloads.labels("failed").inc()
                log.exception("config reload refused, the last good config keeps serving")
                return False
            old = self._slot.current
            new = build_runtime(config, self._sessions, self._metrics, old)
            if new.introspector is not None and new.introspector is not old.introspector:
                # A new IdP: look up its endpoint before taking traffic; if that fails, requests retry it.
                await new.introspector.discover(attempts=1)
            if new.dispatch is not None and (old.dispatch is None or new.dispatch.jwks is not old.dispatch.jwks):
                await new.dispatch.jwks.refresh()  # a new key set: fetched before it takes traffic, as discovery
            self._slot.current = new  # the one atomic step: new requests see the new config from here on
            self._metrics.reloads.labels("ok").inc()
            for section in ("listen", "admin", "shutdown_grace", "workers", "forward_auth", "tracing"):
                if getattr(old.config, section) != getattr(config, section):
                    log.warning("config reload: %s changed; it applies at the next restart", section)
            if config.forward_auth is None and old.config.forward_auth is not None:
                log.warning("config reload: forward_auth removed; its listener refuses everything (503) until restart")
            for limit in ("max_connections", "backlog"):
                if getattr(old.config.limits, limit) != getattr(config.limits, limit):
                    log.warning("config reload: limits.%s changed; it applies at the next restart", limit)
            if old.config.cache.url != config.cache.url:
                log.warning("config reload: cache.url changed; the shared cache moves at the next restart")
            if self._on_applied is not None:
                self._on_applied(config)
            log.info("config reloaded from %s: %d routes", config.source, len(config.routes))
            return True

    async def run(self) -> None:
        """Wait for a trigger or, when watching, poll; a change is applied once it has been stable for one poll,
        so a file caught half-written is not reported as a failure."""
        seen = self._tried
        while True:
            settings = self._slot.current.config.reload
            timeout = settings.poll_seconds if settings.watch else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            if self._wake.is_set():
                self._wake.clear()
                await self.reload()
                seen = self._tried
                continue
            now = self._source.fingerprint()
            if now != self._tried and now == seen:
                await self.reload()
            seen = now
