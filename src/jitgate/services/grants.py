"""Grants: tokens, release, revocation (one grant or the kill switch), review, expiry.

A revocation is announced on the change feed after it commits and before the call
returns, so in one process (``jitgate up``) the gateway refuses the grant's tokens
from the moment the revoke call answers. Ending a grant early also ends every grant
that continues it (an extension, and its own extensions), in the same transaction: a
scheduled continuation never outlives the grant it extends.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from jitgate.audit.events import EventType, NewEvent
from jitgate.domain.durations import format_duration
from jitgate.domain.lifecycle import end_grant
from jitgate.domain.models import Grant, GrantStatus, Principal, PrincipalKind
from jitgate.errors import Conflict, Forbidden, InvalidInput, NotFound
from jitgate.services.context import Context, current_principal
from jitgate.storage.store import Tx
from jitgate.tokens.grant_token import issue


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    expires_at: datetime
    gateway_url: str
    grant: Grant


def grant_event(
    kind: EventType, grant: Grant, now: datetime, actor: str, data: dict[str, Any] | None = None
) -> NewEvent:
    """An audit event about ``grant`` (its principal, API, id and request filled in)."""
    return NewEvent(
        type=kind,
        at=now,
        actor=actor,
        principal=grant.principal,
        api=grant.api,
        grant=grant.id,
        request=grant.request_id,
        data=data or {},
    )


def get_grant(ctx: Context, grant_id: str) -> Grant:
    with ctx.store.read() as tx:
        grant = tx.access.get_grant(grant_id)
    if grant is None:
        raise NotFound(f"no grant {grant_id!r}", code="grant-not-found")
    return grant


def list_grants(
    ctx: Context,
    *,
    active: bool | None = None,
    principal: str | None = None,
    api: str | None = None,
    needs_review: bool | None = None,
    limit: int = 100,
) -> list[Grant]:
    """Grants, newest first; ``needs_review=True``: those still awaiting a review."""
    now = ctx.now()
    with ctx.store.read() as tx:
        found = tx.access.list_grants(
            status=GrantStatus.ACTIVE if active else None,
            principal=principal,
            api=api,
            needs_review=needs_review,
            limit=None if active is False else limit,
        )
    if active is not None:
        found = [g for g in found if g.is_active_at(now) == active]
    return found[:limit]


def issue_token(ctx: Context, actor: Principal, grant_id: str) -> IssuedToken:
    now = ctx.now()
    with ctx.store.transaction() as tx:
        grant = tx.access.get_grant(grant_id)
        if grant is None:
            raise NotFound(f"no grant {grant_id!r}", code="grant-not-found")
        if grant.principal != actor.id:
            raise Forbidden("only the grantee may obtain a token for a grant", code="not-grantee")
        if grant.status is not GrantStatus.ACTIVE or now >= grant.expires_at:
            state = grant.status.value if grant.status is not GrantStatus.ACTIVE else "expired"
            raise Conflict(f"grant {grant_id} is {state}", code="grant-ended")
        token, jti = issue(grant, ctx.keyring, ctx.issuer, now)
        tx.audit.append(
            [
                grant_event(
                    EventType.GRANT_TOKEN_ISSUED,
                    grant,
                    now,
                    actor.id,
                    {"jti": jti, "kid": ctx.keyring.signing_kid},
                )
            ]
        )
    return IssuedToken(
        token=token,
        expires_at=grant.expires_at,
        gateway_url=f"{ctx.gateway_url}/{grant.api}",
        grant=grant,
    )


def _oversees(tx: Tx, actor: Principal, grant: Grant) -> bool:
    """An administrator, or a member of the grant's API's owner groups."""
    if actor.is_admin:
        return True
    api = tx.directory.get_api(grant.api)
    return api is not None and not api.owners.isdisjoint(actor.groups)


def _may_revoke(tx: Tx, actor: Principal, grant: Grant) -> bool:
    return actor.id == grant.principal or _oversees(tx, actor, grant)


def _end(tx: Tx, grant: Grant, actor: Principal, reason: str, now: datetime) -> list[Grant]:
    """End ``grant`` and, after it, every active grant that continues it (depth first)."""
    ended: list[Grant] = []
    todo: list[tuple[Grant, str | None]] = [(grant, None)]
    while todo:
        current, because = todo.pop()
        released = actor.id == current.principal
        status = GrantStatus.RELEASED if released else GrantStatus.REVOKED
        done = end_grant(current, status, now, actor.id, reason)
        tx.access.save_grant_state(done)
        data = {"reason": reason} if because is None else {"reason": reason, "ended_with": because}
        tx.audit.append(
            [
                grant_event(
                    EventType.GRANT_RELEASED if released else EventType.GRANT_REVOKED,
                    current,
                    now,
                    actor.id,
                    data,
                )
            ]
        )
        ended.append(done)
        todo.extend(
            (child, current.id)
            for child in reversed(tx.access.list_extending(current.id, lock=True))
            if now < child.expires_at
        )
    return ended


def revoke(ctx: Context, actor: Principal, grant_id: str, reason: str) -> Grant:
    """Revoke one grant (or release it, when the grantee calls), and its continuations."""
    reason = (reason or "").strip()
    now = ctx.now()
    with ctx.store.transaction() as tx:
        actor = current_principal(tx, actor)
        grant = tx.access.get_grant(grant_id, lock=True)
        if grant is None:
            raise NotFound(f"no grant {grant_id!r}", code="grant-not-found")
        if not _may_revoke(tx, actor, grant):
            raise Forbidden(
                "only the grantee, an owner of the API or an administrator may revoke a grant",
                code="not-allowed-to-revoke",
            )
        if actor.id != grant.principal and not reason:
            raise InvalidInput("a reason is required to revoke someone's grant")
        ended = _end(tx, grant, actor, reason or "released", now)
    for done in ended:
        ctx.feed.grant_ended(done.id, done.expires_at)
    return ended[0]


def review(ctx: Context, actor: Principal, grant_id: str, comment: str = "") -> Grant:
    """Record that ``actor`` looked at a grant flagged for review (break glass).

    Reviewers are those who may revoke someone else's grant (an administrator or an
    owner of the API), never the grantee; a grant is reviewed once.
    """
    comment = (comment or "").strip()
    now = ctx.now()
    with ctx.store.transaction() as tx:
        actor = current_principal(tx, actor)
        grant = tx.access.get_grant(grant_id, lock=True)
        if grant is None:
            raise NotFound(f"no grant {grant_id!r}", code="grant-not-found")
        if not grant.needs_review:
            raise Conflict(f"grant {grant_id} was not flagged for review", code="review-not-needed")
        if actor.id == grant.principal:
            raise Forbidden("you cannot review your own grant", code="self-review")
        if not _oversees(tx, actor, grant):
            raise Forbidden(
                "only an owner of the API or an administrator may review a grant",
                code="not-allowed-to-review",
            )
        if grant.reviewed_at is not None:
            raise Conflict(
                f"grant {grant_id} was already reviewed by {grant.reviewed_by}",
                code="already-reviewed",
            )
        reviewed = replace(grant, reviewed_by=actor.id, reviewed_at=now)
        tx.access.save_grant_state(reviewed)
        tx.audit.append(
            [grant_event(EventType.GRANT_REVIEWED, grant, now, actor.id, {"comment": comment})]
        )
    return reviewed


def kill_switch(
    ctx: Context,
    actor: Principal,
    *,
    principal: str | None,
    api: str | None,
    reason: str,
) -> list[Grant]:
    """Revoke every active grant of a principal and/or an API (and their continuations),
    in one transaction."""
    if principal is None and api is None:
        raise InvalidInput("name a principal, an API, or both")
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("a reason is required")
    now = ctx.now()
    with ctx.store.transaction() as tx:
        actor = current_principal(tx, actor)
        if not actor.is_admin:
            owned = api is not None and (
                (target := tx.directory.get_api(api)) is not None
                and not target.owners.isdisjoint(actor.groups)
            )
            if not owned:
                raise Forbidden(
                    "only an administrator, or an owner of the named API, may use the kill switch",
                    code="not-allowed-to-revoke",
                )
        live = [
            g
            for g in tx.access.list_grants(
                status=GrantStatus.ACTIVE, principal=principal, api=api, lock=True, limit=None
            )
            if now < g.expires_at
        ]
        ended: dict[str, Grant] = {}
        for g in live:
            if g.id not in ended:  # else it ended already, with the grant it extends
                ended.update((done.id, done) for done in _end(tx, g, actor, reason, now))
    for grant in ended.values():
        ctx.feed.grant_ended(grant.id, grant.expires_at)
    return list(ended.values())


#: Who ends a grant that no person revoked (idle timeout); never a principal that exists.
SYSTEM = Principal("system", PrincipalKind.SERVICE, "jitgate")


def revoke_idle(ctx: Context) -> list[Grant]:
    """Revoke active grants whose ``idle_timeout`` has passed since their last admitted
    call (or since they started, if never used); the audit log says when each was used."""
    now = ctx.now()
    with ctx.store.read() as tx:
        watched = [g for g in tx.access.idle_watched(now) if g.is_active_at(now)]
        used = tx.audit.last_allowed([g.id for g in watched])
    idle = [
        g.id
        for g in watched
        if g.limits.idle_timeout is not None
        and now - max(used.get(g.id, g.not_before), g.not_before) >= g.limits.idle_timeout
    ]
    ended: list[Grant] = []
    for grant_id in idle:
        with ctx.store.transaction() as tx:
            grant = tx.access.get_grant(grant_id, lock=True)
            if grant is None or not grant.is_active_at(now) or grant.limits.idle_timeout is None:
                continue
            last = tx.audit.last_allowed([grant_id]).get(grant_id, grant.not_before)
            if now - max(last, grant.not_before) < grant.limits.idle_timeout:
                continue  # used since the first look
            reason = f"unused for {format_duration(grant.limits.idle_timeout)} (idle_timeout)"
            ended.extend(_end(tx, grant, SYSTEM, reason, now))
    for grant in ended:
        ctx.feed.grant_ended(grant.id, grant.expires_at)
    return ended


def expire_grants(ctx: Context) -> int:
    """Mark active grants past ``expires_at`` as expired (their tokens already are)."""
    now = ctx.now()
    with ctx.store.transaction() as tx:
        due = tx.access.due_for_expiry(now)
        for grant in due:
            tx.access.save_grant_state(
                end_grant(grant, GrantStatus.EXPIRED, now, "system", "expired")
            )
        tx.audit.append([grant_event(EventType.GRANT_EXPIRED, g, now, "system") for g in due])
    return len(due)
