"""The `routes:` list: paths, methods, policies, CORS and the per-route options, validated into Routes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from gateway.config.checker import Checker, join_key
from gateway.config.identity import (
    NO_IDENTITY_SETTINGS,
    IdentitySettings,
    route_header_map,
)
from gateway.config.model import Upstream
from gateway.config.sections import MAX_BYTES
from gateway.policy.rules import Access, Cors, PathPattern, Policy, Route, org_scope_problem, valid_method

_ROUTE = frozenset(
    {
        "id",
        "path",
        "methods",
        "policy",
        "roles",
        "upstream",
        "pass_authorization",
        "max_body_bytes",
        "allow_query_token",
        "cors",
        "forward_unchecked_credentials",
        "introspect",
        "delete_body",
        "websocket",
        "identity_headers",
    }
)


_CORS = frozenset(
    {"allowed_origins", "allowed_methods", "allowed_headers", "max_age_seconds", "allow_credentials", "expose_headers"}
)


_ROLES = frozenset({"any_of", "all_of", "in_org"})


def _cors(c: Checker, node: Any, path: str, route_methods: frozenset[str] | None) -> Cors | None:
    if node is None:
        return None
    m = c.mapping(node, path, _CORS)
    origins = c.string_list(m, "allowed_origins", path) or []
    if not origins:
        c.fail(join_key(path, "allowed_origins"), "needs at least one origin (or '*')")
    for j, origin in enumerate(origins):
        parts = urlsplit(origin)
        if origin != "*" and (parts.scheme not in ("http", "https") or not parts.netloc or parts.path):
            c.fail(f"{path}.allowed_origins[{j}]", f"expected '*' or an origin like https://app.example: {origin!r}")
    credentials = c.boolean(m, "allow_credentials", path, False)
    if credentials and "*" in origins:
        # Any site could then read a signed-in user's answers: list the origins instead.
        c.fail(join_key(path, "allow_credentials"), "cannot be combined with allowed_origins '*'")
    methods = c.string_list(m, "allowed_methods", path)
    if methods is None:
        methods = sorted(route_methods) if route_methods is not None else ["GET", "POST"]
    return Cors(
        origins=frozenset(origins),
        methods=frozenset(x.upper() for x in methods),
        headers=frozenset(h.lower() for h in (c.string_list(m, "allowed_headers", path) or ["authorization"])),
        max_age=c.integer(m, "max_age_seconds", path, 600, 0, 86400),
        allow_credentials=credentials,
        expose_headers=tuple(c.string_list(m, "expose_headers", path) or ()),
    )


def _policy(c: Checker, m: dict[str, Any], path: str) -> Policy:
    has_roles = "roles" in m
    policy = m.get("policy")
    if has_roles:
        if policy not in (None, "roles"):
            c.fail(join_key(path, "policy"), f"'{policy}' cannot be combined with roles")
        roles = c.mapping(m["roles"], join_key(path, "roles"), _ROLES)
        any_of = c.string_list(roles, "any_of", join_key(path, "roles")) or []
        all_of = c.string_list(roles, "all_of", join_key(path, "roles")) or []
        if not any_of and not all_of and not c.failed_under(join_key(path, "roles")):
            c.fail(join_key(path, "roles"), "needs a non-empty any_of or all_of")
        in_org = c.string(roles, "in_org", join_key(path, "roles"))
        return Policy(Access.ROLES, frozenset(any_of), frozenset(all_of), in_org)
    if policy in ("public", "authenticated"):
        return Policy(Access(policy))
    if policy is None:
        c.fail(path, "needs a policy: public, authenticated, or roles with any_of / all_of")
    else:
        c.fail(join_key(path, "policy"), f"expected public or authenticated (or a roles mapping), got {policy!r}")
    return Policy(Access.AUTHENTICATED)


def _delete_body(c: Checker, m: dict[str, Any], path: str, methods: frozenset[str] | None) -> bool:
    allowed = c.boolean(m, "delete_body", path, False)
    if allowed and methods is not None and "DELETE" not in methods:
        c.fail(join_key(path, "delete_body"), "the route's methods do not include DELETE")
    return allowed


def parse_routes(
    c: Checker, node: Any, upstreams: Mapping[str, Upstream], identity: IdentitySettings = NO_IDENTITY_SETTINGS
) -> list[Route]:
    if not isinstance(node, list) or not node:
        c.fail("routes", "expected a non-empty list of routes")
        return []
    default_upstream = "default" if "default" in upstreams else (next(iter(upstreams)) if len(upstreams) == 1 else None)
    routes: list[Route] = []
    for i, raw in enumerate(node):
        path = f"routes[{i}]"
        m = c.mapping(raw, path, _ROUTE)
        source = c.required_string(m, "path", path)
        try:
            pattern = PathPattern.compile(source)
        except ValueError as exc:
            if source:
                c.fail(join_key(path, "path"), f"{source!r}: {exc}")
            pattern = PathPattern(source, (), False)
        methods_list = c.string_list(m, "methods", path)
        methods = None
        if methods_list is not None:
            methods = frozenset(x.upper() for x in methods_list)
            for j, meth in enumerate(methods_list):
                if not valid_method(meth.upper()):
                    c.fail(f"{path}.methods[{j}]", f"{meth!r} is not an HTTP method")
            if not methods_list:
                c.fail(
                    join_key(path, "methods"),
                    "an empty list matches nothing; leave it out to allow every method",
                )
        policy = _policy(c, m, path)
        forward_unchecked = c.boolean(m, "forward_unchecked_credentials", path, False)
        if forward_unchecked and policy.access is not Access.PUBLIC:
            # A protected route forwards the token it checked (pass_authorization); nothing else is unchecked.
            c.fail(
                join_key(path, "forward_unchecked_credentials"), "only a public route forwards unchecked credentials"
            )
        websocket = c.boolean(m, "websocket", path, False)
        if websocket and methods is not None and "GET" not in methods:
            c.fail(join_key(path, "websocket"), "a WebSocket opens with a GET, which the route's methods leave out")
        upstream = c.string(m, "upstream", path) or default_upstream
        if upstream is None:
            c.fail(
                join_key(path, "upstream"),
                "is required when there are several upstreams and none named 'default'",
            )
        elif upstream not in upstreams and upstreams:
            c.fail(join_key(path, "upstream"), f"no upstream named {upstream!r}")
        scope_problem = org_scope_problem(pattern, policy.in_org) if policy.in_org is not None else None
        if scope_problem is not None and not c.failed_under(join_key(path, "path")):
            c.fail(join_key(path, "roles.in_org"), scope_problem)
        routes.append(
            Route(
                id=c.string(m, "id", path) or source,
                pattern=pattern,
                policy=policy,
                upstream=upstream or "",
                methods=methods,
                pass_authorization=c.boolean(m, "pass_authorization", path, True),
                max_body_bytes=(
                    c.integer(m, "max_body_bytes", path, 0, 0, MAX_BYTES) if "max_body_bytes" in m else None
                ),
                allow_query_token=c.boolean(m, "allow_query_token", path, False),
                cors=_cors(c, m.get("cors"), join_key(path, "cors"), methods),
                forward_unchecked_credentials=forward_unchecked,
                introspect_always=_introspect(c, m, path),
                delete_body=_delete_body(c, m, path, methods),
                websocket=websocket,
                identity_headers=route_header_map(c, m, path, identity),
            )
        )
    return routes


def _introspect(c: Checker, m: dict[str, Any], path: str) -> bool:
    value = c.string(m, "introspect", path)
    if value not in (None, "always"):
        c.fail(join_key(path, "introspect"), f"expected always, got {value!r}")
    return value == "always"
