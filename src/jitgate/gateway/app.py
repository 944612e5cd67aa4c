"""The gateway's HTTP server: a low-level aiohttp server (no router on the hot path).

``/healthz`` answers for the gateway itself; every other path is ``/{api}/{path…}``
and goes to the proxy. API names that collide with these paths are refused at
registration.
"""

from __future__ import annotations

from aiohttp import web

from jitgate.gateway.proxy import Proxy

MAX_HEADER_FIELD = 8190
MAX_LINE = 8190


def create_gateway_server(proxy: Proxy) -> web.Server:
    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.raw_path == "/healthz":
            fresh = proxy.enforcer.view.fresh
            return web.json_response(
                {"status": "ok" if fresh else "stale"}, status=200 if fresh else 503
            )
        return await proxy.handle(request)

    return web.Server(
        handle,
        max_field_size=MAX_HEADER_FIELD,
        max_line_size=MAX_LINE,
    )
