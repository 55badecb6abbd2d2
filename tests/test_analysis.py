"""Pure route analysis: covers/overlaps on patterns, shadow and overlap warnings, explain's decisions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.policy.analysis import (
    covers,
    explain,
    explanation_lines,
    methods_cover,
    methods_meet,
    overlap_example,
    overlaps,
    route_warnings,
)
from gateway.policy.rules import Access, PathPattern, Policy, Route

P = PathPattern.compile
PUBLIC = Policy(Access.PUBLIC)
AUTHENTICATED = Policy(Access.AUTHENTICATED)
READER = Policy(Access.ROLES, any_of=frozenset({"read:messages"}))


def route(path: str, policy: Policy = AUTHENTICATED, methods: set[str] | None = None, id: str = "") -> Route:
    return Route(
        id=id or path,
        pattern=P(path),
        policy=policy,
        upstream="default",
        methods=frozenset(methods) if methods is not None else None,
    )


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("/a", "/a", True),
        ("/a", "/b", False),
        ("/*", "/a", True),
        ("/a", "/*", False),
        ("/*", "/", False),  # '*' is one non-empty segment; '/' is the empty one
        ("/a/*", "/a/", False),
        ("/**", "/", True),
        ("/**", "/a/b/c", True),
        ("/**", "/a/**", True),
        ("/a/**", "/a", True),  # the tail may be empty
        ("/a/**", "/a/", True),
        ("/a/**", "/a/b/**", True),
        ("/a/b/**", "/a/**", False),
        ("/a/*", "/a/**", False),  # a fixed length never covers a tail
        ("/a/*/**", "/a/**", False),  # /a itself is matched by the later one only
        ("/*/**", "/a/**", True),
        ("/*/x", "/a/x", True),
        ("/a/x", "/*/x", False),
        ("/api/*", "/api/private", True),
        ("/api/private", "/api/private/", True),  # a trailing slash is not significant in a pattern
    ],
)
def test_covers(a: str, b: str, expected: bool) -> None:
    assert covers(P(a), P(b)) is expected


@pytest.mark.parametrize(
    ("a", "b", "example"),
    [
        ("/a", "/a", "/a"),
        ("/a", "/b", None),
        ("/a/*", "/*/b", "/a/b"),
        ("/*", "/", None),
        ("/**", "/", "/"),
        ("/a/**", "/*/b", "/a/b"),
        ("/a/**", "/b/**", None),
        ("/a/**", "/*/c/**", "/a/c"),
        ("/a/*", "/a/b/**", "/a/b"),  # the tail may be empty
        ("/a/*", "/a/b/c/**", None),
        ("/a", "/a/**", "/a"),
        ("/a/b/c", "/a/**", "/a/b/c"),
        ("/a/", "/a/**", "/a"),  # a pattern written /a/ is /a
        ("/x/*", "/*/*", "/x/x"),
    ],
)
def test_overlap_example(a: str, b: str, example: str | None) -> None:
    assert overlap_example(P(a), P(b)) == example
    assert overlaps(P(b), P(a)) is (example is not None)
    if example is not None:
        assert P(a).matches(example) and P(b).matches(example)


_SEGMENT = st.sampled_from(["a", "b", "*"])
_PATTERN = st.builds(
    lambda segs, tail: "/" + "/".join([*segs, "**"] if tail else segs),
    st.lists(_SEGMENT, min_size=0, max_size=3),
    st.booleans(),
)
_PATH = st.builds(
    lambda segs, slash: "/" + "/".join(segs) + ("/" if slash and segs else ""),  # canonical paths, `/a/` included
    st.lists(st.sampled_from(["a", "b", "c"]), min_size=0, max_size=4),
    st.booleans(),
)


@given(_PATTERN, _PATTERN, st.lists(_PATH, min_size=1, max_size=20))
def test_covers_and_overlaps_agree_with_matching(a: str, b: str, paths: list[str]) -> None:
    pa, pb = P(a), P(b)
    example = overlap_example(pa, pb)
    if example is not None:
        assert pa.matches(example) and pb.matches(example)
    for path in paths:
        if covers(pa, pb) and pb.matches(path):
            assert pa.matches(path)
        if pa.matches(path) and pb.matches(path):
            assert example is not None


@pytest.mark.parametrize(
    ("a", "b", "cover", "meet"),
    [
        (None, None, True, None),
        (None, {"GET"}, True, {"GET"}),
        ({"GET"}, None, False, {"GET"}),
        ({"GET", "POST"}, {"GET"}, True, {"GET"}),
        ({"GET"}, {"POST"}, False, set()),
    ],
)
def test_methods(a: set[str] | None, b: set[str] | None, cover: bool, meet: set[str] | None) -> None:
    fa = frozenset(a) if a is not None else None
    fb = frozenset(b) if b is not None else None
    assert methods_cover(fa, fb) is cover
    assert methods_meet(fa, fb) == (frozenset(meet) if meet is not None else None)


@pytest.mark.parametrize(
    ("routes", "expected"),
    [
        ([route("/a"), route("/b")], []),
        ([route("/api/**"), route("/api/x")], ["routes[1] (/api/x) /api/x can never match"]),
        ([route("/api/*", methods={"GET"}), route("/api/x", methods={"GET"})], ["can never match"]),
        # a method the earlier route does not take keeps the later one reachable; same policy: no overlap warning
        ([route("/api/*", methods={"GET"}), route("/api/x")], []),
        (
            [route("/api/*", PUBLIC, methods={"GET"}), route("/api/x")],
            [
                (
                    "routes[1] (/api/x) /api/x overlaps routes[0] (/api/*) /api/* "
                    "with a different policy: e.g. GET,HEAD /api/x"
                )
            ],
        ),
        ([route("/api/*", PUBLIC, methods={"GET"}), route("/api/x", methods={"POST"})], []),
        ([route("/a/*", PUBLIC), route("/*/b", READER)], ["e.g. any method /a/b gets public (from /a/*)"]),
        ([route("/a/*", PUBLIC), route("/b/*", READER)], []),
        ([route("/**", PUBLIC), route("/x", PUBLIC), route("/y", READER)], ["can never match", "can never match"]),
    ],
)
def test_route_warnings(routes: list[Route], expected: list[str]) -> None:
    warnings = route_warnings(routes)
    assert len(warnings) == len(expected)
    for warning, part in zip(warnings, expected, strict=True):
        assert part in warning


ROUTES = [
    route("/api/public", PUBLIC, id="public"),
    route("/api/private", AUTHENTICATED, id="private"),
    route("/api/private-scoped", READER, id="private-scoped"),
    route("/api/admin/**", Policy(Access.ROLES, all_of=frozenset({"admin", "audit"})), methods={"POST"}, id="adm"),
]


@pytest.mark.parametrize(
    ("method", "target", "roles", "decision", "route_id", "canonical"),
    [
        ("GET", "/api/public", None, "allow", "public", "/api/public"),
        ("GET", "/api/private", None, "401 no token", "private", "/api/private"),
        ("GET", "/api/private", frozenset(), "allow", "private", "/api/private"),
        ("GET", "/api/private-scoped", frozenset(), "403 missing role read:messages", "private-scoped", None),
        ("GET", "/api/private-scoped", frozenset({"read:messages"}), "allow", "private-scoped", None),
        ("GET", "/api/x/../private-scoped?q=1", None, "401 no token", "private-scoped", "/api/private-scoped"),
        ("GET", "/api/%70ublic", None, "allow", "public", "/api/public"),
        ("GET", "/api/nothing", frozenset({"read:messages"}), "404 no route", None, "/api/nothing"),
        ("GET", "/api/admin/x", frozenset({"admin", "audit"}), "404 no route", None, None),  # POST only
        ("POST", "/api/admin/x", frozenset({"admin"}), "403 missing role audit", "adm", None),
        ("POST", "/api/admin", frozenset({"admin", "audit"}), "allow", "adm", None),
    ],
)
def test_explain(
    method: str,
    target: str,
    roles: frozenset[str] | None,
    decision: str,
    route_id: str | None,
    canonical: str | None,
) -> None:
    result = explain(ROUTES, method, target, roles)
    assert result.decision == decision
    assert (result.route.id if result.route else None) == route_id
    if canonical is not None:
        assert result.canonical == canonical


@pytest.mark.parametrize("target", ["/api/%2fpublic", "/../etc", "/api/%zz", "relative", "/api/public?a=1#frag"])
def test_explain_refuses_what_cannot_be_canonicalised(target: str) -> None:
    result = explain(ROUTES, "GET", target, None)
    assert result.status == 400
    assert result.decision.startswith("400 bad path: ")
    assert result.canonical is None and result.route is None


def test_explanation_lines() -> None:
    allowed = explain(ROUTES, "GET", "/api/./private-scoped", frozenset({"read:messages"}))
    assert explanation_lines(allowed, "http://up:8081", "roles") == [
        "request    GET /api/./private-scoped  (roles)",
        "canonical  /api/private-scoped",
        "route      #2 private-scoped: /api/private-scoped methods *, roles: any of read:messages",
        "forwards   http://up:8081/api/private-scoped",
        "decision   allow",
    ]
    refused = explain(ROUTES, "GET", "/api/%2f", None)
    assert explanation_lines(refused, None, "no token")[1:] == [
        "canonical  (none: the path cannot be canonicalised)",
        "route      (none)",
        "decision   400 bad path: an encoded '/' in the path",
    ]


def test_a_shadowed_route_is_not_reported_as_overlapping() -> None:
    routes = [route("/a/**", PUBLIC, {"GET"}), route("/a/b", AUTHENTICATED, {"GET"}), route("/*/b", READER)]
    warnings = route_warnings(routes)
    assert len(warnings) == 2
    assert "routes[1] (/a/b) /a/b can never match" in warnings[0]
    assert (
        "routes[2] (/*/b) /*/b overlaps routes[0] (/a/**) /a/** with a different policy: e.g. GET,HEAD /a/b"
        in warnings[1]
    )
