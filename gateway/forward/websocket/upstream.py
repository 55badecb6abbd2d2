"""The upstream side of a WebSocket: aiohttp's client, and the upstream's own answer when it refuses the upgrade.

aiohttp's `ws_connect` raises on an answer other than 101 and drops its body. A response class of our own keeps a
bounded copy of that body, so that the client gets the upstream's answer (status, headers, body) as it was given,
and the connection is then closed: after a refused upgrade nothing the client sent next is a request.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Sequence
from typing import Any, Literal

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gateway.config import Upstream
from gateway.errors import UpstreamTimeout, UpstreamUnavailable
from gateway.forward.headers import downstream_response_headers

log = logging.getLogger("gateway.websocket")

REFUSAL_BODY_LIMIT = 64 * 1024
_SWITCHING = 101
# Set around one ws_connect: where the body of a refused upgrade goes (None: longer than REFUSAL_BODY_LIMIT).
_REFUSAL: contextvars.ContextVar[list[bytes | None] | None] = contextvars.ContextVar("refusal", default=None)


class KeepRefusal(aiohttp.ClientResponse):
    """aiohttp's client answer, reading the body of a non-101 answer to an upgrade before ws_connect drops it."""

    async def start(self, connection: Any) -> aiohttp.ClientResponse:
        await super().start(connection)
        holder = _REFUSAL.get()
        if holder is not None and self.status != _SWITCHING:
            holder.append(await _read_bounded(self.content, REFUSAL_BODY_LIMIT))
        return self


async def _read_bounded(content: aiohttp.StreamReader, limit: int) -> bytes | None:
    data = bytearray()
    while True:
        chunk = await content.read(limit + 1 - len(data))
        if not chunk:
            return bytes(data)
        data += chunk
        if len(data) > limit:
            return None


class Refused(Exception):
    """The upstream answered the upgrade with something other than 101: `answer` is that answer, to relay."""

    def __init__(self, status: int, answer: web.Response) -> None:
        super().__init__(status)
        self.status = status
        self.answer = answer


async def connect(
    session: aiohttp.ClientSession,
    upstream: Upstream,
    target: str,
    headers: CIMultiDict[str],
    protocols: Sequence[str],
    max_message_bytes: int,
    close_timeout: float,
) -> aiohttp.ClientWebSocketResponse[Literal[False]]:
    """The upstream's WebSocket at `target` (canonical path and query, sent as they are: nothing is re-quoted)."""
    url = URL(upstream.url + target, encoded=True)
    holder: list[bytes | None] = []
    token = _REFUSAL.set(holder)
    try:
        async with asyncio.timeout(upstream.connect_timeout + upstream.read_timeout):
            return await session.ws_connect(
                url,
                headers=headers,
                protocols=protocols,
                max_msg_size=max_message_bytes,
                compress=0,
                autoclose=False,
                autoping=False,
                decode_text=False,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=close_timeout),
            )
    except aiohttp.WSServerHandshakeError as exc:
        if exc.status == _SWITCHING or not holder or holder[0] is None or exc.headers is None:
            log.warning("upstream %s: WebSocket handshake failed: %s", upstream.name, exc.message)
            raise UpstreamUnavailable() from exc
        raise Refused(exc.status, _answer(exc.status, exc.headers, holder[0])) from exc
    except TimeoutError as exc:
        raise UpstreamTimeout() from exc
    except (aiohttp.ClientError, OSError) as exc:
        log.warning("upstream %s: %s", upstream.name, exc)
        raise UpstreamUnavailable() from exc
    finally:
        _REFUSAL.reset(token)


def _answer(status: int, headers: Any, body: bytes) -> web.Response:
    relayed = [(k, v) for k, v in downstream_response_headers(headers) if k.lower() != "content-length"]
    answer = web.Response(status=status, headers=CIMultiDict(relayed), body=body)
    answer.force_close()  # one answer, then the connection closes: the upgrade head's tail is never read
    return answer
