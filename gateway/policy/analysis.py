"""Pure analysis of a route table: which routes shadow or overlap others, and what the gateway would decide.

Patterns are compared as sets of *canonical* paths: a non-final segment is never empty, a final one may be
(`/a/` is the segments `a`, ``). `*` is one non-empty segment, a final `/**` any tail including none. So
`covers(a, b)` and `overlaps(a, b)` are exact for the paths the gateway can ever match. No I/O, no aiohttp.
"""

from __future__ import annotations

from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, cast

from multidict import CIMultiDict

from gateway.auth.claims import Principal
from gateway.config import Limits
from gateway.errors import GatewayError, InsufficientScope
from gateway.policy.decision import Decider, Decision, Inbound, Trace
from gateway.policy.paths import PathError, canonical_path, split_target
from gateway.policy.rules import Access, PathPattern, Route

STAR = "*"
_ANY_SEGMENT = "x"  # a witness for `*`: any non-empty segment will do


def _segment_covers(a: str, b: str) -> bool:
    """Every value `b` matches, `a` matches too."""
    if a == STAR:
        return b == STAR or b != ""
    return a == b


def _segment_meet(a: str, b: str) -> str | None:
    """A segment value both match, or None."""
    if a == STAR and b == STAR:
        return _ANY_SEGMENT
    if a == STAR:
        return b or None
    if b == STAR:
        return a or None
    return a if a == b else None


def covers(a: PathPattern, b: PathPattern) -> bool:
    """True when every canonical path `b` matches is also matched by `a`."""
    if b.tail and not a.tail:
        return False  # b matches arbitrarily long paths, a a fixed length
    if a.tail:
        if len(b.segments) < len(a.segments):
            return False
    elif len(b.segments) != len(a.segments):
        return False
    return all(_segment_covers(x, y) for x, y in zip(a.segments, b.segments, strict=False))


def overlap_example(a: PathPattern, b: PathPattern) -> str | None:
    """A canonical path both patterns match, or None when they are disjoint."""
    la, lb = len(a.segments), len(b.segments)
    if not a.tail and not b.tail and la != lb:
        return None
    if a.tail and not b.tail and lb < la:
        return None
    if b.tail and not a.tail and la < lb:
        return None
    out: list[str] = []
    for i in range(max(la, lb)):
        x = a.segments[i] if i < la else None
        y = b.segments[i] if i < lb else None
        if x is not None and y is not None:
            both = _segment_meet(x, y)
            if both is None:
                return None
            out.append(both)
        else:
            only = x if x is not None else y
            assert only is not None
            out.append(_ANY_SEGMENT if only == STAR else only)
    return "/" + "/".join(out)


def overlaps(a: PathPattern, b: PathPattern) -> bool:
    return overlap_example(a, b) is not None


def methods_cover(a: frozenset[str] | None, b: frozenset[str] | None) -> bool:
    """None is every method."""
    return a is None or (b is not None and b <= a)


def methods_meet(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
    """The methods both accept (None: every method); an empty set means none."""
    if a is None:
        return b
    if b is None:
        return a
    return a & b


def _describe_methods(methods: frozenset[str] | None) -> str:
    return "any method" if methods is None else ",".join(sorted(methods))


def _name(index: int, route: Route) -> str:
    return f"routes[{index}] ({route.id})"


def route_warnings(routes: Sequence[Route]) -> list[str]:
    """Routes that can never match (an earlier one covers all their paths and methods), and overlapping routes
    whose policies differ (the earlier one silently decides the shared requests)."""
    warnings: list[str] = []
    shadowed: set[int] = set()
    for j, later in enumerate(routes):
        for i, earlier in enumerate(routes[:j]):
            if i in shadowed:
                continue  # it never decides anything, so it neither shadows nor overlaps
            if covers(earlier.pattern, later.pattern) and methods_cover(earlier.methods, later.methods):
                shadowed.add(j)
                warnings.append(
                    f"{_name(j, later)} {later.pattern.source} can never match: "
                    f"{_name(i, earlier)} {earlier.pattern.source} comes first and covers all its paths and methods"
                )
                break
            if earlier.policy == later.policy:
                continue
            methods = methods_meet(earlier.methods, later.methods)
            example = overlap_example(earlier.pattern, later.pattern)
            if example is None or methods == frozenset():
                continue
            warnings.append(
                f"{_name(j, later)} {later.pattern.source} overlaps {_name(i, earlier)} {earlier.pattern.source} "
                f"with a different policy: e.g. {_describe_methods(methods)} {example} gets "
                f"{earlier.policy.describe()} (from {earlier.id}), not {later.policy.describe()}"
            )
    return warnings


# ----------------------------------------------------------------------------------------------------------------
# explain: what the gateway would decide, from the decision core itself, with no server and no IdP.


@dataclass(frozen=True, slots=True)
class Explanation:
    method: str
    raw_path: str
    canonical: str | None  # None: the path cannot be canonicalised (400)
    route_index: int | None
    route: Route | None
    status: int  # 200 for allow: what the gateway answers itself, or that it forwards
    reason: str

    @property
    def decision(self) -> str:
        """`allow`, `401 no token`, `403 missing role read:messages`, `404 no route`, `400 ...`."""
        return "allow" if self.status == 200 else f"{self.status} {self.reason}"


class _Roles:
    """An authenticator that knows one answer: the roles `explain` was given. It never suspends, so the decision
    core's coroutine runs to its end without an event loop."""

    def __init__(self, roles: frozenset[str], grants: frozenset[tuple[str, str]]) -> None:
        self._principal = Principal(subject="explain", roles=roles, grants=grants)

    def cached(self, token: str) -> Principal:
        return self._principal

    def pending(self, token: str) -> bool:
        return False

    def remaining(self, token: str) -> float:
        return 0.0

    async def authenticate(self, token: str) -> Principal:
        return self._principal


def _settle(decision: Coroutine[Any, Any, Decision]) -> Decision:
    try:
        decision.send(None)
    except StopIteration as done:
        return cast(Decision, done.value)
    decision.close()
    raise RuntimeError("the decision waited for I/O")  # only a real authenticator does


def explain(
    routes: Sequence[Route],
    method: str,
    target: str,
    roles: frozenset[str] | None,
    grants: frozenset[tuple[str, str]] = frozenset(),
) -> Explanation:
    """What the decision core decides. `roles` None is a request without a token; a set is a valid token carrying
    those roles. `grants` are (role, organisation id) pairs: where roles are held, for routes whose roles count in
    one organisation only."""
    raw_path = target.partition("?")[0]
    headers: CIMultiDict[str] = CIMultiDict()
    if roles is not None:
        headers["Authorization"] = "Bearer explain"
    decider = Decider(tuple(routes), Limits(), _Roles(roles or frozenset(), grants))
    trace = Trace("explain")
    try:
        decision = _settle(decider.decide(Inbound(method, target, headers), trace))
    except GatewayError as exc:
        route = trace.route
        index = list(routes).index(route) if route is not None else None
        if isinstance(exc.__cause__, PathError):
            canonical = trace.path if trace.path != "-" else _canonical_or_none(target)
            return Explanation(method, raw_path, canonical, None, None, exc.status, f"bad path: {exc.__cause__}")
        reason = exc.reason
        org = route.org_of(trace.path) if route is not None else None
        if isinstance(exc, InsufficientScope) and org is not None:
            reason += f" in organisation {org}"
        return Explanation(method, raw_path, trace.path, index, route, exc.status, reason)
    route = decision.route
    reason = "public" if route.policy.access is Access.PUBLIC else route.policy.describe()
    return Explanation(method, raw_path, decision.path, list(routes).index(route), route, 200, reason)


def _canonical_or_none(target: str) -> str | None:
    """The canonical path when only the route look-up refused the request (a case-ambiguous path)."""
    try:
        return canonical_path(split_target(target)[0])
    except PathError:
        return None


def explanation_lines(exp: Explanation, upstream_url: str | None, who: str) -> list[str]:
    """What `python -m gateway explain` prints; `upstream_url` is the base URL of the matched route's upstream."""
    lines = [f"request    {exp.method} {exp.raw_path}  ({who})"]
    if exp.canonical is None:
        lines.append("canonical  (none: the path cannot be canonicalised)")
    else:
        lines.append(f"canonical  {exp.canonical}")
    if exp.route is None or exp.route_index is None:
        lines.append("route      (none)")
    else:
        r = exp.route
        methods = ",".join(sorted(r.methods)) if r.methods is not None else "*"
        lines.append(
            f"route      #{exp.route_index} {r.id}: {r.pattern.source} methods {methods}, {r.policy.describe()}"
        )
        if r.websocket:  # said only where it is so: the output for other routes is as it always was
            lines.append(
                "websocket  yes: a GET with Upgrade: websocket is relayed as a WebSocket, on the same decision"
            )
        if exp.status == 200 and upstream_url is not None and exp.canonical is not None:
            lines.append(f"forwards   {upstream_url}{exp.canonical}")
    lines.append(f"decision   {exp.decision}")
    return lines
