"""Fixtures for the service tests: the demo fixture on top of ``ctx``, and helpers that
read the database behind the services' back (row counts, the raw audit trail)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from jitgate.demo.fixture import set_up_demo
from jitgate.domain.models import Principal
from jitgate.policy import parse_policy
from jitgate.policy.model import Policy
from jitgate.secrets import Secret
from jitgate.services import directory
from jitgate.services.context import Context
from jitgate.storage.store import Store
from jitgate.storage.tables import (
    access_requests,
    approvals,
    audit_events,
    grants,
    metadata,
)

UPSTREAM = "http://127.0.0.1:8702"

# The demo's write rule, but needing two distinct approvers.
TWO_PERSON_POLICY = """\
version: 1
defaults: {max_duration: 1h, pending_ttl: 24h}
rules:
  - name: reads
    requesters: {groups: [engineering]}
    apis: [demo]
    scopes: ["GET /**"]
    max_duration: 15m
    approval: auto
  - name: two-person-writes
    requesters: {groups: [engineering]}
    apis: [demo]
    scopes: ["POST,PUT,PATCH,DELETE /**"]
    max_duration: 1h
    approval: {count: 2, from: {groups: [approvers]}}
"""


def two_person_policy() -> Policy:
    return parse_policy(TWO_PERSON_POLICY, "two-person.yaml")


@dataclass
class Demo:
    alice: Principal
    bob: Principal
    carol: Principal
    admin: Principal
    tokens: dict[str, str]
    secret: Secret


@pytest.fixture
def demo(ctx: Context, tmp_path: Path) -> Demo:
    """The fixed demo (alice, bob, carol, admin, API ``demo`` owned by ``approvers``)."""
    tokens, secret = set_up_demo(ctx, tmp_path, UPSTREAM)
    p = {principal.id: principal for principal in directory.list_principals(ctx)}
    return Demo(p["alice"], p["bob"], p["carol"], p["admin"], tokens, secret)


def add_principal(ctx: Context, pid: str, *groups: str, is_admin: bool = False) -> Principal:
    return directory.create_principal(ctx, None, pid, groups=list(groups), is_admin=is_admin)


def count_rows(store: Store) -> dict[str, int]:
    """Row counts of the tables a request flow writes to."""
    with store.engine.connect() as c:
        return {
            t.name: int(c.execute(select(func.count()).select_from(t)).scalar_one())
            for t in (access_requests, approvals, grants, audit_events)
        }


def event_types(store: Store, *, after: int = 0) -> list[str]:
    with store.engine.connect() as c:
        rows = c.execute(
            select(audit_events.c.type)
            .where(audit_events.c.seq > after)
            .order_by(audit_events.c.seq)
        )
        return [r.type for r in rows]


def last_seq(store: Store) -> int:
    with store.engine.connect() as c:
        return int(c.execute(select(func.coalesce(func.max(audit_events.c.seq), 0))).scalar_one())


def dump_database(store: Store) -> list[tuple[str, object]]:
    """Every raw value (no type decoding) of every row of every table, as
    ``(table.column, value)``: what someone reading the database file would see."""
    out: list[tuple[str, object]] = []
    with store.engine.connect() as c:
        for table in metadata.sorted_tables:
            for row in c.execute(text(f"SELECT * FROM {table.name}")):
                for column, value in row._mapping.items():
                    out.append((f"{table.name}.{column}", value))
    return out
