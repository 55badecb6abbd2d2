"""Claims -> Principal: what an introspection answer and a verified JWT have in common. Pure, no I/O.

Both carry the same claims (ZITADEL puts the same roles claim in either), so one function reads them and the
decision for a token cannot depend on how it was checked. Every RFC 7662 member other than `active` is optional:
without `sub` the principal is the client (`client_id`), as for client-credentials tokens of most servers.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.forward.identity_map import ClaimPath
from gateway.policy.rules import roles_in_org

log = logging.getLogger("gateway.identity")

ROLES_CLAIM = "urn:zitadel:iam:org:project:roles"
ORG_ID_CLAIM = "urn:zitadel:iam:user:resourceowner:id"
# The members RFC 7662 §2.2 makes optional; `idp.required_claims` may require any of them.
OPTIONAL_CLAIMS = ("sub", "iss", "exp", "client_id", "username", "scope")


# What a principal keeps of the IdP's answer beyond what rules use: (path, the value as compact JSON), sorted.
KeptClaims = tuple[tuple[ClaimPath, str], ...]


@dataclass(frozen=True, slots=True)
class ClaimSelection:
    """The claims some `identity.headers` mapping reads: only those are kept (and cached) with a principal, each
    at most `max_bytes` of JSON, so a cache entry never grows with what else the IdP puts in its answer."""

    paths: tuple[ClaimPath, ...] = ()
    max_bytes: int = 1024


def claim_name(path: ClaimPath) -> str:
    """How a path is named in logs and errors: the keys as a JSON list (a key may hold any character)."""
    return path[0] if len(path) == 1 else json.dumps(list(path), ensure_ascii=True)


def claim_at(body: Mapping[str, Any], path: ClaimPath) -> Any:
    """The value at `path` (None when a key is absent or a level is not an object)."""
    node: Any = body
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def kept_claims(body: Mapping[str, Any], selection: ClaimSelection) -> KeptClaims:
    """The selected claims as compact JSON. A value over the bound is left out, logged by claim name only."""
    kept: list[tuple[ClaimPath, str]] = []
    for path in selection.paths:
        value = claim_at(body, path)
        if value is None:
            continue
        try:
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except ValueError:  # a non-finite number: no JSON, no header
            log.warning("claim %s left out: not representable as JSON", claim_name(path))
            continue
        if len(text.encode()) > selection.max_bytes:
            log.warning("claim %s left out: longer than %d bytes", claim_name(path), selection.max_bytes)
            continue
        kept.append((path, text))
    return tuple(sorted(kept))


NO_CLAIMS = ClaimSelection()


class BadClaim(ValueError):
    """A claim is present but not of its type. The caller says whose fault that is (IdP: 503; a JWT: 401)."""


class MissingClaim(ValueError):
    """A claim that `idp.required_claims` asks for is absent: the token is refused (401)."""


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str | None  # None: the token names no user; the principal is the client
    roles: frozenset[str]
    username: str | None = None
    client_id: str | None = None
    org_id: str | None = None
    scope: str = ""
    expires_at: float | None = None
    grants: frozenset[tuple[str, str]] = frozenset()  # (role, organisation id): where each role is granted
    claims: KeptClaims = ()  # the claims `identity.headers` maps, and nothing else (ClaimSelection)

    def roles_in(self, org: str | None) -> frozenset[str]:
        """The roles that count for a rule: all of them, or those granted in organisation `org`."""
        return self.roles if org is None else roles_in_org(self.grants, org)

    @property
    def kind(self) -> str:
        """For the access log: `subject` (a user), `client` (no `sub`: the client is the principal), `unnamed`."""
        if self.subject is not None:
            return "subject"
        return "client" if self.client_id is not None else "unnamed"


def number(body: Mapping[str, Any], claim: str) -> float | None:
    value = body.get(claim)
    if value is None:
        return None
    try:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise BadClaim(f"claim {claim!r} is not a number")
        return float(value)
    except OverflowError as exc:  # an integer too large for a float: no real timestamp
        raise BadClaim(f"claim {claim!r} is out of range") from exc


def text(body: Mapping[str, Any], claim: str) -> str | None:
    value = body.get(claim)
    return value if isinstance(value, str) and value else None


def _grants(claim: Any) -> tuple[set[str], set[tuple[str, str]]]:
    """{"<roleKey>": {"<orgId>": "<orgDomain>"}}: the role keys, and (role, org) pairs. Absent means no roles;
    anything else grants nothing, and an organisation map of another shape grants the role in no organisation."""
    if not isinstance(claim, dict):
        return set(), set()
    roles = {key for key in claim if isinstance(key, str)}
    pairs = {
        (role, org)
        for role, orgs in claim.items()
        if isinstance(role, str) and isinstance(orgs, dict)
        for org in orgs
        if isinstance(org, str) and org
    }
    return roles, pairs


def principal_from_claims(
    body: Mapping[str, Any],
    *,
    project_id: str | None,
    required: Collection[str] = (),
    keep: ClaimSelection | None = None,
) -> Principal:
    """The principal of claims whose validity (active, exp, nbf, iss, signature) the caller has checked.

    Raises MissingClaim for an absent claim in `required`, BadClaim for a `sub` or `exp` of the wrong type.
    Roles come from the generic and the project-scoped roles claim, never from `scope`: for a PAT ZITADEL lists
    every role of the project there, granted or not.
    """
    for claim in required:
        if body.get(claim) in (None, ""):
            raise MissingClaim(f"the token has no {claim!r}, which the configuration requires")
    if "sub" in body and text(body, "sub") is None:
        raise BadClaim("claim 'sub' is not a non-empty string")
    roles, grants = _grants(body.get(ROLES_CLAIM))
    if project_id:
        more_roles, more_grants = _grants(body.get(f"urn:zitadel:iam:org:project:{project_id}:roles"))
        roles |= more_roles
        grants |= more_grants
    scope = body.get("scope")
    return Principal(
        subject=text(body, "sub"),
        roles=frozenset(roles),
        username=text(body, "username") or text(body, "preferred_username"),
        client_id=text(body, "client_id"),
        org_id=text(body, ORG_ID_CLAIM),
        scope=scope if isinstance(scope, str) else "",
        expires_at=number(body, "exp"),
        grants=frozenset(grants),
        claims=kept_claims(body, keep) if keep is not None and keep.paths else (),
    )
