"""Run one gateway process: the proxy and the admin listener in one event loop, reload on SIGHUP, stop gracefully.

SIGTERM/SIGINT: /readyz turns 503, both listeners stop accepting, requests in flight (streamed ones included) get
`shutdown_grace_seconds` to finish, then the sessions are closed and the process exits 0. Every process handles
its own signals, so with several worker processes each one drains itself when it is signalled (a supervisor
forwards SIGTERM to each); nothing here coordinates across processes.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from aiohttp import web

from gateway.app import RELOADER, GatewayRunner, build_app, forward_auth_runner
from gateway.config import Config
from gateway.ops.admin import build_admin_app
from gateway.ops.listener import CappedSite
from gateway.ops.logs import FIELDS, configure_logging, effective_config, flush_logs
from gateway.ops.reload import ConfigSource

log = logging.getLogger("gateway")

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def serve(config: Config, source: ConfigSource, *, worker: int | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then drain and return.

    `worker`: this process's index among `workers: N` siblings. They share the proxy port (SO_REUSEPORT); each
    has an admin listener of its own on admin.port + index, since each has its own metrics.
    """
    reuse_port = worker is not None
    admin_port = config.admin.port + (worker or 0)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    app = build_app(config, source=source, on_reload=_apply_logging)
    proxy = GatewayRunner(app, handle_signals=False, shutdown_timeout=config.shutdown_grace)
    admin = web.AppRunner(build_admin_app(app, stop.is_set), access_log=None, handle_signals=False)
    decisions: web.ServerRunner | None = None
    handled: list[signal.Signals] = []
    try:
        await proxy.setup()
        await admin.setup()
        await CappedSite(
            proxy, config.listen.host, config.listen.port, config.limits, reuse_port=reuse_port or None
        ).start()
        await web.TCPSite(admin, config.admin.host, admin_port).start()
        if config.forward_auth is not None:
            decisions = forward_auth_runner(app, config.shutdown_grace)
            await decisions.setup()
            fa = config.forward_auth
            await CappedSite(decisions, fa.host, fa.port, config.limits, reuse_port=reuse_port or None).start()
            log.info("forward-auth on http://%s:%d (original request from %s)", fa.host, fa.port, fa.original)
        for sig in _STOP_SIGNALS:
            loop.add_signal_handler(sig, _stopper(stop, sig))
            handled.append(sig)
        loop.add_signal_handler(signal.SIGHUP, app[RELOADER].trigger)
        handled.append(signal.SIGHUP)
        log.info(
            "listening on http://%s:%d, admin on http://%s:%d",
            config.listen.host,
            config.listen.port,
            config.admin.host,
            admin_port,
            extra={FIELDS: {"config": effective_config(config)}},
        )
        await stop.wait()
        log.info("stopping: no new connections, up to %gs for requests in flight", config.shutdown_grace)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        # A runner's cleanup stops the site, waits for the handlers up to shutdown_timeout, then runs the
        # app's cleanup (which closes the sessions): exactly the drain we want.
        if decisions is not None:
            await decisions.cleanup()
        await proxy.cleanup()
        await admin.cleanup()
    log.info("stopped")
    flush_logs()


def _stopper(stop: asyncio.Event, sig: signal.Signals) -> Callable[[], None]:
    def handler() -> None:
        if not stop.is_set():
            log.info("%s received", sig.name)
        stop.set()

    return handler


def _apply_logging(config: Config) -> None:
    configure_logging(config.logging)
