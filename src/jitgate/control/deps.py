"""Request-scoped dependencies: the service context and the authenticated caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from jitgate.audit.events import EventType, NewEvent
from jitgate.domain.models import Principal
from jitgate.errors import Unauthenticated
from jitgate.services import directory
from jitgate.services.context import Context


def get_ctx(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


def auth_failure(ctx: Context, request: Request, credential: str) -> None:
    """Record a refused credential (``none``, ``invalid``, ``slack-signature``, …)."""
    ctx.audit.submit(
        NewEvent(
            type=EventType.AUTH_FAILED,
            at=ctx.now(),
            data={
                "method": request.method,
                "path": request.url.path[:256],
                "client": request.client.host if request.client else None,
                "credential": credential,
            },
        )
    )


def get_caller(request: Request, ctx: Annotated[Context, Depends(get_ctx)]) -> Principal:
    values = request.headers.getlist("authorization")
    token = None
    if len(values) == 1:
        scheme, _, value = values[0].partition(" ")
        token = value.strip() if scheme.lower() == "bearer" else None
    try:
        return directory.authenticate(ctx, token)
    except Unauthenticated:
        auth_failure(ctx, request, "none" if not values else "invalid")
        raise


Ctx = Annotated[Context, Depends(get_ctx)]
Caller = Annotated[Principal, Depends(get_caller)]
