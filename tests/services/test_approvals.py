"""Approving, denying and cancelling: every way to abuse the workflow is refused.

Invariant 6: no self-approval; approvals come from distinct eligible principals; a
decided request stays decided; an approval after a deny, cancel or expiry is a 409.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

import pytest

from jitgate.clock import FrozenClock
from jitgate.domain.models import Principal, RequestStatus
from jitgate.errors import Conflict, Forbidden
from jitgate.services import access, grants
from jitgate.services.context import Context

from .conftest import Demo, add_principal, count_rows, event_types, two_person_policy


def _write_request(ctx: Context, requester: Principal, duration: str = "30m") -> str:
    view = access.create_request(
        ctx, requester, api="demo", scopes=["POST /items"], duration=duration, reason="fix data"
    )
    assert view.request.status is RequestStatus.PENDING
    return view.request.id


def _read_request(ctx: Context, requester: Principal) -> str:
    view = access.create_request(
        ctx, requester, api="demo", scopes=["GET /items"], duration="5m", reason="look"
    )
    assert view.request.status is RequestStatus.APPROVED
    return view.request.id


def _denied_request(ctx: Context, requester: Principal) -> str:
    view = access.create_request(
        ctx, requester, api="demo", scopes=["GET /items"], duration="2h", reason="long look"
    )
    assert view.request.status is RequestStatus.DENIED
    return view.request.id


def test_one_approval_opens_the_grant(ctx: Context, demo: Demo, clock: FrozenClock) -> None:
    rid = _write_request(ctx, demo.alice)
    clock.advance(timedelta(minutes=7))

    view = access.approve(ctx, demo.bob, rid, comment="ok")

    assert view.request.status is RequestStatus.APPROVED
    assert view.request.decided_at == clock.now()
    assert view.grant is not None
    assert view.request.grant_id == view.grant.id
    # The grant's window starts at approval, not at filing.
    assert view.grant.not_before == clock.now()
    assert view.grant.expires_at == clock.now() + timedelta(minutes=30)
    assert [(a.approver, a.verdict, a.comment) for a in view.approvals] == [
        ("bob", "approve", "ok")
    ]
    stored = access.get_request(ctx, rid)
    assert stored.request.status is RequestStatus.APPROVED
    assert stored.grant == view.grant
    assert event_types(ctx.store)[-2:] == ["request.approved", "grant.issued"]


def test_deny_and_cancel_close_the_request(ctx: Context, demo: Demo) -> None:
    rid = _write_request(ctx, demo.alice)
    view = access.deny(ctx, demo.carol, rid, comment="not today")
    assert view.request.status is RequestStatus.DENIED
    assert view.grant is None
    assert [(a.approver, a.verdict) for a in view.approvals] == [("carol", "deny")]
    assert grants.list_grants(ctx) == []
    assert event_types(ctx.store)[-1] == "request.denied"

    # Cancelling: by the requester, or by an administrator.
    mine = _write_request(ctx, demo.alice)
    assert access.cancel(ctx, demo.alice, mine).request.status is RequestStatus.CANCELLED
    other = _write_request(ctx, demo.alice)
    assert access.cancel(ctx, demo.admin, other).request.status is RequestStatus.CANCELLED
    assert event_types(ctx.store)[-1] == "request.cancelled"
    assert grants.list_grants(ctx) == []


# -- who may not decide ---------------------------------------------------------------


def test_self_approval_and_self_denial_are_forbidden(ctx: Context, demo: Demo) -> None:
    requesters = [
        demo.alice,  # a plain requester
        add_principal(ctx, "dave", "engineering", "approvers"),  # also an approver
        add_principal(ctx, "boss", "engineering", "approvers", is_admin=True),  # and admin
    ]
    for requester in requesters:
        rid = _write_request(ctx, requester)
        before = count_rows(ctx.store)
        for decide in (access.approve, access.deny):
            with pytest.raises(Forbidden) as caught:
                decide(ctx, requester, rid)
            assert caught.value.code == "self-approval", requester.id
        assert count_rows(ctx.store) == before
        assert access.get_request(ctx, rid).request.status is RequestStatus.PENDING


def test_non_eligible_principals_cannot_decide(ctx: Context, demo: Demo) -> None:
    actors = [
        add_principal(ctx, "alice2", "engineering"),  # a peer, not an approver
        demo.admin,  # administrators are not approvers by virtue of being admins
        add_principal(ctx, "mallory"),  # in no group at all
    ]
    rid = _write_request(ctx, demo.alice)
    before = count_rows(ctx.store)
    for actor in actors:
        for decide in (access.approve, access.deny):
            with pytest.raises(Forbidden) as caught:
                decide(ctx, actor, rid)
            assert caught.value.code == "not-eligible", actor.id
    assert count_rows(ctx.store) == before
    assert access.get_request(ctx, rid).request.status is RequestStatus.PENDING


def test_a_forged_principal_object_does_not_grant_eligibility(ctx: Context, demo: Demo) -> None:
    """Eligibility is read from the directory now, not from the caller's object."""
    mallory = add_principal(ctx, "mallory")
    forged = replace(mallory, groups=frozenset({"approvers"}))
    rid = _write_request(ctx, demo.alice)
    with pytest.raises(Forbidden):
        access.approve(ctx, forged, rid)
    ghost = Principal("ghost", mallory.kind, "Ghost", frozenset({"approvers"}))
    with pytest.raises(Forbidden):
        access.approve(ctx, ghost, rid)
    assert access.get_request(ctx, rid).request.status is RequestStatus.PENDING


STALE_CHANGES: dict[str, Callable[[Principal], Principal]] = {
    "removed-from-group": lambda p: replace(p, groups=frozenset()),
    "moved-to-another-group": lambda p: replace(p, groups=frozenset({"engineering"})),
    "disabled": lambda p: replace(p, disabled=True),
}


def test_approver_changed_after_login_is_refused(ctx: Context, demo: Demo) -> None:
    stale_bob = demo.bob  # what a session authenticated before the change holds
    for name, change in STALE_CHANGES.items():
        rid = _write_request(ctx, demo.alice)
        with ctx.store.transaction() as tx:
            tx.directory.update_principal(change(stale_bob))
        for decide in (access.approve, access.deny):
            with pytest.raises(Forbidden) as caught:
                decide(ctx, stale_bob, rid)
            assert caught.value.code in {"not-eligible", "principal-disabled"}, name
        assert access.get_request(ctx, rid).request.status is RequestStatus.PENDING, name
        # carol, untouched, still can; bob is restored for the next case.
        assert access.approve(ctx, demo.carol, rid).request.status is RequestStatus.APPROVED
        with ctx.store.transaction() as tx:
            tx.directory.update_principal(stale_bob)


def test_approver_added_to_group_after_login_is_accepted(ctx: Context, demo: Demo) -> None:
    """Eligibility is as of the decision: a new approver counts without logging in again."""
    frank = add_principal(ctx, "frank")
    rid = _write_request(ctx, demo.alice)
    with pytest.raises(Forbidden):
        access.approve(ctx, frank, rid)
    with ctx.store.transaction() as tx:
        tx.directory.update_principal(replace(frank, groups=frozenset({"approvers"})))
    assert access.approve(ctx, frank, rid).request.status is RequestStatus.APPROVED


def test_cancel_by_non_requester_is_forbidden(ctx: Context, demo: Demo) -> None:
    actors = [demo.bob, demo.carol, add_principal(ctx, "erin", "engineering")]
    rid = _write_request(ctx, demo.alice)
    before = count_rows(ctx.store)
    for actor in actors:
        with pytest.raises(Forbidden) as caught:
            access.cancel(ctx, actor, rid)
        assert caught.value.code == "not-requester"
    assert count_rows(ctx.store) == before
    assert access.get_request(ctx, rid).request.status is RequestStatus.PENDING


# -- a decided request stays decided -------------------------------------------------

CLOSERS: dict[str, Callable[[Context, Demo, str], object]] = {
    "approved": lambda ctx, d, rid: access.approve(ctx, d.bob, rid),
    "denied": lambda ctx, d, rid: access.deny(ctx, d.bob, rid),
    "cancelled": lambda ctx, d, rid: access.cancel(ctx, d.alice, rid),
}

AFTERWARDS: dict[str, Callable[[Context, Demo, str], object]] = {
    "approve": lambda ctx, d, rid: access.approve(ctx, d.carol, rid),
    "approve-again-by-closer": lambda ctx, d, rid: access.approve(ctx, d.bob, rid),
    "deny": lambda ctx, d, rid: access.deny(ctx, d.carol, rid),
    "cancel": lambda ctx, d, rid: access.cancel(ctx, d.alice, rid),
}


def test_decided_request_stays_decided(ctx: Context, demo: Demo) -> None:
    closed = {name: _write_request(ctx, demo.alice) for name in CLOSERS}
    closed["auto-approved"] = _read_request(ctx, demo.alice)
    closed["policy-denied"] = _denied_request(ctx, demo.alice)
    for name, close in CLOSERS.items():
        close(ctx, demo, closed[name])
    finals = {name: access.get_request(ctx, rid) for name, rid in closed.items()}
    before = count_rows(ctx.store)

    for closed_as, rid in closed.items():
        for name, action in AFTERWARDS.items():
            with pytest.raises(Conflict) as caught:
                action(ctx, demo, rid)
            assert caught.value.code == "request-decided", (closed_as, name)

    for closed_as, rid in closed.items():
        after = access.get_request(ctx, rid)
        assert after.request == finals[closed_as].request
        assert after.grant == finals[closed_as].grant
    assert count_rows(ctx.store) == before
    assert len(grants.list_grants(ctx)) == 2  # "approved" and "auto-approved"


def test_approval_after_pending_ttl_is_a_conflict(
    ctx: Context, demo: Demo, clock: FrozenClock
) -> None:
    rid = _write_request(ctx, demo.alice)
    clock.advance(timedelta(hours=25))
    before = count_rows(ctx.store)

    for decide in (access.approve, access.deny):
        with pytest.raises(Conflict) as caught:
            decide(ctx, demo.bob, rid)
        assert caught.value.code == "request-expired"
    assert count_rows(ctx.store) == before

    # The sweeper then closes it, and it is "decided" from then on.
    assert access.expire_pending(ctx) == 1
    assert access.get_request(ctx, rid).request.status is RequestStatus.EXPIRED
    with pytest.raises(Conflict) as caught:
        access.approve(ctx, demo.bob, rid)
    assert caught.value.code == "request-decided"
    with pytest.raises(Conflict):
        access.cancel(ctx, demo.alice, rid)
    assert grants.list_grants(ctx) == []


def test_pending_ttl_boundary(ctx: Context, demo: Demo, clock: FrozenClock) -> None:
    """Just before the TTL an approval is fine; at the TTL it is refused."""
    early = _write_request(ctx, demo.alice)
    late = _write_request(ctx, demo.alice)
    clock.advance(timedelta(hours=24) - timedelta(microseconds=1))
    assert access.approve(ctx, demo.bob, early).grant is not None
    clock.advance(timedelta(microseconds=1))
    with pytest.raises(Conflict) as caught:
        access.approve(ctx, demo.bob, late)
    assert caught.value.code == "request-expired"


# -- counting: distinct eligible principals -------------------------------------------


def test_two_approvals_from_distinct_approvers(
    ctx: Context, demo: Demo, clock: FrozenClock
) -> None:
    ctx.replace_policy(two_person_policy())
    rid = _write_request(ctx, demo.alice)
    assert access.get_request(ctx, rid).request.decision.approvals_required == 2

    first = access.approve(ctx, demo.bob, rid, comment="one")
    assert first.request.status is RequestStatus.PENDING
    assert first.grant is None
    assert grants.list_grants(ctx) == []

    # bob again: refused whatever he says, and nothing is recorded.
    before = count_rows(ctx.store)
    with pytest.raises(Conflict) as caught:
        access.approve(ctx, demo.bob, rid, comment="really")
    assert caught.value.code == "already-approved"
    with pytest.raises(Conflict):
        access.deny(ctx, demo.bob, rid)
    assert count_rows(ctx.store) == before
    assert access.get_request(ctx, rid).request.status is RequestStatus.PENDING

    # The requester never counts, even if they are in the group.
    with pytest.raises(Forbidden):
        access.approve(ctx, demo.alice, rid)

    clock.advance(60)
    second = access.approve(ctx, demo.carol, rid, comment="two")
    assert second.request.status is RequestStatus.APPROVED
    assert second.grant is not None
    assert second.grant.not_before == clock.now()
    assert [a.approver for a in second.approvals] == ["bob", "carol"]
    assert len(grants.list_grants(ctx)) == 1
    types = event_types(ctx.store)
    assert types.count("request.approved") == 2
    assert types.count("grant.issued") == 1


def test_two_person_rule_with_requester_in_the_approver_group(ctx: Context, demo: Demo) -> None:
    """dave is both engineer and approver: he plus bob is still only one approval."""
    ctx.replace_policy(two_person_policy())
    dave = add_principal(ctx, "dave", "engineering", "approvers")
    rid = _write_request(ctx, dave)
    with pytest.raises(Forbidden):
        access.approve(ctx, dave, rid)
    assert access.approve(ctx, demo.bob, rid).request.status is RequestStatus.PENDING
    assert access.approve(ctx, demo.carol, rid).request.status is RequestStatus.APPROVED


def test_one_deny_ends_a_two_person_request(ctx: Context, demo: Demo) -> None:
    ctx.replace_policy(two_person_policy())
    rid = _write_request(ctx, demo.alice)
    access.approve(ctx, demo.bob, rid)
    view = access.deny(ctx, demo.carol, rid)
    assert view.request.status is RequestStatus.DENIED
    assert [(a.approver, a.verdict) for a in view.approvals] == [
        ("bob", "approve"),
        ("carol", "deny"),
    ]
    with pytest.raises(Conflict):
        access.approve(ctx, add_principal(ctx, "dora", "approvers"), rid)
    assert grants.list_grants(ctx) == []


def test_a_vote_stops_counting_when_its_approver_leaves_the_group(ctx: Context, demo: Demo) -> None:
    ctx.replace_policy(two_person_policy())
    dave = add_principal(ctx, "dave", "approvers")
    rid = _write_request(ctx, demo.alice)
    access.approve(ctx, demo.bob, rid)
    with ctx.store.transaction() as tx:  # bob leaves the approvers after voting
        tx.directory.update_principal(replace(demo.bob, groups=frozenset()))
    second = access.approve(ctx, demo.carol, rid)
    assert second.request.status is RequestStatus.PENDING  # bob's vote no longer counts
    assert second.grant is None
    third = access.approve(ctx, dave, rid)
    assert third.request.status is RequestStatus.APPROVED
    assert third.grant is not None


def test_a_disabled_principal_cannot_revoke_or_cancel(ctx: Context, demo: Demo) -> None:
    rid = _write_request(ctx, demo.alice)
    with ctx.store.transaction() as tx:
        tx.directory.update_principal(replace(demo.alice, disabled=True))
    with pytest.raises(Forbidden) as caught:
        access.cancel(ctx, demo.alice, rid)
    assert caught.value.code == "principal-disabled"
    assert access.get_request(ctx, rid).request.status is RequestStatus.PENDING
