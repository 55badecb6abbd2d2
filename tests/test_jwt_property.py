"""A JWT verified locally and the same claims obtained by introspection give the same decision and principal."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import jwt
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.auth.claims import Principal
from gateway.auth.introspection import parse_introspection
from gateway.auth.jwks import prepare_key
from gateway.auth.jwt_tokens import JwtRules, jws_header, verify_jwt
from gateway.errors import InvalidToken
from gateway.policy.rules import Access, Policy, missing_roles

from .signing_idp import PROJECT_ID, ROLES_CLAIM, SigningKey, new_key

ISSUER = "https://z.example"
RULES = JwtRules(ISSUER, (PROJECT_ID,), leeway=30, project_id=PROJECT_ID)
ROLES = ("admin", "reader")
ORGS = ("1", "2")


@functools.cache
def key() -> SigningKey:
    return new_key("ES256")


role_claim = st.dictionaries(
    st.sampled_from(ROLES), st.dictionaries(st.sampled_from(ORGS), st.just("org.example"), max_size=2), max_size=2
)
claims = st.fixed_dictionaries(
    {
        "iss": st.sampled_from([ISSUER, "https://other.example"]),
        "exp": st.sampled_from([-7200, 7200]),  # offsets from now, far from the leeway
        "nbf": st.sampled_from([None, -7200, 7200]),
        "sub": st.sampled_from([None, "user-1"]),
        "client_id": st.sampled_from([None, "client@project"]),
        ROLES_CLAIM: st.one_of(st.none(), role_claim),
        f"urn:zitadel:iam:org:project:{PROJECT_ID}:roles": st.one_of(st.none(), role_claim),
    }
)
policies = st.builds(
    lambda any_of, org: Policy(Access.ROLES, frozenset(any_of), frozenset(), org),
    st.sets(st.sampled_from(ROLES), min_size=1),
    st.sampled_from([None, *ORGS]),
)


def decision(check: Callable[[], Principal], policy: Policy) -> tuple[str, Any]:
    try:
        principal = check()
    except InvalidToken:
        return "401", None
    lacking = missing_roles(policy, principal.roles_in(policy.in_org))
    identity = (principal.subject, principal.client_id, principal.roles, principal.grants)
    return ("403" if lacking else "allow"), identity


@settings(max_examples=150, deadline=None)
@given(claims, policies)
def test_jwt_and_introspection_decide_alike(raw: dict[str, Any], policy: Policy) -> None:
    now = time.time()
    body = {k: v for k, v in raw.items() if v is not None}
    body["exp"] = int(now + raw["exp"])
    if raw["nbf"] is not None:
        body["nbf"] = int(now + raw["nbf"])
    body |= {"aud": [PROJECT_ID], "iat": int(now)}
    signer = key()
    token = jwt.encode(body, signer.private, algorithm="ES256", headers={"kid": signer.kid})

    def local() -> Principal:
        header = jws_header(token)
        return verify_jwt(token, prepare_key(signer.jwk(), header["alg"]), header["alg"], RULES)

    def introspected() -> Principal:
        answer = {"active": True, **body}
        return parse_introspection(answer, issuer=ISSUER, project_id=PROJECT_ID, now=now, leeway=RULES.leeway)

    assert decision(local, policy) == decision(introspected, policy)
