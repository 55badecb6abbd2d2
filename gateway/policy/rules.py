"""Pure rule logic: canonicalise a request path, match it against routes, decide what a principal may do.

No I/O and no aiohttp here, so every function is tested with plain tables. The canonical path is the only path
the gateway matches *and* forwards: what was checked is exactly what the upstream receives.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.forward.identity_map import NO_HEADERS, HeaderMap
from gateway.policy.paths import PathError, canonical_path

_CAPTURE = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")


@dataclass(frozen=True, slots=True)
class PathPattern:
    """`/a/b` exact, `*` one whole non-empty segment, a final `/**` any tail (including none)."""

    source: str
    segments: tuple[str, ...]
    tail: bool
    folded: tuple[str, ...] = ()  # the segments in lower case, to detect case-variant requests
    cased: bool = False  # folded != segments
    captures: tuple[tuple[str, int], ...] = ()  # `{name}` segments: (name, index); they match as `*` does

    @classmethod
    def compile(cls, source: str) -> PathPattern:
        if not source.startswith("/"):
            raise ValueError("must start with '/'")
        parts = source.split("/")[1:]
        captures: list[tuple[str, int]] = []
        for index, part in enumerate(parts):
            if "{" in part or "}" in part:
                if not _CAPTURE.fullmatch(part):
                    raise ValueError(
                        "'{name}' must be a whole segment, the name a letter or '_' then letters, digits, '_'"
                    )
                if any(name == part[1:-1] for name, _ in captures):
                    raise ValueError(f"the segment {part} is named twice")
                captures.append((part[1:-1], index))
                parts[index] = "*"  # matched as `*`: route analysis and matching need not know about names
        if len(parts) > 1 and parts[-1] == "":  # `/a/` is written `/a`: a trailing slash never matters here
            parts = parts[:-1]
        tail = parts[-1] == "**"
        if tail:
            parts = parts[:-1]
        if "**" in parts:
            raise ValueError("'**' is only allowed as the last segment")
        for part in parts:
            if part != "*" and ("*" in part):
                raise ValueError("'*' must be a whole segment")
        if "" in parts[:-1] or (tail and parts and parts[-1] == ""):
            raise ValueError("empty segment ('//')")
        literal = "/" + "/".join(parts)
        if "*" not in literal:
            try:
                if canonical_path(literal) != literal:
                    raise ValueError(f"not in canonical form (write it as {canonical_path(literal)!r})")
            except PathError as exc:
                raise ValueError(str(exc)) from exc
        folded = tuple(p.lower() for p in parts)
        return cls(source, tuple(parts), tail, folded, folded != tuple(parts), tuple(captures))

    def capture_index(self, reference: str) -> int | None:
        """The index of the segment `{name}` names, or None (not of that form, or no such segment)."""
        for name, index in self.captures:
            if reference == "{" + name + "}":
                return index
        return None

    def matches(self, path: str, *, fold: bool = False) -> bool:
        """`path` is canonical. `/a/` matches as `/a` does, so a trailing slash cannot step around a rule.

        fold: compare in lower case (`path` must be lower-cased by the caller).
        """
        return self.matches_segments(path_segments(path), fold=fold)

    def matches_segments(self, segs: Sequence[str], *, fold: bool = False) -> bool:
        pat = self.folded if fold else self.segments
        if self.tail:
            if len(segs) < len(pat):
                return False
        elif len(segs) != len(pat):
            return False
        for want, got in zip(pat, segs, strict=False):
            if want == "*":
                if not got:
                    return False
            elif want != got:
                return False
        return True


def path_segments(path: str) -> list[str]:
    """A canonical path's segments for matching, without the empty one a trailing slash leaves."""
    segs = path.split("/")[1:]
    if len(segs) > 1 and segs[-1] == "":
        segs.pop()
    return segs


class Access(enum.Enum):
    PUBLIC = "public"
    AUTHENTICATED = "authenticated"
    ROLES = "roles"


@dataclass(frozen=True, slots=True)
class Policy:
    access: Access
    any_of: frozenset[str] = frozenset()
    all_of: frozenset[str] = frozenset()
    in_org: str | None = None  # the roles must be granted in this organisation: an id, or `{name}` of a segment

    def describe(self) -> str:
        if self.access is not Access.ROLES:
            return str(self.access.value)
        parts = []
        if self.all_of:
            parts.append("all of " + ", ".join(sorted(self.all_of)))
        if self.any_of:
            parts.append("any of " + ", ".join(sorted(self.any_of)))
        where = f" in organisation {self.in_org}" if self.in_org is not None else ""
        return "roles: " + "; ".join(parts) + where


@dataclass(frozen=True, slots=True)
class Cors:
    """A route's CORS: the gateway answers genuine preflights (OPTIONS + Origin + Access-Control-Request-Method)
    and owns the Access-Control-* headers of every answer on the route (the upstream's are replaced)."""

    origins: frozenset[str]  # exact origins; "*" allows any but `null`, and is answered as `*`
    methods: frozenset[str]
    headers: frozenset[str]  # lower case
    max_age: int = 600
    allow_credentials: bool = False  # never with "*" (config refuses it; browsers would refuse it too)
    expose_headers: tuple[str, ...] = ()

    def allow_origin(self, origin: str | None) -> str | None:
        """The Access-Control-Allow-Origin to answer `origin` with, or None: this origin may not read the answer.

        `*` is sent as `*`, never as the echoed origin, so it can never pair with credentials; `null` (sandboxed
        frames, file: pages, redirects) is any site's to send, so `*` does not cover it."""
        if origin is None:
            return None
        if origin in self.origins:
            return origin
        if "*" in self.origins and origin != "null":
            return "*"
        return None

    def answer_headers(self, origin: str | None) -> tuple[tuple[str, str], ...]:
        """The CORS headers of an actual (not preflight) answer; the upstream's own are dropped."""
        allowed = self.allow_origin(origin)
        out: list[tuple[str, str]] = [("Vary", "Origin")]  # the answer depends on Origin: allowed or not
        if allowed is not None:
            out.append(("Access-Control-Allow-Origin", allowed))
            if self.allow_credentials:
                out.append(("Access-Control-Allow-Credentials", "true"))
            if self.expose_headers:
                out.append(("Access-Control-Expose-Headers", ", ".join(self.expose_headers)))
        return tuple(out)

    def preflight(self, origin: str, method: str, request_headers: str) -> dict[str, str] | None:
        """The headers of an allowed preflight's answer, or None when this origin/method/header set is refused."""
        allowed = self.allow_origin(origin)
        if allowed is None:
            return None
        if method not in self.methods:
            return None
        asked = {h.strip().lower() for h in request_headers.split(",") if h.strip()}
        if not asked <= self.headers:
            return None
        headers = {
            "Access-Control-Allow-Origin": allowed,
            "Access-Control-Allow-Methods": ", ".join(sorted(self.methods)),
            "Access-Control-Allow-Headers": ", ".join(sorted(self.headers)),
            "Access-Control-Max-Age": str(self.max_age),
            "Vary": "Origin",
        }
        if self.allow_credentials:
            headers["Access-Control-Allow-Credentials"] = "true"
        return headers


@dataclass(frozen=True, slots=True)
class Route:
    id: str
    pattern: PathPattern
    policy: Policy
    upstream: str
    methods: frozenset[str] | None = None  # None: every method
    pass_authorization: bool = True
    max_body_bytes: int | None = None  # None: the global limit
    allow_query_token: bool = False  # RFC 6750 §2.3 `access_token` in the query, for clients that cannot set headers
    cors: Cors | None = None
    # Public routes only: relay Authorization and `access_token` as sent, though the gateway checked neither.
    forward_unchecked_credentials: bool = False
    introspect_always: bool = False  # `introspect: always`: never verified locally, so a revocation counts at once
    delete_body: bool = False  # a DELETE may carry a body (some APIs take one); refused by default
    websocket: bool = False  # a GET with `Upgrade: websocket` is relayed as a WebSocket (gateway/forward/websocket/)
    identity_headers: HeaderMap = NO_HEADERS  # the claims mapped to headers here (`identity.headers` + the route's)

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", implied_methods(self.methods))

    def matches(self, method: str, path: str, *, fold: bool = False) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        return self.pattern.matches(path, fold=fold)

    def org_of(self, path: str) -> str | None:
        """The organisation whose roles count on this (matched, canonical) path; None: roles of any organisation."""
        org = self.policy.in_org
        if org is None:
            return None
        index = self.pattern.capture_index(org)
        # A reference to no segment is refused at load (org_scope_problem); were it not, it names no organisation.
        return org if index is None else path_segments(path)[index]


def org_scope_problem(pattern: PathPattern, in_org: str) -> str | None:
    """Why `in_org` cannot scope a route with this path, or None. `check` and every load report it."""
    if in_org.startswith("{") or in_org.endswith("}"):
        if pattern.capture_index(in_org) is None:
            return f"{in_org!r} names no segment of the path {pattern.source}"
        return None
    if not in_org.strip() or any(c in in_org for c in "{}/ "):
        return f"{in_org!r} is neither an organisation id nor a '{{name}}' of a path segment"
    return None


def implied_methods(methods: frozenset[str] | None) -> frozenset[str] | None:
    """A rule that lists GET covers HEAD too (as nginx's `limit_except GET` does): frameworks answer HEAD by running
    the GET handler, so a HEAD that fell through to another rule would run it for a caller the GET rule refuses."""
    if methods is not None and "GET" in methods and "HEAD" not in methods:
        return methods | {"HEAD"}
    return methods


def match_route(routes: Iterable[Route], method: str, path: str, *, fold: bool = False) -> Route | None:
    """The first route that matches wins; None means deny (404)."""
    segs = path_segments(path)  # once, not once per route
    for route in routes:
        if (route.methods is None or method in route.methods) and route.pattern.matches_segments(segs, fold=fold):
            return route
    return None


def resolve_route(routes: Sequence[Route], method: str, path: str) -> Route | None:
    """match_route, refusing a path whose letter case decides the route.

    Some upstreams route case-insensitively (Windows, many frameworks), others do not. When `/ADMIN` would match a
    different rule than `/admin` does, one of the two kinds of upstream would be reached around its rule: reject.
    """
    route = match_route(routes, method, path)
    lowered = path.lower()
    if lowered == path and not any(r.pattern.cased for r in routes):
        return route  # nothing to fold on either side: the second match would be the first
    if match_route(routes, method, lowered, fold=True) is not route:
        raise PathError("the letter case of the path makes the route ambiguous")
    return route


def roles_in_org(grants: frozenset[tuple[str, str]], org: str) -> frozenset[str]:
    """The roles of (role, organisation id) grants that are granted in organisation `org`."""
    return frozenset(role for role, where in grants if where == org)


def missing_roles(policy: Policy, roles: frozenset[str]) -> str | None:
    """None when `roles` satisfy the policy, else a short description of what is missing."""
    if policy.access is not Access.ROLES:
        return None
    lacking = sorted(policy.all_of - roles)
    if lacking:
        return ", ".join(lacking)
    if policy.any_of and not (policy.any_of & roles):
        return " or ".join(sorted(policy.any_of))
    return None


_METHOD_RE = re.compile(r"^[A-Z][A-Z-]*$")


def valid_method(method: str) -> bool:
    return bool(_METHOD_RE.match(method))


def route_table(routes: Sequence[Route]) -> list[tuple[str, str, str, str, str]]:
    """Rows (order, pattern, methods, policy, upstream) for `check` and logs."""
    return [
        (
            str(i),
            r.pattern.source,
            ",".join(sorted(r.methods)) if r.methods is not None else "*",
            r.policy.describe(),
            r.upstream,
        )
        for i, r in enumerate(routes)
    ]
