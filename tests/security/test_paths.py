"""Path confusion: every form peers got wrong, as pure tables and as raw requests against a real gateway.

The rule under test: one canonical path is matched and forwarded; anything ambiguous is 400 before any IdP call.
"""

from __future__ import annotations

import pytest

from gateway.policy.analysis import explain
from gateway.policy.paths import PathError, canonical_path
from gateway.policy.rules import Access, PathPattern, Policy, Route, resolve_route
from tests.conftest import GatewayFactory
from tests.support import FakeIdP, RecordingUpstream

from .raw import request, send

READER = "Authorization: Bearer demo-reader-token"


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("/open/../api/private", "/api/private"),  # dot segments are resolved, then matched
        ("/open/%2e%2e/api/private", "/api/private"),
        ("/open/%2E%2E/api/private", "/api/private"),
        ("/open/.%2e/api/private", "/api/private"),
        ("/open/%2e./api/private", "/api/private"),
        ("/open/./x", "/open/x"),
        ("/open/%2e/x", "/open/x"),
        ("//api//private", "/api/private"),
        ("//evil.test/x", "/evil.test/x"),  # never a network-path reference upstream
        ("/api/private/", "/api/private/"),  # kept as sent; matched like /api/private
        ("/api/private/.", "/api/private/"),
        ("/open/%7Euser", "/open/~user"),
        ("/open/%41%42", "/open/AB"),
        ("/open/a%2a", "/open/a%2A"),  # reserved escapes stay encoded, hex upper-cased
        ("/open/%25zz", "/open/%25zz"),  # an encoded '%' that starts no escape is harmless
        ("/open/caf%C3%A9", "/open/caf%C3%A9"),
    ],
)
def test_canonical_forms(raw: str, canonical: str) -> None:
    assert canonical_path(raw) == canonical


@pytest.mark.parametrize(
    "raw",
    [
        "/open/%252e%252e/api/private",  # double encoding
        "/open/%25%32%65",  # double encoding assembled from escapes
        "/open/%252F",
        "/open/..%2fapi/private",  # encoded '/'
        "/open/..%2Fapi",
        "/open/..%5capi/private",  # encoded '\'
        "/open/..\\api/private",  # raw '\'
        "/open/x%3b/../../api/private",  # encoded ';'
        "/open/x;/../../api/private",  # raw ';' (servlet path parameters)
        "/api/private;jsessionid=1",
        "/open/..;/api/private",
        "/open/x%23/../../api/private",  # encoded '#'
        "/open/x#/../../api/private",  # fragment
        "/open/x%3f/../../api/private",  # encoded '?'
        "/open/x%3F",
        "/open/x%00",  # NUL
        "/open/x%00/../../api/private",
        "/open/%0d%0aX-Auth-Subject:%20admin",  # CRLF
        "/open/x%7f",
        "/api/private.",  # trailing dot (Windows drops it)
        "/api/private%2e",
        "/api/private%20",  # trailing space (Windows drops it)
        "/open/.../x",
        "/open/%c0%ae%c0%ae/api/private",  # overlong UTF-8 '.'
        "/open/%c0%af",  # overlong UTF-8 '/'
        "/open/%e0%80%ae",
        "/open/%u002e%u002e/api/private",  # IIS %u form
        "/open/%U002E",
        "/open/%ef%bc%8e%ef%bc%8e/api/private",  # fullwidth '.' (NFKC gives '.')
        "/open/%ef%bc%8fapi",  # fullwidth '/'
        "/open/%e2%80%ae",  # right-to-left override
        "/api/%E2%84%AAeys",  # Kelvin sign: lower() is 'k'
        "/api/%EF%BD%8Beys",  # fullwidth 'k': NFKC is 'k'
        "/api/%C5%BFecret",  # long s: upper() is 'S'
        "/api/%C4%B1tems",  # dotless i: upper() is 'I'
        "/api/%EF%AC%81le",  # 'fi' ligature: NFKC is 'fi'
        "/stra%C3%9Fe",  # sharp s: upper() is "SS", casefold() "ss"
        "/api/keys::$DATA",  # NTFS alternate data stream
        "/open/%ff",  # not UTF-8
        "/open/%",
        "/open/%4",
        "/open/%g0",
        "/..",
        "/open/../../api/private",  # above the root
        "http://gateway.test/api/private",  # absolute form
        "https://gateway.test/open/x",
        "*",
        "",
        "open/x",
        "/open/caf\u00e9",
        "/open/a b",
        "/open/a\tb",
        '/open/a"b',
        "/open/a<b",
        "/open/a|b",
    ],
)
def test_ambiguous_forms_are_rejected(raw: str) -> None:
    with pytest.raises(PathError):
        canonical_path(raw)


@pytest.mark.parametrize("raw", ["/caf%C3%A9", "/%E6%97%A5%E6%9C%AC", "/%D0%BF%D1%83%D1%82%D1%8C"])
def test_non_ascii_that_cannot_pass_for_ascii_is_fine(raw: str) -> None:
    assert canonical_path(raw) == raw


def _route(path: str, access: Access) -> Route:
    return Route(id=path, pattern=PathPattern.compile(path), policy=Policy(access), upstream="u")


ROUTES = (
    _route("/admin/**", Access.ROLES),
    _route("/docs/**", Access.PUBLIC),
    _route("/api/private", Access.AUTHENTICATED),
    _route("/**", Access.PUBLIC),
)


@pytest.mark.parametrize(
    ("path", "route_id"),
    [
        ("/admin", "/admin/**"),
        ("/admin/", "/admin/**"),
        ("/api/private", "/api/private"),
        ("/api/private/", "/api/private"),  # a trailing slash cannot reach the public catch-all
        ("/docs/x", "/docs/**"),
        ("/other", "/**"),
    ],
)
def test_trailing_slash_is_matched_by_the_same_rule(path: str, route_id: str) -> None:
    route = resolve_route(ROUTES, "GET", path)
    assert route is not None and route.id == route_id


@pytest.mark.parametrize("path", ["/ADMIN", "/Admin/x", "/API/private", "/api/Private/", "/DOCS/x"])
def test_case_variants_that_change_the_route_are_rejected(path: str) -> None:
    # `/ADMIN` reaches the public catch-all here, but a case-insensitive upstream would serve /admin.
    with pytest.raises(PathError, match="letter case"):
        resolve_route(ROUTES, "GET", path)


def test_case_in_a_pattern_counts_too() -> None:
    routes = (_route("/Admin", Access.ROLES), _route("/**", Access.PUBLIC))
    with pytest.raises(PathError, match="letter case"):
        resolve_route(routes, "GET", "/admin")  # all lower case, yet /Admin's rule is what a folding upstream hits
    assert resolve_route(routes, "GET", "/Admin") is routes[0]


def test_explain_reports_case_ambiguity_as_the_gateway_answers_it() -> None:
    assert explain(ROUTES, "GET", "/ADMIN", None).status == 400
    assert explain(ROUTES, "GET", "/admin/", None).route is ROUTES[0]


@pytest.mark.parametrize("path", ["/Other", "/images/Logo.PNG", "/docs/README"])
def test_case_that_does_not_change_the_route_is_fine(path: str) -> None:
    assert resolve_route(ROUTES, "GET", path) is not None


def test_pattern_with_trailing_slash_is_the_pattern_without() -> None:
    assert PathPattern.compile("/api/x/").segments == PathPattern.compile("/api/x").segments


# ----------------------------------------------------------------------------------------------------------------
# The same attacks over raw sockets, so that nothing between the test and the gateway tidies the target.

REJECTED_ON_THE_WIRE = [
    "/open/%252e%252e/api/private",
    "/open/..%2fapi/private",
    "/open/..%5capi/private",
    "/open/..\\api/private",
    "/open/x%3b/../../api/private",
    "/open/x;/../../api/private",
    "/api/private;x=1",
    "/open/x%23/../../api/private",
    "/open/x%3f/../../api/private",
    "/open/x%00/../../api/private",
    "/api/private.",
    "/open/%c0%ae%c0%ae/api/private",
    "/open/%u002e%u002e/api/private",
    "/open/%ef%bc%8e%ef%bc%8e/api/private",
    "/API/private",
    "/OPEN/x",
    "/open/x#/../../api/private",
    "/open/x?a=1#/../../api/private",
    "/open/../../api/private",
    "http://gateway.test/open/x",
    "http://gateway.test/api/private",
    "*",
]


@pytest.mark.parametrize("target", REJECTED_ON_THE_WIRE)
async def test_raw_ambiguous_targets_are_400_and_never_forwarded(
    make_gateway: GatewayFactory, idp: FakeIdP, upstream: RecordingUpstream, target: str
) -> None:
    gateway = await make_gateway()
    answer = await send(gateway.port, request(target, READER))
    assert answer.status == 400
    assert upstream.seen == []
    assert idp.introspections == 0


PROTECTED_ON_THE_WIRE = [
    "/open/../api/private",
    "/open/%2e%2e/api/private",
    "/open/%2E%2E/api/private",
    "/open/.%2e/api/private",
    "/open/%2e./api/private",
    "//api/private",
    "/api//private",
    "/./api/private",
    "/api/./private",
    "/api/private/",
    "/api/private/.",
    "/Open/../api/private",
    "/api/private?/../../open/x",  # query tricks: only the path is matched
    "/api/private?x=/open/",
]


@pytest.mark.parametrize("target", PROTECTED_ON_THE_WIRE)
async def test_raw_targets_that_resolve_to_a_protected_route_need_a_token(
    make_gateway: GatewayFactory, upstream: RecordingUpstream, target: str
) -> None:
    gateway = await make_gateway()
    answer = await send(gateway.port, request(target))
    assert answer.status == 401
    assert upstream.seen == []


@pytest.mark.parametrize(
    ("target", "forwarded"),
    [
        ("/open/../api/private", "/api/private"),
        ("/open/%2e%2e/api/private", "/api/private"),
        ("//api//private", "/api/private"),
        ("/api/private/", "/api/private/"),
        ("/api/private?a=%2e%2e/x&b", "/api/private?a=%2e%2e/x&b"),  # the query is relayed byte for byte
    ],
)
async def test_upstream_receives_exactly_the_path_that_was_matched(
    make_gateway: GatewayFactory, upstream: RecordingUpstream, target: str, forwarded: str
) -> None:
    gateway = await make_gateway()
    answer = await send(gateway.port, request(target, READER))
    assert answer.status == 200
    assert [s.raw_path for s in upstream.seen] == [forwarded]


@pytest.mark.parametrize(
    ("target", "forwarded"),
    [
        ("/open/a/./b//c", "/open/a/b/c"),
        ("/open/a/x/../b", "/open/a/b"),
        ("/open/%7euser", "/open/~user"),
        ("/open/a%2a", "/open/a%2A"),
        ("/open/x?/../../api/private", "/open/x?/../../api/private"),
    ],
)
async def test_public_targets_are_forwarded_canonical(
    make_gateway: GatewayFactory, upstream: RecordingUpstream, target: str, forwarded: str
) -> None:
    gateway = await make_gateway()
    answer = await send(gateway.port, request(target))
    assert answer.status == 200
    assert [s.raw_path for s in upstream.seen] == [forwarded]
