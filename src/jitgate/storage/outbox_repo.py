"""The notification outbox: rows written with the change they announce, claimed by workers.

A worker *claims* due rows: in one short transaction it counts the attempt and moves
``next_attempt_at`` a lease ahead (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so two
workers never claim the same row). It then delivers outside any transaction and records
the outcome. A worker that dies mid-delivery leaves the row ``pending``: it is claimed
again once the lease runs out, so delivery is at least once and nothing is lost.

Statuses: ``pending`` → ``delivered`` | ``dead`` (attempts exhausted); an administrator
may put a dead row back to ``pending``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, RowMapping, case, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from jitgate.domain.models import GrantStatus
from jitgate.storage.tables import grants, notifications


class Channel(StrEnum):
    WEBHOOK = "webhook"
    SLACK = "slack"


class Priority(StrEnum):
    NORMAL = "normal"
    HIGH = "high"


class NotificationStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class Notification:
    id: str
    channel: Channel
    target: str  # the webhook's name, or the Slack channel or user id
    event_type: str
    priority: Priority
    payload: dict[str, Any]  # what is sent, as JSON; never a secret
    status: NotificationStatus
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    last_error: str | None = None
    delivered_at: datetime | None = None
    dedupe_key: str | None = None


@dataclass(frozen=True, slots=True)
class ExpiringGrant:
    id: str
    principal: str
    api: str
    request_id: str
    scopes: tuple[str, ...]
    expires_at: datetime


def _notification(row: RowMapping) -> Notification:
    return Notification(
        id=row["id"],
        channel=Channel(row["channel"]),
        target=row["target"],
        event_type=row["event_type"],
        priority=Priority(row["priority"]),
        payload=row["payload"],
        status=NotificationStatus(row["status"]),
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        created_at=row["created_at"],
        last_error=row["last_error"],
        delivered_at=row["delivered_at"],
        dedupe_key=row["dedupe_key"],
    )


class OutboxRepo:
    def __init__(self, connection: Connection) -> None:
        self._c = connection

    def add(self, n: Notification) -> bool:
        """Insert ``n``; with a ``dedupe_key`` already present, insert nothing (False)."""
        values = {
            "id": n.id,
            "channel": n.channel.value,
            "target": n.target,
            "event_type": n.event_type,
            "priority": n.priority.value,
            "payload": n.payload,
            "status": n.status.value,
            "attempts": n.attempts,
            "next_attempt_at": n.next_attempt_at,
            "created_at": n.created_at,
            "last_error": n.last_error,
            "delivered_at": n.delivered_at,
            "dedupe_key": n.dedupe_key,
        }
        if n.dedupe_key is None:
            self._c.execute(insert(notifications).values(values))
            return True
        # A unique violation would abort a PostgreSQL transaction: skip the row instead.
        dialect = postgresql if self._c.dialect.name == "postgresql" else sqlite
        inserted = self._c.execute(
            dialect.insert(notifications)
            .values(values)
            .on_conflict_do_nothing(index_elements=["dedupe_key"])
            .returning(notifications.c.id)
        ).first()
        return inserted is not None

    def claim_due(self, now: datetime, lease_until: datetime, limit: int) -> list[Notification]:
        """Due pending rows (high priority first), each with one more attempt counted and
        ``next_attempt_at`` moved to ``lease_until``."""
        c = notifications.c
        query = (
            select(notifications)
            .where(c.status == NotificationStatus.PENDING.value, c.next_attempt_at <= now)
            .order_by(
                case((c.priority == Priority.HIGH.value, 0), else_=1), c.next_attempt_at, c.id
            )
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        due = [_notification(r._mapping) for r in self._c.execute(query)]
        if due:
            self._c.execute(
                update(notifications)
                .where(c.id.in_([n.id for n in due]))
                .values(attempts=c.attempts + 1, next_attempt_at=lease_until)
            )
        return [replace(n, attempts=n.attempts + 1, next_attempt_at=lease_until) for n in due]

    def mark_delivered(self, notification_id: str, at: datetime) -> None:
        self._c.execute(
            update(notifications)
            .where(
                notifications.c.id == notification_id,
                notifications.c.status == NotificationStatus.PENDING.value,
            )
            .values(status=NotificationStatus.DELIVERED.value, delivered_at=at, last_error=None)
        )

    def mark_failed(self, notification_id: str, error: str, retry_at: datetime | None) -> None:
        """Record a failed attempt: due again at ``retry_at``, or ``dead`` when None."""
        values: dict[str, Any] = {"last_error": error[:1000]}
        if retry_at is None:
            values["status"] = NotificationStatus.DEAD.value
        else:
            values["next_attempt_at"] = retry_at
        self._c.execute(
            update(notifications)
            .where(
                notifications.c.id == notification_id,
                notifications.c.status == NotificationStatus.PENDING.value,
            )
            .values(values)
        )

    def get(self, notification_id: str, *, lock: bool = False) -> Notification | None:
        query = select(notifications).where(notifications.c.id == notification_id)
        if lock:
            query = query.with_for_update()
        row = self._c.execute(query).first()
        return _notification(row._mapping) if row else None

    def requeue(self, notification_id: str, now: datetime) -> None:
        """Give a row a fresh set of attempts, due now."""
        self._c.execute(
            update(notifications)
            .where(notifications.c.id == notification_id)
            .values(status=NotificationStatus.PENDING.value, attempts=0, next_attempt_at=now)
        )

    def list_notifications(
        self,
        *,
        status: NotificationStatus | None = None,
        event_type: str | None = None,
        limit: int = 100,
    ) -> list[Notification]:
        """Newest first."""
        c = notifications.c
        query = select(notifications)
        if status is not None:
            query = query.where(c.status == status.value)
        if event_type is not None:
            query = query.where(c.event_type == event_type)
        query = query.order_by(c.created_at.desc(), c.id.desc()).limit(limit)
        return [_notification(r._mapping) for r in self._c.execute(query)]

    def grants_expiring(self, now: datetime, lead: timedelta) -> list[ExpiringGrant]:
        """Active grants that end within ``lead`` from ``now`` and lasted longer than
        ``lead`` (a grant shorter than the warning period is not warned about at its start)."""
        c = grants.c
        rows = self._c.execute(
            select(c.id, c.principal, c.api, c.request_id, c.scopes, c.not_before, c.expires_at)
            .where(
                c.status == GrantStatus.ACTIVE.value,
                c.expires_at > now,
                c.expires_at <= now + lead,
            )
            .order_by(c.expires_at, c.id)
        )
        return [
            ExpiringGrant(
                id=r.id,
                principal=r.principal,
                api=r.api,
                request_id=r.request_id,
                scopes=tuple(r.scopes),
                expires_at=r.expires_at,
            )
            for r in rows
            if r.expires_at - r.not_before > lead
        ]
