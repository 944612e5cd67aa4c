"""Filing access requests: auto-approval, pending, policy denial, and bad input that
must leave no trace (no request row, no audit event)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from jitgate.clock import FrozenClock
from jitgate.domain.models import GrantStatus, Outcome, RequestStatus
from jitgate.errors import InvalidInput, JitgateError, NotFound
from jitgate.services import access, directory, grants
from jitgate.services.context import Context

from .conftest import Demo, add_principal, count_rows, event_types, last_seq


def _file(ctx: Context, demo: Demo, **overrides: object) -> access.RequestView:
    args: dict[str, object] = {
        "api": "demo",
        "scopes": ["GET /items/*"],
        "duration": "10m",
        "reason": "debugging INC-1",
    }
    args.update(overrides)
    return access.create_request(ctx, demo.alice, **args)  # type: ignore[arg-type]


def test_auto_approved_request_opens_a_grant_timed_by_the_clock(
    ctx: Context, demo: Demo, clock: FrozenClock
) -> None:
    now = clock.now()
    view = _file(ctx, demo, scopes=["GET /items/*", "GET /orders/**"], duration="15m")

    assert view.request.status is RequestStatus.APPROVED
    assert view.request.decision.outcome is Outcome.APPROVE
    assert view.request.decision.rule == "demo-read-self-service"
    assert view.request.decided_at == now
    grant = view.grant
    assert grant is not None
    assert view.request.grant_id == grant.id
    assert grant.status is GrantStatus.ACTIVE
    assert grant.principal == "alice"
    assert grant.api == "demo"
    assert grant.scopes == ("GET /items/*", "GET /orders/**")
    assert grant.not_before == now
    assert grant.expires_at == now + timedelta(minutes=15)
    assert grant.created_at == now

    # What was returned is what was stored.
    stored = access.get_request(ctx, view.request.id)
    assert stored.request == view.request
    assert stored.grant == grant
    assert grants.get_grant(ctx, grant.id) == grant
    assert event_types(ctx.store)[-3:] == ["request.created", "request.decided", "grant.issued"]


def test_pending_request_waits_for_approvers(ctx: Context, demo: Demo) -> None:
    view = _file(ctx, demo, scopes=["POST /items", "DELETE /items/*"], duration="1h")

    assert view.request.status is RequestStatus.PENDING
    decision = view.request.decision
    assert decision.outcome is Outcome.NEEDS_APPROVAL
    assert decision.rule == "demo-writes-need-approval"
    assert decision.approvals_required == 1
    assert decision.approver_groups == frozenset({"approvers"})
    assert view.grant is None
    assert view.request.decided_at is None
    assert view.request.grant_id is None
    assert access.get_request(ctx, view.request.id).request.decision == decision
    assert grants.list_grants(ctx) == []
    assert event_types(ctx.store)[-2:] == ["request.created", "request.decided"]


def test_scheduled_start_sets_the_grant_window(
    ctx: Context, demo: Demo, clock: FrozenClock
) -> None:
    start = clock.now() + timedelta(hours=2)
    view = _file(ctx, demo, starts_at=start, duration="5m")
    assert view.grant is not None
    assert view.grant.not_before == start
    assert view.grant.expires_at == start + timedelta(minutes=5)
    assert view.request.starts_at == start

    # A start a few seconds in the past (a client clock behind) does not backdate the grant;
    # one further back is refused rather than silently moved.
    past = _file(ctx, demo, starts_at=clock.now() - timedelta(seconds=30), duration="5m")
    assert past.grant is not None
    assert past.grant.not_before == clock.now()
    assert past.grant.expires_at == clock.now() + timedelta(minutes=5)
    with pytest.raises(InvalidInput, match="in the past"):
        _file(ctx, demo, starts_at=clock.now() - timedelta(hours=1), duration="5m")

    # A start given in another zone is the same instant, stored as UTC.
    start = (clock.now() + timedelta(hours=1)).astimezone(timezone(timedelta(hours=5, minutes=30)))
    view = _file(ctx, demo, starts_at=start)
    stored = access.get_request(ctx, view.request.id)
    assert stored.request.starts_at == start
    assert stored.request.starts_at is not None
    assert stored.request.starts_at.utcoffset() == timedelta(0)
    assert stored.grant is not None
    assert stored.grant.not_before == start


POLICY_DENIALS: list[tuple[list[str], str, str]] = [
    (["GET /items"], "16m", "at most 15m"),  # over the read rule's max: denied, not cut
    (["POST /items"], "2h", "at most 1h"),  # over the write rule's max
    (["OPTIONS /items"], "5m", "no rule covers"),  # a method no rule allows
    (["GET /items", "OPTIONS /x"], "5m", "no rule covers"),  # one bad scope spoils all
    (["GET /items", "POST /items"], "5m", "no rule covers"),  # no single rule covers both
    (["* /items"], "5m", "no rule covers"),  # any method is wider than the ceiling
]


def test_policy_denial_is_recorded_with_its_reason_and_never_shortened(
    ctx: Context, demo: Demo
) -> None:
    for scopes, duration, needle in POLICY_DENIALS:
        case = (scopes, duration)
        seq = last_seq(ctx.store)
        view = _file(ctx, demo, scopes=scopes, duration=duration)

        assert view.request.status is RequestStatus.DENIED, case
        assert view.request.decision.outcome is Outcome.DENY, case
        reasons = view.request.decision.reasons
        assert any(needle in reason for reason in reasons), (case, reasons)
        assert view.grant is None, case
        stored = access.get_request(ctx, view.request.id).request
        assert stored.status is RequestStatus.DENIED, case
        assert stored.decision == view.request.decision, case
        assert stored.duration == view.request.duration, case  # kept as asked
        assert event_types(ctx.store, after=seq) == [
            "request.created",
            "request.decided",
            "request.denied",
        ]
    assert grants.list_grants(ctx) == []


def test_requesters_no_rule_admits_are_denied(ctx: Context, demo: Demo) -> None:
    admin = directory.get_principal(ctx, "admin")  # in no group the demo policy names
    view = access.create_request(
        ctx, admin, api="demo", scopes=["GET /x"], duration="5m", reason="curious"
    )
    assert view.request.status is RequestStatus.DENIED
    assert "no rule covers this request" in view.request.decision.reasons

    # A disabled principal is refused whatever the rules say.
    disabled = replace(demo.alice, disabled=True)
    with ctx.store.transaction() as tx:
        tx.directory.update_principal(disabled)
    fresh = directory.get_principal(ctx, "alice")
    assert fresh.disabled

    view = access.create_request(
        ctx, fresh, api="demo", scopes=["GET /x"], duration="5m", reason="r"
    )

    assert view.request.status is RequestStatus.DENIED
    assert any("disabled" in r for r in view.request.decision.reasons)
    assert view.grant is None


BAD_INPUT: list[tuple[str, dict[str, object], type[JitgateError], str | None]] = [
    ("no scopes", {"scopes": []}, InvalidInput, None),
    ("too many scopes", {"scopes": [f"GET /s{i}" for i in range(21)]}, InvalidInput, None),
    ("scope without path", {"scopes": ["GET"]}, InvalidInput, None),
    ("scope with bad method", {"scopes": ["FETCH /x"]}, InvalidInput, None),
    ("relative path", {"scopes": ["GET x/y"]}, InvalidInput, None),
    ("** not at the end", {"scopes": ["GET /a/**/b"]}, InvalidInput, None),
    ("one bad scope among good", {"scopes": ["GET /ok", "GET /a/../b"]}, InvalidInput, None),
    ("scope not text", {"scopes": [42]}, InvalidInput, None),
    ("zero duration", {"duration": 0}, InvalidInput, None),
    ("negative duration", {"duration": -60}, InvalidInput, None),
    ("zero duration text", {"duration": "0m"}, InvalidInput, None),
    ("garbage duration", {"duration": "soon"}, InvalidInput, None),
    ("out of order units", {"duration": "5m1h"}, InvalidInput, None),
    ("boolean duration", {"duration": True}, InvalidInput, None),
    ("duration over a year", {"duration": "400d"}, InvalidInput, None),
    ("empty reason", {"reason": ""}, InvalidInput, "reason-required"),
    ("blank reason", {"reason": " \n\t "}, InvalidInput, "reason-required"),
    ("reason too long", {"reason": "x" * 1001}, InvalidInput, None),
    ("blank ticket", {"ticket": "  "}, InvalidInput, None),
    ("ticket too long", {"ticket": "T" * 201}, InvalidInput, None),
    ("naive starts_at", {"starts_at": datetime(2026, 1, 5, 12, 0)}, InvalidInput, None),
    (
        "starts_at over 30 days ahead",
        {"starts_at": datetime(2026, 2, 5, 10, 0, 1, tzinfo=UTC)},
        InvalidInput,
        None,
    ),
    ("unknown API", {"api": "nope"}, NotFound, "api-not-found"),
]


def test_bad_input_raises_and_writes_nothing(ctx: Context, demo: Demo) -> None:
    """One test walks the whole table (a fresh database per case would cost seconds)."""
    before, seq = count_rows(ctx.store), last_seq(ctx.store)
    for name, overrides, error, code in BAD_INPUT:
        with pytest.raises(error) as caught:
            _file(ctx, demo, **overrides)
        assert type(caught.value) is error, name
        if code is not None:
            assert caught.value.code == code, name
        assert caught.value.detail, name  # a human reason
        assert count_rows(ctx.store) == before, name
        assert last_seq(ctx.store) == seq, name
    assert ctx.audit.events == []  # type: ignore[attr-defined]
    # ...and the same store still takes a good request afterwards.
    assert _file(ctx, demo).request.status is RequestStatus.APPROVED


def test_boundaries_that_are_accepted(ctx: Context, demo: Demo, clock: FrozenClock) -> None:
    """The limits themselves are allowed: 20 scopes, 1000-char reason, 30 days ahead."""
    view = _file(
        ctx,
        demo,
        scopes=[f"GET /s{i}" for i in range(20)],
        reason="r" * 1000,
        ticket="T" * 200,
        starts_at=clock.now() + timedelta(days=30),
    )
    assert view.request.status is RequestStatus.APPROVED
    assert len(view.request.scopes) == 20


def test_reason_and_scopes_are_stored_normalised(ctx: Context, demo: Demo) -> None:
    view = _file(ctx, demo, reason="  INC-7 \n", scopes=["GET /v1/{id}/x", "GET,HEAD /a/**"])
    stored = access.get_request(ctx, view.request.id).request
    assert view.request.reason == stored.reason == "INC-7"
    assert stored.scopes == view.request.scopes
    assert view.grant is not None
    assert view.grant.scopes == stored.scopes


def test_request_ids_are_unique_and_listing_filters(ctx: Context, demo: Demo) -> None:
    erin = add_principal(ctx, "erin", "engineering")
    ids = {_file(ctx, demo).request.id for _ in range(5)}
    access.create_request(ctx, erin, api="demo", scopes=["POST /x"], duration=60, reason="r")
    assert len(ids) == 5
    assert all(i.startswith("req_") for i in ids)
    assert {r.id for r in access.list_requests(ctx, requester="alice")} == ids
    pending = access.list_requests(ctx, status=RequestStatus.PENDING)
    assert [r.requester for r in pending] == ["erin"]
    assert access.list_requests(ctx, api="other") == []


def test_unknown_request_is_not_found(ctx: Context, demo: Demo) -> None:
    for call in (access.get_request, access.approve, access.deny, access.cancel):
        args = (ctx, "req_missing") if call is access.get_request else (ctx, demo.bob, "req_x")
        with pytest.raises(NotFound):
            call(*args)  # type: ignore[operator]
