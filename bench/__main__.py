"""`make bench` / `python -m bench`: the gateway against direct-to-backend and nginx, on this machine.

Starts the demo backend, the bench IdP (demo_backend.idp with a counter), the gateway and nginx (a plain reverse
proxy, as many workers as the gateway), then in turns: wrk on /api/private-scoped with a cached token; a burst of
300 concurrent first requests with one new token (calls counted at the IdP); 1,000,000 distinct bogus tokens
through the cache path (the gateway's RSS from /proc before and after). Prints a table; `--write` records it in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from demo_backend.idp import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET

from .idp import BURST_TOKENS
from .tools import (
    WrkResult,
    ensure_debian_packages,
    free_port,
    machine,
    rss_bytes,
    spray,
    start_nginx,
    wait_for_port,
    wrk,
)

ROOT = Path(__file__).resolve().parent.parent
PATH = "/api/private-scoped"
TOKEN = {"Authorization": "Bearer demo-reader-token"}


@dataclass
class Row:
    workers: int
    direct: WrkResult
    nginx: WrkResult
    gateway: WrkResult
    others: list[tuple[str, WrkResult]]


@contextmanager
def process(
    args: list[str], port: int, log: Path, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> Iterator[int]:
    with log.open("ab") as out:
        proc = subprocess.Popen(args, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for_port(port, proc)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def backend_and_idp(directory: Path) -> Iterator[tuple[int, int]]:
    """The demo backend and the bench IdP on free ports, their output in `directory`/servers.log."""
    backend, idp = free_port(), free_port()
    logs = directory / "servers.log"
    py = sys.executable
    with (
        process([py, "-m", "demo_backend", "--port", str(backend)], backend, logs),
        process([py, "-m", "bench.idp", "--port", str(idp)], idp, logs),
    ):
        yield backend, idp


def gateway_config(directory: Path, port: int, idp: int, backend: int, workers: int, extra: dict[str, Any]) -> Path:
    document: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": port},
        "workers": workers,
        "idp": {"issuer": f"http://127.0.0.1:{idp}", "timeout_seconds": 5},
        "upstreams": {"default": {"url": f"http://127.0.0.1:{backend}"}},
        "routes": [
            {"id": "public", "path": "/api/public", "policy": "public"},
            {"id": "private", "path": "/api/private", "policy": "authenticated"},
            {"id": "private-scoped", "path": PATH, "roles": {"any_of": ["read:messages"]}},
        ],
        **extra,
    }
    path = directory / f"gateway-{port}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@contextmanager
def gateway(
    directory: Path, idp: int, backend: int, workers: int, extra: dict[str, Any] | None = None, source: Path = ROOT
) -> Iterator[tuple[int, int]]:
    """`source`: the checkout whose `gateway` package runs (another one for an A/B in the same run)."""
    port = free_port()
    config = gateway_config(directory, port, idp, backend, workers, extra or {})
    env = {**os.environ, "ZITADEL_CLIENT_ID": DEMO_CLIENT_ID, "ZITADEL_CLIENT_SECRET": DEMO_CLIENT_SECRET}
    args = [sys.executable, "-m", "gateway", "--config", str(config), "--env-file", os.devnull]
    with process(args, port, directory / "gateway.log", env, cwd=source) as pid:
        time.sleep(0.5 * workers)  # every worker listening and done with discovery
        yield port, pid


def idp_calls(idp: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{idp}/_count", timeout=10) as resp:
        count: int = json.load(resp)["introspections"]
        return count


async def _burst(url: str, token: str, size: int) -> list[int]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as client:
        # Every connection open first, so that the requests really arrive together.
        started = asyncio.Event()

        async def one() -> int:
            await started.wait()
            async with client.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
                await resp.read()
                return resp.status

        tasks = [asyncio.ensure_future(one()) for _ in range(size)]
        await asyncio.sleep(0.1)
        started.set()
        return list(await asyncio.gather(*tasks))


def burst(port: int, idp: int, token: str, size: int) -> tuple[int, list[int]]:
    before = idp_calls(idp)
    statuses = asyncio.run(_burst(f"http://127.0.0.1:{port}{PATH}", token, size))
    return idp_calls(idp) - before, statuses


def run_wrk(port: int, args: argparse.Namespace) -> WrkResult:
    url = f"http://127.0.0.1:{port}{PATH}"
    wrk(url, seconds=2, connections=args.connections, threads=args.threads, headers=TOKEN)  # warm-up
    return wrk(url, seconds=args.seconds, connections=args.connections, threads=args.threads, headers=TOKEN)


def _row(label: str, r: WrkResult, base: WrkResult | None = None, nginx: WrkResult | None = None) -> str:
    ratio_n = f"{r.requests_per_second / nginx.requests_per_second:.2f}" if nginx else ""
    ratio_d = f"{r.requests_per_second / base.requests_per_second:.2f}" if base else ""
    return (
        f"| {label:<22} | {r.requests_per_second:>9,.0f} | {r.p50_ms:>7.2f} | {r.p99_ms:>7.2f} | "
        f"{r.non_2xx:>5} | {ratio_n:>13} | {ratio_d:>14} |"
    )


def report(rows: list[Row], bursts: list[str], sprays: list[str], args: argparse.Namespace) -> str:
    lines = [
        (
            f"wrk -t{args.threads} -c{args.connections} -d{args.seconds}s on GET {PATH} with a cached token "
            "(the same Authorization header for all three), each after a 2 s warm-up; the targets take turns for "
            f"{args.rounds} round(s) and each row is that target's median round. nginx and the gateway both write "
            "one access-log line per request to a file."
        ),
        "",
        "| target                 |     req/s | p50 ms  | p99 ms  | non-2xx | gateway/nginx | gateway/direct |",
        "|------------------------|-----------|---------|---------|---------|---------------|----------------|",
    ]
    for row in rows:
        w = f"{row.workers} worker{'s' if row.workers > 1 else ''}"
        lines.append(_row("direct (backend)", row.direct))
        lines.append(_row(f"nginx, {w}", row.nginx))
        for label, result in row.others:
            lines.append(_row(f"{label}, {w}", result, row.direct, row.nginx))
        lines.append(_row(f"gateway, {w}", row.gateway, row.direct, row.nginx))
    return "\n".join([*lines, "", *bursts, *sprays])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (nginx gets the same)")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="wrk runs per target, in turn; the median is kept")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--burst", type=int, default=300)
    parser.add_argument("--spray", type=int, default=1_000_000, help="distinct bogus tokens (0: skip)")
    parser.add_argument("--write", action="store_true", help="record this run in docs/benchmarks.md")
    parser.add_argument(
        "--compare",
        type=Path,
        action="append",
        default=[],
        help="another checkout (e.g. `git archive main | tar -x -C DIR`) whose gateway is measured in the same run",
    )
    parser.add_argument(
        "--only", choices=("all", "throughput"), default="all", help="throughput: the wrk table only (quick A/B)"
    )
    args = parser.parse_args(argv)
    ensure_debian_packages({"nginx": "nginx-light", "wrk": "wrk", "redis-server": "redis-server"})

    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        directory = Path(tmp)
        logs = directory / "servers.log"
        with backend_and_idp(directory) as (backend, idp):
            rows: list[Row] = []
            for workers in args.workers:
                print(f"bench: {workers} worker(s): direct, nginx, gateway x {args.rounds} rounds ...", flush=True)
                rows.append(throughput_row(directory, idp, backend, workers, args))

            bursts: list[str] = []
            sprays: list[str] = []
            if args.only == "all":
                bursts, sprays = burst_and_spray(directory, idp, backend, logs, args)

    text = report(rows, bursts, sprays, args)
    print(text)
    if args.write:
        command = "python -m bench " + shlex.join(argv if argv is not None else sys.argv[1:])
        write_doc(text, command.strip())
    return 0


def throughput_row(directory: Path, idp: int, backend: int, workers: int, args: argparse.Namespace) -> Row:
    """Every target runs at once (idle ones cost nothing); wrk visits them in turn, round after round, and each
    keeps its median round: a neighbour's burst of load then moves one round, not the ratio."""
    nginx_port = free_port()
    nginx = start_nginx(directory / f"nginx-{workers}", nginx_port, backend, workers)
    with ExitStack() as stack:
        stack.callback(nginx.wait, timeout=30)
        stack.callback(nginx.terminate)
        ports = {"direct": backend, "nginx": nginx_port}
        for source in args.compare:
            ports[source.name] = stack.enter_context(
                gateway(directory, idp, backend, workers, source=source.resolve())
            )[0]
        ports["gateway"] = stack.enter_context(gateway(directory, idp, backend, workers))[0]
        runs: dict[str, list[WrkResult]] = {name: [] for name in ports}
        for _ in range(args.rounds):
            for name, port in ports.items():
                runs[name].append(run_wrk(port, args))
    median = {name: sorted(r, key=lambda w: w.requests_per_second)[len(r) // 2] for name, r in runs.items()}
    others = [(source.name, median[source.name]) for source in args.compare]
    return Row(workers, median["direct"], median["nginx"], median["gateway"], others)


def burst_and_spray(
    directory: Path, idp: int, backend: int, logs: Path, args: argparse.Namespace
) -> tuple[list[str], list[str]]:
    bursts = [f"Burst: {args.burst} concurrent first requests with one new token:", ""]
    redis_port = free_port()
    redis_args = ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""]
    redis_cache = {"cache": {"backend": "redis", "url": f"redis://127.0.0.1:{redis_port}/0"}}
    setups: list[tuple[int, dict[str, Any], str]] = [
        (1, {}, "1 worker, memory cache"),
        (2, {}, "2 workers, memory cache (one cache per worker)"),
        (2, redis_cache, "2 workers, Redis cache (a claim per token across processes)"),
    ]
    for i, (workers, extra, label) in enumerate(setups):
        with (
            process(redis_args, redis_port, logs),
            gateway(directory, idp, backend, workers, extra) as (port, _),
        ):
            calls, statuses = burst(port, idp, BURST_TOKENS[i], args.burst)
        ok = sum(1 for s in statuses if s == 200)
        bursts.append(f"- {label}: **{calls}** introspection call(s) at the IdP, {ok}/{len(statuses)} answered 200")
    bursts.append("")

    sprays: list[str] = []
    if args.spray:
        print(f"bench: spraying {args.spray:,} distinct bogus tokens ...", flush=True)
        with gateway(directory, idp, backend, 1) as (port, pid):
            url = f"http://127.0.0.1:{port}{PATH}"
            wrk(url, seconds=2, connections=args.connections, threads=args.threads, headers=TOKEN)
            before = rss_bytes(pid)
            result = spray(
                url,
                directory,
                tokens=args.spray,
                connections=args.connections,
                threads=args.threads,
                calls=lambda: idp_calls(idp),
            )
            after = rss_bytes(pid)
        mib = 2**20
        answered_2xx = result.wrk.requests - result.wrk.non_2xx
        sprays = [
            (
                f"Spray: {result.calls:,} distinct bogus tokens (1 worker, max_entries 100000), each one "
                f"introspection call at the IdP: gateway RSS {before / mib:.1f} MiB -> {after / mib:.1f} MiB, "
                f"growth **{(after - before) / mib:.1f} MiB**; {result.calls / result.seconds:,.0f} tokens/s "
                f"(p50 {result.wrk.p50_ms:.1f} ms, p99 {result.wrk.p99_ms:.1f} ms); "
                f"{answered_2xx} answered 2xx (must be 0)."
            ),
            "",
        ]
    return bursts, sprays


NOTES = "## Notes"


def write_doc(text: str, command: str) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    path.parent.mkdir(exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    header = (
        "# Benchmarks\n\n"
        f"One run of `{command}` (`make bench` runs it with the defaults), {stamp}.\n\n"
        f"Machine: {machine()}; Python {platform.python_version()}; every process (wrk, the backend, the IdP, "
        "nginx, the gateway) on the same machine.\n\n"
    )
    # Hand-written notes below the run (what bounds the numbers) survive the next run.
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    notes = old[old.index(NOTES) :] if NOTES in old else NOTES + "\n"
    path.write_text(header + text + "\n\n" + notes, encoding="utf-8")
    print(f"bench: wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
