"""A client that goes away while its body is read, and who gets the blame when a request fails before its answer."""

from __future__ import annotations

import asyncio
import logging
from unittest import mock

import pytest
from aiohttp import StreamReader
from aiohttp.abc import AbstractStreamWriter
from aiohttp.client_exceptions import ClientConnectionResetError

from gateway.config import Upstream
from gateway.errors import ClientClosedRequest, PayloadTooLarge, UpstreamTimeout, UpstreamUnavailable
from gateway.forward.body import BodyGuard
from gateway.forward.proxy import upstream_failure
from gateway.forward.upstream import UpstreamError


def _stream() -> StreamReader:
    return StreamReader(mock.Mock(_reading_paused=False), 2**16, loop=asyncio.get_running_loop())


async def test_a_client_gone_in_the_middle_of_its_body_is_499() -> None:
    stream = _stream()
    stream.feed_data(b"abc")
    guard = BodyGuard(stream, limit=100, timeout=5)
    pieces = guard.chunks()
    assert await anext(pieces) == b"abc"
    stream.set_exception(ConnectionResetError("Connection lost"))  # what aiohttp does when the connection drops
    with pytest.raises(ClientClosedRequest):
        await anext(pieces)
    assert isinstance(guard.error, ClientClosedRequest)


async def test_a_client_gone_before_its_100_continue_is_499() -> None:
    writer = mock.AsyncMock(spec=AbstractStreamWriter)
    writer.write.side_effect = ClientConnectionResetError("Cannot write to closing transport")
    guard = BodyGuard(_stream(), limit=100, timeout=5, send_continue=writer)
    with pytest.raises(ClientClosedRequest):
        await guard.read_all()
    writer.write.assert_awaited_once_with(b"HTTP/1.1 100 Continue\r\n\r\n")


UPSTREAM = Upstream(name="default", url="http://127.0.0.1:1")


def _failed_body(error: Exception) -> UpstreamError:
    try:
        raise UpstreamError("the request body could not be sent") from error
    except UpstreamError as exc:
        return exc


@pytest.mark.parametrize("client_fault", [ClientClosedRequest(), PayloadTooLarge()])
def test_the_clients_own_failure_is_not_blamed_on_the_upstream(
    client_fault: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.proxy")
    assert upstream_failure(UPSTREAM, _failed_body(client_fault)) is client_fault
    assert caplog.records == []


def test_an_upstream_failure_is_502_or_504_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.proxy")
    assert isinstance(upstream_failure(UPSTREAM, _failed_body(ConnectionResetError())), UpstreamUnavailable)
    assert isinstance(upstream_failure(UPSTREAM, TimeoutError()), UpstreamTimeout)
    assert [r.getMessage() for r in caplog.records] == ["upstream default: the request body could not be sent"]
