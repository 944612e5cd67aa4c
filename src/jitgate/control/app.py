"""The control-plane application: routes, problem mapping, health and metrics.

Every deliberate error becomes an RFC 9457 problem at this one edge; anything
unexpected becomes a 500 problem without internals (and is logged), never a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from jitgate import __version__
from jitgate.control import routes_access, routes_admin, routes_notify, routes_policy
from jitgate.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    JitgateError,
    NotFound,
    Unauthenticated,
)
from jitgate.problems import PROBLEM_CONTENT_TYPE, problem
from jitgate.services.context import Context

log = logging.getLogger(__name__)

_STATUS: list[tuple[type[JitgateError], int]] = [
    (InvalidInput, 422),
    (NotFound, 404),
    (Conflict, 409),
    (Forbidden, 403),
    (Unauthenticated, 401),
]


def status_for(exc: JitgateError) -> int:
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    return 500


def _problem(status: int, code: str, detail: str, **extra: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="jitgate"'} if status == 401 else None
    return JSONResponse(
        problem(status, code, detail, **extra),
        status_code=status,
        media_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


def create_app(ctx: Context) -> FastAPI:
    app = FastAPI(
        title="jitgate control plane",
        version=__version__,
        description="Just-In-Time access to HTTP APIs: requests, approvals, grants, audit.",
    )
    app.state.ctx = ctx
    app.include_router(routes_access.router)
    app.include_router(routes_admin.router)
    app.include_router(routes_notify.router)
    app.include_router(routes_policy.router)

    @app.exception_handler(JitgateError)
    async def on_jitgate_error(_: Request, exc: JitgateError) -> JSONResponse:
        status = status_for(exc)
        if status == 500:
            log.error("unexpected jitgate error %s: %s", exc.code, exc.detail)
            return _problem(500, "internal-error", "the server could not complete the request")
        return _problem(status, exc.code, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def on_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors[:5])
        return _problem(422, "invalid-input", detail or "invalid input", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        return _problem(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _problem(500, "internal-error", "the server could not complete the request")

    @app.middleware("http")
    async def refuse_nul(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        # PostgreSQL text cannot hold NUL (SQLite can): refuse it in ids and filters
        # before any query, on every backend alike (bodies: see schemas.Body).
        decoded = [request.scope["path"], *(v for _, v in request.query_params.multi_items())]
        if any("\x00" in part for part in decoded):
            return _problem(400, "invalid-input", "NUL characters are not allowed in the URL")
        return await call_next(request)

    @app.get("/.well-known/jwks.json", tags=["keys"])
    def jwks() -> dict[str, Any]:
        return ctx.keyring.jwks()

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz() -> JSONResponse:
        try:
            with ctx.store.read() as tx:
                tx.audit.head()
        except Exception:
            log.exception("readiness check failed")
            return _problem(503, "not-ready", "the database is not reachable")
        return JSONResponse({"status": "ready", "policy": ctx.policy.digest})

    @app.get("/metrics", tags=["health"])
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
