"""CPU per request: `python -m bench.cpu_per_request [--rounds N] [--seconds S] CHECKOUT...`.

The gateway's own CPU time (utime + stime from /proc) divided by the requests wrk got answered, one worker, on
GET /api/private-scoped with a cached token. Each CHECKOUT (a directory holding a `gateway` package, e.g.
`git archive main | tar -x -C /tmp/main`, or `.` for this one) is measured in turn, round after round, against
one backend and one IdP. On a shared machine req/s moves with the neighbours' load; CPU per request moves much
less, so it is the number to compare two versions of the hot path with.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .__main__ import PATH, TOKEN, gateway, process
from .tools import free_port, wrk


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_per_request")
    parser.add_argument("checkouts", type=Path, nargs="+")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=4)
    args = parser.parse_args(argv)
    results: dict[Path, list[tuple[float, float]]] = {c: [] for c in args.checkouts}
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="gateway-cpu-") as tmp:
        directory = Path(tmp)
        backend, idp = free_port(), free_port()
        logs = directory / "servers.log"
        with (
            process([py, "-m", "demo_backend", "--port", str(backend)], backend, logs),
            process([py, "-m", "bench.idp", "--port", str(idp)], idp, logs),
        ):
            for _ in range(args.rounds):
                for checkout in args.checkouts:
                    with gateway(directory, idp, backend, 1, source=checkout.resolve()) as (port, pid):
                        url = f"http://127.0.0.1:{port}{PATH}"
                        wrk(url, seconds=1, connections=64, threads=2, headers=TOKEN)  # warm-up, token cached
                        before = cpu_seconds(pid)
                        result = wrk(url, seconds=args.seconds, connections=64, threads=2, headers=TOKEN)
                        used = cpu_seconds(pid) - before
                        results[checkout].append((1e6 * used / result.requests, result.requests_per_second))
    for checkout, runs in results.items():
        micros = sorted(r[0] for r in runs)
        rates = sorted(r[1] for r in runs)
        print(
            f"{checkout!s:>24}: CPU {micros[0]:.0f}-{micros[-1]:.0f} us/request "
            f"(median {micros[len(micros) // 2]:.0f}); {rates[0]:,.0f}-{rates[-1]:,.0f} req/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
