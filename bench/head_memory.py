"""Memory under unfinished request heads: `python -m bench.head_memory [--connections N] [--lines L] CHECKOUT...`.

The attack of issue 12: N connections (200) each send a request line and L header lines (98) of 16 KiB, every line
within aiohttp's per-line and per-count bounds, and never the blank line that ends the head; they hold the
connection open. Without a bound on the whole head the gateway keeps every byte (about 1.6 MB a connection);
with `limits.max_head_bytes` (32 KiB) each connection costs at most that and is answered 431. The gateway's RSS
(from /proc) is sampled throughout and its peak reported. Each CHECKOUT (a directory holding a `gateway` package,
e.g. `git archive e3ee3d5 | tar -x -C /tmp/before`, or `.`) is measured in turn, with its default limits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from .__main__ import backend_and_idp, gateway
from .tools import rss_bytes

LINE_VALUE = 16_370  # with the name "X-Pad-NN", 16,378 bytes: within aiohttp's max_field_size (16 KiB)


async def _hold(port: int, lines: int, done: asyncio.Event) -> str:
    """One connection of the attack: the head line by line, then wait. Its fate: held, answered or closed."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return "refused"
    try:
        writer.write(b"GET /api/public HTTP/1.1\r\nHost: gateway.test\r\n")
        for i in range(lines):
            writer.write(b"X-Pad-%02d: %s\r\n" % (i, b"a" * LINE_VALUE))
            await writer.drain()
        reading = asyncio.ensure_future(reader.read(200))
        stopped = asyncio.ensure_future(done.wait())
        await asyncio.wait({reading, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not reading.done():
            reading.cancel()
            return "held"
        answer = reading.result()
        return answer[9:12].decode() if answer.startswith(b"HTTP/1.1 ") else "closed"
    except (ConnectionError, OSError):
        return "closed"
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def _attack(port: int, pid: int, connections: int, lines: int, hold: float) -> tuple[int, int, dict[str, int]]:
    """(RSS before, peak RSS during, how the connections ended)."""
    before = rss_bytes(pid)
    done = asyncio.Event()
    tasks = [asyncio.ensure_future(_hold(port, lines, done)) for _ in range(connections)]
    peak = before
    deadline = time.monotonic() + 600.0  # a bound against hanging
    while not all(t.done() for t in tasks) and time.monotonic() < deadline:
        peak = max(peak, rss_bytes(pid))
        if hold <= 0:
            done.set()
        await asyncio.sleep(0.1)
        hold -= 0.1
    done.set()
    fates: dict[str, int] = {}
    for fate in await asyncio.gather(*tasks):
        fates[fate] = fates.get(fate, 0) + 1
    return before, peak, fates


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.head_memory")
    parser.add_argument("checkouts", type=Path, nargs="+")
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--lines", type=int, default=98)
    parser.add_argument("--hold", type=float, default=5.0, help="seconds the heads are held after they are sent")
    args = parser.parse_args(argv)
    mib = 1024 * 1024
    with tempfile.TemporaryDirectory(prefix="gateway-head-") as tmp:
        directory = Path(tmp)
        with backend_and_idp(directory) as (backend, idp):
            for checkout in args.checkouts:
                with gateway(directory, idp, backend, 1, source=checkout.resolve()) as (port, pid):
                    before, peak, fates = asyncio.run(_attack(port, pid, args.connections, args.lines, args.hold))
                ends = ", ".join(f"{count} {fate}" for fate, count in sorted(fates.items()))
                print(
                    f"{checkout!s:>24}: RSS {before / mib:.1f} MiB -> peak {peak / mib:.1f} MiB "
                    f"(+{(peak - before) / mib:.1f} MiB) under {args.connections} x {args.lines} lines of 16 KiB; "
                    f"connections: {ends}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
