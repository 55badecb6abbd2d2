"""The lifetime watch's recheck, as a table: what each answer of the decision core does to an open socket."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from multidict import CIMultiDict

from gateway.auth.introspection import Principal
from gateway.errors import (
    BadRequest,
    IdPBusy,
    IdPUnavailable,
    InsufficientScope,
    InvalidToken,
    NotFound,
    TooManyRequests,
)
from gateway.forward.websocket.guard import RouteGone
from gateway.forward.websocket.lifetime import (
    EXPIRED,
    IDP_UNAVAILABLE,
    MAX_FAILED_RECHECKS,
    REVOKED,
    ROLES,
    ROUTE,
    Lifetime,
)
from gateway.ops.reload import Slot
from gateway.policy.decision import BeforeAuth, Decision, Inbound, Trace
from gateway.policy.rules import Access, PathPattern, Policy, Route

ROUTE_WS = Route("ws", PathPattern.compile("/ws/**"), Policy(Access.AUTHENTICATED), "default", websocket=True)


@dataclass
class Decider:
    """Answers each decide() with the next item: an exception to raise, or a route to allow on."""

    answers: list[BaseException | Route]
    guarded: list[Route] = field(default_factory=list)

    async def decide(self, inbound: Inbound, trace: Trace, *, before_auth: BeforeAuth | None = None) -> Decision:
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        if before_auth is not None:
            before_auth(answer)  # the upgrade guard: a route without `websocket: true` is gone
        return Decision("/ws/x", None, answer, Principal("s", frozenset(), expires_at=4102444800.0), "t")


@dataclass
class Runtime:
    decider: Decider


@dataclass
class FakeSlot:
    current: Runtime


def lifetime(*answers: BaseException | Route) -> Lifetime:
    slot = cast(Slot, FakeSlot(Runtime(Decider(list(answers)))))
    return Lifetime(slot, Inbound("GET", "/ws/x", CIMultiDict()), "rid", None)


@pytest.mark.parametrize(
    ("answer", "ending"),
    [
        (InvalidToken("expired", reason="expired"), EXPIRED),
        (InvalidToken(reason="inactive"), REVOKED),
        (InvalidToken(reason="issuer mismatch"), REVOKED),
        (InsufficientScope(required="read:messages"), ROLES),
        (NotFound(), ROUTE),
        (BadRequest(), ROUTE),
        (RouteGone(), ROUTE),
        (Route("ws", PathPattern.compile("/ws/**"), Policy(Access.AUTHENTICATED), "default"), ROUTE),
        (ROUTE_WS, None),
    ],
)
async def test_each_answer_of_the_core(answer: Any, ending: Any) -> None:
    assert await lifetime(answer).recheck() == ending


@pytest.mark.parametrize("failure", [IdPUnavailable(), IdPBusy(), TooManyRequests()])
async def test_an_idp_that_cannot_answer_is_tolerated_until_the_limit_in_a_row(failure: BaseException) -> None:
    watch = lifetime(*[failure] * (MAX_FAILED_RECHECKS - 1), ROUTE_WS, *[failure] * MAX_FAILED_RECHECKS)
    for _ in range(MAX_FAILED_RECHECKS - 1):
        assert await watch.recheck() is None
    assert await watch.recheck() is None  # a good answer clears the count
    for _ in range(MAX_FAILED_RECHECKS - 1):
        assert await watch.recheck() is None
    assert await watch.recheck() == IDP_UNAVAILABLE
