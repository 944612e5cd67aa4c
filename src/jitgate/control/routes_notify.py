"""Routes for notifications: the outbox for administrators, and Slack's button clicks.

``POST /v1/slack/interactions`` takes no principal token: only Slack's signature
authenticates it (see :mod:`jitgate.notify.slack`). A bad or stale signature is a 401
and an ``auth.failed`` audit event, before the body is even parsed; without Slack
configured, every request is a 401 (there is no credential it could carry).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from jitgate.control.deps import Caller, Ctx, auth_failure
from jitgate.control.schemas import iso
from jitgate.errors import InvalidInput, Unauthenticated
from jitgate.notify import admin, slack
from jitgate.notify.signing import BadSignature, verify_slack
from jitgate.storage.outbox_repo import Notification, NotificationStatus

router = APIRouter(prefix="/v1")


def notification_json(n: Notification) -> dict[str, Any]:
    return {
        "id": n.id,
        "channel": n.channel.value,
        "target": n.target,  # a webhook's name, never its URL; a Slack channel or user id
        "event_type": n.event_type,
        "priority": n.priority.value,
        "status": n.status.value,
        "attempts": n.attempts,
        "next_attempt_at": iso(n.next_attempt_at),
        "last_error": n.last_error,
        "created_at": iso(n.created_at),
        "delivered_at": iso(n.delivered_at),
        "payload": n.payload,
    }


@router.get("/notifications", tags=["notifications"])
def list_notifications(
    ctx: Ctx,
    caller: Caller,
    status: NotificationStatus | None = None,
    event_type: str | None = Query(default=None, max_length=64),
    limit: int = Query(default=100, ge=1, le=1000),
) -> dict[str, Any]:
    """The outbox, newest first (administrators only); ``status=dead`` for dead letters."""
    found = admin.list_notifications(ctx, caller, status=status, event_type=event_type, limit=limit)
    return {"items": [notification_json(n) for n in found]}


@router.post("/notifications/{notification_id}/retry", tags=["notifications"])
def retry_notification(notification_id: str, ctx: Ctx, caller: Caller) -> dict[str, Any]:
    """Put a dead notification back in line with a fresh set of attempts."""
    return notification_json(admin.retry(ctx, caller, notification_id))


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise InvalidInput(f"the body is larger than {limit} bytes", code="body-too-large")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise InvalidInput(f"the body is larger than {limit} bytes", code="body-too-large")
    return body


@router.post("/slack/interactions", tags=["notifications"])
async def slack_interactions(request: Request, ctx: Ctx) -> dict[str, Any]:
    """Slack's Approve and Deny buttons (form-encoded ``payload``, signed by Slack)."""
    secret = ctx.slack_signing_secret
    if secret is None:  # then no request can carry a credential this server accepts
        raise Unauthenticated(
            "Slack interactions are not enabled on this server (notifications.slack)"
        )
    body = await _body(request, slack.MAX_BODY)
    try:
        verify_slack(
            secret.reveal(),
            request.headers.get("x-slack-request-timestamp"),
            request.headers.get("x-slack-signature"),
            body,
            ctx.clock.timestamp(),
        )
    except BadSignature:
        await run_in_threadpool(auth_failure, ctx, request, "slack-signature")
        raise
    return await run_in_threadpool(slack.act, ctx, body)
