"""Roles per organisation: `/orgs/{org}/**` captures a segment, `roles: {any_of, in_org}` checks the role there."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from demo_backend.idp import ROLES_CLAIM
from gateway.__main__ import main
from gateway.auth.claims import principal_from_claims
from gateway.config import ConfigError, parse_config
from gateway.policy.analysis import explain
from gateway.policy.rules import Access, PathPattern, Policy, Route, org_scope_problem, resolve_route

from .conftest import GatewayFactory
from .support import ENV, FakeIdP, gateway_document, gateway_process
from .test_cli import write_config

PROJECT_ROLES = "urn:zitadel:iam:org:project:42:roles"
ORG_ROUTES: list[dict[str, Any]] = [
    {"id": "org-admin", "path": "/orgs/{org}/admin/**", "roles": {"any_of": ["admin"], "in_org": "{org}"}},
    {"id": "hq", "path": "/hq/**", "roles": {"all_of": ["auditor"], "in_org": "999"}},
    {"id": "any-org", "path": "/anywhere/**", "roles": {"any_of": ["admin"]}},
]


def route(pattern: str, in_org: str | None, **roles: Any) -> Route:
    policy = Policy(Access.ROLES, frozenset(roles.get("any_of", ())), frozenset(roles.get("all_of", ())), in_org)
    return Route("r", PathPattern.compile(pattern), policy, "default")


def test_a_named_segment_matches_as_a_star_does_and_is_captured() -> None:
    pattern = PathPattern.compile("/orgs/{org}/**")
    assert pattern.segments == ("orgs", "*") and pattern.tail
    assert pattern.captures == (("org", 1),)
    assert pattern.matches("/orgs/123/x") and not pattern.matches("/orgs") and not pattern.matches("/other/1")
    r = route("/orgs/{org}/**", "{org}", any_of=["admin"])
    assert r.org_of("/orgs/123/users/7") == "123"
    assert r.org_of("/orgs/123/") == "123"
    assert route("/hq", "999", any_of=["a"]).org_of("/hq") == "999"
    assert route("/hq", None, any_of=["a"]).org_of("/hq") is None


@pytest.mark.parametrize("pattern", ["/orgs/{org", "/orgs/x{org}", "/orgs/{1org}/x", "/a/{org}/{org}", "/{}"])
def test_a_malformed_or_repeated_name_is_refused(pattern: str) -> None:
    with pytest.raises(ValueError):
        PathPattern.compile(pattern)


def test_in_org_names_a_segment_of_its_path_or_an_organisation_id() -> None:
    pattern = PathPattern.compile("/orgs/{org}/**")
    assert org_scope_problem(pattern, "{org}") is None
    assert org_scope_problem(pattern, "170086305978381234") is None
    assert org_scope_problem(pattern, "{tenant}") == "'{tenant}' names no segment of the path /orgs/{org}/**"
    assert org_scope_problem(pattern, "a/b") is not None


def test_grants_are_read_from_both_forms_of_the_claim() -> None:
    principal = principal_from_claims(
        {
            ROLES_CLAIM: {"admin": {"123": "a.example"}, "reader": {"123": "a.example", "456": "b.example"}},
            PROJECT_ROLES: {"auditor": {"999": "hq.example"}},
        },
        project_id="42",
    )
    assert principal.roles == frozenset({"admin", "reader", "auditor"})
    assert principal.roles_in("123") == frozenset({"admin", "reader"})
    assert principal.roles_in("456") == frozenset({"reader"})
    assert principal.roles_in("999") == frozenset({"auditor"})
    assert principal.roles_in(None) == principal.roles
    # An organisation map of another shape grants the role in no organisation (fail closed), but still by name.
    odd = principal_from_claims({ROLES_CLAIM: {"admin": ["123"]}}, project_id=None)
    assert odd.roles == frozenset({"admin"}) and odd.roles_in("123") == frozenset()


def test_explain_says_in_which_organisation_a_role_counts() -> None:
    routes = [route("/orgs/{org}/**", "{org}", any_of=["admin"])]
    allowed = explain(routes, "GET", "/orgs/123/x", frozenset({"admin"}), frozenset({("admin", "123")}))
    assert allowed.decision == "allow"
    denied = explain(routes, "GET", "/orgs/456/x", frozenset({"admin"}), frozenset({("admin", "123")}))
    assert denied.decision == "403 missing role admin in organisation 456"
    unplaced = explain(routes, "GET", "/orgs/123/x", frozenset({"admin"}))
    assert unplaced.status == 403


def test_org_scoped_routes_still_match_case_sensitively() -> None:
    routes = [route("/orgs/{org}/**", "{org}", any_of=["admin"])]
    assert resolve_route(routes, "GET", "/orgs/ABC/x") is routes[0]  # the id's case is the id's


def test_check_catches_an_in_org_that_names_no_segment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = [{"path": "/orgs/{org}/**", "roles": {"any_of": ["admin"], "in_org": "{tenant}"}}]
    assert main(["check", "--config", write_config(tmp_path, bad)]) == 1
    err = capsys.readouterr().err
    assert "routes[0].roles.in_org: '{tenant}' names no segment of the path /orgs/{org}/**" in err


def test_check_shows_the_organisation_of_a_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--config", write_config(tmp_path, ORG_ROUTES)]) == 0
    out = capsys.readouterr().out
    assert "roles: any of admin in organisation {org}" in out
    assert "roles: all of auditor in organisation 999" in out


@pytest.mark.parametrize(
    ("roles", "path", "decision"),
    [
        ("admin@123", "/orgs/123/admin/x", "allow"),
        ("admin@123", "/orgs/456/admin/x", "403 missing role admin in organisation 456"),
        ("admin", "/orgs/123/admin/x", "403 missing role admin in organisation 123"),
        ("admin@456,admin@123", "/orgs/123/admin/x", "allow"),
        ("auditor@999", "/hq/x", "allow"),
        ("auditor@123", "/hq/x", "403 missing role auditor in organisation 999"),
        ("admin@123", "/anywhere/x", "allow"),
    ],
)
def test_explain_takes_role_at_organisation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], roles: str, path: str, decision: str
) -> None:
    assert main(["explain", "--config", write_config(tmp_path, ORG_ROUTES), "--roles", roles, "GET", path]) == 0
    out = capsys.readouterr().out
    assert f"decision   {decision}" in out


def test_a_config_with_an_unknown_segment_name_is_refused_at_load() -> None:
    document = gateway_document(
        issuer="https://z.example",
        upstream_url="http://127.0.0.1:8081",
        routes=[{"path": "/orgs/*/x", "roles": {"any_of": ["admin"], "in_org": "{org}"}}],
    )
    with pytest.raises(ConfigError) as info:
        parse_config(document, source="c.yaml", env=ENV)
    assert info.value.problems == ["c.yaml: routes[0].roles.in_org: '{org}' names no segment of the path /orgs/*/x"]


@pytest.mark.parametrize("claim", [ROLES_CLAIM, PROJECT_ROLES])
async def test_org_scoped_rules_through_the_pipeline(make_gateway: GatewayFactory, idp: FakeIdP, claim: str) -> None:
    idp.tokens["admin-of-123"] = {"sub": "u-123", claim: {"admin": {"123": "a.example"}, "reader": {"456": "b"}}}
    idp.tokens["auditor-of-999"] = {"sub": "u-999", claim: {"auditor": {"999": "hq.example"}}}
    gateway = await make_gateway(ORG_ROUTES, idp={"project_id": "42"})

    async def status(token: str, path: str) -> int:
        resp = await gateway.get(path, headers={"Authorization": f"Bearer {token}"})
        await resp.read()
        return resp.status

    assert await status("admin-of-123", "/orgs/123/admin/users") == 200
    assert await status("admin-of-123", "/anywhere/x") == 200  # no in_org: any organisation
    assert await status("auditor-of-999", "/hq/reports") == 200
    assert await status("admin-of-123", "/hq/reports") == 403
    # The role in another organisation only: 403, and the body names the role, never the token's organisations.
    resp = await gateway.get("/orgs/456/admin/users", headers={"Authorization": "Bearer admin-of-123"})
    assert resp.status == 403
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="gateway", error="insufficient_scope"'
    body = await resp.json()
    assert body["error"] == "insufficient_scope"
    assert "admin" in body["error_description"]
    assert "123" not in body["error_description"] and "456" not in body["error_description"]
    assert "a.example" not in body["error_description"]


async def test_a_gateway_process_scopes_roles_to_the_organisation_in_the_path(
    tmp_path: Path, idp: FakeIdP, upstream_url: str
) -> None:
    idp.tokens["admin-of-123"] = {"sub": "u-123", ROLES_CLAIM: {"admin": {"123": "a.example"}}}
    document = gateway_document(issuer=idp.issuer, upstream_url=upstream_url, routes=ORG_ROUTES)
    headers = {"Authorization": "Bearer admin-of-123"}
    async with gateway_process(document, tmp_path, ENV) as (base, _), aiohttp.ClientSession() as session:
        statuses = {}
        for path in ("/orgs/123/admin/x", "/orgs/456/admin/x"):
            for _ in range(100):  # 503 until the process has discovered the introspection endpoint
                async with session.get(base + path, headers=headers) as resp:
                    statuses[path] = resp.status
                if resp.status != 503:
                    break
                await asyncio.sleep(0.05)
    assert statuses == {"/orgs/123/admin/x": 200, "/orgs/456/admin/x": 403}
