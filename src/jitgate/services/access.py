"""Access requests: file, extend, approve (possibly narrowing), deny, cancel, time out.

Approving and denying lock the request row first (``FOR UPDATE`` on PostgreSQL,
``BEGIN IMMEDIATE`` on SQLite), so two concurrent decisions cannot both pass the
"still pending" check; a repeat vote by the same principal is refused by both the
service and a unique constraint. Who may approve, and when a request has enough
approvals, is the policy engine's call (:func:`~jitgate.policy.engine.eligible_steps`,
:func:`~jitgate.policy.engine.steps_met`), made with principals as stored *now*.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError

from jitgate.audit.events import EventType, NewEvent
from jitgate.domain.durations import format_duration, parse_duration
from jitgate.domain.lifecycle import close_request, terms_hash
from jitgate.domain.models import (
    NO_LIMITS,
    AccessRequest,
    Api,
    Decision,
    Grant,
    GrantStatus,
    Outcome,
    Principal,
    RequestStatus,
)
from jitgate.domain.scopes import Scope, covers, parse_scope
from jitgate.errors import Conflict, Forbidden, InvalidInput, NotFound
from jitgate.policy.engine import Evaluation, Subject, eligible_steps, evaluate, steps_met
from jitgate.policy.model import Rule
from jitgate.services.context import Context, current_principal, new_id
from jitgate.services.grants import grant_event
from jitgate.storage.access_repo import Approval
from jitgate.storage.store import Tx

MAX_SCOPES = 20
MAX_REASON = 1000
MAX_IDEMPOTENCY_KEY = 200
MAX_SCHEDULE_AHEAD = timedelta(days=30)
SCHEDULE_SLACK = timedelta(minutes=1)  # a client clock slightly behind is not an error


@dataclass(frozen=True, slots=True)
class RequestView:
    request: AccessRequest
    approvals: list[Approval]
    grant: Grant | None
    replayed: bool = False  # answered from an earlier call with the same Idempotency-Key

    @property
    def terms_hash(self) -> str:
        return terms_hash(self.request)


def _event(
    kind: EventType, request: AccessRequest, now: datetime, actor: str, data: dict[str, Any]
) -> NewEvent:
    """An audit event about ``request`` (its requester, API and id filled in)."""
    return NewEvent(
        type=kind,
        at=now,
        actor=actor,
        principal=request.requester,
        api=request.api,
        request=request.id,
        data=data,
    )


def _open_grant(tx: Tx, request: AccessRequest, now: datetime, actor: str) -> Grant:
    scopes, duration = request.terms
    not_before = max(request.starts_at or now, now)
    if request.extends_grant is not None:
        parent = tx.access.get_grant(request.extends_grant, lock=True)
        if parent is None or parent.status is not GrantStatus.ACTIVE or now >= parent.expires_at:
            raise Conflict(
                f"grant {request.extends_grant} has ended; it cannot be extended",
                code="grant-ended",
            )
        # Two extensions filed side by side both pass the filing check; only one may open
        # (the parent's row lock serialises this check).
        if continued := tx.access.list_extending(parent.id):
            raise Conflict(
                f"grant {parent.id} is already extended by {continued[0].id}",
                code="grant-already-extended",
            )
        not_before = max(parent.expires_at, now)  # the extension takes over where it ends
    grant = Grant(
        id=new_id("grt"),
        request_id=request.id,
        principal=request.requester,
        api=request.api,
        scopes=scopes,
        not_before=not_before,
        expires_at=not_before + duration,
        status=GrantStatus.ACTIVE,
        created_at=now,
        extends=request.extends_grant,
        needs_review=request.decision.break_glass,
        limits=request.decision.limits,
        masks=request.decision.masks,
    )
    tx.access.insert_grant(grant)
    data: dict[str, Any] = {
        "scopes": list(grant.scopes),
        "not_before": grant.not_before.isoformat(),
        "expires_at": grant.expires_at.isoformat(),
    }
    if grant.extends:
        data["extends"] = grant.extends
    if grant.limits != NO_LIMITS:
        data["limits"] = grant.limits.as_dict()
    if grant.masks:
        data["masks"] = list(grant.masks)
    if grant.needs_review:
        data.update(break_glass=True, needs_review=True, reason=request.reason)
    tx.audit.append([grant_event(EventType.GRANT_ISSUED, grant, now, actor, data)])
    return grant


def _subject(
    tx: Tx,
    ctx: Context,
    requester: Principal,
    target: Api,
    scopes: tuple[Scope, ...],
    duration: timedelta,
    *,
    reason: str,
    ticket: str | None,
    starts_at: datetime | None,
    now: datetime,
    extension: bool = False,
) -> Subject:
    window = ctx.policy.risk.recent_denials_window
    return Subject(
        principal=requester,
        api=target,
        scopes=scopes,
        duration=duration,
        now=now,
        reason=reason,
        ticket=ticket,
        starts_at=starts_at,
        recent_denials=tx.access.count_denied_since(requester.id, now - window),
        extension=extension,
    )


def _check_text(reason: str, ticket: str | None) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("a reason is required", code="reason-required")
    if len(reason) > MAX_REASON:
        raise InvalidInput(f"the reason is longer than {MAX_REASON} characters")
    if ticket is not None and (not ticket.strip() or len(ticket) > 200):
        raise InvalidInput("the ticket reference must be 1-200 characters")
    return reason


def _parse_scopes(scopes: list[str]) -> tuple[Scope, ...]:
    """The scopes, parsed, in order, each once (a repeated scope asks for nothing more)."""
    if not scopes or len(scopes) > MAX_SCOPES:
        raise InvalidInput(f"give between 1 and {MAX_SCOPES} scopes")
    return tuple(dict.fromkeys(parse_scope(s) for s in scopes))


def _body_hash(body: dict[str, Any]) -> str:
    encoded = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(encoded.encode()).hexdigest()


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
    idempotency_key: str | None = None,
) -> RequestView:
    """File a request; the policy decides it at once (approved, denied) or it waits.

    With ``idempotency_key``, a repeat of the same call returns the first answer
    (``replayed``), and a different call under the same key is refused.
    """
    body = {
        "api": api,
        "scopes": scopes,
        "duration": duration,
        "reason": reason,
        "ticket": ticket,
        "starts_at": starts_at.isoformat() if starts_at else None,
    }
    idempotency = None
    if idempotency_key is not None:
        if (
            not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY
            or not idempotency_key.isprintable()
            or not idempotency_key.strip()
        ):
            raise InvalidInput(
                f"the Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} printable characters"
            )
        idempotency = (idempotency_key, _body_hash(body))
        earlier = _replay(ctx, requester, idempotency)
        if earlier is not None:
            return earlier
    parsed = _parse_scopes(scopes)
    length = parse_duration(duration)
    reason = _check_text(reason, ticket)
    now = ctx.now()
    if starts_at is not None:
        if starts_at.tzinfo is None:
            raise InvalidInput("starts_at needs a time zone (e.g. 2026-01-05T10:00:00Z)")
        if starts_at > now + MAX_SCHEDULE_AHEAD:
            raise InvalidInput("starts_at is more than 30 days ahead")
        if starts_at < now - SCHEDULE_SLACK:
            raise InvalidInput("starts_at is in the past; leave it out to start now")
    try:
        with ctx.store.transaction() as tx:
            target = tx.directory.get_api(api)
            if target is None:
                raise NotFound(f"no API {api!r}", code="api-not-found")
            subject = _subject(
                tx,
                ctx,
                requester,
                target,
                parsed,
                length,
                reason=reason,
                ticket=ticket,
                starts_at=starts_at,
                now=now,
            )
            request = AccessRequest(
                id=new_id("req"),
                requester=requester.id,
                api=api,
                scopes=tuple(str(s) for s in parsed),
                duration=length,
                reason=reason,
                status=RequestStatus.PENDING,
                created_at=now,
                decision=evaluate(ctx.policy, subject).decision,
                ticket=ticket,
                starts_at=starts_at,
            )
            return _file(tx, request, now, idempotency)
    except IntegrityError:
        if idempotency is None:
            raise
        # A concurrent call with the same key won the race: answer as it did.
        earlier = _replay(ctx, requester, idempotency)
        if earlier is None:
            raise
        return earlier


def _replay(ctx: Context, requester: Principal, idempotency: tuple[str, str]) -> RequestView | None:
    key, body_hash = idempotency
    with ctx.store.read() as tx:
        found = tx.access.find_idempotent(requester.id, key)
    if found is None:
        return None
    request, stored_hash = found
    if stored_hash != body_hash:
        raise InvalidInput(
            "this Idempotency-Key was used for a different request; use a new key",
            code="idempotency-key-reused",
        )
    return replace(get_request(ctx, request.id), replayed=True)


def _file(
    tx: Tx, request: AccessRequest, now: datetime, idempotency: tuple[str, str] | None = None
) -> RequestView:
    """Store a new request with its decision, and act on the decision."""
    decision = request.decision
    tx.access.insert_request(request, idempotency=idempotency)
    created: dict[str, Any] = {
        "scopes": list(request.scopes),
        "duration_seconds": int(request.duration.total_seconds()),
        "reason": request.reason,
        "ticket": request.ticket,
        "starts_at": request.starts_at.isoformat() if request.starts_at else None,
    }
    if request.extends_grant:
        created["extends_grant"] = request.extends_grant
    decided = {**decision.as_dict(), "terms_hash": terms_hash(request)}
    tx.audit.append(
        [
            _event(EventType.REQUEST_CREATED, request, now, request.requester, created),
            _event(EventType.REQUEST_DECIDED, request, now, request.requester, decided),
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
        denied = {"reasons": list(decision.reasons), "rule": decision.rule}
        tx.audit.append([_event(EventType.REQUEST_DENIED, request, now, "policy", denied)])
    return RequestView(request=request, approvals=[], grant=grant)


def extend(
    ctx: Context,
    requester: Principal,
    grant_id: str,
    *,
    duration: str | int,
    reason: str,
    scopes: list[str] | None = None,
) -> RequestView:
    """File a request to continue grant ``grant_id`` for ``duration`` after it ends.

    The policy decides it as any request (marked ``request.extension``); the deciding
    rule's ``extensions`` settings then cap how many times a grant may be extended, how
    much of it must have elapsed first, and how long the whole chain may last. Scopes are
    the grant's, or narrower; never wider.
    """
    length = parse_duration(duration)
    reason = _check_text(reason, None)
    now = ctx.now()
    with ctx.store.transaction() as tx:
        requester = current_principal(tx, requester)
        grant = tx.access.get_grant(grant_id, lock=True)
        if grant is None:
            raise NotFound(f"no grant {grant_id!r}", code="grant-not-found")
        if grant.principal != requester.id:
            raise Forbidden("only the grantee may extend a grant", code="not-grantee")
        if grant.status is not GrantStatus.ACTIVE or now >= grant.expires_at:
            state = grant.status.value if grant.status is not GrantStatus.ACTIVE else "expired"
            raise Conflict(f"grant {grant_id} is {state}", code="grant-ended")
        granted = tuple(parse_scope(s) for s in grant.scopes)
        wanted = granted if scopes is None else _parse_scopes(scopes)
        for scope in wanted:
            if not any(covers(have, scope) for have in granted):
                raise InvalidInput(
                    f"scope {str(scope)!r} is wider than the grant's; an extension can keep "
                    "or narrow the scopes, never widen them",
                    code="extension-widens",
                )
        target = tx.directory.get_api(grant.api)
        if target is None:
            raise NotFound(f"no API {grant.api!r}", code="api-not-found")
        subject = _subject(
            tx,
            ctx,
            requester,
            target,
            wanted,
            length,
            reason=reason,
            ticket=None,
            starts_at=None,
            now=now,
            extension=True,
        )
        evaluation = evaluate(ctx.policy, subject)
        request = AccessRequest(
            id=new_id("req"),
            requester=requester.id,
            api=grant.api,
            scopes=tuple(str(s) for s in wanted),
            duration=length,
            reason=reason,
            status=RequestStatus.PENDING,
            created_at=now,
            decision=_extension_decision(tx, evaluation, grant, length, now),
            extends_grant=grant.id,
        )
        return _file(tx, request, now)


def _extension_decision(
    tx: Tx, evaluation: Evaluation, grant: Grant, length: timedelta, now: datetime
) -> Decision:
    decision, rule = evaluation.decision, evaluation.rule
    if decision.outcome is Outcome.DENY or rule is None:
        return decision
    problem = _extension_problem(tx, rule, grant, length, now)
    if problem is None:
        return decision
    return Decision(
        outcome=Outcome.DENY,
        rule=rule.name,
        reasons=(problem,),
        risk=decision.risk,
        policy_version=decision.policy_version,
    )


def _extension_problem(
    tx: Tx, rule: Rule, grant: Grant, length: timedelta, now: datetime
) -> str | None:
    limits = rule.extensions
    if continued := tx.access.list_extending(grant.id):
        return f"grant {grant.id} is already extended by {continued[0].id}; extend that one"
    chain = [grant]
    while chain[-1].extends is not None and len(chain) <= limits.max_count + 1:
        parent = tx.access.get_grant(chain[-1].extends)
        if parent is None:
            break
        chain.append(parent)
    done = len(chain) - 1
    if done >= limits.max_count:
        allowed = "no extensions" if not limits.max_count else f"at most {limits.max_count}"
        return f"rule {rule.name} allows {allowed}; this grant has had {done}"
    lifetime = grant.expires_at - grant.not_before
    elapsed = now - grant.not_before
    if elapsed < lifetime * limits.after_elapsed:
        return (
            f"rule {rule.name} allows an extension once {limits.after_elapsed:.0%} of the grant "
            f"has elapsed ({format_duration(elapsed)} of {format_duration(lifetime)} so far)"
        )
    total = grant.expires_at + length - chain[-1].not_before
    if limits.max_total is not None and total > limits.max_total:
        return (
            f"rule {rule.name} caps a grant and its extensions at "
            f"{format_duration(limits.max_total)}; this would reach {format_duration(total)}"
        )
    return None


def _pending_locked(tx: Tx, ctx: Context, request_id: str, now: datetime) -> AccessRequest:
    request = tx.access.get_request(request_id, lock=True)
    if request is None:
        raise NotFound(f"no request {request_id!r}", code="request-not-found")
    if request.status is not RequestStatus.PENDING:
        raise Conflict(
            f"request {request_id} is already {request.status.value}", code="request-decided"
        )
    if now >= request.created_at + _pending_ttl(ctx, request):
        raise Conflict(
            f"request {request_id} waited too long for a decision and has expired",
            code="request-expired",
        )
    return request


def _pending_ttl(ctx: Context, request: AccessRequest) -> timedelta:
    return request.decision.pending_ttl or ctx.policy.defaults.pending_ttl


def _eligibility(
    tx: Tx, ctx: Context, request: AccessRequest, reviewer: Principal, now: datetime
) -> tuple[frozenset[int], str | None]:
    """Which steps ``reviewer`` may count towards now (requester and API as stored now)."""
    requester = tx.directory.get_principal(request.requester)
    target = tx.directory.get_api(request.api)
    if requester is None or target is None:
        return frozenset(), "the requester or the API no longer exists"
    scopes, duration = request.terms
    subject = Subject(
        principal=requester,
        api=target,
        scopes=tuple(parse_scope(s) for s in scopes),
        duration=duration,
        now=now,
        reason=request.reason,
        ticket=request.ticket,
        starts_at=request.starts_at,
        extension=request.extends_grant is not None,
    )
    return eligible_steps(request.decision, reviewer, subject, ctx.policy.defaults.time_zone)


def _check_reviewer(
    tx: Tx, ctx: Context, request: AccessRequest, reviewer: Principal, now: datetime
) -> None:
    if reviewer.id == request.requester:
        raise Forbidden("you cannot approve or deny your own request", code="self-approval")
    current = current_principal(tx, reviewer)  # eligibility as of now, not of login
    steps, problem = _eligibility(tx, ctx, request, current, now)
    if not steps:
        raise Forbidden(problem or "not eligible", code="not-eligible")


def _tally(
    tx: Tx, ctx: Context, request: AccessRequest, votes: list[Approval], now: datetime
) -> tuple[tuple[int, ...], int]:
    """(approvers per step, eligible deny votes), counting only votes for the current
    terms from principals who are still eligible (one who left the group no longer counts)."""
    current = terms_hash(request)
    eligible: dict[str, frozenset[int]] = {}
    denials = 0
    for vote in votes:
        if vote.verdict == "approve" and vote.terms_hash != current:
            continue  # given for other terms: narrowing since voided it
        principal = tx.directory.get_principal(vote.approver)
        if principal is None:
            continue
        steps, _ = _eligibility(tx, ctx, request, principal, now)
        if not steps:
            continue
        if vote.verdict == "approve":
            eligible[vote.approver] = steps
        else:
            denials += 1
    return steps_met(request.decision, eligible), denials


def _narrow(
    request: AccessRequest, scopes: list[str] | None, duration: str | int | None
) -> AccessRequest:
    """``request`` with narrower terms; anything wider than the current terms is refused."""
    if scopes is None and duration is None:
        return request
    current_scopes, current_duration = request.terms
    new_scopes = current_scopes
    if scopes is not None:
        parsed = _parse_scopes(scopes)
        have = tuple(parse_scope(s) for s in current_scopes)
        for scope in parsed:
            if not any(covers(h, scope) for h in have):
                raise InvalidInput(
                    f"scope {str(scope)!r} is not inside the request's scopes; an approver "
                    "may narrow a request, never widen it",
                    code="approval-widens",
                )
        new_scopes = tuple(str(s) for s in parsed)
        if set(new_scopes) == set(current_scopes):
            new_scopes = current_scopes  # the same scopes (reordered) are not a narrowing
    new_duration = current_duration
    if duration is not None:
        new_duration = parse_duration(duration)
        if new_duration > current_duration:
            raise InvalidInput(
                f"{format_duration(new_duration)} is longer than the "
                f"{format_duration(current_duration)} requested; an approver may only shorten it",
                code="approval-widens",
            )
    if (new_scopes, new_duration) == (current_scopes, current_duration):
        return request
    return replace(request, approved_scopes=new_scopes, approved_duration=new_duration)


def approve(
    ctx: Context,
    approver: Principal,
    request_id: str,
    comment: str = "",
    *,
    terms: str | None = None,
    scopes: list[str] | None = None,
    duration: str | int | None = None,
) -> RequestView:
    """Count ``approver``'s approval; grant once every step is met.

    ``terms`` is the terms hash the approver was shown (from the request's
    ``terms_hash``): if the request changed since, the approval is refused (409).
    ``scopes``/``duration`` narrow the request; narrowing voids earlier approvals, which
    were given for other terms.
    """
    now = ctx.now()
    with ctx.store.transaction() as tx:
        request = _pending_locked(tx, ctx, request_id, now)
        if terms is not None and terms != terms_hash(request):
            raise Conflict(
                "the request changed since you saw it; review it again",
                code="request-changed",
            )
        _check_reviewer(tx, ctx, request, approver, now)
        requester = tx.directory.get_principal(request.requester)
        if requester is None or requester.disabled:  # the engine refuses them at filing too
            raise Conflict(
                f"the requester {request.requester} is disabled; the request cannot be granted",
                code="requester-disabled",
            )
        votes = tx.access.list_approvals(request_id)
        current = terms_hash(request)
        earlier = next((v for v in votes if v.approver == approver.id), None)
        # One vote per person and terms: an approval given for terms that have since been
        # narrowed no longer counts, so its approver may approve the new terms.
        if earlier is not None and (earlier.verdict != "approve" or earlier.terms_hash == current):
            raise Conflict("you have already voted on this request", code="already-approved")
        narrowed = _narrow(request, scopes, duration)
        if narrowed is not request:
            tx.access.save_request_terms(narrowed)
        request, was = narrowed, request
        vote = Approval(request_id, approver.id, "approve", comment, now, terms_hash(request))
        if earlier is None:
            tx.access.insert_approval(vote)
        else:
            tx.access.replace_approval(vote)
            votes.remove(earlier)
        votes.append(vote)
        filled, _ = _tally(tx, ctx, request, votes, now)
        data: dict[str, Any] = {
            "comment": comment,
            "approvals": sum(filled),
            "required": request.decision.approvals_required,
            "steps": [
                {"name": step.name, "approvals": have, "required": step.count}
                for step, have in zip(request.decision.steps, filled, strict=True)
            ],
            "terms_hash": vote.terms_hash,
        }
        if request is not was:
            scopes_now, duration_now = request.terms
            data["narrowed_to"] = {
                "scopes": list(scopes_now),
                "duration_seconds": int(duration_now.total_seconds()),
            }
        tx.audit.append([_event(EventType.REQUEST_APPROVED, request, now, approver.id, data)])
        grant = None
        if all(
            have >= step.count for step, have in zip(request.decision.steps, filled, strict=True)
        ):
            grant = _open_grant(tx, request, now, actor=approver.id)
            request = close_request(request, RequestStatus.APPROVED, now, grant.id)
            tx.access.save_request_state(request)
    return RequestView(request=request, approvals=votes, grant=grant)


def deny(ctx: Context, approver: Principal, request_id: str, comment: str = "") -> RequestView:
    """Record ``approver``'s denial; the request is denied once ``deny_count`` eligible
    principals have denied it (one, unless the rule says otherwise)."""
    now = ctx.now()
    with ctx.store.transaction() as tx:
        request = _pending_locked(tx, ctx, request_id, now)
        _check_reviewer(tx, ctx, request, approver, now)
        votes = tx.access.list_approvals(request_id)
        if any(v.approver == approver.id for v in votes):
            raise Conflict("you have already voted on this request", code="already-approved")
        vote = Approval(request_id, approver.id, "deny", comment, now, terms_hash(request))
        tx.access.insert_approval(vote)
        votes.append(vote)
        _, denials = _tally(tx, ctx, request, votes, now)
        final = denials >= request.decision.deny_count
        if final:
            request = close_request(request, RequestStatus.DENIED, now)
            tx.access.save_request_state(request)
        kind = EventType.REQUEST_DENIED if final else EventType.REQUEST_DENY_VOTED
        data = {"comment": comment, "denials": denials, "deny_count": request.decision.deny_count}
        tx.audit.append([_event(kind, request, now, approver.id, data)])
    return RequestView(request=request, approvals=votes, grant=None)


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
        cancelled = {"comment": comment}
        tx.audit.append([_event(EventType.REQUEST_CANCELLED, request, now, actor.id, cancelled)])
        votes = tx.access.list_approvals(request_id)
    return RequestView(request=request, approvals=votes, grant=None)


def expire_pending(ctx: Context) -> int:
    """Close pending requests past their ``pending_ttl`` (the rule's, else the policy's)."""
    now = ctx.now()
    with ctx.store.read() as tx:
        pending = tx.access.list_requests(status=RequestStatus.PENDING, limit=None)
    due = [r.id for r in pending if now >= r.created_at + _pending_ttl(ctx, r)]
    if not due:
        return 0
    with ctx.store.transaction() as tx:
        stale = [
            r
            for rid in sorted(due)
            if (r := tx.access.get_request(rid, lock=True)) is not None
            and r.status is RequestStatus.PENDING
        ]
        for request in stale:
            tx.access.save_request_state(close_request(request, RequestStatus.EXPIRED, now))
        tx.audit.append(
            [
                _event(
                    EventType.REQUEST_EXPIRED,
                    r,
                    now,
                    "system",
                    {"pending_ttl_seconds": int(_pending_ttl(ctx, r).total_seconds())},
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
