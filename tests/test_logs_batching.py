"""The process's log handler: one write per event-loop turn, nothing held back past that turn or past shutdown."""

from __future__ import annotations

import asyncio
import io
import json
import logging

from gateway.logs import BatchingStreamHandler, JsonFormatter


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
