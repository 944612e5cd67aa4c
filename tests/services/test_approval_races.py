"""Races on the approval workflow: threads released together by a barrier, looped.

Approve-vs-cancel and the last seat of a two-approval request rely on row locks
(``SELECT … FOR UPDATE``); they run on PostgreSQL only, where concurrent transactions
really interleave (SQLite serialises writers with ``BEGIN IMMEDIATE``, already covered by
``test_concurrency.py``). Concurrent creates under one Idempotency-Key run on both: the
unique constraint and the replay path must hold on each.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import pytest

from jitgate.domain.models import Principal, RequestStatus
from jitgate.errors import Conflict
from jitgate.services import access
from jitgate.services.access import RequestView
from jitgate.services.context import Context
from jitgate.storage.audit_repo import AuditFilter

from .conftest import Demo, add_principal, count_rows, two_person_policy
from .test_concurrency import race

ROUNDS = 30
TIME_BUDGET = 8.0  # seconds per test: stop looping early rather than run long


@pytest.fixture
def pg_only(ctx: Context) -> None:
    if ctx.store.engine.dialect.name != "postgresql":
        pytest.skip("row-lock races need concurrent writers: PostgreSQL only")


def _rounds() -> Any:
    """Up to ROUNDS iterations, within TIME_BUDGET seconds (at least 5)."""
    start = time.monotonic()
    for i in range(ROUNDS):
        if i >= 5 and time.monotonic() - start > TIME_BUDGET:
            return
        yield i


def _pending(ctx: Context, requester: Principal) -> str:
    view = access.create_request(
        ctx, requester, api="demo", scopes=["POST /items"], duration="30m", reason="race"
    )
    assert view.request.status is RequestStatus.PENDING
    return view.request.id


def _events(ctx: Context, rid: str) -> list[str]:
    with ctx.store.read() as tx:
        return [e.type for e in tx.audit.query(AuditFilter(request=rid), limit=1000)]


@pytest.mark.usefixtures("pg_only")
def test_approve_against_cancel(ctx: Context, demo: Demo) -> None:
    wins: set[str] = set()
    for _ in _rounds():
        rid = _pending(ctx, demo.alice)
        approved, cancelled = race(
            [
                partial(access.approve, ctx, demo.bob, rid),
                partial(access.cancel, ctx, demo.alice, rid),
            ]
        )
        assert (approved.error is None) != (cancelled.error is None), "exactly one wins"
        loser = approved.error or cancelled.error
        assert isinstance(loser, Conflict)
        assert loser.code == "request-decided"

        final = access.get_request(ctx, rid)
        events = _events(ctx, rid)
        if approved.error is None:
            wins.add("approve")
            assert final.request.status is RequestStatus.APPROVED
            assert final.grant is not None
            assert events.count("grant.issued") == 1
            assert "request.cancelled" not in events
        else:
            wins.add("cancel")
            assert final.request.status is RequestStatus.CANCELLED
            assert final.grant is None
            assert final.approvals == []  # the loser's vote was rolled back
            assert "request.approved" not in events
            assert "grant.issued" not in events
    rows = count_rows(ctx.store)
    with ctx.store.read() as tx:
        granted = [r for r in tx.access.list_requests(limit=None) if r.grant_id]
    assert rows["grants"] == len(granted)  # at most one grant per request, none orphaned
    assert wins  # at least something happened; which side wins is the scheduler's call


@pytest.mark.usefixtures("pg_only")
def test_two_approvers_race_for_the_last_seat(ctx: Context, demo: Demo) -> None:
    ctx.replace_policy(two_person_policy())
    dave = add_principal(ctx, "dave", "approvers")
    for _ in _rounds():
        rid = _pending(ctx, demo.alice)
        assert access.approve(ctx, demo.bob, rid).request.status is RequestStatus.PENDING
        outcomes = race(
            [
                partial(access.approve, ctx, demo.carol, rid),
                partial(access.approve, ctx, dave, rid),
            ]
        )
        winners: list[RequestView] = [o.value for o in outcomes if o.error is None]
        assert len(winners) == 1
        assert winners[0].grant is not None
        assert [o.error.code for o in outcomes if o.error is not None] == ["request-decided"]
        final = access.get_request(ctx, rid)
        assert final.request.status is RequestStatus.APPROVED
        assert len(final.approvals) == 2
        assert final.grant == winners[0].grant
        events = _events(ctx, rid)
        assert events.count("grant.issued") == 1
        assert events.count("request.approved") == 2
    rows = count_rows(ctx.store)
    assert rows["grants"] == rows["access_requests"]


def test_concurrent_creates_with_one_idempotency_key(ctx: Context, demo: Demo) -> None:
    threads = 6
    for n in _rounds():
        if n >= 8:  # the replay path is short; a few rounds suffice
            break
        key = f"key-{n}"
        outcomes = race(
            [
                partial(
                    access.create_request,
                    ctx,
                    demo.alice,
                    api="demo",
                    scopes=["POST /items"],
                    duration="30m",
                    reason="once",
                    idempotency_key=key,
                )
            ]
            * threads
        )
        assert all(o.error is None for o in outcomes), [o.error for o in outcomes]
        views: list[RequestView] = [o.value for o in outcomes]
        assert len({v.request.id for v in views}) == 1
        assert sum(not v.replayed for v in views) == 1
        with ctx.store.read() as tx:
            filed = tx.access.list_requests(requester="alice", limit=None)
        assert len(filed) == n + 1
        assert _events(ctx, views[0].request.id).count("request.created") == 1
