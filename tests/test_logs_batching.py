"""The process's log handler: one write per event-loop turn, nothing held back past that turn or past shutdown."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest

from gateway.ops import logs
from gateway.ops.logs import AccessRecord, BatchingStreamHandler, JsonFormatter, TextFormatter


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def _handler() -> tuple[BatchingStreamHandler, CountingStream, logging.Logger]:
    stream = CountingStream()
    handler = BatchingStreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("gateway.test-batching")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return handler, stream, logger


async def test_lines_of_one_loop_turn_go_out_in_one_write_at_the_end_of_the_turn() -> None:
    handler, stream, logger = _handler()
    try:
        for i in range(3):
            logger.info("line %d", i, extra={"fields": {"n": i}})
        assert stream.writes == 0  # held for the rest of this turn only
        await asyncio.sleep(0)
        assert stream.writes == 1
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert [(x["message"], x["n"]) for x in lines] == [("line 0", 0), ("line 1", 1), ("line 2", 2)]
        logger.info("later")
        await asyncio.sleep(0)
        assert stream.writes == 2 and stream.getvalue().endswith('"message":"later"}\n')
    finally:
        logger.removeHandler(handler)


async def test_flush_writes_what_is_pending_at_once() -> None:
    handler, stream, logger = _handler()
    try:
        logger.info("stopping")
        handler.flush()  # what serve() does on the way out
        assert json.loads(stream.getvalue())["message"] == "stopping"
    finally:
        logger.removeHandler(handler)


def test_outside_an_event_loop_every_line_is_written_at_once() -> None:
    handler, stream, logger = _handler()
    try:
        logger.info("no loop")
        assert json.loads(stream.getvalue())["message"] == "no loop"
    finally:
        logger.removeHandler(handler)


async def test_a_long_turn_is_written_every_max_lines() -> None:
    handler, stream, logger = _handler()
    try:
        for i in range(BatchingStreamHandler.MAX_LINES + 1):
            logger.info("%d", i)
        assert stream.writes == 1 and len(stream.getvalue().splitlines()) == BatchingStreamHandler.MAX_LINES
        await asyncio.sleep(0)
        assert len(stream.getvalue().splitlines()) == BatchingStreamHandler.MAX_LINES + 1
    finally:
        logger.removeHandler(handler)


# -- the access line's short cut (log_access) --------------------------------------------------------------------

ACCESS = "%s %s %d %s"
ARGS = ("GET", "/api/x", 200, "allow")
FIELDS = {"request_id": "r1", "status": 200, "subject": "søren", "total_ms": 1.5}


def _access_logger() -> tuple[BatchingStreamHandler, CountingStream, logging.Logger]:
    """A logger of its own (not registered with logging, so nothing else in the test run attaches to it)."""
    stream = CountingStream()
    handler = BatchingStreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.Logger("gateway.access", logging.INFO)
    logger.addHandler(handler)
    return handler, stream, logger


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_the_access_line_goes_straight_to_the_batch_as_the_handler_chain_would_write_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handler, stream, logger = _access_logger()
    monkeypatch.setattr(logs, "_handler", handler)
    monkeypatch.setattr("gateway.ops.logs.time.time", lambda: 1_800_000_000.25)

    def no_record(record: logging.LogRecord) -> None:
        raise AssertionError("the short cut was not taken")

    monkeypatch.setattr(logger, "handle", no_record)
    try:
        logs.log_access(logger, ACCESS, ARGS, FIELDS)
        handler.flush()
        expected = AccessRecord(logger.name, ACCESS, ARGS, FIELDS)
        expected.created = 1_800_000_000.25
        assert stream.getvalue() == JsonFormatter().format(expected) + "\n"
        assert json.loads(stream.getvalue())["message"] == "GET /api/x 200 allow"
    finally:
        handler.close()


async def test_the_access_line_is_a_log_record_when_another_handler_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    handler, stream, logger = _access_logger()
    monkeypatch.setattr(logs, "_handler", handler)
    other = Collect()
    logger.addHandler(other)
    try:
        logs.log_access(logger, ACCESS, ARGS, FIELDS)
        handler.flush()
        assert [r.getMessage() for r in other.records] == ["GET /api/x 200 allow"]
        assert vars(other.records[0])["fields"] == FIELDS
        assert json.loads(stream.getvalue())["subject"] == "søren"  # and our handler still got it
    finally:
        handler.close()


async def test_the_access_line_honours_a_filter_and_the_text_format(monkeypatch: pytest.MonkeyPatch) -> None:
    handler, stream, logger = _access_logger()
    monkeypatch.setattr(logs, "_handler", handler)
    try:
        handler.addFilter(lambda record: False)
        logs.log_access(logger, ACCESS, ARGS, FIELDS)
        handler.flush()
        assert stream.getvalue() == ""
        handler.filters.clear()
        handler.setFormatter(TextFormatter())
        logs.log_access(logger, ACCESS, ARGS, FIELDS)
        handler.flush()
        assert " INFO gateway.access GET /api/x 200 allow request_id=" in stream.getvalue()
    finally:
        handler.close()
