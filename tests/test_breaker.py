"""The IdP circuit breaker, with a hand-driven clock."""

from __future__ import annotations

from gateway.auth.breaker import CircuitBreaker


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_n_consecutive_failures_only() -> None:
    breaker = CircuitBreaker(3, 5.0, Clock())
    breaker.failure()
    breaker.failure()
    breaker.success()  # not consecutive any more
    breaker.failure()
    breaker.failure()
    assert breaker.allow()
    breaker.failure()
    assert breaker.is_open
    assert not breaker.allow()


def test_after_the_cooldown_exactly_one_probe_goes_through() -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, 5.0, clock)
    breaker.failure()
    clock.now = 4.9
    assert not breaker.allow()
    clock.now = 5.0
    assert breaker.allow()
    assert not breaker.allow()  # the probe is under way
    breaker.success()
    assert not breaker.is_open
    assert breaker.allow()


def test_a_failed_probe_opens_it_again() -> None:
    clock = Clock()
    breaker = CircuitBreaker(2, 5.0, clock)
    breaker.failure()
    breaker.failure()
    clock.now = 5.0
    assert breaker.allow()
    breaker.failure()
    assert not breaker.allow()
    clock.now = 10.0
    assert breaker.allow()


def test_an_abandoned_probe_lets_the_next_request_probe() -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, 5.0, clock)
    breaker.failure()
    clock.now = 5.0
    assert breaker.allow()
    breaker.abandon()
    assert breaker.allow()


def test_zero_failures_means_never_open() -> None:
    breaker = CircuitBreaker(0, 5.0, Clock())
    for _ in range(100):
        breaker.failure()
    assert breaker.allow()
