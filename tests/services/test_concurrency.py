"""Races: many threads hit the same request, grant or audit chain at the same moment.

Each test runs on PostgreSQL (row locks, ``SELECT … FOR UPDATE``) and on a SQLite file
(``BEGIN IMMEDIATE`` serialises writers). Threads line up on a barrier so that they
really do arrive together; every outcome other than a clean win or a domain error
(a deadlock, an IntegrityError, a second grant) fails the test.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from jitgate.audit.events import EventType, NewEvent
from jitgate.clock import FrozenClock
from jitgate.domain.models import GrantStatus, Principal, RequestStatus
from jitgate.errors import Conflict, JitgateError
from jitgate.services import access, grants
from jitgate.services.audit import verify_store
from jitgate.services.context import Context
from jitgate.storage.audit_repo import AuditFilter

from .conftest import Demo, add_principal, count_rows, event_types, two_person_policy

THREADS = 8


@dataclass
class Outcome:
    value: Any = None
    error: JitgateError | None = None
    crash: BaseException | None = None


def race(calls: list[Callable[[], Any]]) -> list[Outcome]:
    """Run every call in its own thread, all released at once; collect what happened."""
    barrier = threading.Barrier(len(calls))
    outcomes = [Outcome() for _ in calls]

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            outcomes[i].value = calls[i]()
        except JitgateError as exc:
            outcomes[i].error = exc
        except BaseException as exc:
            outcomes[i].crash = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a racing thread hung"
    crashes = [o.crash for o in outcomes if o.crash is not None]
    assert not crashes, f"unexpected failures: {crashes!r}"
    return outcomes


def _approvers(ctx: Context, n: int) -> list[Principal]:
    return [add_principal(ctx, f"approver{i}", "approvers") for i in range(n)]


def _pending(ctx: Context, requester: Principal) -> str:
    view = access.create_request(
        ctx, requester, api="demo", scopes=["POST /items"], duration="30m", reason="race"
    )
    assert view.request.status is RequestStatus.PENDING
    return view.request.id


def _chain_ok(ctx: Context) -> None:
    result = verify_store(ctx.store, dict(ctx.keyring.public_keys))
    assert result.ok, result.as_dict()
    with ctx.store.transaction() as tx:
        seqs = [e.seq for e in tx.audit.stream()]
    assert seqs == list(range(1, len(seqs) + 1))


def test_many_approvers_one_request_exactly_one_grant(ctx: Context, demo: Demo) -> None:
    approvers = _approvers(ctx, THREADS)
    for _ in range(2):  # a couple of rounds: interleavings differ
        rid = _pending(ctx, demo.alice)
        outcomes = race([lambda a=a, r=rid: access.approve(ctx, a, r) for a in approvers])

        winners = [o.value for o in outcomes if o.error is None]
        assert len(winners) == 1
        assert winners[0].grant is not None
        assert all(isinstance(o.error, Conflict) for o in outcomes if o.error is not None)
        assert {o.error.code for o in outcomes if o.error is not None} == {"request-decided"}

        final = access.get_request(ctx, rid)
        assert final.request.status is RequestStatus.APPROVED
        assert final.grant == winners[0].grant
        assert [a.approver for a in final.approvals] == [winners[0].approvals[0].approver]
        with ctx.store.transaction() as tx:
            events = tx.audit.query(AuditFilter(request=rid), limit=1000)
        kinds = Counter(e.type for e in events)
        assert kinds["request.approved"] == 1
        assert kinds["grant.issued"] == 1
    assert len(grants.list_grants(ctx, api="demo")) == 2
    _chain_ok(ctx)


def test_two_person_rule_under_a_race_needs_exactly_two(ctx: Context, demo: Demo) -> None:
    ctx.replace_policy(two_person_policy())
    approvers = _approvers(ctx, THREADS)
    rid = _pending(ctx, demo.alice)

    outcomes = race([lambda a=a: access.approve(ctx, a, rid) for a in approvers])

    ok = [o.value for o in outcomes if o.error is None]
    assert len(ok) == 2
    assert sorted(v.request.status for v in ok) == [RequestStatus.APPROVED, RequestStatus.PENDING]
    assert sum(v.grant is not None for v in ok) == 1
    assert {o.error.code for o in outcomes if o.error is not None} == {"request-decided"}
    final = access.get_request(ctx, rid)
    assert final.request.status is RequestStatus.APPROVED
    assert len({a.approver for a in final.approvals}) == 2
    assert count_rows(ctx.store)["grants"] == 1
    _chain_ok(ctx)


def test_one_approver_racing_itself_counts_once(ctx: Context, demo: Demo) -> None:
    ctx.replace_policy(two_person_policy())
    rid = _pending(ctx, demo.alice)

    outcomes = race([lambda: access.approve(ctx, demo.bob, rid) for _ in range(THREADS)])

    assert sum(o.error is None for o in outcomes) == 1
    assert {o.error.code for o in outcomes if o.error is not None} == {"already-approved"}
    final = access.get_request(ctx, rid)
    assert final.request.status is RequestStatus.PENDING
    assert [a.approver for a in final.approvals] == ["bob"]
    assert count_rows(ctx.store)["grants"] == 0
    assert event_types(ctx.store).count("request.approved") == 1


@pytest.mark.parametrize(
    "rival",
    [
        pytest.param(lambda ctx, d, rid: access.cancel(ctx, d.alice, rid), id="cancel"),
        pytest.param(lambda ctx, d, rid: access.deny(ctx, d.carol, rid), id="deny"),
    ],
)
def test_approve_against_a_rival_decision(
    ctx: Context, demo: Demo, rival: Callable[[Context, Demo, str], Any]
) -> None:
    seen: set[RequestStatus] = set()
    for _ in range(4):
        rid = _pending(ctx, demo.alice)
        approve_out, rival_out = race(
            [lambda r=rid: access.approve(ctx, demo.bob, r), lambda r=rid: rival(ctx, demo, r)]
        )
        assert (approve_out.error is None) != (rival_out.error is None), "exactly one wins"
        loser = approve_out.error or rival_out.error
        assert isinstance(loser, Conflict)
        assert loser.code == "request-decided"

        final = access.get_request(ctx, rid)
        seen.add(final.request.status)
        if approve_out.error is None:
            assert final.request.status is RequestStatus.APPROVED
            assert final.grant is not None
        else:
            assert final.request.status in (RequestStatus.CANCELLED, RequestStatus.DENIED)
            assert final.grant is None
            assert final.request.grant_id is None
    grant_rows = count_rows(ctx.store)["grants"]
    assert grant_rows == sum(1 for r in access.list_requests(ctx) if r.grant_id)
    _chain_ok(ctx)


def test_concurrent_revocations_end_a_grant_once(ctx: Context, demo: Demo) -> None:
    view = access.create_request(
        ctx, demo.alice, api="demo", scopes=["GET /x"], duration="10m", reason="r"
    )
    assert view.grant is not None
    gid = view.grant.id
    actors = [demo.alice, demo.bob, demo.carol, demo.admin] * 2

    outcomes = race([lambda a=a: grants.revoke(ctx, a, gid, "incident") for a in actors])

    assert sum(o.error is None for o in outcomes) == 1
    assert {o.error.code for o in outcomes if o.error is not None} == {"grant-ended"}
    assert ctx.feed.ended == [gid]  # type: ignore[attr-defined]
    ended = [t for t in event_types(ctx.store) if t in ("grant.revoked", "grant.released")]
    assert len(ended) == 1
    assert grants.get_grant(ctx, gid).status in (GrantStatus.REVOKED, GrantStatus.RELEASED)
    _chain_ok(ctx)


def test_kill_switch_and_sweeper_racing_end_each_grant_once(
    ctx: Context, demo: Demo, clock: FrozenClock
) -> None:
    ids = []
    for minutes in (1, 1, 10, 10):
        view = access.create_request(
            ctx, demo.alice, api="demo", scopes=["GET /x"], duration=f"{minutes}m", reason="r"
        )
        assert view.grant is not None
        ids.append(view.grant.id)
    clock.advance(timedelta(minutes=2))  # the two 1-minute grants are now due for expiry

    race(
        [
            lambda: grants.kill_switch(ctx, demo.admin, principal="alice", api=None, reason="ir"),
            lambda: grants.kill_switch(ctx, demo.bob, principal=None, api="demo", reason="ir"),
            lambda: grants.expire_grants(ctx),
            lambda: grants.expire_grants(ctx),
        ]
    )

    statuses = [grants.get_grant(ctx, g).status for g in ids]
    assert statuses[:2] == [GrantStatus.EXPIRED, GrantStatus.EXPIRED]
    assert statuses[2:] == [GrantStatus.REVOKED, GrantStatus.REVOKED]
    ends = Counter(
        e.grant
        for e in _all_events(ctx)
        if e.type in ("grant.revoked", "grant.expired", "grant.released")
    )
    assert ends == dict.fromkeys(ids, 1)
    assert sorted(ctx.feed.ended) == sorted(ids[2:])  # type: ignore[attr-defined]
    _chain_ok(ctx)


def test_concurrent_requests_and_raw_appends_keep_the_chain(
    ctx: Context, demo: Demo, clock: FrozenClock
) -> None:
    start = count_rows(ctx.store)["audit_events"]

    def raw_appender(i: int) -> None:
        for j in range(5):
            with ctx.store.transaction() as tx:
                tx.audit.append(
                    [
                        NewEvent(
                            EventType.SYSTEM_STARTED, clock.now(), "system", data={"t": i, "n": j}
                        ),
                        NewEvent(
                            EventType.SYSTEM_STARTED, clock.now(), "system", data={"t": i, "n": j}
                        ),
                    ]
                )

    def requester() -> None:
        for _ in range(3):
            access.create_request(
                ctx, demo.alice, api="demo", scopes=["GET /x"], duration="5m", reason="r"
            )

    race([lambda i=i: raw_appender(i) for i in range(THREADS - 2)] + [requester, requester])

    _chain_ok(ctx)
    events = _all_events(ctx)
    raw = [e for e in events if e.type == "system.started"]
    assert len(raw) == (THREADS - 2) * 5 * 2
    # Both events of one transaction are adjacent: nobody slipped in between.
    by_batch: dict[tuple[int, int], list[int]] = {}
    for e in raw:
        by_batch.setdefault((e.data["t"], e.data["n"]), []).append(e.seq)
    assert all(b - a == 1 for a, b in by_batch.values())
    assert len(events) == start + len(raw) + 2 * 3 * 3  # 3 events per auto-approved request
    with ctx.store.transaction() as tx:
        assert tx.audit.head() == (events[-1].seq, events[-1].hash)


def _all_events(ctx: Context) -> list[Any]:
    with ctx.store.transaction() as tx:
        return list(tx.audit.stream())
