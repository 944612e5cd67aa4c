"""Access requests: file, approve, deny, cancel, and time out pending ones.

Approving and denying lock the request row first (``FOR UPDATE`` on PostgreSQL,
``BEGIN IMMEDIATE`` on SQLite), so two concurrent decisions cannot both pass the
"still pending" check; a repeat vote by the same principal is refused by both the
service and a unique constraint.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from jitgate.audit.events import EventType, NewEvent
from jitgate.domain.durations import parse_duration
from jitgate.domain.lifecycle import close_request
from jitgate.domain.models import (
    AccessRequest,
    Grant,
    GrantStatus,
    Outcome,
    Principal,
    RequestStatus,
)
from jitgate.domain.scopes import parse_scope
from jitgate.errors import Conflict, Forbidden, InvalidInput, NotFound
from jitgate.policy.engine import Subject, approver_eligible, evaluate
from jitgate.services.context import Context, current_principal, new_id
from jitgate.storage.access_repo import Approval
from jitgate.storage.store import Tx

MAX_SCOPES = 20
MAX_REASON = 1000
MAX_SCHEDULE_AHEAD = timedelta(days=30)
SCHEDULE_SLACK = timedelta(minutes=1)  # a client clock slightly behind is not an error


@dataclass(frozen=True, slots=True)
class RequestView:
    request: AccessRequest
    approvals: list[Approval]
    grant: Grant | None


def _open_grant(tx: Tx, request: AccessRequest, now: datetime, actor: str) -> Grant:
    not_before = max(request.starts_at or now, now)
    grant = Grant(
        id=new_id("grt"),
        request_id=request.id,
        principal=request.requester,
        api=request.api,
        scopes=request.scopes,
        not_before=not_before,
        expires_at=not_before + request.duration,
        status=GrantStatus.ACTIVE,
        created_at=now,
    )
    tx.access.insert_grant(grant)
    tx.audit.append(
        [
            NewEvent(
                type=EventType.GRANT_ISSUED,
                at=now,
                actor=actor,
                principal=grant.principal,
                api=grant.api,
                grant=grant.id,
                request=request.id,
                data={
                    "scopes": list(grant.scopes),
                    "not_before": grant.not_before.isoformat(),
                    "expires_at": grant.expires_at.isoformat(),
                },
            )
        ]
    )
    return grant


def create_request(
    ctx: Context,
    requester: Principal,
    *,
    api: str,
    scopes: list[str],
    duration: str | int,
    reason: str,
    ticket: str | None = None,
    starts_at: datetime | None = None,
) -> RequestView:
    if not scopes or len(scopes) > MAX_SCOPES:
        raise InvalidInput(f"give between 1 and {MAX_SCOPES} scopes")
    parsed = tuple(parse_scope(s) for s in scopes)
    length = parse_duration(duration)
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("a reason is required", code="reason-required")
    if len(reason) > MAX_REASON:
        raise InvalidInput(f"the reason is longer than {MAX_REASON} characters")
    if ticket is not None and (not ticket.strip() or len(ticket) > 200):
        raise InvalidInput("the ticket reference must be 1-200 characters")
    now = ctx.now()
    if starts_at is not None:
        if starts_at.tzinfo is None:
            raise InvalidInput("starts_at needs a time zone (e.g. 2026-01-05T10:00:00Z)")
        if starts_at > now + MAX_SCHEDULE_AHEAD:
            raise InvalidInput("starts_at is more than 30 days ahead")
        if starts_at < now - SCHEDULE_SLACK:
            raise InvalidInput("starts_at is in the past; leave it out to start now")
    policy = ctx.policy
    with ctx.store.transaction() as tx:
        target = tx.directory.get_api(api)
        if target is None:
            raise NotFound(f"no API {api!r}", code="api-not-found")
        evaluation = evaluate(
            policy, Subject(principal=requester, api=target, scopes=parsed, duration=length)
        )
        decision = evaluation.decision
        request = AccessRequest(
            id=new_id("req"),
            requester=requester.id,
            api=api,
            scopes=tuple(str(s) for s in parsed),
            duration=length,
            reason=reason,
            status=RequestStatus.PENDING,
            created_at=now,
            decision=decision,
            ticket=ticket,
            starts_at=starts_at,
        )
        tx.access.insert_request(request)
        common = {"actor": requester.id, "principal": requester.id, "api": api}
        tx.audit.append(
            [
                NewEvent(
                    type=EventType.REQUEST_CREATED,
                    at=now,
                    request=request.id,
                    data={
                        "scopes": list(request.scopes),
                        "duration_seconds": int(length.total_seconds()),
                        "reason": reason,
                        "ticket": ticket,
                        "starts_at": starts_at.isoformat() if starts_at else None,
                    },
                    **common,
                ),
                NewEvent(
                    type=EventType.REQUEST_DECIDED,
                    at=now,
                    request=request.id,
                    data=decision.as_dict(),
                    **common,
                ),
            ]
        )
        grant = None
        if decision.outcome is Outcome.APPROVE:
            grant = _open_grant(tx, request, now, actor="policy")
            request = close_request(request, RequestStatus.APPROVED, now, grant.id)
            tx.access.save_request_state(request)
        elif decision.outcome is Outcome.DENY:
            request = close_request(request, RequestStatus.DENIED, now)
            tx.access.save_request_state(request)
            tx.audit.append(
                [
                    NewEvent(
                        type=EventType.REQUEST_DENIED,
                        at=now,
                        actor="policy",
                        principal=requester.id,
                        api=api,
                        request=request.id,
                        data={"reasons": list(decision.reasons), "rule": decision.rule},
                    )
                ]
            )
    return RequestView(request=request, approvals=[], grant=grant)


def _pending_locked(tx: Tx, ctx: Context, request_id: str, now: datetime) -> AccessRequest:
    request = tx.access.get_request(request_id, lock=True)
    if request is None:
        raise NotFound(f"no request {request_id!r}", code="request-not-found")
    if request.status is not RequestStatus.PENDING:
        raise Conflict(
            f"request {request_id} is already {request.status.value}", code="request-decided"
        )
    if now >= request.created_at + ctx.policy.defaults.pending_ttl:
        raise Conflict(
            f"request {request_id} waited too long for a decision and has expired",
            code="request-expired",
        )
    return request


def _check_approver(tx: Tx, request: AccessRequest, approver: Principal) -> None:
    if approver.id == request.requester:
        raise Forbidden("you cannot approve or deny your own request", code="self-approval")
    current = current_principal(tx, approver)  # eligibility as of now, not of login
    problem = approver_eligible(request.decision, current, request.requester)
    if problem is not None:
        raise Forbidden(problem, code="not-eligible")


def _valid_approvals(tx: Tx, request: AccessRequest, votes: list[Approval]) -> int:
    """Distinct approvers who are still eligible now (one who left the group no longer counts)."""
    approvers = {v.approver for v in votes if v.verdict == "approve"}
    return sum(
        1
        for pid in approvers
        if (p := tx.directory.get_principal(pid)) is not None
        and approver_eligible(request.decision, p, request.requester) is None
    )


def approve(ctx: Context, approver: Principal, request_id: str, comment: str = "") -> RequestView:
    now = ctx.now()
    with ctx.store.transaction() as tx:
        request = _pending_locked(tx, ctx, request_id, now)
        _check_approver(tx, request, approver)
        votes = tx.access.list_approvals(request_id)
        if any(v.approver == approver.id for v in votes):
            raise Conflict("you have already approved this request", code="already-approved")
        vote = Approval(request_id, approver.id, "approve", comment, now)
        tx.access.insert_approval(vote)
        votes.append(vote)
        count = _valid_approvals(tx, request, votes)
        tx.audit.append(
            [
                NewEvent(
                    type=EventType.REQUEST_APPROVED,
                    at=now,
                    actor=approver.id,
                    principal=request.requester,
                    api=request.api,
                    request=request.id,
                    data={
                        "comment": comment,
                        "approvals": count,
                        "required": request.decision.approvals_required,
                    },
                )
            ]
        )
        grant = None
        if count >= request.decision.approvals_required:
            grant = _open_grant(tx, request, now, actor=approver.id)
            request = close_request(request, RequestStatus.APPROVED, now, grant.id)
            tx.access.save_request_state(request)
    return RequestView(request=request, approvals=votes, grant=grant)


def deny(ctx: Context, approver: Principal, request_id: str, comment: str = "") -> RequestView:
    now = ctx.now()
    with ctx.store.transaction() as tx:
        request = _pending_locked(tx, ctx, request_id, now)
        _check_approver(tx, request, approver)
        vote = Approval(request_id, approver.id, "deny", comment, now)
        votes = tx.access.list_approvals(request_id)
        if any(v.approver == approver.id for v in votes):
            raise Conflict("you have already voted on this request", code="already-approved")
        tx.access.insert_approval(vote)
        request = close_request(request, RequestStatus.DENIED, now)
        tx.access.save_request_state(request)
        tx.audit.append(
            [
                NewEvent(
                    type=EventType.REQUEST_DENIED,
                    at=now,
                    actor=approver.id,
                    principal=request.requester,
                    api=request.api,
                    request=request.id,
                    data={"comment": comment},
                )
            ]
        )
    return RequestView(request=request, approvals=[*votes, vote], grant=None)


def cancel(ctx: Context, actor: Principal, request_id: str, comment: str = "") -> RequestView:
    now = ctx.now()
    with ctx.store.transaction() as tx:
        actor = current_principal(tx, actor)
        request = tx.access.get_request(request_id, lock=True)
        if request is None:
            raise NotFound(f"no request {request_id!r}", code="request-not-found")
        if actor.id != request.requester and not actor.is_admin:
            raise Forbidden("only the requester may cancel a request", code="not-requester")
        request = _pending_locked(tx, ctx, request_id, now)
        request = close_request(request, RequestStatus.CANCELLED, now)
        tx.access.save_request_state(request)
        tx.audit.append(
            [
                NewEvent(
                    type=EventType.REQUEST_CANCELLED,
                    at=now,
                    actor=actor.id,
                    principal=request.requester,
                    api=request.api,
                    request=request.id,
                    data={"comment": comment},
                )
            ]
        )
        votes = tx.access.list_approvals(request_id)
    return RequestView(request=request, approvals=votes, grant=None)


def expire_pending(ctx: Context) -> int:
    """Close pending requests older than the policy's ``pending_ttl`` as ``expired``."""
    now = ctx.now()
    cutoff = now - ctx.policy.defaults.pending_ttl
    with ctx.store.transaction() as tx:
        stale = tx.access.stale_pending(cutoff)
        for request in stale:
            closed = close_request(request, RequestStatus.EXPIRED, now)
            tx.access.save_request_state(closed)
        tx.audit.append(
            [
                NewEvent(
                    type=EventType.REQUEST_EXPIRED,
                    at=now,
                    actor="system",
                    principal=r.requester,
                    api=r.api,
                    request=r.id,
                )
                for r in stale
            ]
        )
    return len(stale)


def get_request(ctx: Context, request_id: str) -> RequestView:
    with ctx.store.read() as tx:
        request = tx.access.get_request(request_id)
        if request is None:
            raise NotFound(f"no request {request_id!r}", code="request-not-found")
        votes = tx.access.list_approvals(request_id)
        grant = tx.access.get_grant(request.grant_id) if request.grant_id else None
    return RequestView(request=request, approvals=votes, grant=grant)


def list_requests(
    ctx: Context,
    *,
    status: RequestStatus | None = None,
    requester: str | None = None,
    api: str | None = None,
    limit: int = 100,
) -> list[AccessRequest]:
    with ctx.store.read() as tx:
        return tx.access.list_requests(status=status, requester=requester, api=api, limit=limit)
