"""WebSocket relay cost: `python -m bench.websocket [--rounds R] [--messages N] [--connections C]`.

Starts the bench IdP, an aiohttp echo WebSocket server (`--serve-echo PORT`, its own process) and the gateway (one
worker) with a `websocket: true` route, then measures, in alternating rounds on the same machine, directly against
the echo server and through the gateway:

- latency: one connection, N round trips of a 32-byte text message, one at a time (median and p99 of the round
  trip; the gateway's added latency is the difference of the medians);
- throughput: C connections, each with N messages of 32 bytes in flight through a window of 64, echoed back
  (messages per second, counting each echoed message once).

The ratio through the gateway / direct is the figure to read; the load generator shares the cores with the
servers, so absolute numbers say as much about this machine as about the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import aiohttp
from aiohttp import web

from .__main__ import gateway, process
from .tools import free_port, machine

TOKEN = {"Authorization": "Bearer demo-reader-token"}
PAYLOAD = "x" * 32
WINDOW = 64


def serve_echo(port: int) -> None:
    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        async for message in ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                await ws.send_str(message.data)
        return ws

    app = web.Application()
    app.router.add_get("/ws/echo", echo)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


async def latency(url: str, count: int) -> list[float]:
    async with aiohttp.ClientSession() as session, session.ws_connect(url, headers=TOKEN) as ws:
        for _ in range(200):  # warm up
            await ws.send_str(PAYLOAD)
            await ws.receive()
        times = []
        for _ in range(count):
            started = time.perf_counter()
            await ws.send_str(PAYLOAD)
            await ws.receive()
            times.append(time.perf_counter() - started)
        return times


async def throughput(url: str, connections: int, count: int) -> float:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        sockets = [await session.ws_connect(url, headers=TOKEN) for _ in range(connections)]

        async def one(ws: aiohttp.ClientWebSocketResponse) -> None:
            window = asyncio.Semaphore(WINDOW)

            async def send() -> None:
                for _ in range(count):
                    await window.acquire()
                    await ws.send_str(PAYLOAD)

            sender = asyncio.ensure_future(send())
            for _ in range(count):
                await ws.receive()
                window.release()
            await sender

        started = time.perf_counter()
        await asyncio.gather(*(one(ws) for ws in sockets))
        elapsed = time.perf_counter() - started
        for ws in sockets:
            await ws.close()
        return connections * count / elapsed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.websocket")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--serve-echo", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_echo is not None:
        serve_echo(args.serve_echo)
        return 0
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="bench-ws-") as tmp, ExitStack() as stack:
        directory = Path(tmp)
        logs = directory / "servers.log"
        idp, echo = free_port(), free_port()
        stack.enter_context(process([py, "-m", "bench.idp", "--port", str(idp)], idp, logs))
        stack.enter_context(process([py, "-m", "bench.websocket", "--serve-echo", str(echo)], echo, logs))
        routes = [{"id": "ws", "path": "/ws/**", "policy": "authenticated", "websocket": True}]
        port, _ = stack.enter_context(gateway(directory, idp, echo, 1, {"routes": routes}))
        targets = {"direct": f"http://127.0.0.1:{echo}/ws/echo", "gateway": f"http://127.0.0.1:{port}/ws/echo"}
        rtt: dict[str, list[float]] = {name: [] for name in targets}
        rate: dict[str, list[float]] = {name: [] for name in targets}
        for _ in range(args.rounds):
            for name, url in targets.items():
                rtt[name].append(statistics.median(asyncio.run(latency(url, args.messages))) * 1e6)
                rate[name].append(asyncio.run(throughput(url, args.connections, args.messages)))
        p99 = {name: _p99(asyncio.run(latency(url, args.messages))) * 1e6 for name, url in targets.items()}
    median_rtt = {name: statistics.median(values) for name, values in rtt.items()}
    median_rate = {name: statistics.median(values) for name, values in rate.items()}
    print(f"# python -m bench.websocket, {time.strftime('%Y-%m-%d')}, {machine()}")
    print(
        f"# {args.rounds} rounds; latency: 1 connection x {args.messages} round trips; throughput: "
        f"{args.connections} connections x {args.messages} messages, window {WINDOW}"
    )
    print("| | direct | through the gateway | ratio |")
    print("|---|---|---|---|")
    d, g = median_rtt["direct"], median_rtt["gateway"]
    print(f"| round trip, median | {d:.0f} µs | {g:.0f} µs | {g / d:.2f} (+{g - d:.0f} µs) |")
    print(
        f"| round trip, p99 (last run) | {p99['direct']:.0f} µs | {p99['gateway']:.0f} µs | "
        f"{p99['gateway'] / p99['direct']:.2f} |"
    )
    d, g = median_rate["direct"], median_rate["gateway"]
    print(f"| messages per second | {d:,.0f} | {g:,.0f} | {g / d:.2f} |")
    return 0


def _p99(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.99) - 1]


if __name__ == "__main__":
    sys.exit(main())
