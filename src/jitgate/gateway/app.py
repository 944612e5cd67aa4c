"""The gateway's HTTP server: a low-level aiohttp server (no router on the hot path).

``/healthz`` answers for the gateway itself; ``/authz/…`` are the decision endpoints
(:mod:`jitgate.gateway.authz`, 404 unless enabled), never proxied; every other path is
``/{api}/{path…}`` and goes to the proxy. API names that collide with these paths are
refused at registration. What aiohttp's HTTP parser refuses never reaches ``handle``: it
is answered, counted and audited by the connections (:mod:`jitgate.gateway.protocol`).
"""

from __future__ import annotations

from aiohttp import web

from jitgate.gateway.authz import DISABLED, DecisionEndpoints, is_decision_path
from jitgate.gateway.protocol import GatewayServer, ParserRefusals
from jitgate.gateway.proxy import Proxy, problem_response

MAX_HEADER_FIELD = 8190  # one header field (name and value): over it, 431
# The request target: paths over 8192 characters are refused anyway (ambiguous-path); the
# rest is for the query. Must differ from MAX_HEADER_FIELD (see gateway.protocol).
MAX_LINE = 16384


def create_gateway_server(proxy: Proxy, decisions: DecisionEndpoints | None = None) -> web.Server:
    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.raw_path == "/healthz":
            fresh = proxy.enforcer.view.fresh
            return web.json_response(
                {"status": "ok" if fresh else "stale"}, status=200 if fresh else 503
            )
        if is_decision_path(request.raw_path):
            if decisions is None:
                return problem_response(DISABLED)
            return await decisions.handle(request)
        return await proxy.handle(request)

    return GatewayServer(
        handle,
        refusals=ParserRefusals(proxy.audit, proxy.clock),  # audited like the proxy's denials
        max_field_size=MAX_HEADER_FIELD,
        max_line_size=MAX_LINE,
        keepalive_timeout=proxy.client_timeout,  # also bounds a slow request head
    )
