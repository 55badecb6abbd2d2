"""`workers: N`: N processes serving one port, each a whole gateway (own loop, sessions, cache, metrics).

The kernel spreads connections over the processes (SO_REUSEPORT on every listening socket), so there is no
accept lock and no hand-off. The parent only supervises: a signal stops every worker; a worker that dies stops
the rest, so the service supervisor sees the failure instead of a gateway quietly running at half capacity.
Each worker has its own introspection cache: with N > 1, `cache.backend: redis` keeps it one call per token.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
from collections.abc import Callable
from multiprocessing.connection import wait
from types import FrameType

log = logging.getLogger("gateway")


def _child(serve: Callable[[int], object], index: int) -> None:
    # A forked child inherits the parent's Python signal handlers (which supervise *its* children): until the
    # worker's event loop installs its own, a SIGTERM must simply stop it.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    serve(index)


def run_workers(count: int, serve: Callable[[int], object]) -> int:
    """Fork `count` processes that each run `serve(index)` (binding with reuse_port=True); wait for them."""
    context = multiprocessing.get_context("fork")  # before any event loop exists, so forking is safe
    workers = [context.Process(target=_child, args=(serve, i), name=f"gateway-worker-{i + 1}") for i in range(count)]
    stopping = False

    def stop(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.is_alive() and worker.pid is not None:
                worker.terminate()  # SIGTERM: aiohttp's run_app shuts down gracefully

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for worker in workers:
            worker.start()
        log.info("started %d workers: %s", count, ", ".join(str(w.pid) for w in workers))
        ended = wait([w.sentinel for w in workers])  # the first worker to end ends them all
        if not stopping:
            dead = next(w for w in workers if w.sentinel in ended)
            dead.join()
            log.error("worker %s exited with %s: stopping the others", dead.name, dead.exitcode)
    finally:
        failed = not stopping
        stop(signal.SIGTERM, None)
        for worker in workers:
            if worker.pid is None:
                continue
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
                worker.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 1 if failed else 0
