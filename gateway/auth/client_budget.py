"""What unknown tokens from one client may cost: a bound on its token checks waiting for the IdP at once.

The IdP's call slots (`idp.max_concurrent_calls`) are shared by everyone, so without this one client spraying
random tokens fills them and every other client's new token waits behind it (then 503). With it, one client holds
at most `limit` slots' worth of checks; beyond that it is answered 429 at once, and nobody else notices. Cached
answers cost nothing and are never counted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from gateway.errors import TooManyRequests


class ClientBudget:
    """Counts uncached token checks in flight per client address; `limit` 0: no limit. One per event loop."""

    __slots__ = ("_in_flight", "_limit")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._in_flight: dict[str, int] = {}  # only clients with a check in flight: its size is bounded by them

    def __len__(self) -> int:
        return len(self._in_flight)

    @contextlib.contextmanager
    def checking(self, client: str) -> Iterator[None]:
        """Around one uncached check: TooManyRequests when `client` already has `limit` of them in flight."""
        if not self._limit:
            yield
            return
        count = self._in_flight.get(client, 0)
        if count >= self._limit:
            raise TooManyRequests()
        self._in_flight[client] = count + 1
        try:
            yield
        finally:
            left = self._in_flight[client] - 1
            if left:
                self._in_flight[client] = left
            else:
                del self._in_flight[client]
