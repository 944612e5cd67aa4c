"""The gateway's connections: what aiohttp's HTTP parser refuses, answered precisely.

aiohttp answers every request it cannot parse with a plain-text 400 before any handler
runs (so these refusals are never audited: there is no request to attribute). Two of
them have a status of their own: a header field over the field limit, or more than
``max_headers`` fields, is 431 Request Header Fields Too Large (RFC 6585); a request
target over the line limit is 414 URI Too Long. The two limits must differ, which is how
the parser's one ``LineTooLong`` error is told apart.

A slow client (slowloris) is cut by aiohttp's keep-alive timer, which closes a
connection whose request head is not complete ``keepalive_timeout`` seconds after it
opened or after its previous answer.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

TOO_MANY_HEADERS = "Too many headers received"  # aiohttp's message (both parsers)


class _Connection(web.RequestHandler):
    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status == 400 and isinstance(exc, LineTooLong):
            status = 431 if exc.args[1] == self.max_field_size else 414
        elif status == 400 and isinstance(exc, BadHttpMessage) and TOO_MANY_HEADERS in str(exc):
            status = 431
        return super().handle_error(request, status, exc, message)


class GatewayServer(web.Server):
    """An aiohttp low-level server whose connections are :class:`_Connection`."""

    def __call__(self) -> web.RequestHandler:
        # As web.Server.__call__ does, minus its fallback for unknown keyword arguments:
        # ours are fixed in create_gateway_server.
        return _Connection(self, loop=self._loop, **self._kwargs)
