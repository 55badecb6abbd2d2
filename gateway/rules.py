"""Pure rule logic: canonicalise a request path, match it against routes, decide what a principal may do.

No I/O and no aiohttp here, so every function is tested with plain tables. The canonical path is the only path
the gateway matches *and* forwards: what was checked is exactly what the upstream receives.
"""

from __future__ import annotations

import enum
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
# RFC 3986 pchar minus ';' (servlet containers treat ';' as a path-parameter separator, so `/public;/../x`
# means different things to us and to them) plus '/' and '%'. Anything else raw is rejected.
_ALLOWED_RAW = _UNRESERVED | frozenset("!$&'()*+,=:@/%")
_HEX = frozenset(string.hexdigits)
# Decoding these would change how the path splits or is read by the upstream; keeping them encoded would make
# the path mean different things to different servers. Either way it is ambiguous: reject.
_FORBIDDEN_ENCODED = {0x2F: "an encoded '/'", 0x5C: "an encoded '\\'", 0x3B: "an encoded ';'"}


class PathError(ValueError):
    """The path cannot be canonicalised safely; the request gets 400."""


def canonical_path(raw: str) -> str:
    """Return the one canonical form of a request path (no query string), or raise PathError.

    Percent-encoded unreserved characters are decoded, other escapes are upper-cased, `.` and `..` segments are
    resolved, empty segments merged. A trailing slash is kept: `/a` and `/a/` are different paths.
    """
    if not raw.startswith("/"):
        raise PathError("the request target must be an absolute path")
    chars: list[str] = []
    raw_bytes = bytearray()
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c == "%":
            hex_pair = raw[i + 1 : i + 3]
            if len(hex_pair) != 2 or not set(hex_pair) <= _HEX:
                raise PathError("a '%' that does not start a valid escape")
            byte = int(hex_pair, 16)
            if byte in _FORBIDDEN_ENCODED:
                raise PathError(f"{_FORBIDDEN_ENCODED[byte]} in the path")
            if byte < 0x20 or byte == 0x7F:
                raise PathError("an encoded control character in the path")
            if byte == 0x25 and set(raw[i + 3 : i + 5]) <= _HEX and len(raw[i + 3 : i + 5]) == 2:
                raise PathError("a double-encoded escape in the path")
            raw_bytes.append(byte)
            decoded = chr(byte)
            chars.append(decoded if decoded in _UNRESERVED else "%" + hex_pair.upper())
            i += 3
            continue
        if c not in _ALLOWED_RAW:
            raise PathError(f"the character {c!r} is not allowed in a path")
        raw_bytes.extend(c.encode())
        chars.append(c)
        i += 1
    try:
        raw_bytes.decode("utf-8")  # rejects overlong forms such as %C0%AE
    except UnicodeDecodeError as exc:
        raise PathError("the path does not decode to valid UTF-8") from exc
    return _resolve_segments("".join(chars))


def _resolve_segments(path: str) -> str:
    out: list[str] = []
    segments = path.split("/")[1:]
    for seg in segments:
        if seg in ("", "."):
            continue
        if seg == "..":
            if not out:
                raise PathError("'..' climbs above the root")
            out.pop()
            continue
        out.append(seg)
    trailing = segments[-1] in ("", ".", "..") and bool(out)
    return "/" + "/".join(out) + ("/" if trailing else "")


# ----------------------------------------------------------------------------------------------------------------
# Patterns and routes: compiled once at config load.


@dataclass(frozen=True, slots=True)
class PathPattern:
    """`/a/b` exact, `*` one whole non-empty segment, a final `/**` any tail (including none)."""

    source: str
    segments: tuple[str, ...]
    tail: bool

    @classmethod
    def compile(cls, source: str) -> PathPattern:
        if not source.startswith("/"):
            raise ValueError("must start with '/'")
        parts = source.split("/")[1:]
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
        return cls(source, tuple(parts), tail)

    def matches(self, path: str) -> bool:
        segs = path.split("/")[1:]
        pat = self.segments
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


class Access(enum.Enum):
    PUBLIC = "public"
    AUTHENTICATED = "authenticated"
    ROLES = "roles"


@dataclass(frozen=True, slots=True)
class Policy:
    access: Access
    any_of: frozenset[str] = frozenset()
    all_of: frozenset[str] = frozenset()

    def describe(self) -> str:
        if self.access is not Access.ROLES:
            return str(self.access.value)
        parts = []
        if self.all_of:
            parts.append("all of " + ", ".join(sorted(self.all_of)))
        if self.any_of:
            parts.append("any of " + ", ".join(sorted(self.any_of)))
        return "roles: " + "; ".join(parts)


@dataclass(frozen=True, slots=True)
class Route:
    id: str
    pattern: PathPattern
    policy: Policy
    upstream: str
    methods: frozenset[str] | None = None  # None: every method
    pass_authorization: bool = True
    tags: tuple[str, ...] = field(default=())

    def matches(self, method: str, path: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        return self.pattern.matches(path)


def match_route(routes: Iterable[Route], method: str, path: str) -> Route | None:
    """The first route that matches wins; None means deny (404)."""
    for route in routes:
        if route.matches(method, path):
            return route
    return None


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
