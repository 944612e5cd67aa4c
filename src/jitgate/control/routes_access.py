"""Routes for requests, approvals, grants, tokens and revocation."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import JSONResponse

from jitgate.control.deps import Caller, Ctx
from jitgate.control.schemas import (
    ApproveIn,
    CommentIn,
    ExtendIn,
    RequestIn,
    RevocationsIn,
    RevokeIn,
    grant_json,
    iso,
    request_json,
    request_view_json,
)
from jitgate.domain.models import RequestStatus
from jitgate.services import access, grants
from jitgate.services.access import MAX_IDEMPOTENCY_KEY, RequestView

router = APIRouter(prefix="/v1")


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=MAX_IDEMPOTENCY_KEY,
        description="repeat the call safely: the same key and body answer as the first call did",
    ),
]

_FILED: dict[int | str, dict[str, Any]] = {
    201: {"description": "filed"},
    200: {"description": "a replay (Idempotency-Key)"},
}


def _filed(view: RequestView, now: datetime) -> JSONResponse:
    headers = {"Location": f"/v1/requests/{view.request.id}"}
    if view.replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(
        request_view_json(view, now), status_code=200 if view.replayed else 201, headers=headers
    )


@router.post("/requests", status_code=201, tags=["requests"], responses=_FILED)
def create_request(
    body: RequestIn, ctx: Ctx, caller: Caller, idempotency_key: IdempotencyKey = None
) -> JSONResponse:
    view = access.create_request(
        ctx,
        caller,
        api=body.api,
        scopes=body.scopes,
        duration=body.duration,
        reason=body.reason,
        ticket=body.ticket,
        starts_at=body.starts_at,
        idempotency_key=idempotency_key,
    )
    return _filed(view, ctx.now())


@router.get("/requests", tags=["requests"])
def list_requests(
    ctx: Ctx,
    caller: Caller,
    status: RequestStatus | None = None,
    requester: str | None = Query(default=None, max_length=64),
    api: str | None = Query(default=None, max_length=64),
    limit: int = Query(default=100, ge=1, le=1000),
) -> dict[str, Any]:
    found = access.list_requests(ctx, status=status, requester=requester, api=api, limit=limit)
    return {"items": [request_json(r) for r in found]}


@router.get("/requests/{request_id}", tags=["requests"])
def read_request(request_id: str, ctx: Ctx, caller: Caller) -> dict[str, Any]:
    return request_view_json(access.get_request(ctx, request_id), ctx.now())


@router.post("/requests/{request_id}/approve", tags=["requests"])
def approve(request_id: str, ctx: Ctx, caller: Caller, body: ApproveIn | None = None) -> Any:
    body = body or ApproveIn()
    view = access.approve(
        ctx,
        caller,
        request_id,
        body.comment,
        terms=body.terms_hash,
        scopes=body.scopes,
        duration=body.duration,
    )
    return request_view_json(view, ctx.now())


@router.post("/requests/{request_id}/deny", tags=["requests"])
def deny(request_id: str, ctx: Ctx, caller: Caller, body: CommentIn | None = None) -> Any:
    view = access.deny(ctx, caller, request_id, (body or CommentIn()).comment)
    return request_view_json(view, ctx.now())


@router.post("/requests/{request_id}/cancel", tags=["requests"])
def cancel(request_id: str, ctx: Ctx, caller: Caller, body: CommentIn | None = None) -> Any:
    view = access.cancel(ctx, caller, request_id, (body or CommentIn()).comment)
    return request_view_json(view, ctx.now())


@router.get("/grants", tags=["grants"])
def list_grants(
    ctx: Ctx,
    caller: Caller,
    active: bool | None = None,
    principal: str | None = Query(default=None, max_length=64),
    api: str | None = Query(default=None, max_length=64),
    needs_review: bool | None = Query(
        default=None, description="true: flagged grants (break glass) nobody has reviewed yet"
    ),
    limit: int = Query(default=100, ge=1, le=1000),
) -> dict[str, Any]:
    found = grants.list_grants(
        ctx, active=active, principal=principal, api=api, needs_review=needs_review, limit=limit
    )
    now = ctx.now()
    return {"items": [grant_json(g, now) for g in found]}


@router.get("/grants/{grant_id}", tags=["grants"])
def read_grant(grant_id: str, ctx: Ctx, caller: Caller) -> dict[str, Any]:
    return grant_json(grants.get_grant(ctx, grant_id), ctx.now())


@router.post("/grants/{grant_id}/token", tags=["grants"])
def grant_token(grant_id: str, ctx: Ctx, caller: Caller) -> dict[str, Any]:
    issued = grants.issue_token(ctx, caller, grant_id)
    return {
        "token": issued.token,
        "token_type": "Bearer",
        "expires_at": iso(issued.expires_at),
        "gateway_url": issued.gateway_url,
        "grant_id": issued.grant.id,
    }


@router.post("/grants/{grant_id}/extend", status_code=201, tags=["grants"])
def extend(grant_id: str, body: ExtendIn, ctx: Ctx, caller: Caller) -> JSONResponse:
    view = access.extend(
        ctx, caller, grant_id, duration=body.duration, reason=body.reason, scopes=body.scopes
    )
    return _filed(view, ctx.now())


@router.post("/grants/{grant_id}/review", tags=["grants"])
def review(grant_id: str, ctx: Ctx, caller: Caller, body: CommentIn | None = None) -> Any:
    reviewed = grants.review(ctx, caller, grant_id, (body or CommentIn()).comment)
    return grant_json(reviewed, ctx.now())


@router.post("/grants/{grant_id}/revoke", tags=["grants"])
def revoke(grant_id: str, ctx: Ctx, caller: Caller, body: RevokeIn | None = None) -> Any:
    ended = grants.revoke(ctx, caller, grant_id, (body or RevokeIn()).reason)
    return grant_json(ended, ctx.now())


@router.post("/revocations", tags=["grants"])
def revocations(body: RevocationsIn, ctx: Ctx, caller: Caller) -> dict[str, Any]:
    ended = grants.kill_switch(
        ctx, caller, principal=body.principal, api=body.api, reason=body.reason
    )
    now = ctx.now()
    return {"revoked": len(ended), "items": [grant_json(g, now) for g in ended]}
