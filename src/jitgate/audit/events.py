"""Audit events as values: the types that exist, what callers write, what is stored.

Guarantees:

* :class:`EventType` wire names (``subject.action``) are fixed forever. The list is
  append-only: a name is never renamed, reused or removed, because stored events and
  their hashes refer to it.
* A :class:`NewEvent` always has a known type and a timezone-aware ``at``.
* A :class:`ChainedEvent` always holds ``at`` as aware UTC (a naive value read back from
  the database is taken as UTC, which is how the storage layer writes it), so the
  same stored row always renders, and hashes, the same way.

Nothing here touches the database, the network or the clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from jitgate.errors import InvalidInput


class EventType(StrEnum):
    """Every kind of audit event. Append-only: never rename or remove a member."""

    REQUEST_CREATED = "request.created"
    REQUEST_DECIDED = "request.decided"
    REQUEST_APPROVED = "request.approved"
    REQUEST_DENIED = "request.denied"
    REQUEST_DENY_VOTED = "request.deny_voted"  # a denial short of the rule's deny_count
    REQUEST_CANCELLED = "request.cancelled"
    REQUEST_EXPIRED = "request.expired"
    GRANT_ISSUED = "grant.issued"
    GRANT_TOKEN_ISSUED = "grant.token_issued"  # noqa: S105 - an event name, not a secret
    GRANT_REVOKED = "grant.revoked"
    GRANT_RELEASED = "grant.released"
    GRANT_EXPIRED = "grant.expired"
    GRANT_REVIEWED = "grant.reviewed"  # a break-glass grant looked at after the fact
    ACCESS_ALLOWED = "access.allowed"
    ACCESS_DENIED = "access.denied"
    AUTH_FAILED = "auth.failed"
    PRINCIPAL_CREATED = "principal.created"
    PRINCIPAL_UPDATED = "principal.updated"
    PRINCIPAL_TOKEN_CREATED = "principal.token_created"  # noqa: S105 - an event name, not a secret
    PRINCIPAL_TOKEN_REVOKED = "principal.token_revoked"  # noqa: S105 - an event name
    API_CREATED = "api.created"
    API_UPDATED = "api.updated"
    API_SECRET_ROTATED = "api.secret_rotated"  # noqa: S105 - an event name, not a secret
    POLICY_LOADED = "policy.loaded"
    POLICY_REJECTED = "policy.rejected"
    SIGNING_KEY_CREATED = "signing_key.created"
    AUDIT_CHECKPOINT = "audit.checkpoint"
    SYSTEM_STARTED = "system.started"
    NOTIFICATION_RETRIED = "notification.retried"


def format_at(at: datetime) -> str:
    """``at`` as ISO 8601 UTC with microseconds and a ``Z``: ``2026-01-05T10:00:00.000000Z``.

    This exact text is hashed and signed, so its layout never changes.
    """
    if at.tzinfo is None or at.utcoffset() is None:
        raise InvalidInput(f"timestamp {at.isoformat()} has no timezone")
    return at.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


@dataclass(frozen=True, slots=True)
class NewEvent:
    """What callers hand to the audit writer: an event without its place in the chain."""

    type: EventType
    at: datetime  # tz-aware
    actor: str | None = None  # principal id, or "system"
    principal: str | None = None  # the principal the event is about
    api: str | None = None
    grant: str | None = None
    request: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)  # JSON values, never a secret

    def __post_init__(self) -> None:
        try:
            kind = EventType(self.type)
        except ValueError:
            raise InvalidInput(f"unknown audit event type {self.type!r}") from None
        object.__setattr__(self, "type", kind)
        if self.at.tzinfo is None or self.at.utcoffset() is None:
            raise InvalidInput(f"audit event time {self.at.isoformat()} has no timezone")


@dataclass(frozen=True, slots=True)
class ChainedEvent:
    """A stored event: its body plus its place in the hash chain.

    ``type`` is a plain string so that rows written by a newer version, with types this
    version does not know, can still be read and verified.
    """

    seq: int
    at: datetime
    type: str
    actor: str | None
    principal: str | None
    api: str | None
    grant: str | None
    request: str | None
    data: Mapping[str, Any]
    prev_hash: str
    hash: str

    def __post_init__(self) -> None:
        at = self.at if self.at.tzinfo is not None else self.at.replace(tzinfo=UTC)
        object.__setattr__(self, "at", at.astimezone(UTC))

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly copy (for export and the API)."""
        return {
            "seq": self.seq,
            "at": format_at(self.at),
            "type": str(self.type),
            "actor": self.actor,
            "principal": self.principal,
            "api": self.api,
            "grant": self.grant,
            "request": self.request,
            "data": dict(self.data),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }
