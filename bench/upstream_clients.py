"""The upstream hop's client, side by side: `python -m bench.upstream_clients [--rounds N] [--seconds S]`.

One minimal pass-through (aiohttp's server, uvloop, one process) per client: ours (gateway.upstream), aiohttp's
ClientSession, and httpx (on httpcore and h11). Each forwards GET /api/public to the same demo backend and returns
status and body. wrk drives each in turn, round after round; the number is the pass-through's CPU time (utime +
stime) per answered request, so the server's share is the same in all three and the difference is the client's.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from aiohttp import web

from .__main__ import process
from .cpu_per_request import measure, summary
from .tools import free_port

CLIENTS = ("own", "aiohttp", "httpx")
PATH = "/api/public"

Forward = Callable[[str], Awaitable[tuple[int, bytes]]]


async def _own(backend: str) -> tuple[Forward, Callable[[], Awaitable[None]]]:
    from gateway.forward.upstream import UpstreamClient

    client = UpstreamClient()

    async def forward(target: str) -> tuple[int, bytes]:
        answer = await client.send(backend, "GET", target, {}, body=None, connect_timeout=5.0, read_timeout=30.0)
        try:
            body = answer.body_if_complete()
            return answer.status, await answer.read() if body is None else body
        finally:
            answer.release()

    return forward, client.close


async def _aiohttp(backend: str) -> tuple[Forward, Callable[[], Awaitable[None]]]:
    import aiohttp

    session = aiohttp.ClientSession(
        base_url=backend, auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None, sock_read=30.0)
    )

    async def forward(target: str) -> tuple[int, bytes]:
        async with session.get(target, allow_redirects=False) as answer:
            return answer.status, await answer.read()

    return forward, session.close


async def _httpx(backend: str) -> tuple[Forward, Callable[[], Awaitable[None]]]:
    import httpx

    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=1024)
    client = httpx.AsyncClient(base_url=backend, limits=limits, timeout=30.0, follow_redirects=False)

    async def forward(target: str) -> tuple[int, bytes]:
        answer = await client.get(target)
        return answer.status_code, answer.content

    return forward, client.aclose


def serve(client: str, port: int, backend: str) -> None:
    """The pass-through, until terminated."""
    import uvloop

    async def main() -> None:
        make = {"own": _own, "aiohttp": _aiohttp, "httpx": _httpx}[client]
        forward, close = await make(backend)

        async def handler(request: web.Request) -> web.Response:
            status, body = await forward(request.path_qs)
            return web.Response(status=status, body=body, content_type="application/json")

        app = web.Application()
        app.router.add_get("/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            await asyncio.Event().wait()
        finally:
            await close()
            await runner.cleanup()

    uvloop.run(main())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream_clients")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--serve", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port, args.backend)
        return 0
    results: dict[str, list[tuple[float, float]]] = {c: [] for c in CLIENTS}
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="upstream-clients-") as tmp:
        logs = Path(tmp) / "servers.log"
        backend = free_port()
        with process([py, "-m", "demo_backend", "--port", str(backend)], backend, logs):
            for _ in range(args.rounds):
                for client in CLIENTS:
                    port = free_port()
                    command = [py, "-m", "bench.upstream_clients", "--serve", client, "--port", str(port)]
                    with process([*command, "--backend", f"http://127.0.0.1:{backend}"], port, logs) as pid:
                        url = f"http://127.0.0.1:{port}{PATH}"
                        results[client].append(measure(url, pid, args.seconds, {}))
    for client, runs in results.items():
        print(summary(client, runs, 8))
    return 0


if __name__ == "__main__":
    sys.exit(main())
