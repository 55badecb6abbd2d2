"""Pure rule logic: path canonicalisation, pattern matching, route order, authorization."""

from __future__ import annotations

import pytest

from gateway.policy.paths import PathError, canonical_path
from gateway.policy.rules import Access, PathPattern, Policy, Route, match_route, missing_roles


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("/", "/"),
        ("/api/public", "/api/public"),
        ("/api//public", "/api/public"),
        ("//api///public", "/api/public"),
        ("/api/./public", "/api/public"),
        ("/api/x/../public", "/api/public"),
        ("/api/%2e%2e/api/public", "/api/public"),
        ("/api/%2E/public", "/api/public"),
        ("/api/x/.%2e/public", "/api/public"),
        ("/api/%70ublic", "/api/public"),  # unreserved escapes are decoded
        ("/api/%7e%41", "/api/~A"),
        ("/a%20b", "/a%20b"),  # others stay encoded, upper-cased
        ("/a%c3%a9", "/a%C3%A9"),
        ("/api/public/", "/api/public/"),  # a trailing slash is significant
        ("/api/public/.", "/api/public/"),
        ("/api/public/..", "/api/"),
        ("/api/..", "/"),
        ("/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,="),
    ],
)
def test_canonical_path(raw: str, canonical: str) -> None:
    assert canonical_path(raw) == canonical


@pytest.mark.parametrize(
    "raw",
    [
        "/..",
        "/../api/public",
        "/api/../../etc",
        "/%2e%2e/x",
        "/api%2fprivate",
        "/api%2Fprivate",
        "/api%5cprivate",
        "/api\\private",
        "/api/private%00",
        "/api/%0a",
        "/api;x=1",
        "/api/public.",  # Windows servers read it as /api/public
        "/api/public/..;/private-scoped",
        "/api%3bx",
        "/api/%252e%252e/admin",  # double encoding
        "/api/%u002e",
        "/api/%zz",
        "/api/%2",
        "/api/%c0%ae%c0%ae/x",  # overlong UTF-8 for '.'
        "/api/#frag",
        "/api/caf\u00e9",  # raw non-ASCII
        "/api/a b",
        "api/public",
        "http://evil/api/public",
        "*",
    ],
)
def test_canonical_path_rejects(raw: str) -> None:
    with pytest.raises(PathError):
        canonical_path(raw)


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/api/public", "/api/public", True),
        ("/api/public", "/api/public/", True),  # a trailing slash cannot step around a rule
        ("/api/public", "/api/publicx", False),
        ("/api/public", "/api", False),
        ("/api/*", "/api/x", True),
        ("/api/*", "/api/", False),
        ("/api/*", "/api/x/y", False),
        ("/api/*/items", "/api/7/items", True),
        ("/api/**", "/api", True),
        ("/api/**", "/api/", True),
        ("/api/**", "/api/a/b/c", True),
        ("/api/**", "/apix", False),
        ("/**", "/", True),
        ("/**", "/anything/at/all", True),
        ("/", "/", True),
        ("/", "/x", False),
    ],
)
def test_pattern_matching(pattern: str, path: str, matches: bool) -> None:
    assert PathPattern.compile(pattern).matches(path) is matches


@pytest.mark.parametrize(
    "pattern",
    ["api/x", "/api/**/x", "/api/a*", "/api//x", "//**", "/api/%2e%2e/x", "/api/%70ublic", "/api/../x"],
)
def test_bad_patterns(pattern: str) -> None:
    with pytest.raises(ValueError):
        PathPattern.compile(pattern)


def _route(path: str, access: Access = Access.PUBLIC, methods: frozenset[str] | None = None) -> Route:
    return Route(id=path, pattern=PathPattern.compile(path), policy=Policy(access), upstream="u", methods=methods)


def test_first_match_wins_and_methods_filter() -> None:
    routes = [
        _route("/api/items", Access.AUTHENTICATED, frozenset({"POST"})),
        _route("/api/**"),
    ]
    post = match_route(routes, "POST", "/api/items")
    get = match_route(routes, "GET", "/api/items")
    assert post is not None and post.id == "/api/items"
    assert get is not None and get.id == "/api/**"
    assert match_route(routes, "GET", "/other") is None


@pytest.mark.parametrize(
    ("any_of", "all_of", "roles", "missing"),
    [
        ({"read:messages"}, set(), {"read:messages"}, None),
        ({"read:messages"}, set(), set(), "read:messages"),
        ({"a", "b"}, set(), {"b"}, None),
        ({"a", "b"}, set(), {"c"}, "a or b"),
        (set(), {"a", "b"}, {"a", "b", "c"}, None),
        (set(), {"a", "b"}, {"a"}, "b"),
        ({"x"}, {"a"}, {"a"}, "x"),
        ({"x"}, {"a"}, {"x"}, "a"),
        ({"x"}, {"a"}, {"a", "x"}, None),
    ],
)
def test_missing_roles(any_of: set[str], all_of: set[str], roles: set[str], missing: str | None) -> None:
    policy = Policy(Access.ROLES, frozenset(any_of), frozenset(all_of))
    assert missing_roles(policy, frozenset(roles)) == missing


@pytest.mark.parametrize("access", [Access.PUBLIC, Access.AUTHENTICATED])
def test_non_role_policies_need_no_roles(access: Access) -> None:
    assert missing_roles(Policy(access), frozenset()) is None


def test_a_rule_that_lists_get_covers_head() -> None:
    routes = [_route("/files", Access.AUTHENTICATED, frozenset({"GET"})), _route("/**")]
    head = match_route(routes, "HEAD", "/files")
    assert head is not None and head.id == "/files"  # not the public catch-all below it
    assert routes[0].methods == frozenset({"GET", "HEAD"})
    assert _route("/x", methods=frozenset({"POST"})).methods == frozenset({"POST"})
