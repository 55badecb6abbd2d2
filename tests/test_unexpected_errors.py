"""Failures the pipeline does not expect still get an answer in the gateway's JSON shape, and a bug is logged."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from aiohttp import web

from gateway import pipeline
from tests.conftest import GatewayFactory


def _failing(exc: BaseException) -> Any:
    async def forward(*args: Any, **kwargs: Any) -> web.StreamResponse:
        raise exc

    return forward


async def test_a_bug_is_a_500_in_json_and_logged_with_its_traceback(
    make_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = await make_gateway()
    monkeypatch.setattr(pipeline, "forward", _failing(RuntimeError("boom")))
    response = await gateway.get("/open/x")
    assert response.status == 500
    assert (await response.json())["error"] == "server_error"
    assert "boom" not in await response.text()  # the detail goes to the log only
    assert response.headers["X-Request-Id"]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == ["unhandled error while serving GET"]
    assert errors[0].exc_info is not None and "boom" in str(errors[0].exc_info[1])


async def test_aiohttp_errors_get_the_json_shape(make_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    gateway = await make_gateway()
    monkeypatch.setattr(pipeline, "forward", _failing(web.HTTPRequestEntityTooLarge(max_size=1, actual_size=2)))
    response = await gateway.get("/open/x")
    assert response.status == 413
    assert (await response.json())["error"] == "payload_too_large"


async def test_aiohttp_answers_below_400_are_sent_as_they_are(
    make_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = await make_gateway()
    monkeypatch.setattr(pipeline, "forward", _failing(web.HTTPFound("/elsewhere")))
    response = await gateway.get("/open/x", allow_redirects=False)
    assert response.status == 302
    assert response.headers["Location"] == "/elsewhere"
    assert response.headers["X-Request-Id"]  # echoed on these too
