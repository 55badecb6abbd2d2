"""The routing memo: the same answers as canonical_path + match_route, bounded, refusals never remembered."""

from __future__ import annotations

import pytest

from gateway.policy.decision import RouteMemo
from gateway.policy.paths import PathError, canonical_path
from gateway.policy.rules import Access, PathPattern, Policy, Route, match_route

ROUTES = (
    Route("public", PathPattern.compile("/api/public"), Policy(Access.PUBLIC), "default"),
    Route("files", PathPattern.compile("/files/**"), Policy(Access.AUTHENTICATED), "default", frozenset({"GET"})),
)


@pytest.mark.parametrize(
    ("method", "raw"),
    [("GET", "/api/public"), ("GET", "/api/./public"), ("GET", "/files/a/../b"), ("POST", "/files/x"), ("GET", "/no")],
)
def test_memo_answers_like_the_pure_functions_and_again_from_memory(method: str, raw: str) -> None:
    memo = RouteMemo(ROUTES)
    path = canonical_path(raw)
    expected = (path, match_route(ROUTES, method, path))
    assert memo.resolve(method, raw) == expected
    assert memo.resolve(method, raw) == expected


def test_refused_paths_raise_every_time() -> None:
    memo = RouteMemo(ROUTES)
    for _ in range(2):
        with pytest.raises(PathError):
            memo.resolve("GET", "/files/%2e%2e%2fetc")


def test_memo_is_bounded() -> None:
    memo = RouteMemo(ROUTES)
    for i in range(RouteMemo.MAX_ENTRIES * 3):
        memo.resolve("GET", f"/files/{i}")
    assert len(memo._memo) <= RouteMemo.MAX_ENTRIES
    memo.resolve("GET", "/files/" + "x" * RouteMemo.MAX_PATH)
    assert ("GET", "/files/" + "x" * RouteMemo.MAX_PATH) not in memo._memo


def test_long_methods_are_never_kept() -> None:
    """A preflight's Access-Control-Request-Method is a memo key: 16 KB of it must not be pinned (issue 12)."""
    memo = RouteMemo(ROUTES)
    for i in range(100):
        memo.resolve(f"{i}" + "X" * 16384, "/api/public")
    memo.resolve("X" * RouteMemo.MAX_METHOD, "/api/public")
    assert len(memo._memo) == 1
