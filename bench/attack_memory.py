"""Memory under request-side attack loads: `python -m bench.attack_memory [--requests N] [TREE ...]`.

One attack per entry of ATTACKS, each against a fresh `python -m gateway` process (1 worker, a public CORS route,
no IdP, no upstream contact), RSS from /proc after a warm-up and after the attack. TREE: source trees to compare
(default: this one), e.g. an older commit unpacked with `git archive <commit> | tar -x -C OLD`.

- `route-memo`: preflights whose Access-Control-Request-Method is 16 KB, each a different one. The route memo took
  the method as part of its key, so about 4096 x 16 KB (64 MiB) stayed pinned (issue 12, point 11).

To measure another attack, add a function to ATTACKS.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from .tools import free_port, rss_bytes, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = 16
METHOD_BYTES = 16_000  # under the 16 KiB header-line limit, with the header's name
ORIGIN = "https://app.example"

Attack = Callable[[str, int], Coroutine[Any, Any, int]]


async def _in_parallel(count: int, one: Callable[[aiohttp.ClientSession, int], Awaitable[int]]) -> int:
    """Run `one(session, i)` for i < count on CONCURRENCY keep-alive connections; the number of answers."""
    answered = 0
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(start: int) -> None:
            nonlocal answered
            for i in range(start, count, CONCURRENCY):
                got = await one(session, i)  # awaited first: `answered += await ...` would lose updates
                answered += got

        await asyncio.gather(*(worker(w) for w in range(CONCURRENCY)))
    return answered


async def route_memo(base: str, count: int) -> int:
    async def one(session: aiohttp.ClientSession, i: int) -> int:
        method = f"M{i}".ljust(METHOD_BYTES, "X")
        headers = {"Origin": ORIGIN, "Access-Control-Request-Method": method}
        async with session.options(base + "/app/x", headers=headers) as resp:
            await resp.read()
            return 1

    return await _in_parallel(count, one)


ATTACKS: dict[str, Attack] = {"route-memo": route_memo}


def _document(port: int, admin: int) -> dict[str, object]:
    return {
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": admin},
        "upstreams": {"default": {"url": "http://127.0.0.1:9"}},  # never contacted: preflights are answered
        "routes": [{"path": "/app/**", "policy": "public", "cors": {"allowed_origins": [ORIGIN]}}],
        "logging": {"level": "warning", "format": "json"},
        "reload": {"watch": False},
    }


async def _warm_up(base: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            headers = {"Origin": ORIGIN, "Access-Control-Request-Method": "GET"}
            async with session.options(base + "/app/x", headers=headers) as resp:
                await resp.read()


def measure(tree: Path, attack: str, count: int) -> tuple[int, int, int]:
    """(RSS before, RSS after, answers) of one gateway process from `tree` under one attack."""
    port, admin = free_port(), free_port()
    with tempfile.TemporaryDirectory() as scratch:
        config = Path(scratch) / "gateway.yaml"
        config.write_text(yaml.safe_dump(_document(port, admin)))
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--config", str(config), "--env-file", os.devnull],
            cwd=tree,  # `-m` imports the gateway package of this tree
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(port, proc)
            base = f"http://127.0.0.1:{port}"
            asyncio.run(_warm_up(base))
            before = rss_bytes(proc.pid)
            answered: int = asyncio.run(ATTACKS[attack](base, count))
            after = rss_bytes(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return before, after, answered


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.attack_memory", description=__doc__.split("\n")[0])
    parser.add_argument("trees", nargs="*", type=Path, default=[ROOT], help="source trees (default: this one)")
    parser.add_argument("--attack", choices=sorted(ATTACKS), action="append", help="default: every attack")
    parser.add_argument("--requests", type=int, default=20_000, help="attack requests per run (default 20000)")
    args = parser.parse_args()
    mib = 1024 * 1024
    for attack in args.attack or sorted(ATTACKS):
        for tree in args.trees:
            before, after, answered = measure(tree.resolve(), attack, args.requests)
            print(
                f"{attack:<12} {tree}: {answered} requests, RSS {before / mib:.1f} MiB -> {after / mib:.1f} MiB, "
                f"growth {(after - before) / mib:.1f} MiB"
            )


if __name__ == "__main__":
    main()
