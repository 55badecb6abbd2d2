"""Watches the whole test session for leaked secrets: every log record, every gateway error body, every metrics page.

Imported by tests/conftest.py as an autouse session fixture; at the end of the session any test token, the client
secret or the Basic credential found in what was captured fails the run (reported as a teardown error).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

import gateway.answers
import gateway.errors
from demo_backend.idp import DEMO_TOKENS
from gateway.auth.introspection import basic_authorization
from gateway.ops.metrics import Metrics

from .support import CLIENT_ID, CLIENT_SECRET

# Tokens the security suite sends that are not demo tokens; listed here so that they are watched too.
EXTRA_TOKENS = ("other-token",)
# aiohttp's server loggers, watched directly as well as through the root: the server logs a request it cannot parse
# with a traceback that quotes the request's bytes, and a logger set not to propagate would hide that from the root.
SERVER_LOGGERS = ("aiohttp.server", "aiohttp.web", "aiohttp.access", "aiohttp.internal")


def secrets() -> tuple[str, ...]:
    basic = basic_authorization(CLIENT_ID, CLIENT_SECRET)
    return (*DEMO_TOKENS, *EXTRA_TOKENS, CLIENT_SECRET, basic, basic.removeprefix("Basic "))


class Witness(logging.Handler):
    def __init__(self, watched: Iterable[str]) -> None:
        super().__init__(level=logging.DEBUG)
        self.watched = tuple(watched)
        self.texts: list[tuple[str, str]] = []  # (where, text)
        self.registries: list[CollectorRegistry] = []
        self._last: logging.LogRecord | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record is self._last:
            return  # the same record, reached through both a server logger and the root
        self._last = record
        text = record.getMessage() + " " + repr(record.__dict__)  # structured `extra` fields included
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        self.texts.append((f"log {record.name}", text))

    def add(self, where: str, text: str) -> None:
        self.texts.append((where, text))

    def leaks(self) -> list[str]:
        texts = [*self.texts, *(("metrics", generate_latest(r).decode()) for r in self.registries)]
        return [f"{where}: {secret[:12]}…" for where, text in texts for secret in self.watched if secret in text]


def attach(witness: Witness) -> Callable[[], None]:
    """Watch the root logger and aiohttp's server loggers, every level; returns what undoes it."""
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in SERVER_LOGGERS)]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)  # records below WARNING must exist to be checked
        logger.addHandler(witness)

    def detach() -> None:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(witness)
            logger.setLevel(level)

    return detach


@pytest.fixture(scope="session", autouse=True)
def secret_witness() -> Iterator[Witness]:
    witness = Witness(secrets())
    detach = attach(witness)
    patch = pytest.MonkeyPatch()
    render = gateway.answers.error_response

    def recording_error_response(exc: gateway.errors.GatewayError) -> Any:
        response = render(exc)
        witness.add("error body", response.text or "")
        return response

    patch.setattr(gateway.answers, "error_response", recording_error_response)
    original_init = Metrics.__init__

    def recording_init(self: Metrics) -> None:
        original_init(self)
        witness.registries.append(self.registry)

    patch.setattr(Metrics, "__init__", recording_init)
    try:
        yield witness
    finally:
        patch.undo()
        detach()
    leaks = witness.leaks()
    assert not leaks, "secrets leaked into logs, error bodies or metrics:\n" + "\n".join(leaks[:20])
