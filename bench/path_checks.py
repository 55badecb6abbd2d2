"""Cost of the path rules per request: `python -m bench.path_checks [iterations]`.

Times gateway.rules.canonical_path + resolve_route (exact match plus the case-folded match) over typical and
hostile targets against the repository's routes plus a few dozen more, in one process, no I/O. Prints
microseconds per call; numbers depend on the machine.
"""

from __future__ import annotations

import sys
import time

from gateway.policy.paths import PathError, canonical_path
from gateway.policy.rules import Access, PathPattern, Policy, Route, resolve_route

TARGETS = [
    "/api/public",
    "/api/private-scoped",
    "/api/v1/items/12345/comments",
    "/static/app/js/main.0a1b2c3d.js",
    "/open/%2e%2e/api/private",
    "/open/caf%C3%A9/x//y/./z",
    "/API/private",
    "/open/..%2fapi",
]


def _routes() -> list[Route]:
    routes = [
        Route(id=p, pattern=PathPattern.compile(p), policy=Policy(Access.PUBLIC), upstream="u")
        for p in ("/api/public", "/api/private", "/api/private-scoped", "/api/whoami")
    ]
    routes += [
        Route(
            id=f"r{i}", pattern=PathPattern.compile(f"/svc{i}/*/items/**"), policy=Policy(Access.PUBLIC), upstream="u"
        )
        for i in range(40)
    ]
    routes.append(Route(id="rest", pattern=PathPattern.compile("/**"), policy=Policy(Access.PUBLIC), upstream="u"))
    return routes


def main(iterations: int) -> None:
    routes = _routes()
    for target in TARGETS:
        started = time.perf_counter()
        outcome = "ok"
        for _ in range(iterations):
            try:
                resolve_route(routes, "GET", canonical_path(target))
            except PathError:
                outcome = "400"
        per_call = (time.perf_counter() - started) / iterations * 1e6
        print(f"{per_call:8.2f} us  {outcome:>3}  {target}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000)
