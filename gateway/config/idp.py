"""The `idp` keys about tokens: how access tokens are checked (introspection, local JWT verification, or both),
which audiences a JWT may carry, how the signing keys are refreshed, and which optional claims are required.

A section of its own, validated into a frozen TokenSettings that IdPConfig carries as `tokens`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.auth.claims import OPTIONAL_CLAIMS

if TYPE_CHECKING:
    from gateway.config.checker import Checker

ACCESS_TOKEN_MODES = ("introspect", "jwt", "auto")
TOKEN_KEYS = frozenset({"access_tokens", "audience", "jwks_uri", "jwks_refresh_seconds", "required_claims"})


@dataclass(frozen=True, slots=True)
class TokenSettings:
    # introspect: every token is introspected. jwt: every token must be a JWS signed by a key of the issuer's
    # JWKS. auto: a JWS whose `iss` is the issuer is verified locally, anything else introspected.
    mode: str = "introspect"  # `idp.access_tokens`
    audience: frozenset[str] = frozenset()  # a JWT's `aud` must contain one of these (or the project id)
    jwks_uri: str | None = None  # None: `jwks_uri` of the discovery document
    jwks_refresh_seconds: float = 10.0  # an unknown `kid` refetches the JWKS at most this often
    required_claims: tuple[str, ...] = ()  # RFC 7662's optional members that must be present anyway

    @property
    def local(self) -> bool:
        """Are some tokens verified locally (so the JWKS is needed)?"""
        return self.mode != "introspect"


def token_settings(c: Checker, m: dict[str, Any], project_id: str | None) -> TokenSettings:
    mode = c.string(m, "access_tokens", "idp", "introspect") or "introspect"
    if mode not in ACCESS_TOKEN_MODES:
        c.fail("idp.access_tokens", f"expected one of {', '.join(ACCESS_TOKEN_MODES)}, got {mode!r}")
        mode = "introspect"
    audience = m.get("audience")
    audiences = [audience] if isinstance(audience, str) else (c.string_list(m, "audience", "idp") or [])
    if mode != "introspect" and not project_id and not audiences:
        # Without an audience any JWT the issuer signs, for any application, would be accepted here.
        c.fail("idp.access_tokens", f"{mode} needs idp.project_id or idp.audience: the audience a JWT must carry")
    required = c.string_list(m, "required_claims", "idp") or []
    for i, claim in enumerate(required):
        if claim not in OPTIONAL_CLAIMS:
            c.fail(f"idp.required_claims[{i}]", f"expected one of {', '.join(OPTIONAL_CLAIMS)}, got {claim!r}")
    return TokenSettings(
        mode=mode,
        audience=frozenset(audiences),
        jwks_uri=c.url(c.string(m, "jwks_uri", "idp"), "idp.jwks_uri"),
        jwks_refresh_seconds=c.number(m, "jwks_refresh_seconds", "idp", 10.0, minimum=0.0),
        required_claims=tuple(dict.fromkeys(c for c in required if c in OPTIONAL_CLAIMS)),
    )
