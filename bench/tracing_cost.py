"""What tracing adds to one request, in isolation: `python -m bench.tracing_cost [--ratio R] [--requests N]`.

Times, in this process, exactly the tracing work of one proxied request (the server span from the request's
headers, the cache hit, the upstream `traceparent`, the span's end with the trace id for the log line) against
the same loop without it. The neighbours' load moves it far less than a whole-gateway measurement
(`bench.cpu_per_request --tracing`), whose rounds spread over tens of µs on a shared machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

from multidict import CIMultiDict, CIMultiDictProxy
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.config import TracingSettings
from gateway.ops.tracing import Tracer

UPSTREAM = "http://127.0.0.1:8081"
PATH = "/api/private-scoped"


def per_call(function: Callable[[], object], count: int) -> float:
    started = time.process_time()
    for _ in range(count):
        function()
    return (time.process_time() - started) / count


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tracing_cost")
    parser.add_argument("--ratio", type=float, default=0.0)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    tracer = Tracer(TracingSettings(sampling_ratio=args.ratio), exporter=InMemorySpanExporter())
    headers = CIMultiDictProxy(CIMultiDict({"Host": "gw", "Authorization": "Bearer x", "User-Agent": "wrk"}))

    def traced() -> None:
        upstream: CIMultiDict[str] = CIMultiDict()
        span = tracer.server_span("GET", headers, "http", "127.0.0.1")
        span.instant("introspection", {"gateway.cache": "hit"})  # a cached token, as decide() marks it
        span.upstream("GET", UPSTREAM, PATH, upstream)
        span.finish(None, PATH, 200, "allow", "ok", "proxy")

    def untraced() -> None:
        upstream: CIMultiDict[str] = CIMultiDict()
        del upstream

    costs = sorted(per_call(traced, args.requests) - per_call(untraced, args.requests) for _ in range(args.rounds))
    tracer.provider.shutdown()
    micros = [1e6 * c for c in costs]
    print(
        f"tracing, sampling ratio {args.ratio:g}: {micros[0]:.2f}-{micros[-1]:.2f} us of CPU per request "
        f"(median {micros[len(micros) // 2]:.2f}, {args.rounds} rounds of {args.requests:,})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
