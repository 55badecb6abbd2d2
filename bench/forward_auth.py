"""`python -m bench.forward_auth`: nginx with the shipped forward-auth recipes against plain nginx, in one run.

Three nginx in front of the demo backend, each with the same main config and upstream settings: plain (no
decision), the `auth_request` recipe (one gateway decision per request), and the caching recipe (nginx keeps an
allow for as long as the gateway says). wrk visits them in turns on GET /api/private-scoped with one token; each row
is that target's median round. The gateway's own proxy mode is measured beside them for reference.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from .__main__ import PATH, TOKEN, backend_and_idp, gateway
from .recipes import move_cache, nginx_main, render
from .tools import WrkResult, ensure_debian_packages, free_port, wait_for_port, wrk

TARGETS = (
    ("nginx, plain", "plain"),
    ("nginx + forward-auth", "nginx.conf"),
    ("nginx + forward-auth, cached allows", "nginx-cached.conf"),
)


@contextmanager
def nginx(directory: Path, recipe: str, *, gateway_port: int, backend: int, workers: int) -> Iterator[int]:
    port = free_port()
    prefix = directory / f"nginx-{port}"
    prefix.mkdir()
    text = render(recipe, listen=port, gateway=gateway_port, backend=backend)
    cache = Path("/dev/shm") / f"zitadel-gateway-bench-{uuid.uuid4().hex}"
    if recipe == "nginx-cached.conf":
        text = move_cache(text, cache)
    (prefix / "recipe.conf").write_text(text)
    (prefix / "nginx.conf").write_text(nginx_main(prefix, prefix / "recipe.conf", workers))
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen([binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf")], stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(cache, ignore_errors=True)


def _median(results: list[WrkResult]) -> WrkResult:
    return sorted(results, key=lambda r: r.requests_per_second)[len(results) // 2]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.forward_auth", description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1, help="nginx worker processes and gateway workers")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    ensure_debian_packages({"nginx": "nginx-light", "wrk": "wrk"})
    with tempfile.TemporaryDirectory(prefix="gateway-bench-fa-") as tmp, ExitStack() as stack:
        directory = Path(tmp)
        backend, idp = stack.enter_context(backend_and_idp(directory))
        decisions = free_port()
        forward_auth = {"forward_auth": {"host": "127.0.0.1", "port": decisions}, "logging": {"level": "warning"}}
        proxy_port, _ = stack.enter_context(gateway(directory, idp, backend, args.workers, forward_auth))
        ports = {
            label: stack.enter_context(
                nginx(directory, recipe, gateway_port=decisions, backend=backend, workers=args.workers)
            )
            for label, recipe in TARGETS
        }
        ports["gateway proxy mode (reference)"] = proxy_port
        runs: dict[str, list[WrkResult]] = {label: [] for label in ports}
        for round_ in range(args.rounds):
            print(f"bench.forward_auth: round {round_ + 1}/{args.rounds}", flush=True)
            for label, port in ports.items():
                url = f"http://127.0.0.1:{port}{PATH}"
                wrk(url, seconds=1, connections=args.connections, threads=args.threads, headers=TOKEN)
                runs[label].append(
                    wrk(url, seconds=args.seconds, connections=args.connections, threads=args.threads, headers=TOKEN)
                )
    plain = _median(runs["nginx, plain"])
    print(
        f"wrk -t{args.threads} -c{args.connections} -d{args.seconds}s on GET {PATH} with one token, "
        f"{args.workers} nginx worker(s) and gateway worker(s), median of {args.rounds} rounds taken in turns:\n"
    )
    print("| target | req/s | p50 ms | p99 ms | non-2xx | / plain nginx |")
    print("|---|---|---|---|---|---|")
    for label, results in runs.items():
        r = _median(results)
        ratio = r.requests_per_second / plain.requests_per_second
        print(
            f"| {label} | {r.requests_per_second:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.non_2xx} | {ratio:.2f} |"
        )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
