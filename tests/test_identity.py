"""Claims to headers, as pure units: the claim-path syntax, the values, the bound, and what a principal keeps."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import jwt
import pytest

from gateway.auth.claims import ClaimSelection, Principal, principal_from_claims
from gateway.auth.jwt_tokens import JwtRules, verify_jwt
from gateway.auth.redis_store import dump_answer, load_answer
from gateway.config import Config, ConfigError, parse_config
from gateway.forward.identity import header_text, identity_of, mapped_claims
from gateway.forward.identity_map import ClaimMapping, HeaderMap
from tests.signing_idp import PROJECT_ID, SigningIdP, new_key
from tests.support import ENV, gateway_document

ORG_ID = "urn:zitadel:iam:user:resourceowner:id"
METADATA = "urn:zitadel:iam:user:metadata"


def config(identity: dict[str, Any], routes: list[dict[str, Any]] | None = None, **more: Any) -> Config:
    document = gateway_document(issuer="https://z.example", upstream_url="http://127.0.0.1:1", routes=routes)
    return parse_config({**document, "identity": identity, **more}, source="c.yaml", env=ENV)


def problems(identity: dict[str, Any], routes: list[dict[str, Any]] | None = None, **more: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        config(identity, routes, **more)
    return str(caught.value)


def test_a_string_names_one_key_whole_and_a_list_names_a_path() -> None:
    got = config(
        {
            "headers": {
                "X-Org": ORG_ID,  # `:` and `.` are part of the key, never separators
                "X-Dotted": "a.b",
                "X-Department": {"claim": [METADATA, "department"], "decode": "base64"},
            }
        }
    )
    assert got.identity.headers.mappings == (
        ClaimMapping("X-Org", (ORG_ID,)),
        ClaimMapping("X-Dotted", ("a.b",)),
        ClaimMapping("X-Department", (METADATA, "department"), "base64"),
    )
    assert got.idp is not None
    assert set(got.idp.keep.paths) == {(ORG_ID,), ("a.b",), (METADATA, "department")}
    assert got.identity.names == ("X-Org", "X-Dotted", "X-Department")


@pytest.mark.parametrize(
    ("identity", "expected"),
    [
        ({"headers": {"X-Auth-Subject": "email"}}, "c.yaml: identity.headers.X-Auth-Subject: X-Auth-Subject is a"),
        ({"headers": {"authorization": "email"}}, "identity.headers.authorization: authorization is a header"),
        ({"headers": {"X-Forwarded-User": "email"}}, "identity.headers.X-Forwarded-User: X-Forwarded-User is a"),
        ({"headers": {"X_Email": "email"}}, "identity.headers.X_Email: a header name is letters"),
        ({"headers": {"X-Email": ""}}, "identity.headers.X-Email: expected a claim name, or a list of keys"),
        ({"headers": {"X-Email": ["a", 1]}}, "identity.headers.X-Email: expected a claim name"),
        ({"headers": {"X-Email": {"claim": "e", "decode": "hex"}}}, "identity.headers.X-Email.decode: expected"),
        ({"headers": {"X-Email": {"decode": "base64"}}}, "identity.headers.X-Email.claim: is required"),
        ({"headers": {"X-A": "a", "x-a": "b"}}, "identity.headers.x-a: the same header name twice"),
        ({"max_value_bytes": 3}, "identity.max_value_bytes: expected a whole number from 16 to 16384"),
        ({"colour": 1}, "identity.colour: unknown key"),
    ],
)
def test_bad_mappings_name_the_file_and_the_key(identity: dict[str, Any], expected: str) -> None:
    assert expected in problems(identity)


def test_a_route_adds_mappings_or_turns_them_off() -> None:
    routes: list[dict[str, Any]] = [
        {"path": "/plain", "policy": "authenticated"},
        {"path": "/more", "policy": "authenticated", "identity_headers": {"X-Email": "mail", "X-Name": "name"}},
        {"path": "/none", "policy": "authenticated", "identity_headers": False},
    ]
    got = config({"headers": {"X-Email": "email"}}, routes)
    plain, more, none = (r.identity_headers.mappings for r in got.routes)
    assert plain == (ClaimMapping("X-Email", ("email",)),)
    assert more == (ClaimMapping("X-Email", ("mail",)), ClaimMapping("X-Name", ("name",)))
    assert none == ()
    assert got.identity.names == ("X-Email", "X-Name")  # stripped on every route, /none and public ones included
    assert got.idp is not None and set(got.idp.keep.paths) == {("email",), ("mail",), ("name",)}


@pytest.mark.parametrize(
    ("value", "header"),
    [
        ("alice@example.com", "alice@example.com"),
        ("Doe, Jane", "Doe, Jane"),  # one value: a comma stays
        ("Zoë 100%", "Zo%C3%AB 100%25"),  # non-ASCII (and then `%`) percent-encoded as UTF-8
        (42, "42"),
        (1.5, "1.5"),
        (True, "true"),
        (["a", "b,c", 3, False], "a,b%2Cc,3,false"),  # items never split
        ({"k": "v", "n": [1, 2]}, '{"k":"v","n":[1,2]}'),
        ({"é": "ü"}, '{"\\u00e9":"\\u00fc"}'),
        ([{"k": 1}], '[{"k":1}]'),
    ],
)
def test_values(value: Any, header: str) -> None:
    assert header_text(value) == header


def principal_of(claims: dict[str, Any], header_map: HeaderMap) -> Principal:
    keep = ClaimSelection(header_map.paths, header_map.max_bytes)
    return principal_from_claims({"sub": "u1", **claims}, project_id=None, keep=keep)


def test_nested_paths_urn_keys_lists_objects_and_base64_metadata() -> None:
    header_map = HeaderMap(
        (
            ClaimMapping("X-Org", (ORG_ID,)),
            ClaimMapping("X-Department", (METADATA, "department"), "base64"),
            ClaimMapping("X-Metadata", (METADATA,), "base64"),
            ClaimMapping("X-Raw-Metadata", (METADATA,)),
            ClaimMapping("X-Groups", ("groups",)),
            ClaimMapping("X-Address", ("address",)),
            ClaimMapping("X-City", ("address", "locality")),
            ClaimMapping("X-Absent", ("nothing", "here")),
        ),
        1024,
    )
    claims = {
        ORG_ID: "170086305978381234",
        METADATA: {"department": base64.b64encode("Ventes & Marché".encode()).decode()},
        "groups": ["admins", "ops"],
        "address": {"locality": "Zürich", "country": "CH"},
    }
    headers = identity_of(principal_of(claims, header_map), header_map)
    assert headers["X-Org"] == "170086305978381234"
    assert headers["X-Department"] == "Ventes & March%C3%A9"
    assert json.loads(headers["X-Metadata"]) == {"department": "Ventes & Marché"}
    assert headers["X-Raw-Metadata"] == json.dumps(claims[METADATA], separators=(",", ":"))
    assert headers["X-Groups"] == "admins,ops"
    assert json.loads(headers["X-Address"]) == claims["address"]
    assert headers["X-City"] == "Z%C3%BCrich"
    assert "X-Absent" not in headers
    assert headers["X-Auth-Subject"] == "u1"  # the fixed ones are still there


def test_a_principal_keeps_only_the_mapped_claims_within_the_bound(caplog: pytest.LogCaptureFixture) -> None:
    header_map = HeaderMap((ClaimMapping("X-Email", ("email",)), ClaimMapping("X-Bio", ("bio",))), 64)
    noise = {f"urn:zitadel:iam:claim:{i}": "x" * 100 for i in range(200)}
    with caplog.at_level(logging.WARNING, "gateway.identity"):
        principal = principal_of({"email": "a@example.com", "bio": "secret-bio-" + "y" * 100, **noise}, header_map)
    assert principal.claims == ((("email",), '"a@example.com"'),)
    assert "claim bio left out: longer than 64 bytes" in caplog.text
    assert "secret-bio" not in caplog.text


@pytest.mark.parametrize(
    ("claims", "why"),
    [
        ({"name": "evil\r\nX-Auth-Roles: admin"}, "control characters"),
        ({"name": ["ok", "tab\there"]}, "control characters"),
        ({"name": "\x7fdel"}, "control characters"),
    ],
)
def test_bad_values_are_left_out_and_logged_by_claim_name_only(
    claims: dict[str, Any], why: str, caplog: pytest.LogCaptureFixture
) -> None:
    header_map = HeaderMap((ClaimMapping("X-Name", ("name",)), ClaimMapping("X-Email", ("email",))), 1024)
    with caplog.at_level(logging.WARNING, "gateway.identity"):
        headers = identity_of(principal_of({**claims, "email": "a@b.c"}, header_map), header_map)
    assert "X-Name" not in headers and headers["X-Email"] == "a@b.c"
    assert f"identity header X-Name: claim name left out: {why}" in caplog.text
    assert "evil" not in caplog.text and "here" not in caplog.text and "del" not in caplog.text


def test_metadata_that_is_not_base64_is_left_out(caplog: pytest.LogCaptureFixture) -> None:
    header_map = HeaderMap((ClaimMapping("X-Dept", (METADATA, "department"), "base64"),), 1024)
    with caplog.at_level(logging.WARNING, "gateway.identity"):
        principal = principal_of({METADATA: {"department": "not*base64!"}}, header_map)
        headers = identity_of(principal, header_map)
    assert "X-Dept" not in headers
    assert 'claim ["urn:zitadel:iam:user:metadata", "department"] left out: not base64' in caplog.text
    assert "not*base64!" not in caplog.text
    assert mapped_claims(principal, header_map) == {}


def test_a_value_too_long_once_encoded_is_left_out(caplog: pytest.LogCaptureFixture) -> None:
    header_map = HeaderMap((ClaimMapping("X-Name", ("name",)),), 40)
    with caplog.at_level(logging.WARNING, "gateway.identity"):
        headers = identity_of(principal_of({"name": "é" * 10}, header_map), header_map)  # 22 bytes JSON, 60 encoded
    assert "X-Name" not in headers
    assert "claim name left out: longer than 40 bytes" in caplog.text


def test_the_kept_claims_survive_the_shared_cache() -> None:
    header_map = HeaderMap((ClaimMapping("X-Dept", (METADATA, "department")),), 1024)
    principal = principal_of({METADATA: {"department": "c2FsZXM="}}, header_map)
    assert principal.claims
    assert load_answer(dump_answer(principal)) == principal
    bare = Principal(subject="s", roles=frozenset())
    assert json.loads(dump_answer(bare))["v"] == 2  # nothing mapped: entries processes of before can read


def test_a_locally_verified_jwt_keeps_the_mapped_claims_too() -> None:
    key = new_key("ES256")
    idp = SigningIdP(issuer="https://z.example", keys=[key])
    token = idp.sign(extra={"email": "a@example.com", "noise": "n" * 500})
    keep = ClaimSelection((("email",),), 1024)
    rules = JwtRules("https://z.example", (PROJECT_ID,), 5.0, PROJECT_ID, keep=keep)
    principal = verify_jwt(token, jwt.PyJWK(key.jwk()), "ES256", rules)
    assert principal.claims == ((("email",), '"a@example.com"'),)
