"""Introspection answers → Principal, table-driven; the client authentication header."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.auth.introspection import MalformedAnswer, basic_authorization, parse_introspection
from gateway.errors import IdPUnavailable, InvalidToken

ISSUER = "https://z.example"
NOW = 1_700_000_000.0
ROLES = "urn:zitadel:iam:org:project:roles"


def parse(body: Any, project_id: str | None = None) -> Any:
    return parse_introspection(body, issuer=ISSUER, project_id=project_id, now=NOW, leeway=10)


def active(**claims: Any) -> dict[str, Any]:
    return {"active": True, "sub": "u1", "iss": ISSUER, "exp": NOW + 60, **claims}


def test_basic_authorization_matches_zitadel_docs() -> None:
    # The example from ZITADEL's docs: id and secret form-urlencoded, then base64.
    header = basic_authorization("78366401571920522@amce", "veryweaksecret!")
    assert header == "Basic NzgzNjY0MDE1NzE5MjA1MjIlNDBhbWNlOnZlcnl3ZWFrc2VjcmV0JTIx"


def test_full_principal() -> None:
    principal = parse(
        active(
            username="reader",
            client_id="c1",
            scope="openid read:messages",
            **{
                ROLES: {"read:messages": {"170": "example.zitadel.cloud"}},
                "urn:zitadel:iam:user:resourceowner:id": "170",
            },
        )
    )
    assert principal.subject == "u1"
    assert principal.roles == frozenset({"read:messages"})
    assert principal.username == "reader"
    assert principal.client_id == "c1"
    assert principal.org_id == "170"
    assert principal.scope == "openid read:messages"
    assert principal.expires_at == NOW + 60


@pytest.mark.parametrize(
    ("claims", "roles"),
    [
        ({}, set()),  # absent claim: no roles, not an error
        ({ROLES: {}}, set()),
        ({ROLES: ["read:messages"]}, set()),  # malformed: grants nothing
        ({ROLES: {"a": {}, "b": {}}}, {"a", "b"}),
        ({"urn:zitadel:iam:org:project:42:roles": {"p": {}}}, set()),  # project claim ignored without project_id
        ({"scope": "openid read:messages"}, set()),  # never from scope
    ],
)
def test_roles(claims: dict[str, Any], roles: set[str]) -> None:
    assert parse(active(**claims)).roles == frozenset(roles)


def test_project_specific_roles_claim() -> None:
    body = active(**{ROLES: {"a": {}}, "urn:zitadel:iam:org:project:42:roles": {"p": {}}})
    assert parse(body, project_id="42").roles == frozenset({"a", "p"})


MEMBERS = {
    "sub": "u1",
    "iss": ISSUER,
    "exp": NOW + 60,
    "client_id": "c1",
    "username": "reader",
    "scope": "openid",
}


@pytest.mark.parametrize("member", sorted(MEMBERS))
def test_every_optional_member_may_be_absent(member: str) -> None:
    # RFC 7662 §2.2: only `active` is required. Client-credentials tokens of many servers have no `sub`.
    body = {"active": True, **{k: v for k, v in MEMBERS.items() if k != member}}
    principal = parse(body)
    assert principal.client_id == (None if member == "client_id" else "c1")
    assert principal.subject == (None if member == "sub" else "u1")


def test_no_member_but_active_is_needed() -> None:
    principal = parse({"active": True})
    assert (principal.subject, principal.client_id, principal.kind) == (None, None, "unnamed")


def test_without_sub_the_client_is_the_principal() -> None:
    principal = parse({"active": True, "client_id": "svc"})
    assert (principal.subject, principal.client_id, principal.kind) == (None, "svc", "client")


@pytest.mark.parametrize("member", sorted(MEMBERS))
def test_the_config_may_require_an_optional_member(member: str) -> None:
    body = {"active": True, **{k: v for k, v in MEMBERS.items() if k != member}}
    with pytest.raises(InvalidToken) as info:
        parse_introspection(body, issuer=ISSUER, project_id=None, now=NOW, leeway=10, required=(member,))
    assert info.value.reason == "missing required claim"
    assert parse_introspection(MEMBERS | {"active": True}, issuer=ISSUER, project_id=None, now=NOW, leeway=10)


def test_an_iss_that_is_present_must_still_match() -> None:
    with pytest.raises(InvalidToken):
        parse({"active": True, "client_id": "c1", "iss": "https://other.example"})


def test_preferred_username_fallback() -> None:
    assert parse(active(preferred_username="pref")).username == "pref"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"active": False}, "inactive"),
        (active(exp=NOW - 11), "expired"),
        (active(nbf=NOW + 11), "not yet valid"),
        (active(iss="https://evil.example"), "issuer mismatch"),
        (active(iss=7), "issuer mismatch"),
    ],
)
def test_refused_tokens(body: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidToken) as info:
        parse(body)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    "body",
    [
        active(exp=NOW - 9),  # within leeway
        active(nbf=NOW + 9),
        {"active": True, "sub": "u1"},  # exp, nbf and iss are optional
        active(iss=ISSUER + "/"),
    ],
)
def test_accepted_edges(body: dict[str, Any]) -> None:
    assert parse(body).subject == "u1"


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        "active",
        {},
        {"active": "true"},
        {"active": 1},
        active(exp="tomorrow"),
        active(exp=True),
        active(nbf=float("nan")),
        active(exp=10**400),  # too large for a float
        active(sub=""),  # present, so it must be a subject
        active(sub=7),
    ],
)
def test_malformed_answers_are_idp_faults(body: Any) -> None:
    with pytest.raises(MalformedAnswer) as info:
        parse(body)
    assert isinstance(info.value, IdPUnavailable)
    assert info.value.status == 503
