"""A small circuit breaker for the IdP: after N consecutive failures, answer 503 at once for a cool-down, then
let one probe call through; its success closes the breaker, its failure opens it again.

Fails closed either way: an open breaker means "IdP unavailable" (503), never a pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class CircuitBreaker:
    __slots__ = ("_clock", "_cooldown", "_failures", "_open_until", "_probing", "_threshold")

    def __init__(self, failures: int, cooldown: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._threshold = failures  # 0: never opens
        self._cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._open_until: float | None = None
        self._probing = False

    @property
    def is_open(self) -> bool:
        return self._open_until is not None

    def allow(self) -> bool:
        """May a call go to the IdP now? When open, only one probe after the cool-down, until it settles."""
        if self._open_until is None:
            return True
        if self._probing or self._clock() < self._open_until:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        self._failures = 0
        self._open_until = None
        self._probing = False

    def failure(self) -> None:
        self._failures += 1
        if self._threshold and (self._probing or self._failures >= self._threshold):
            self._open_until = self._clock() + self._cooldown
        self._probing = False

    def abandon(self) -> None:
        """A call ended without an answer either way (the caller went away): let the next one probe."""
        self._probing = False
