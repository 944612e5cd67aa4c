"""Administrators' view of the outbox: list notifications, put a dead one back in line
(audited as ``notification.retried``)."""

from __future__ import annotations

from jitgate.audit.events import EventType, NewEvent
from jitgate.domain.models import Principal
from jitgate.errors import Conflict, NotFound
from jitgate.services.context import Context, current_principal, require_admin
from jitgate.storage.outbox_repo import Notification, NotificationStatus


def list_notifications(
    ctx: Context,
    actor: Principal,
    *,
    status: NotificationStatus | None = None,
    event_type: str | None = None,
    limit: int = 100,
) -> list[Notification]:
    require_admin(actor.is_admin, "read notifications")
    with ctx.store.read() as tx:
        return tx.outbox.list_notifications(status=status, event_type=event_type, limit=limit)


def retry(ctx: Context, actor: Principal, notification_id: str) -> Notification:
    """Give a dead notification a fresh set of attempts, due now."""
    with ctx.store.transaction() as tx:
        require_admin(current_principal(tx, actor).is_admin, "retry notifications")
        found = tx.outbox.get(notification_id, lock=True)
        if found is None:
            raise NotFound(f"no notification {notification_id!r}", code="notification-not-found")
        if found.status is not NotificationStatus.DEAD:
            raise Conflict(
                f"notification {notification_id} is {found.status.value}; only a dead one "
                "can be retried",
                code="notification-not-dead",
            )
        now = ctx.now()
        tx.outbox.requeue(notification_id, now)
        tx.audit.append(
            [
                NewEvent(
                    type=EventType.NOTIFICATION_RETRIED,
                    at=now,
                    actor=actor.id,
                    data={
                        "notification": notification_id,
                        "channel": found.channel.value,
                        "target": found.target,
                        "event_type": found.event_type,
                        "attempts": found.attempts,
                    },
                )
            ]
        )
        requeued = tx.outbox.get(notification_id)
    assert requeued is not None
    return requeued
