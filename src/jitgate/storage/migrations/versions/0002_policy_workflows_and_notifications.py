"""policy workflows and notifications

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("apis", schema=None) as batch_op:
        batch_op.add_column(sa.Column("masks", sa.JSON(), nullable=True))

    op.create_table(
        "notifications",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("target", sa.String(length=64), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("priority", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("delivered_at", sa.DateTime(), nullable=True),
        sa.Column("dedupe_key", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_notifications_dedupe_key")),
    )
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.create_index(
            "ix_notifications_status_next", ["status", "next_attempt_at"], unique=False
        )

    with op.batch_alter_table("access_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("approved_scopes", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("approved_duration_seconds", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("extends_grant", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("idempotency_hash", sa.String(length=64), nullable=True))
        batch_op.create_index(
            "ix_access_requests_requester_created", ["requester", "created_at"], unique=False
        )
        batch_op.create_unique_constraint(
            "uq_access_requests_idempotency", ["requester", "idempotency_key"]
        )

    with op.batch_alter_table("approvals", schema=None) as batch_op:
        batch_op.add_column(sa.Column("terms_hash", sa.String(length=64), nullable=True))

    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("extends", sa.String(length=32), nullable=True))
        batch_op.add_column(
            sa.Column("needs_review", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column("reviewed_by", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("reviewed_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("rate_calls", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("rate_window_seconds", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("idle_timeout_seconds", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("masks", sa.JSON(), nullable=True))
        batch_op.create_index("ix_grants_extends", ["extends"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.drop_index("ix_grants_extends")
        batch_op.drop_column("masks")
        batch_op.drop_column("idle_timeout_seconds")
        batch_op.drop_column("rate_window_seconds")
        batch_op.drop_column("rate_calls")
        batch_op.drop_column("reviewed_at")
        batch_op.drop_column("reviewed_by")
        batch_op.drop_column("needs_review")
        batch_op.drop_column("extends")

    with op.batch_alter_table("approvals", schema=None) as batch_op:
        batch_op.drop_column("terms_hash")

    with op.batch_alter_table("access_requests", schema=None) as batch_op:
        batch_op.drop_constraint("uq_access_requests_idempotency", type_="unique")
        batch_op.drop_index("ix_access_requests_requester_created")
        batch_op.drop_column("idempotency_hash")
        batch_op.drop_column("idempotency_key")
        batch_op.drop_column("extends_grant")
        batch_op.drop_column("approved_duration_seconds")
        batch_op.drop_column("approved_scopes")

    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_index("ix_notifications_status_next")

    op.drop_table("notifications")

    with op.batch_alter_table("apis", schema=None) as batch_op:
        batch_op.drop_column("masks")
