"""The demo upstream: answers 401 unless it receives its secret key.

With the key (``Authorization: Bearer <secret>``) it echoes what it received as JSON:
method, path (raw), query, body and the request headers other than ``Authorization``
— never the key itself. It is a real HTTP server (aiohttp) so that the walk-through and
the end-to-end tests go through real sockets.
"""

from __future__ import annotations

import hmac
import json

from aiohttp import web

from jitgate.secrets import Secret

MAX_ECHO = 1 << 20


def create_upstream(secret: Secret) -> web.Server:
    expected = f"Bearer {secret.reveal()}".encode()

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return web.json_response(
                {"error": "unauthorized", "detail": "this API needs its secret key"}, status=401
            )
        body = b""
        while len(body) < MAX_ECHO and (chunk := await request.content.read(MAX_ECHO)):
            body += chunk
        raw_path, _, query = request.raw_path.partition("?")
        echo = {
            "method": request.method,
            "path": raw_path,
            "query": query,
            "body": body.decode("utf-8", errors="replace"),
            "headers": {k: v for k, v in request.headers.items() if k.lower() != "authorization"},
        }
        return web.Response(text=json.dumps(echo), content_type="application/json")

    return web.Server(handle)
