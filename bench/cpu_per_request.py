"""CPU per request: `python -m bench.cpu_per_request [--rounds N] [--seconds S] [--tracing C] CHECKOUT...`.

The gateway's own CPU time (utime + stime from /proc) divided by the requests wrk got answered, one worker, on
GET /api/private-scoped with a cached token. Each CHECKOUT (a directory holding a `gateway` package, e.g.
`git archive main | tar -x -C /tmp/main`, or `.` for this one) is measured in turn, round after round, against
one backend and one IdP. On a shared machine req/s moves with the neighbours' load; CPU per request moves much
less, so it is the number to compare two versions of the hot path with.

`--tracing C` (one of the checkouts): C also with tracing on, sampling ratio 0 (`tracing:` with an endpoint nothing
listens on; at ratio 0 nothing is exported), for what tracing costs when it samples nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .__main__ import PATH, TOKEN, backend_and_idp, gateway
from .tools import free_port, wrk


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(url: str, pid: int, seconds: int, headers: dict[str, str]) -> tuple[float, float]:
    """(CPU µs per request of process `pid`, requests per second) under wrk, after a one-second warm-up (the token
    cached, the pools filled)."""
    wrk(url, seconds=1, connections=64, threads=2, headers=headers)
    before = cpu_seconds(pid)
    result = wrk(url, seconds=seconds, connections=64, threads=2, headers=headers)
    return 1e6 * (cpu_seconds(pid) - before) / result.requests, result.requests_per_second


def summary(name: str, runs: list[tuple[float, float]], width: int) -> str:
    """One line per measured target: the range and median of CPU per request, the range of throughput."""
    micros = sorted(r[0] for r in runs)
    rates = sorted(r[1] for r in runs)
    return (
        f"{name:>{width}}: CPU {micros[0]:.0f}-{micros[-1]:.0f} us/request "
        f"(median {micros[len(micros) // 2]:.0f}); {rates[0]:,.0f}-{rates[-1]:,.0f} req/s"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_per_request")
    parser.add_argument("checkouts", type=Path, nargs="+")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--tracing", type=Path, action="append", default=[], metavar="CHECKOUT")
    args = parser.parse_args(argv)
    variants: dict[str, tuple[Path, dict[str, Any]]] = {}
    for checkout in args.checkouts:
        variants[str(checkout)] = (checkout, {})
        if checkout in args.tracing:
            endpoint = f"http://127.0.0.1:{free_port()}/v1/traces"
            on = {"tracing": {"enabled": True, "endpoint": endpoint, "sampling_ratio": 0}}
            variants[f"{checkout} tracing ratio 0"] = (checkout, on)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(prefix="gateway-cpu-") as tmp:
        directory = Path(tmp)
        with backend_and_idp(directory) as (backend, idp):
            for _ in range(args.rounds):
                for name, (checkout, extra) in variants.items():
                    # An admin port of its own: the default one may be taken on a shared machine.
                    extra = {**extra, "admin": {"host": "127.0.0.1", "port": free_port()}}
                    with gateway(directory, idp, backend, 1, extra, source=checkout.resolve()) as (port, pid):
                        url = f"http://127.0.0.1:{port}{PATH}"
                        results[name].append(measure(url, pid, args.seconds, TOKEN))
    for checkout, runs in results.items():
        print(summary(checkout, runs, 24))
    return 0


if __name__ == "__main__":
    sys.exit(main())
