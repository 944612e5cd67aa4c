"""Routes for requests, approvals, grants, tokens and revocation."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from jitgate.control.deps import Caller, Ctx
from jitgate.control.schemas import (
    CommentIn,
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

router = APIRouter(prefix="/v1")


@router.post("/requests", status_code=201, tags=["requests"])
def create_request(body: RequestIn, ctx: Ctx, caller: Caller) -> JSONResponse:
    view = access.create_request(
        ctx,
        caller,
        api=body.api,
        scopes=body.scopes,
        duration=body.duration,
        reason=body.reason,
        ticket=body.ticket,
        starts_at=body.starts_at,
    )
    return JSONResponse(
        request_view_json(view, ctx.now()),
        status_code=201,
        headers={"Location": f"/v1/requests/{view.request.id}"},
    )


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
def approve(request_id: str, ctx: Ctx, caller: Caller, body: CommentIn | None = None) -> Any:
    view = access.approve(ctx, caller, request_id, (body or CommentIn()).comment)
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
    limit: int = Query(default=100, ge=1, le=1000),
) -> dict[str, Any]:
    found = grants.list_grants(ctx, active=active, principal=principal, api=api, limit=limit)
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
