"""The gateway's connections: what aiohttp's HTTP parser refuses, answered and audited.

aiohttp refuses a request it cannot parse before any handler runs, and calls
``handle_error`` with a placeholder request (method ``UNKNOWN``, target ``/``, no
headers). Such a refusal is answered here like every other gateway refusal: a problem
(:func:`~jitgate.gateway.proxy.problem_response`) with a reason of its own
(:func:`parser_refusal`), an ``access.denied`` audit event and a count in
``jitgate_gateway_decisions_total``; the connection is then closed, since the bytes after
the refusal cannot be trusted. A header field over the field limit, or more than
``max_headers`` fields, is 431 (RFC 6585); a request target over the line limit is 414.
The two limits must differ, which is how the parser's one ``LineTooLong`` error is told
apart.

The event holds the status, reason and a fixed detail, and nothing of what was sent: the
parser hands over no method or target, and its error message quotes raw bytes, which can
be a header value (a token). Events are queued without blocking the loop: at once when
the audit sink has room, otherwise through :class:`ParserRefusals`' bounded backlog,
drained by one task; the refusal is answered only once its event is queued
(back-pressure). A refusal over a full backlog is logged, not queued, so that a flood of
malformed requests cannot grow memory without bound.

A slow client (slowloris) is cut by aiohttp's keep-alive timer, which closes a
connection whose request head is not complete ``keepalive_timeout`` seconds after it
opened or after its previous answer: no request, no answer, no audit event.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadStatusLine,
    HttpProcessingError,
    InvalidURLError,
    LineTooLong,
)

from jitgate.audit.events import EventType, NewEvent
from jitgate.audit.writer import AuditSink
from jitgate.clock import Clock, utc
from jitgate.gateway.enforce import Deny
from jitgate.gateway.proxy import DECISIONS, problem_response

log = logging.getLogger(__name__)

TOO_MANY_HEADERS = "Too many headers received"  # aiohttp's message (both parsers)
BACKLOG = 1024  # refusals waiting for room in the audit sink, across all connections


def parser_refusal(
    exc: HttpProcessingError, *, max_field_size: int, max_line_size: int, max_headers: int
) -> Deny:
    """The refusal of a request that aiohttp's parser rejected with ``exc``."""
    if isinstance(exc, LineTooLong):
        if exc.args[1] == max_field_size:
            detail = f"a header field is longer than {max_field_size} bytes"
            return Deny(431, "headers-too-large", detail)
        detail = f"the request target is longer than {max_line_size} bytes"
        return Deny(414, "target-too-long", detail)
    if isinstance(exc, BadHttpMessage) and TOO_MANY_HEADERS in str(exc):
        return Deny(431, "headers-too-large", f"more than {max_headers} header fields")
    if isinstance(exc, BadStatusLine | InvalidURLError):  # BadHttpMethod is a BadStatusLine
        detail = (
            "the request line could not be parsed (an unknown method, methods being "
            "case-sensitive; a raw control or non-ASCII character in the target; or a bad "
            "HTTP version)"
        )
        return Deny(400, "request-line-malformed", detail)
    detail = "the request could not be parsed (a malformed header or ambiguous framing)"
    return Deny(400, "request-malformed", detail)


def refusal_event(deny: Deny, now: float) -> NewEvent:
    """The ``access.denied`` event of a parser refusal: nobody, no API, no request."""
    return NewEvent(
        type=EventType.ACCESS_DENIED,
        at=utc(now),
        data={"status": deny.status, "reason": deny.reason, "detail": deny.detail},
    )


class ParserRefusals:
    """Counts and audits parser refusals through the gateway's audit sink.

    :meth:`record` never blocks: an event the sink cannot take now joins a backlog of at
    most ``backlog`` events, which one task hands to the sink in order, waiting for room
    in a worker thread.
    """

    def __init__(self, audit: AuditSink, clock: Clock, *, backlog: int = BACKLOG) -> None:
        self.audit = audit
        self.clock = clock
        self._max = backlog
        self._backlog: deque[tuple[NewEvent, asyncio.Future[None]]] = deque()
        self._drainer: asyncio.Task[None] | None = None

    def record(self, deny: Deny) -> asyncio.Future[None] | None:
        """Count and queue the refusal's event; a future done once it is queued, or None
        if that is already so (or if it could not be, which is logged)."""
        DECISIONS.labels("denied", deny.reason).inc()
        event = refusal_event(deny, self.clock.timestamp())
        if not self._backlog and self.audit.try_submit(event):
            return None
        if len(self._backlog) >= self._max:
            log.error("audit backlog full: parser refusal %s not recorded", deny.reason)
            return None
        loop = asyncio.get_running_loop()
        queued: asyncio.Future[None] = loop.create_future()
        self._backlog.append((event, queued))
        if self._drainer is None or self._drainer.done():
            self._drainer = loop.create_task(self._drain())
        return queued

    async def _drain(self) -> None:
        while self._backlog:
            event, queued = self._backlog[0]
            try:
                if not self.audit.try_submit(event):
                    await asyncio.to_thread(self.audit.submit, event)
            except Exception:
                log.exception("parser refusal %s not recorded", event.data["reason"])
            finally:
                self._backlog.popleft()
                if not queued.done():  # its connection may have stopped waiting
                    queued.set_result(None)


class _Connection(web.RequestHandler):
    __slots__ = ("_queued", "_refusals")

    def __init__(self, manager: web.Server, *, refusals: ParserRefusals, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._refusals = refusals
        self._queued: asyncio.Future[None] | None = None

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp calls this with 400 for parser errors only (with 500 or 504 when a
        # handler fails); the request is then its placeholder, with a fresh writer.
        if status != 400 or not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        deny = parser_refusal(
            exc,
            max_field_size=self.max_field_size,
            max_line_size=self.max_line_size,
            max_headers=self.max_headers,
        )
        # Not aiohttp's log line: its message quotes the raw bytes (maybe a token).
        log.debug("request from %s refused by the parser: %s", request.remote, deny.reason)
        self._queued = self._refusals.record(deny)
        response = problem_response(deny)
        response.force_close()  # the bytes after a refusal cannot be trusted
        return response

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        queued, self._queued = self._queued, None
        if queued is not None:  # back-pressure: answered once its event is queued
            await queued
        return await super().finish_response(request, resp, start_time)


class GatewayServer(web.Server):
    """An aiohttp low-level server whose connections are :class:`_Connection`."""

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        *,
        refusals: ParserRefusals,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self.refusals = refusals

    def __call__(self) -> web.RequestHandler:
        # As web.Server.__call__ does, minus its fallback for unknown keyword arguments:
        # ours are fixed in create_gateway_server.
        return _Connection(self, loop=self._loop, refusals=self.refusals, **self._kwargs)
