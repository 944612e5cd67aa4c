"""The schema, as SQLAlchemy Core tables; Alembic migrations are derived from it.

Times are stored as naive UTC (:class:`UTCDateTime` converts at the boundary) so that
SQLite and PostgreSQL round-trip them identically to the microsecond, which the audit
hash chain relies on.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database layer")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


# 64-bit on PostgreSQL; INTEGER on SQLite, which is 64-bit there and the rowid alias.
_SEQ = BigInteger().with_variant(Integer, "sqlite")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

principals = Table(
    "principals",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("display_name", String(200), nullable=False),
    Column("groups", JSON, nullable=False),
    Column("attributes", JSON, nullable=False),
    Column("is_admin", Boolean, nullable=False, default=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", UTCDateTime, nullable=False),
)

principal_tokens = Table(
    "principal_tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("principal_id", String(64), ForeignKey("principals.id"), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("label", String(200), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
)

apis = Table(
    "apis",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("base_url", String(2048), nullable=False),
    Column("injection", JSON, nullable=False),
    Column("environment", String(64), nullable=False),
    Column("owners", JSON, nullable=False),
    Column("description", Text, nullable=False),
    Column("secret_ciphertext", LargeBinary, nullable=False),
    Column("masks", JSON, nullable=True),  # response masks (JSONPath texts); null: none
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

access_requests = Table(
    "access_requests",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("requester", String(64), ForeignKey("principals.id"), nullable=False),
    Column("api", String(64), ForeignKey("apis.name"), nullable=False),
    Column("scopes", JSON, nullable=False),
    Column("duration_seconds", Integer, nullable=False),
    Column("reason", Text, nullable=False),
    Column("ticket", String(200), nullable=True),
    Column("starts_at", UTCDateTime, nullable=True),
    Column("status", String(16), nullable=False),
    Column("decision", JSON, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("decided_at", UTCDateTime, nullable=True),
    Column("grant_id", String(32), nullable=True),
    # What the approvers settled on: narrower than the request, or null for "as asked".
    Column("approved_scopes", JSON, nullable=True),
    Column("approved_duration_seconds", Integer, nullable=True),
    Column("extends_grant", String(32), nullable=True),
    Column("idempotency_key", String(200), nullable=True),
    Column("idempotency_hash", String(64), nullable=True),
    Index("ix_access_requests_status_created", "status", "created_at"),
    Index("ix_access_requests_requester_created", "requester", "created_at"),
    UniqueConstraint("requester", "idempotency_key", name="uq_access_requests_idempotency"),
)

approvals = Table(
    "approvals",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(32), ForeignKey("access_requests.id"), nullable=False),
    Column("approver", String(64), ForeignKey("principals.id"), nullable=False),
    Column("verdict", String(16), nullable=False),
    Column("comment", Text, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    # The hash of the request's terms the approver was shown; a later change voids the vote.
    Column("terms_hash", String(64), nullable=True),
    UniqueConstraint("request_id", "approver", name="uq_approvals_request_approver"),
)

grants = Table(
    "grants",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("request_id", String(32), ForeignKey("access_requests.id"), nullable=False),
    Column("principal", String(64), ForeignKey("principals.id"), nullable=False),
    Column("api", String(64), ForeignKey("apis.name"), nullable=False),
    Column("scopes", JSON, nullable=False),
    Column("not_before", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("status", String(16), nullable=False),
    Column("max_calls", Integer, nullable=True),
    Column("rate_calls", Integer, nullable=True),
    Column("rate_window_seconds", Integer, nullable=True),
    Column("idle_timeout_seconds", Integer, nullable=True),
    Column("masks", JSON, nullable=True),  # response masks (JSONPath texts); null: none
    Column("created_at", UTCDateTime, nullable=False),
    Column("ended_at", UTCDateTime, nullable=True),
    Column("ended_by", String(64), nullable=True),
    Column("end_reason", Text, nullable=True),
    Column("extends", String(32), nullable=True),
    Column("needs_review", Boolean, nullable=False, default=False),
    Column("reviewed_by", String(64), nullable=True),
    Column("reviewed_at", UTCDateTime, nullable=True),
    Index("ix_grants_status_expires", "status", "expires_at"),
    Index("ix_grants_extends", "extends"),
    Index("ix_grants_ended_at", "ended_at"),
)

signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("private_ciphertext", LargeBinary, nullable=False),
    Column("public_key", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("retired_at", UTCDateTime, nullable=True),
    Column("keep_until", UTCDateTime, nullable=True),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("seq", _SEQ, primary_key=True, autoincrement=False),
    Column("at", UTCDateTime, nullable=False),
    Column("type", String(64), nullable=False),
    Column("actor", String(64), nullable=True),
    Column("principal", String(64), nullable=True),
    Column("api", String(64), nullable=True),
    Column("grant_id", String(32), nullable=True),
    Column("request_id", String(32), nullable=True),
    Column("data", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_audit_events_type", "type"),
    Index("ix_audit_events_grant", "grant_id"),
    Index("ix_audit_events_at", "at"),
)

# One row: the chain's head. Appenders lock it, so the chain has one writer at a time.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("seq", _SEQ, primary_key=True, autoincrement=False),
    Column("hash", String(64), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("kid", String(64), nullable=False),
    Column("signature", String(200), nullable=False),
)

# Notifications to deliver (webhooks, Slack), written in the transaction of the change they
# announce, so that nothing is lost on a crash; a worker delivers them with retries.
notifications = Table(
    "notifications",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("channel", String(16), nullable=False),
    Column("target", String(64), nullable=False),
    Column("event_type", String(64), nullable=False),
    Column("priority", String(16), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("last_error", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("delivered_at", UTCDateTime, nullable=True),
    # Set on notifications that must never be written twice (one expiry warning per grant).
    Column("dedupe_key", String(128), nullable=True, unique=True),
    Index("ix_notifications_status_next", "status", "next_attempt_at"),
)
